package smtpout

import (
	"slices"
	"sync"
	"time"
)

// The pool keeps idle sessions per address. Whoever removes a session from
// d.idle, under d.mu, owns it: a delivery that checks it out, the idle timer
// that expires it, or Close.

// getIdle checks out the most recently used idle session for key, or
// returns nil.
func (d *Deliverer) getIdle(key string) *conn {
	var expired []*conn
	defer func() {
		for _, cn := range expired {
			cn.close() // no QUIT: the delivery must not wait for it
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	for list := d.idle[key]; len(list) > 0; list = d.idle[key] {
		cn := list[len(list)-1]
		d.removeLocked(cn)
		if cn.timer.Stop() {
			d.timers.Done()
			return cn
		}
		// Its timer fired and its callback, which will not find it,
		// is waiting for the lock: the session is past IdleTimeout.
		expired = append(expired, cn)
	}
	return nil
}

// putIdle offers cn to the pool and reports whether the pool took it.
func (d *Deliverer) putIdle(cn *conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.opts.MaxIdle < 0 || len(d.idle[cn.key]) >= d.opts.MaxIdle {
		return false
	}
	if d.idle == nil {
		d.idle = make(map[string][]*conn)
	}
	d.idle[cn.key] = append(d.idle[cn.key], cn)
	d.timers.Add(1)
	cn.timer = time.AfterFunc(d.opts.IdleTimeout, func() { d.expire(cn) })
	return true
}

// expire runs when cn has been idle for IdleTimeout.
func (d *Deliverer) expire(cn *conn) {
	defer d.timers.Done()
	d.mu.Lock()
	owned := d.removeLocked(cn)
	d.mu.Unlock()
	if owned {
		d.log.Debug("smtpout: closing idle connection", "host", cn.host)
		d.quit(cn)
	}
}

// removeLocked removes cn from the pool and reports whether it was there.
func (d *Deliverer) removeLocked(cn *conn) bool {
	list := d.idle[cn.key]
	i := slices.Index(list, cn)
	if i < 0 {
		return false
	}
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(d.idle, cn.key)
	} else {
		d.idle[cn.key] = list
	}
	return true
}

// closeIdle empties the pool for good, QUITs its sessions in parallel and
// waits for the idle timers' callbacks.
func (d *Deliverer) closeIdle() {
	d.mu.Lock()
	d.closed = true
	var all []*conn
	for _, list := range d.idle {
		for _, cn := range list {
			if cn.timer.Stop() {
				d.timers.Done()
			}
			all = append(all, cn)
		}
	}
	d.idle = nil
	d.mu.Unlock()

	var wg sync.WaitGroup
	for _, cn := range all {
		wg.Go(func() { d.quit(cn) })
	}
	wg.Wait()
	d.timers.Wait()
}
