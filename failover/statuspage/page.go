package statuspage

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"time"
)

// Handler serves the page at / (HTML) and /status.json (the same
// [Report] as JSON).
func Handler(p *Poller) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(p.Report())
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if err := page.Execute(w, view{Report: p.Report(), Refresh: max(1, int(p.opts.Interval/time.Second))}); err != nil {
			p.log.Error("statuspage: render", "err", err)
		}
	})
	return mux
}

type view struct {
	Report
	Refresh int
}

// ago says how long before now t was, in the largest fitting unit.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < 0 {
		return "in " + span(-d)
	}
	return span(d) + " ago"
}

func span(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h", int(d.Hours()))
	default:
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
}

func secs(f *float64) string {
	if f == nil {
		return "—"
	}
	return span(time.Duration(*f * float64(time.Second)))
}

func unsigned(u *uint64) string {
	if u == nil {
		return "—"
	}
	return fmt.Sprint(*u)
}

var page = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago":      ago,
	"secs":     secs,
	"unsigned": unsigned,
	"certClass": func(now time.Time, t *time.Time) string {
		switch {
		case t == nil:
			return "unknown"
		case t.Sub(now) < 0:
			return "bad"
		case t.Sub(now) < 14*24*time.Hour:
			return "warn"
		}
		return "ok"
	},
	"lagClass": func(s *NodeStatus) string {
		if s.LagChanges == nil {
			return "unknown"
		}
		if *s.LagChanges > 1000 || (s.LagSeconds != nil && *s.LagSeconds > 60) {
			return "warn"
		}
		return "ok"
	},
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{.Refresh}}">
<title>resilmail status</title>
<style>
body{font:15px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}
.banner{padding:.6em 1em;border-radius:6px;font-weight:600;margin:.6em 0 1em}
.banner.ok{background:#d9f2dd;color:#145a22}.banner.bad{background:#fbd5d5;color:#8a1111}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.45em .7em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f3f3f3;font-weight:600}
.role{display:inline-block;padding:.1em .6em;border-radius:1em;font-weight:600}
.role-primary{background:#1f8f3a;color:#fff}.role-standby{background:#2563c9;color:#fff}
.role-fenced{background:#c0392b;color:#fff}.role-other{background:#777;color:#fff}
tr.down td{background:#fdecec}.down .reach{color:#b00;font-weight:600}.up .reach{color:#1f8f3a;font-weight:600}
.warn{color:#a36200;font-weight:600}.bad{color:#b00;font-weight:600}.unknown{color:#888}
.err{color:#b00;font-size:.85em}
small{color:#666}
</style></head><body>
<h1>resilmail status</h1>
<small>generated {{.Generated.UTC.Format "2006-01-02 15:04:05 UTC"}}, refreshed every {{.Refresh}} s</small>
{{if eq .Primaries 1}}<div class="banner ok" id="banner">One primary: mail flows.</div>
{{else if eq .Primaries 0}}<div class="banner bad" id="banner">No primary reachable: mail is queued on the relays.</div>
{{else}}<div class="banner bad" id="banner">{{.Primaries}} nodes say they are primary: check the epochs.</div>{{end}}
<table id="nodes"><thead><tr><th>node</th><th>role</th><th>epoch</th><th>reachable</th><th>replication lag</th><th>queue</th><th>oldest queued</th><th>policy</th><th>quarantine outbox</th><th>certificate</th></tr></thead><tbody>
{{$now := .Generated}}{{range .Nodes}}<tr class="{{if .Reachable}}up{{else}}down{{end}}" data-node="{{.Name}}">
<td><b>{{.Name}}</b><br><small>{{.URL}}</small></td>
<td>{{if .Role}}<span class="role {{if eq .Role "primary"}}role-primary{{else if eq .Role "standby" "secondary" "replica"}}role-standby{{else if eq .Role "fenced"}}role-fenced{{else}}role-other{{end}}">{{.Role}}</span>{{else}}<span class="unknown">—</span>{{end}}</td>
<td>{{unsigned .Epoch}}</td>
<td class="reach">{{if .Reachable}}up{{else}}DOWN{{end}} <small>since {{ago $now .Since}}</small>{{if .Error}}<div class="err">{{.Error}}</div>{{end}}</td>
<td class="{{lagClass .}}">{{if .LagChanges}}{{unsigned .LagChanges}} changes{{if .LagSeconds}}, {{secs .LagSeconds}}{{end}}{{else}}—{{end}}</td>
<td>{{unsigned .QueueMessages}}</td>
<td>{{secs .QueueOldest}}</td>
<td>{{if .PolicyVersion}}v{{unsigned .PolicyVersion}}{{if .PolicyAge}} <small>{{secs .PolicyAge}} old</small>{{end}}{{else}}<span class="unknown">—</span>{{end}}</td>
<td>{{unsigned .OutboxBacklog}}</td>
<td class="{{certClass $now .CertNotAfter}}">{{if .CertNotAfter}}expires {{ago $now .CertNotAfter}}{{else}}—{{end}}</td>
</tr>
{{end}}</tbody></table>
<p><small>JSON: <a href="status.json">status.json</a></small></p>
</body></html>
`))
