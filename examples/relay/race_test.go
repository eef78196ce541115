//go:build race

package main

// raceEnabled is set when the tests run under the race detector, which
// makes the harvest test ten times slower: it then sends fewer RCPTs.
const raceEnabled = true
