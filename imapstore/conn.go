package imapstore

import (
	"net"
	"sync"
	"time"
)

// coalescingConn gathers the small writes go-imap makes (it flushes after
// every response line, one write per message of a FETCH) into fewer
// system calls: bytes wait in a buffer until it holds 64 KiB, the
// connection is read (a client waits for them), or flushDelay has passed
// (updates written while the session idles). A flush that cannot write
// within flushTimeout (a client that stops reading) fails the connection.
type coalescingConn struct {
	net.Conn

	mu    sync.Mutex
	buf   []byte
	timer *time.Timer
	err   error
}

const (
	coalesceSize = 64 << 10
	flushDelay   = 200 * time.Microsecond
	flushTimeout = 5 * time.Minute
)

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c}
	cc.timer = time.AfterFunc(time.Hour, cc.Flush)
	cc.timer.Stop()
	return cc
}

// Write buffers p; it returns the error of an earlier flush.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(c.buf) == 0 {
		c.timer.Reset(flushDelay)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= coalesceSize {
		c.flushLocked()
	}
	return len(p), c.err
}

// Flush writes what is buffered.
func (c *coalescingConn) Flush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.flushLocked()
}

func (c *coalescingConn) flushLocked() {
	if len(c.buf) == 0 || c.err != nil {
		return
	}
	c.timer.Stop()
	c.Conn.SetWriteDeadline(time.Now().Add(flushTimeout))
	_, err := c.Conn.Write(c.buf)
	if err != nil {
		c.err = err
		c.Conn.Close()
	}
	if cap(c.buf) > 4*coalesceSize {
		c.buf = nil
	} else {
		c.buf = c.buf[:0]
	}
}

// stop stops the flush timer: the connection is handed to another
// writer (STARTTLS).
func (c *coalescingConn) stop() {
	c.mu.Lock()
	c.timer.Stop()
	c.mu.Unlock()
}

// Read flushes what the client waits for, then reads.
func (c *coalescingConn) Read(p []byte) (int, error) {
	c.Flush()
	return c.Conn.Read(p)
}

// SetWriteDeadline is go-imap's per-response deadline: the flushes keep
// their own.
func (c *coalescingConn) SetWriteDeadline(time.Time) error { return nil }

// Close flushes and closes the connection.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	c.flushLocked()
	c.timer.Stop()
	c.mu.Unlock()
	return c.Conn.Close()
}

// NetConn returns the wrapped connection.
func (c *coalescingConn) NetConn() net.Conn { return c.Conn }
