package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// ErrLocked is returned when another run holds the repository's lock.
var ErrLocked = errors.New("backup: repository locked")

// lockInfo is the content of the lock blob (plain JSON, no secret).
type lockInfo struct {
	Owner    string    `json:"owner"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Op       string    `json:"op"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
}

// heldLock is the repository's lock while an operation holds it.
type heldLock struct {
	r      *Repo
	info   lockInfo
	cancel context.CancelFunc
	done   chan struct{}
	err    error // why the lock was lost, set before done is closed
}

// stale reports whether a lock can be taken over: expired, or held by a
// process of this host that no longer runs.
func (r *Repo) stale(li lockInfo) (bool, string) {
	now := r.opts.Now()
	if now.After(li.Expires) {
		return true, "expired"
	}
	if host, _ := os.Hostname(); host == li.Host && li.PID > 0 && li.PID != os.Getpid() {
		if err := syscall.Kill(li.PID, 0); errors.Is(err, syscall.ESRCH) {
			return true, "its process is gone"
		}
	}
	return false, ""
}

// lock takes the repository's lock for op and keeps it fresh until the
// returned context's operation calls unlock. The context it returns is
// cancelled if the lock is lost.
func (r *Repo) lock(ctx context.Context, op string) (context.Context, *heldLock, error) {
	host, _ := os.Hostname()
	now := r.opts.Now()
	li := lockInfo{Owner: randomID(), Host: host, PID: os.Getpid(), Op: op, Acquired: now.UTC(), Expires: now.Add(r.opts.LockTTL).UTC()}
	data, _ := json.Marshal(li)
	for attempt := 0; ; attempt++ {
		err := r.t.PutIfAbsent(ctx, lockName, data)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrExists) || attempt >= 3 {
			return nil, nil, fmt.Errorf("backup: taking the lock: %w", err)
		}
		b, gerr := r.t.Get(ctx, lockName, 0, -1)
		if errors.Is(gerr, ErrNotExist) {
			continue // released meanwhile
		}
		if gerr != nil {
			return nil, nil, fmt.Errorf("backup: reading the lock: %w", gerr)
		}
		var old lockInfo
		if err := json.Unmarshal(b, &old); err != nil {
			old = lockInfo{Owner: "unreadable"} // zero Expires: stale
		}
		isStale, why := r.stale(old)
		if !isStale {
			return nil, nil, fmt.Errorf("%w: %s by %s pid %d since %s (valid until %s)", ErrLocked, old.Op, old.Host, old.PID,
				old.Acquired.Format(time.RFC3339), old.Expires.Format(time.RFC3339))
		}
		// Take it over: only the caller that creates the takeover marker
		// for this holder may remove its lock.
		marker := lockName + "-takeover-" + safeOwner(old.Owner)
		if err := r.t.PutIfAbsent(ctx, marker, data); err != nil {
			if errors.Is(err, ErrExists) {
				mb, _ := r.t.Get(ctx, marker, 0, -1)
				var m lockInfo
				if json.Unmarshal(mb, &m) != nil || r.opts.Now().After(m.Expires) {
					r.t.Delete(ctx, marker) // its creator died mid-takeover
					continue
				}
				return nil, nil, fmt.Errorf("%w: another run is taking over the stale lock of %s pid %d", ErrLocked, old.Host, old.PID)
			}
			return nil, nil, fmt.Errorf("backup: taking over the lock: %w", err)
		}
		r.log.Warn("backup: taking over a stale lock", "holder_host", old.Host, "holder_pid", old.PID, "op", old.Op, "why", why)
		if err := r.t.Delete(ctx, lockName); err != nil {
			r.t.Delete(ctx, marker)
			return nil, nil, err
		}
		err = r.t.PutIfAbsent(ctx, lockName, data)
		r.t.Delete(ctx, marker)
		if err != nil {
			return nil, nil, fmt.Errorf("backup: taking the lock: %w", err)
		}
		break
	}
	lctx, cancel := context.WithCancel(ctx)
	h := &heldLock{r: r, info: li, cancel: cancel, done: make(chan struct{})}
	go h.refresh(lctx)
	return lctx, h, nil
}

func safeOwner(s string) string {
	if ValidName(s) != nil {
		return "x"
	}
	return s
}

// refresh rewrites the lock every third of its TTL; if the lock is no
// longer ours it cancels the operation.
func (h *heldLock) refresh(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(h.r.opts.LockTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := h.r.t.Get(ctx, lockName, 0, -1)
		var cur lockInfo
		if err == nil {
			err = json.Unmarshal(b, &cur)
		}
		if err == nil && cur.Owner != h.info.Owner {
			err = fmt.Errorf("%w: taken over by %s pid %d", ErrLocked, cur.Host, cur.PID)
		}
		if err == nil {
			h.info.Expires = h.r.opts.Now().Add(h.r.opts.LockTTL).UTC()
			data, _ := json.Marshal(h.info)
			err = h.r.t.Put(ctx, lockName, data)
		}
		if err != nil && ctx.Err() == nil {
			h.err = fmt.Errorf("backup: lost the lock: %w", err)
			h.r.log.Error("backup: lost the repository's lock; stopping", "err", err)
			h.cancel()
			return
		}
	}
}

// unlock stops refreshing and removes the lock if it is still ours. It
// returns why the lock was lost, if it was.
func (h *heldLock) unlock() error {
	h.cancel()
	<-h.done
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if b, err := h.r.t.Get(ctx, lockName, 0, -1); err == nil {
		var cur lockInfo
		if json.Unmarshal(b, &cur) == nil && cur.Owner == h.info.Owner {
			if err := h.r.t.Delete(ctx, lockName); err != nil {
				h.r.log.Warn("backup: removing the lock", "err", err)
			}
		}
	}
	return h.err
}
