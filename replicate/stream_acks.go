package replicate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/resilmail/resilmail"
	"github.com/resilmail/resilmail/internal/bearer"
)

// A JournalHolder is a Source that keeps its journal after a position for
// a named reader (a retention hold), as replicate/store's Store does
// (Store.HoldJournal). A Primary holds the journal of every replica at
// the position it acknowledged, under the name "replica:" + its name, so
// that the slowest known replica can resume from the journal rather than
// compare in full (up to the Source's own bound).
type JournalHolder interface {
	HoldJournal(ctx context.Context, name string, pos uint64) error
}

// holdFor moves the journal hold of replica name to pos.
func (p *Primary) holdFor(ctx context.Context, name string, pos uint64) {
	jh, ok := p.src.(JournalHolder)
	if !ok {
		return
	}
	if err := jh.HoldJournal(ctx, "replica:"+name, pos); err != nil {
		p.log.Warn("replicate: holding the journal for a replica", "replica", name, "position", pos, "err", err)
	}
}

// identity is who a request is from: the replica its credential names
// (bound), or any name it gives (a shared secret).
type identity struct {
	name  string // "" when the credential names no replica
	bound bool
}

type identityKey struct{}

// authenticate checks a request's credential and returns who it is.
func (p *Primary) authenticate(r *http.Request) (identity, error) {
	if p.opts.Identify != nil {
		name, err := p.opts.Identify(r)
		if err != nil {
			return identity{}, err
		}
		if err := checkName("replica", name, resilmail.MaxUserLen); err != nil {
			return identity{}, fmt.Errorf("the name from Identify: %w", err)
		}
		return identity{name: name, bound: true}, nil
	}
	for name, tok := range p.replicaTokens {
		if bearer.Check(r, tok) == nil {
			return identity{name: name, bound: true}, nil
		}
	}
	if p.opts.Authenticate != nil {
		return identity{}, p.opts.Authenticate(r)
	}
	if len(p.opts.Secret) == 0 {
		return identity{}, errors.New("not a replica's credential")
	}
	return identity{}, bearer.Check(r, p.token)
}

// replicaName returns the name a request acts as: the one its credential
// binds (a different name given is ErrWrongReplica), else the one given,
// unless that name is bound to a credential of its own.
func (p *Primary) replicaName(id identity, given string) (string, error) {
	if !id.bound {
		if _, bound := p.replicaTokens[given]; bound {
			return "", fmt.Errorf("%w: %q has its own secret", ErrWrongReplica, given)
		}
		return given, nil
	}
	if given != "" && given != id.name {
		return "", fmt.Errorf("%w: %q authenticated, %q named", ErrWrongReplica, id.name, given)
	}
	return id.name, nil
}

// knownLocked reports whether name is a replica whose acknowledgements
// count.
func (p *Primary) knownLocked(name string, id identity) bool {
	if id.bound && p.opts.Identify != nil {
		return len(p.opts.Replicas) == 0 || slices.Contains(p.opts.Replicas, name)
	}
	if len(p.opts.Replicas) > 0 || len(p.replicaTokens) > 0 {
		_, secret := p.replicaTokens[name]
		return secret || slices.Contains(p.opts.Replicas, name)
	}
	l := p.replicas[name]
	return l != nil && l.streams > 0
}

// checkAck refuses an acknowledgement from a name the request cannot act
// as or the primary does not know, and one beyond the journal's end.
func (p *Primary) checkAck(id identity, a *ackRequest) (status int, code string, err error) {
	name, err := p.replicaName(id, a.Replica)
	if err != nil {
		return http.StatusForbidden, "wrong_replica", err
	}
	a.Replica = name
	p.mu.Lock()
	known := p.knownLocked(name, id)
	p.mu.Unlock()
	if !known {
		return http.StatusForbidden, "unknown_replica", fmt.Errorf("%w: %q", ErrUnknownReplica, name)
	}
	if end := p.src.Position(); a.Position > end {
		return http.StatusConflict, "position", fmt.Errorf("%w: %d acknowledged, the journal ends at %d", ErrAckBeyondEnd, a.Position, end)
	}
	return 0, "", nil
}
