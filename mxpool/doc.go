// Package mxpool decides where mail goes next and keeps every MX of a pool
// on one policy.
//
// Outbound, a Planner turns a recipient domain into an ordered list of hosts
// as RFC 5321 §5.1 requires, and a Deliverer delivers through that plan.
// Inbound, one node publishes the pool's policy (domains, recipients,
// thresholds, routes) as a versioned, authenticated snapshot and every other
// MX follows it, so a secondary accepts and rejects exactly what the primary
// would.
package mxpool
