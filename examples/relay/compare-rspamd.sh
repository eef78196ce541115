#!/usr/bin/env bash
# compare-rspamd.sh measures content scanning's cost side by side in one
# run: smtp-source (SESSIONS sessions, MESSAGES messages of SIZE bytes) into
# four servers that relay to smtp-sink:
#
#   relay          examples/relay, no scanner
#   relay+rspamd   examples/relay -rspamd (HTTP /checkv2 to rspamd's normal worker)
#   postfix        Postfix, no milter
#   postfix+milter Postfix with rspamd's proxy worker in milter mode
#                  (smtpd_milters, milter_default_action = tempfail), which
#                  asks the same normal worker
#
# Runs alternate so that all four see the same machine noise; medians are
# printed at the end, with the relay's scan latency p50/p99 from its
# /metrics. One private rspamd (its packaged rules, DNS pointed at a closed
# port: nothing leaves the machine) serves both.
#
# Needs root, Debian's postfix and rspamd packages.
#
#   sudo examples/relay/compare-rspamd.sh               # 3 runs each
#   RUNS=5 MESSAGES=5000 examples/relay/compare-rspamd.sh
#   SELF_SCAN=1 ...   # the proxy scans itself instead of asking the normal worker
set -euo pipefail

RUNS=${RUNS:-3}
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-2000}
SIZE=${SIZE:-4096}
BASE=${BASE:-2640}
PFX_PORT=$BASE PFXM_PORT=$((BASE + 1)) RELAY_PORT=$((BASE + 2)) RELAYS_PORT=$((BASE + 3)) SINK_PORT=$((BASE + 4))
NORMAL_PORT=$((BASE + 5)) PROXY_PORT=$((BASE + 6)) CONTROLLER_PORT=$((BASE + 7)) METRICS_PORT=$((BASE + 8))

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /var/tmp/resilmail-rspamd.XXXXXX)
chmod 755 "$work"
sinkpid= relaypid= relayspid= rspamdpid=
cleanup() {
	[ -f "$work/sink.pid" ] && kill "$(cat "$work/sink.pid")" 2>/dev/null || true
	for p in "$relaypid" "$relayspid"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
	[ -n "$rspamdpid" ] && kill -- -"$rspamdpid" 2>/dev/null || true
	for c in "$work/pfx" "$work/pfxm"; do postfix -c "$c/conf" stop >/dev/null 2>&1 || true; done
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
wait_port() {
	for _ in $(seq "${2:-100}"); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.2
	done
	echo "port $1 does not answer" >&2
	return 1
}

# --- a private rspamd: normal worker, proxy in milter mode, controller ----
r=$work/rspamd
mkdir -p "$r/override.d" "$r/local.d" "$r/db" "$r/run" "$r/log"
chown _rspamd "$r/db" "$r/run" "$r/log"
cat >"$r/override.d/worker-normal.inc" <<EOF
bind_socket = "127.0.0.1:$NORMAL_PORT";
count = 1;
EOF
cat >"$r/override.d/worker-proxy.inc" <<EOF
bind_socket = "127.0.0.1:$PROXY_PORT";
milter = yes;
timeout = 120s;
upstream "local" { default = yes; $(if [ -n "${SELF_SCAN:-}" ]; then echo "self_scan = yes;"; else echo "hosts = \"127.0.0.1:$NORMAL_PORT\";"; fi) }
count = 1;
EOF
cat >"$r/override.d/worker-controller.inc" <<EOF
bind_socket = "127.0.0.1:$CONTROLLER_PORT";
count = 1;
EOF
cat >"$r/override.d/logging.inc" <<EOF
type = "file";
filename = "$r/log/rspamd.log";
level = "warning";
EOF
echo 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.5s; retransmits = 1; }' >"$r/local.d/options.inc"
# No DNS block lists: Postfix tells the milter the client's name
# ("localhost"), which the relay's HTTP request does not carry, and the rbl
# module then asks DBL, SURBL and URIBL about it and the HELO name, each
# waiting for the dead resolver's timeout (about 500 ms a message, on the
# milter path only; measured with rspamc --hostname).
echo 'enabled = false;' >"$r/local.d/rbl.conf"
setsid rspamd -f -u _rspamd -g _rspamd -c /etc/rspamd/rspamd.conf \
	--var "LOCAL_CONFDIR=$r" --var "DBDIR=$r/db" --var "RUNDIR=$r/run" --var "LOGDIR=$r/log" \
	>"$r/stderr" 2>&1 &
rspamdpid=$!
echo "rspamd starting (it compiles its rules first)..."
wait_port "$NORMAL_PORT" 900
until curl -sf "http://127.0.0.1:$NORMAL_PORT/ping" >/dev/null; do sleep 0.5; done
wait_port "$PROXY_PORT" 100

# --- two private Postfix instances, with and without the milter ----------
postfix_instance() { # DIR PORT [MILTER]
	local d=$1 port=$2 conf=$1/conf
	mkdir -p "$conf" "$d/data" "$d/queue"
	cp /usr/share/postfix/master.cf.dist "$conf/master.cf"
	: >"$conf/main.cf"
	postconf -c "$conf" -e \
		compatibility_level=3.6 \
		"queue_directory=$d/queue" \
		"data_directory=$d/data" \
		"myhostname=$(basename "$d").compare.test" \
		mydestination= \
		"relayhost=[127.0.0.1]:$SINK_PORT" \
		inet_interfaces=127.0.0.1 \
		inet_protocols=ipv4 \
		mynetworks=127.0.0.0/8 \
		'smtpd_relay_restrictions=permit_mynetworks, reject' \
		"maillog_file=$d/postfix.log" \
		smtp_dns_support_level=disabled \
		alias_maps= alias_database=
	if [ -n "${3:-}" ]; then
		postconf -c "$conf" -e "smtpd_milters=inet:127.0.0.1:$3" milter_default_action=tempfail \
			milter_protocol=6 'milter_mail_macros=i {mail_addr} {client_addr} {client_name} {auth_authen}'
	fi
	postconf -c "$conf" -M# smtp/inet
	postconf -c "$conf" -M "127.0.0.1:$port/inet=127.0.0.1:$port inet n - n - - smtpd"
	postconf -c "$conf" -F '*/*/chroot=n'
	chown postfix "$d/data"
	postfix -c "$conf" check || { cat "$d/postfix.log" >&2; exit 1; }
	postfix -c "$conf" start >/dev/null || { cat "$d/postfix.log" >&2; exit 1; }
}
postfix_instance "$work/pfx" "$PFX_PORT"
postfix_instance "$work/pfxm" "$PFXM_PORT" "$PROXY_PORT"

# --- examples/relay, with and without -rspamd ------------------------------
(cd "$root" && go build -o "$work/relay" ./examples/relay)
"$work/relay" -listen "127.0.0.1:$RELAY_PORT" -next "127.0.0.1:$SINK_PORT" \
	-queue "$work/relay-queue" -hostname relay.compare.test 2>"$work/relay.log" &
relaypid=$!
"$work/relay" -listen "127.0.0.1:$RELAYS_PORT" -next "127.0.0.1:$SINK_PORT" \
	-queue "$work/relays-queue" -hostname relays.compare.test -http "127.0.0.1:$METRICS_PORT" \
	-rspamd "http://127.0.0.1:$NORMAL_PORT" 2>"$work/relays.log" &
relayspid=$!
for p in "$PFX_PORT" "$PFXM_PORT" "$RELAY_PORT" "$RELAYS_PORT"; do wait_port "$p"; done

# run NAME PORT: one measured run; prints "accept/s e2e/s".
run() {
	local name=$1 port=$2 out=$work/sink.out
	smtp-sink -u postfix -c "127.0.0.1:$SINK_PORT" 1000 >"$out" 2>&1 &
	sinkpid=$!
	echo "$sinkpid" >"$work/sink.pid"
	wait_port "$SINK_PORT"
	local t0 t1 t2 got
	t0=$(now)
	smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
		-f sender@compare.test -t rcpt@example.org "127.0.0.1:$port"
	t1=$(now)
	while :; do
		got=$(tr '\r' '\n' <"$out" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
		[ "${got:-0}" -ge "$MESSAGES" ] && break
		if [ "$(echo "$(now) - $t0 > 600" | bc)" = 1 ]; then
			echo "$name: only ${got:-0} of $MESSAGES delivered after 600 s" >&2
			return 1
		fi
		sleep 0.05
	done
	t2=$(now)
	kill "$sinkpid"
	wait "$sinkpid" 2>/dev/null || true
	sinkpid=
	echo "$(echo "$MESSAGES / ($t1 - $t0)" | bc) $(echo "$MESSAGES / ($t2 - $t0)" | bc)"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, $RUNS runs each, alternating; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-15s %4s %10s %10s\n' server run accept/s e2e/s
names=(relay relay+rspamd postfix postfix+milter)
ports=("$RELAY_PORT" "$RELAYS_PORT" "$PFX_PORT" "$PFXM_PORT")
for i in $(seq "$RUNS"); do
	for k in 0 1 2 3; do
		read -r a e < <(run "${names[$k]}" "${ports[$k]}")
		echo "$a" >>"$work/a$k"
		echo "$e" >>"$work/e$k"
		printf '%-15s %4d %10s %10s\n' "${names[$k]}" "$i" "$a" "$e"
	done
done
for k in 0 1 2 3; do
	printf 'median %-15s accept %6s/s, end to end %6s/s\n' "${names[$k]}" "$(median <"$work/a$k")" "$(median <"$work/e$k")"
done
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^resilmail_scan_(total|errors_total|latency_p50_seconds|latency_p99_seconds)' || true
echo "ratios: relay+rspamd/relay e2e $(echo "scale=2; $(median <"$work/e1") / $(median <"$work/e0")" | bc)x," \
	"postfix+milter/postfix e2e $(echo "scale=2; $(median <"$work/e3") / $(median <"$work/e2")" | bc)x," \
	"relay+rspamd/postfix+milter e2e $(echo "scale=2; $(median <"$work/e1") / $(median <"$work/e3")" | bc)x"
