package statuspage_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"

	"github.com/resilmail/resilmail/failover/statuspage"
)

// A page over two nodes: a primary's /status and a standby's, served by
// httptest on loopback. One poll round, then the page's JSON summary.
func Example() {
	node := func(status string) *httptest.Server {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, status) })
		return httptest.NewServer(mux)
	}
	primary := node(`{"role":"primary","epoch":7,"position":1200,"replicas":[{"name":"b","lag_changes":3,"lag_seconds":0.4}]}`)
	defer primary.Close()
	standby := node(`{"role":"standby","epoch":7,"applied":1197,"primary_position":1200,"queue_messages":2}`)
	defer standby.Close()

	p, err := statuspage.NewPoller([]statuspage.Node{
		{Name: "a", URL: primary.URL},
		{Name: "b", URL: standby.URL},
	}, &statuspage.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		log.Fatal(err)
	}
	p.PollOnce(context.Background()) // Run polls every Interval instead
	page := httptest.NewServer(statuspage.Handler(p))
	defer page.Close()

	resp, err := http.Get(page.URL + "/status.json")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var r statuspage.Report
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		log.Fatal(err)
	}
	for _, n := range r.Nodes {
		fmt.Printf("%s: reachable=%v role=%s epoch=%d lag=%d changes", n.Name, n.Reachable, n.Role, *n.Epoch, *n.LagChanges)
		if n.QueueMessages != nil {
			fmt.Printf(" queue=%d", *n.QueueMessages)
		}
		fmt.Println()
	}
	fmt.Println("primaries:", r.Primaries)
	// Output:
	// a: reachable=true role=primary epoch=7 lag=3 changes
	// b: reachable=true role=standby epoch=7 lag=3 changes queue=2
	// primaries: 1
}
