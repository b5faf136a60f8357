package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Watches on connections taken over from net/http.
//
// While a watch waits, net/http holds per connection a goroutine that reads
// ahead to notice a client that leaves, a 4 KiB read buffer, a 4 KiB write
// buffer and a 2 KiB chunking buffer, none of which a watch needs: 24 KiB
// of RSS per idle connection in all, measured (BENCHMARKS.md). Over
// HTTP/1.x a watch therefore takes its connection over once its request is
// validated (http.ResponseController.Hijack), drops those buffers, and
// writes the response head and the chunked body itself, straight to the
// net.Conn.
//
// While it waits, the watch's own goroutine (the handler's) blocks in a
// one-byte read of the connection: that read ends when the client leaves,
// and the watch needs no second goroutine to notice it. The read's
// deadline is the next heartbeat; whatever else must wake the watch sets
// the deadline to the past: the end of its context (context.AfterFunc) and
// the journal's appends (watchWaker, one goroutine for all the watches).
//
// The body stays chunked, as net/http sends it: a client tells a stream
// that ended (the last chunk: timeoutSeconds, shutdown, a revoked token)
// from a connection that broke, and proxies see what they saw before. The
// response says Connection: close: the connection ends with the watch.
// HTTP/1.0 has no chunks; its body ends with the connection, as net/http's
// does. HTTP/2 multiplexes streams on one connection, which cannot be
// taken over: it keeps net/http's path (responseOutput).

// watchEndTimeout is how long a watch that the server ends (shutdown, a
// revoked token) still has to write its last bytes: well within the
// shutdown's own bound.
const watchEndTimeout = time.Second

// chunkRoom is the room a chunked write keeps before its data for the
// chunk's size line: 16 hex digits and CRLF.
const chunkRoom = 16 + 2

// lastChunk ends a chunked body with no trailer.
var lastChunk = []byte("0\r\n\r\n")

// connOutput is a watch's connection, taken over from net/http. Only the
// watch's goroutine uses it, but for wake and the end of the request's
// context, which only set deadlines.
type connOutput struct {
	conn    net.Conn
	chunked bool
	// endBy bounds every write once the request's context has ended
	// (Unix nanoseconds; 0 while it has not).
	endBy     atomic.Int64
	stopGrace func() bool
	stopWake  func() bool // of the wake at the end of the watch's context
	failed    bool        // a write failed: the stream is broken
	gone      bool        // the client closed the connection
	one       [1]byte     // what a waiting watch reads into
	drop      []byte      // what it reads into once the client sent something
}

// longAgo is a deadline in the past: it ends a blocked read at once.
var longAgo = time.Unix(1, 0)

// takeConn takes the connection of an HTTP/1.x watch over from net/http
// and writes the response head (status 200, w's header) itself: letting
// net/http write it (WriteHeader, then Hijack, which flushes it) grows the
// goroutine's stack to 16 KiB, which a waiting watch then keeps (measured:
// 15.4 against 19.8 KiB per idle watch); it returns nil,
// having written nothing, where that cannot be done (HTTP/2, a
// ResponseWriter that is not net/http's), and then the caller answers
// through w. If the head cannot be written the result has failed: its
// sends and waits fail at once. The caller closes the result.
func takeConn(w http.ResponseWriter, r *http.Request, s watchSettings) *connOutput {
	if r.ProtoMajor != 1 {
		return nil
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil
	}
	// net/http neither uses nor pools a taken connection's buffers again,
	// but its response still refers to them until the handler returns:
	// empty them, for the watch's whole life. What the client sent after
	// its request (a pipelined request, the only thing it could send) is
	// dropped with them: Connection: close tells it to send that again
	// (RFC 9112, section 9.3.2).
	*rw.Reader = bufio.Reader{}
	*rw.Writer = bufio.Writer{}

	c := &connOutput{conn: conn, chunked: r.ProtoAtLeast(1, 1)}
	// The request's context ends at shutdown (the server's BaseContext) and
	// when the token is revoked (auth.go): what the watch still writes
	// then, it writes in a short time.
	c.stopGrace = context.AfterFunc(r.Context(), func() {
		end := time.Now().Add(watchEndTimeout)
		c.endBy.Store(end.UnixNano())
		_ = c.conn.SetWriteDeadline(end)
	})

	h := w.Header()
	h.Set("Connection", "close")
	if c.chunked {
		h.Set("Transfer-Encoding", "chunked")
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	buf := s.buffers.buffer()
	defer s.buffers.putBuffer(buf)
	head := bytes.NewBuffer(append((*buf)[:0], "HTTP/1.1 200 OK\r\n"...))
	_ = h.Write(head) // sorted, invalid names dropped, line breaks in values blanked: as net/http does
	head.WriteString("\r\n")
	*buf = head.Bytes()
	c.write(*buf)
	return c
}

// wait blocks in a read of the connection until the journal holds a
// record at or above pos or a reset (watchWaker), ctx ends (context.AfterFunc), the
// client leaves (the read fails) or, for a format with heartbeats, the
// next one is due (the read's deadline). Each of them comes after what it
// tells is visible, and each but the client's departure only sets the
// read's deadline to the past: the deadline is set first, the conditions
// are looked at next, then the read. A wake that comes before the deadline
// is set comes after its condition holds, which the look then sees.
func (c *connOutput) wait(ctx context.Context, j *journal, pos position, s watchSettings) bool {
	if c.failed {
		return false
	}
	if c.stopWake == nil {
		// Once per watch: ctx is the same at every wait.
		c.stopWake = context.AfterFunc(ctx, c.wake)
	}
	beat := s.format.heartbeat()
	var due time.Time // zero: no heartbeat
	nextBeat := func() time.Time {
		// Rounded down to a sixteenth of the interval (under a second for
		// 15 s), so that the heartbeats of many watches come due together
		// and share the process's wake-up: each of its own would cost
		// about as much as the heartbeat itself.
		return time.Now().Add(s.heartbeat).Truncate(s.heartbeat / 16)
	}
	if beat != nil && s.heartbeat > 0 {
		due = nextBeat()
	}
	for {
		_ = c.conn.SetReadDeadline(due)
		s.waker.add(c, pos)
		if ctx.Err() != nil {
			s.waker.remove(c)
			return false
		}
		if j.ready(pos) {
			s.waker.remove(c)
			return true
		}
		buf := c.one[:]
		if c.drop != nil {
			buf = c.drop
		}
		_, err := c.conn.Read(buf)
		s.waker.remove(c)
		switch {
		case err == nil:
			// The client has nothing to send during a watch; what it
			// sends anyway is dropped, read with a buffer of its own
			// rather than a system call per byte.
			if c.drop == nil {
				c.drop = make([]byte, 512)
			}
		case !errors.Is(err, os.ErrDeadlineExceeded):
			// The client closed the connection, or half-closed it, which
			// net/http also takes for leaving.
			c.gone = true
			return false
		}
		if ctx.Err() != nil {
			return false
		}
		if j.ready(pos) {
			return true
		}
		if !due.IsZero() && !time.Now().Before(due) {
			if !writeHeartbeat(c, s, beat, pos.next) {
				return false
			}
			due = nextBeat()
		}
	}
}

// wake ends the watch's read, if it is in one, and its next one.
func (c *connOutput) wake() { _ = c.conn.SetReadDeadline(longAgo) }

func (c *connOutput) begin(b []byte) []byte {
	if c.chunked {
		return b[:chunkRoom]
	}
	return b[:0]
}

// send frames b as a chunk (its size line goes into the room at its start)
// and writes it.
func (c *connOutput) send(b []byte) bool {
	if !c.chunked {
		return len(b) == 0 || c.write(b)
	}
	n := len(b) - chunkRoom
	if n <= 0 {
		return true // an empty chunk would end the body
	}
	var size [chunkRoom]byte
	line := append(strconv.AppendInt(size[:0], int64(n), 16), "\r\n"...)
	start := chunkRoom - len(line)
	copy(b[start:], line)
	return c.write(append(b, "\r\n"...)[start:])
}

// write writes b within watchWriteTimeout, or by endBy once the request's
// context has ended; between writes the connection has no deadline, whose
// timer would otherwise fire for nothing.
func (c *connOutput) write(b []byte) bool {
	if c.failed {
		return false
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	// Read after setting: either this sees endBy, or the function that
	// stores it sets its deadline after this one.
	if end := c.endBy.Load(); end != 0 {
		_ = c.conn.SetWriteDeadline(time.Unix(0, end))
	}
	_, err := c.conn.Write(b)
	if err != nil {
		c.failed = true
		return false
	}
	if c.endBy.Load() == 0 {
		_ = c.conn.SetWriteDeadline(time.Time{})
	}
	return true
}

// close ends the response: with the last chunk if the stream is whole and
// the client still there, then by closing the connection.
func (c *connOutput) close() {
	if c.chunked && !c.gone && !c.failed {
		c.write(lastChunk)
	}
	c.stopGrace()
	if c.stopWake != nil {
		c.stopWake()
	}
	conn := c.conn
	if tc, ok := conn.(*tls.Conn); ok && (c.gone || c.failed) {
		// No close_notify to a client that left or stopped reading: its
		// write would wait out a deadline of tls.Conn's own (5 s).
		conn = tc.NetConn()
	}
	_ = conn.Close()
}

// watchWaker wakes the watches that wait on taken connections (each
// blocked in a read, connOutput.wait) when the journal holds what they
// wait for: one goroutine for all of them, which runs while any waits. It
// is safe for concurrent use.
type watchWaker struct {
	j   *journal
	log *slog.Logger

	mu      sync.Mutex
	waiting map[*connOutput]position // where each waits
	running bool                     // run is running
	emptied notifier                 // notified when waiting empties
}

func newWatchWaker(j *journal, log *slog.Logger) *watchWaker {
	return &watchWaker{j: j, log: log, waiting: make(map[*connOutput]position)}
}

// add has c woken once the journal holds a record at or above pos, or
// starts a new timeline.
func (w *watchWaker) add(c *connOutput, pos position) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waiting[c] = pos
	if !w.running {
		w.running = true
		go keepRunning(context.Background(), w.log, "watch waker", w.run)
	}
}

func (w *watchWaker) remove(c *connOutput) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.waiting, c)
	if len(w.waiting) == 0 {
		w.emptied.notify()
	}
}

// run wakes, at every append and reset, the watches whose record is
// there or whose timeline ended, until none waits.
func (w *watchWaker) run(context.Context) {
	for {
		// Taken before the look, so that what changes after it ends the
		// wait: any append (one below low too, which the next round sees)
		// or the last watch leaving.
		appended, emptied := w.j.appended(), w.emptied.changed()
		low, done := w.wakeReady()
		if done {
			return
		}
		if low == math.MaxInt64 || w.j.holds(low) {
			continue
		}
		select {
		case <-appended:
		case <-emptied:
		}
	}
}

// wakeReady wakes the watches whose record is there or whose timeline
// ended, and returns the
// lowest offset the others wait for (MaxInt64 if none); done when none
// waits, and the waker then stops.
func (w *watchWaker) wakeReady() (low int64, done bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.waiting) == 0 {
		w.running = false
		return 0, true
	}
	_, latest, ok := w.j.bounds()
	epoch := w.j.currentTimeline().epoch
	low = math.MaxInt64
	for c, pos := range w.waiting {
		if (ok && pos.next <= latest) || pos.timeline.epoch != epoch {
			c.wake()
			delete(w.waiting, c)
		} else {
			low = min(low, pos.next)
		}
	}
	return low, false
}

// takenWatches counts the watches that run, or may run, on connections
// taken over from net/http, which http.Server.Shutdown neither waits for
// nor closes: the server waits for them itself (run). A watch counts from
// just before it takes its connection (so that Shutdown waits for it until
// then) to its end; one served by net/http counts too, at no harm. It is
// safe for concurrent use.
type takenWatches struct {
	mu      sync.Mutex
	n       int
	changes notifier
}

func (t *takenWatches) add() { t.change(1) }

func (t *takenWatches) done() { t.change(-1) }

func (t *takenWatches) change(by int) {
	t.mu.Lock()
	t.n += by
	t.mu.Unlock()
	t.changes.notify()
}

// wait waits until no watch runs on a taken connection, or ctx ends.
func (t *takenWatches) wait(ctx context.Context) error {
	none := func() bool {
		t.mu.Lock()
		defer t.mu.Unlock()
		return t.n == 0
	}
	if !t.changes.waitFor(ctx, none) {
		return ctx.Err()
	}
	return nil
}
