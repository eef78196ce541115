package main

import (
	"fmt"
	"testing"

	"github.com/resilmail/resilmail/mxpool"
)

// BenchmarkRouteDestination is the cost the pool's routes add to every
// recipient the queue groups: a policy of 100 routes and a wildcard.
func BenchmarkRouteDestination(b *testing.B) {
	var routes []mxpool.Route
	for i := range 100 {
		routes = append(routes, mxpool.Route{Domain: fmt.Sprintf("d%03d.example", i), Host: "mail.internal:24", LMTP: true})
	}
	routes = append(routes, mxpool.Route{Domain: "*", Host: "smarthost.internal"})
	r := &poolRoutes{routes: func() []mxpool.Route { return routes }, defDest: func(string) string { return "next" }}
	rcpts := []string{"alice@d050.example", "bob@elsewhere.example", "Carol@D099.Example"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if r.destination(rcpts[i%len(rcpts)]) == "" {
			b.Fatal("no destination")
		}
	}
}
