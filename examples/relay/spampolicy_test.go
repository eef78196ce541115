package main

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/resilmail/resilmail/mxpool/pool"
	"github.com/resilmail/resilmail/queue/intake"
)

// TestSpamPolicyDecides: what a domain's spam policy makes of verdicts
// with a score scale (rspamd) and without one (a milter, sender
// authentication), whose reject or quarantine no threshold can weigh.
func TestSpamPolicyDecides(t *testing.T) {
	p := &spamPolicy{}
	quarantine := &pool.DomainPolicy{SpamAction: pool.SpamQuarantine}
	threshold := &pool.DomainPolicy{SpamThreshold: 3, SpamAction: pool.SpamQuarantine}
	reject := &pool.DomainPolicy{SpamThreshold: 3, SpamAction: pool.SpamReject}
	for _, c := range []struct {
		name string
		d    *pool.DomainPolicy
		v    intake.Verdict
		want intake.Action
	}{
		{"rspamd reject, no threshold", quarantine, intake.Verdict{Action: intake.ActionReject, Score: 16, Required: 15}, intake.ActionQuarantine},
		{"rspamd tag under the threshold", threshold, intake.Verdict{Action: intake.ActionTag, Score: 2, Required: 15}, intake.ActionTag},
		{"rspamd score over the threshold", threshold, intake.Verdict{Action: intake.ActionAccept, Score: 3.7, Required: 15}, intake.ActionQuarantine},
		{"rspamd clean", reject, intake.Verdict{Action: intake.ActionAccept, Score: 0.1, Required: 15}, intake.ActionAccept},
		{"milter reject, threshold domain", threshold, intake.Verdict{Action: intake.ActionReject}, intake.ActionQuarantine},
		{"milter reject, rejecting domain", reject, intake.Verdict{Action: intake.ActionReject}, intake.ActionReject},
		{"milter quarantine", quarantine, intake.Verdict{Action: intake.ActionQuarantine}, intake.ActionQuarantine},
		{"milter quarantine, rejecting domain", reject, intake.Verdict{Action: intake.ActionQuarantine}, intake.ActionReject},
		{"quarantine asked for, with a low score", threshold, intake.Verdict{Action: intake.ActionQuarantine, Score: 1, Required: 15}, intake.ActionQuarantine},
		{"quarantine asked for, with a score, no threshold", quarantine, intake.Verdict{Action: intake.ActionQuarantine, Score: 1, Required: 15}, intake.ActionQuarantine},
		{"milter accept", threshold, intake.Verdict{Action: intake.ActionAccept}, intake.ActionAccept},
		{"milter tempfail", threshold, intake.Verdict{Action: intake.ActionTempFail}, intake.ActionTempFail},
		{"DMARC reject, outside the pool's domains", nil, intake.Verdict{Action: intake.ActionReject}, intake.ActionReject},
	} {
		assert.Equal(t, c.want, p.decide(c.d, c.v), c.name)
	}
}
