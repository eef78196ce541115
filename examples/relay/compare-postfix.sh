#!/usr/bin/env bash
# compare-postfix.sh measures examples/relay against Postfix on this machine,
# side by side in one run: smtp-source (SESSIONS sessions, MESSAGES messages
# of SIZE bytes) into each server, which relays to smtp-sink. Both fsync a
# message before answering 250. Runs alternate (Postfix, relay, Postfix, ...)
# so that both see the same machine noise; the medians and their ratio are
# printed at the end.
#
# Needs root and Debian's postfix package (smtp-source, smtp-sink, postfix).
# It starts its own Postfix instance from a private configuration and queue
# folder on loopback ports, and leaves the system's Postfix alone.
#
#   sudo examples/relay/compare-postfix.sh            # 3 runs each
#   RUNS=5 MESSAGES=50000 examples/relay/compare-postfix.sh
set -euo pipefail

RUNS=${RUNS:-3}
SESSIONS=${SESSIONS:-20}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-4096}
PFX_PORT=${PFX_PORT:-2631}
RELAY_PORT=${RELAY_PORT:-2632}
SINK_PORT=${SINK_PORT:-2633}

root=$(cd "$(dirname "$0")/../.." && pwd)
# WORKDIR is where both servers keep their queues: the file system under
# test, the same for both. A fresh ext4 loop image is fairest:
#   truncate -s 8G /var/tmp/cmp.img && mkfs.ext4 -q /var/tmp/cmp.img
#   mkdir -p /mnt/cmp && mount -o loop /var/tmp/cmp.img /mnt/cmp
#   WORKDIR=/mnt/cmp examples/relay/compare-postfix.sh
WORKDIR=${WORKDIR:-/var/tmp}
work=$(mktemp -d "$WORKDIR/resilmail-compare.XXXXXX")
chmod 755 "$work"
conf=$work/postfix
sinkpid=
relaypid=
samplerpid=
cleanup() {
	[ -f "$work/sink.pid" ] && kill "$(cat "$work/sink.pid")" 2>/dev/null || true
	[ -n "$samplerpid" ] && kill "$samplerpid" 2>/dev/null || true
	[ -n "$relaypid" ] && kill "$relaypid" 2>/dev/null || true
	postfix -c "$conf" stop >/dev/null 2>&1 || true
	[ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }

# --- a private Postfix: relay everything from loopback to the sink --------
mkdir -p "$conf" "$work/pfx-data" "$work/pfx-queue"
cp /usr/share/postfix/master.cf.dist "$conf/master.cf"
: >"$conf/main.cf"
postconf -c "$conf" -e \
	compatibility_level=3.6 \
	"queue_directory=$work/pfx-queue" \
	"data_directory=$work/pfx-data" \
	myhostname=postfix.compare.test \
	mydestination= \
	"relayhost=[127.0.0.1]:$SINK_PORT" \
	inet_interfaces=127.0.0.1 \
	inet_protocols=ipv4 \
	mynetworks=127.0.0.0/8 \
	'smtpd_relay_restrictions=permit_mynetworks, reject' \
	"maillog_file=$work/postfix.log" \
	"maillog_file_prefixes=/var, /dev/stdout, $work" \
	smtp_dns_support_level=disabled \
	alias_maps= alias_database=
postconf -c "$conf" -M# smtp/inet
postconf -c "$conf" -M "127.0.0.1:$PFX_PORT/inet=127.0.0.1:$PFX_PORT inet n - n - - smtpd"
postconf -c "$conf" -F '*/*/chroot=n'
chown postfix "$work/pfx-data"
postfix -c "$conf" check || { cat "$work/postfix.log" >&2; exit 1; }
postfix -c "$conf" start >/dev/null || { cat "$work/postfix.log" >&2; exit 1; }

# --- examples/relay -------------------------------------------------------
(cd "$root" && go build -o "$work/relay" ./examples/relay)

wait_port() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "port $1 does not answer" >&2
	return 1
}

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

wait_port "$PFX_PORT"
"$work/relay" -listen "127.0.0.1:$RELAY_PORT" -next "127.0.0.1:$SINK_PORT" \
	-queue "$work/relay-queue" -hostname relay.compare.test 2>"$work/relay.log" &
relaypid=$!
wait_port "$RELAY_PORT"

# Postfix's memory: the largest sum of the resident sizes of its master and
# the master's children (smtpd, cleanup, qmgr, smtp, ...), sampled.
pfx_rss() {
	local master max=0 sum
	master=$(cat "$work/pfx-queue/pid/master.pid" 2>/dev/null | tr -d ' ')
	[ -n "$master" ] || return 0
	while :; do
		sum=$( (ps -o rss= -p "$master"; ps -o rss= --ppid "$master") | awk '{s+=$1} END {print s+0}')
		[ "$sum" -gt "$max" ] && max=$sum && echo "$max" >"$work/pfx-rss"
		sleep 0.2
	done
}
pfx_rss &
samplerpid=$!

echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE, $RUNS runs each, alternating"
echo "queues in $work ($(df -T "$work" | awk 'NR == 2 {print $2 " on " $1}'))"
printf '%-8s %4s %10s %10s\n' server run accept/s e2e/s
for i in $(seq "$RUNS"); do
	read -r a e < <(run postfix "$PFX_PORT")
	echo "$a" >>"$work/pa"
	echo "$e" >>"$work/pe"
	printf '%-8s %4d %10s %10s\n' postfix "$i" "$a" "$e"
	read -r a e < <(run relay "$RELAY_PORT")
	echo "$a" >>"$work/ra"
	echo "$e" >>"$work/re"
	printf '%-8s %4d %10s %10s\n' relay "$i" "$a" "$e"
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$relaypid/status")
pa=$(median <"$work/pa")
pe=$(median <"$work/pe")
ra=$(median <"$work/ra")
re=$(median <"$work/re")
prss=$(cat "$work/pfx-rss" 2>/dev/null || echo 0)
echo "median   postfix accept $pa/s, end to end $pe/s (peak RSS of master and children $((prss / 1024)) MiB)"
echo "median   relay   accept $ra/s, end to end $re/s (peak RSS $((rss / 1024)) MiB)"
echo "ratio    accept $(echo "scale=2; $ra / $pa" | bc)x, end to end $(echo "scale=2; $re / $pe" | bc)x"
