package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
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
// validated (http.ResponseController.Hijack), drops those buffers, writes
// the response head and the chunked body itself straight to the net.Conn,
// and notices the client leaving with a goroutine of its own blocked in a
// one-byte read.
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

// errClientLeft ends the context of a watch whose client closed its
// connection.
var errClientLeft = errors.New("watch: the client closed the connection")

// connOutput is a watch's connection, taken over from net/http.
type connOutput struct {
	conn    net.Conn
	chunked bool
	// ctx is the request's, ended also when the client leaves.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// endBy bounds every write once the request's context has ended
	// (Unix nanoseconds; 0 while it has not).
	endBy     atomic.Int64
	stopGrace func() bool
	failed    bool          // a write failed: the stream is broken
	readDone  chan struct{} // closed when readUntilGone returns
	one       [1]byte       // what readUntilGone reads into
}

// statusSetter is a ResponseWriter that records the status of a response
// its handler wrote itself (instrument's statusRecorder).
type statusSetter interface{ setStatus(code int) }

// takeConn takes the connection of an HTTP/1.x watch over from net/http
// and writes the response head (status 200, w's header); it returns nil,
// having written nothing, where that cannot be done (HTTP/2, a
// ResponseWriter that is not net/http's), and then the caller answers
// through w. If the head cannot be written the watch is over: the result
// has failed and ctx has ended. The caller closes the result.
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
	for u := w; u != nil; {
		if rec, ok := u.(statusSetter); ok {
			rec.setStatus(http.StatusOK)
			break
		}
		unwrapper, ok := u.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		u = unwrapper.Unwrap()
	}

	c := &connOutput{conn: conn, chunked: r.ProtoAtLeast(1, 1), readDone: make(chan struct{})}
	c.ctx, c.cancel = context.WithCancelCause(r.Context())
	// The request's context ends at shutdown (the server's BaseContext) and
	// when the token is revoked (auth.go): what the watch still writes
	// then, it writes in a short time.
	c.stopGrace = context.AfterFunc(r.Context(), func() {
		end := time.Now().Add(watchEndTimeout)
		c.endBy.Store(end.UnixNano())
		_ = c.conn.SetWriteDeadline(end)
	})
	go c.readUntilGone()

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
	if !c.write(*buf) {
		c.cancel(errWriteFailed)
	}
	return c
}

// readUntilGone notices the client leaving: a read from the connection
// ends only when the connection does, or when the client half-closes it,
// which net/http also takes for leaving. The client has nothing to send
// during a watch; what it sends anyway is read and dropped. It returns
// once the connection is closed (connOutput.close), at the latest.
func (c *connOutput) readUntilGone() {
	defer close(c.readDone)
	defer c.cancel(errClientLeft)
	if _, err := c.conn.Read(c.one[:]); err != nil {
		return
	}
	// A client that sends anyway: read on with a buffer of its own, not
	// a system call per byte.
	drop := make([]byte, 512)
	for {
		if _, err := c.conn.Read(drop); err != nil {
			return
		}
	}
}

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
// the client still there, then by closing the connection. It returns once
// readUntilGone has.
func (c *connOutput) close() {
	if c.chunked && !errors.Is(context.Cause(c.ctx), errClientLeft) {
		c.write(lastChunk)
	}
	c.stopGrace()
	_ = c.conn.Close()
	<-c.readDone
	c.cancel(nil)
}

// takenWatches counts the watches running on connections taken over from
// net/http, which http.Server.Shutdown neither waits for nor closes: the
// server waits for them itself (run). It is safe for concurrent use.
type takenWatches struct {
	mu    sync.Mutex
	n     int
	ended chan struct{} // closed when n falls to 0, if someone waits
}

func (t *takenWatches) add() {
	t.mu.Lock()
	t.n++
	t.mu.Unlock()
}

func (t *takenWatches) done() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.n--; t.n == 0 && t.ended != nil {
		close(t.ended)
		t.ended = nil
	}
}

// wait waits until no watch runs on a taken connection, or ctx ends.
func (t *takenWatches) wait(ctx context.Context) error {
	t.mu.Lock()
	if t.n == 0 {
		t.mu.Unlock()
		return nil
	}
	if t.ended == nil {
		t.ended = make(chan struct{})
	}
	ended := t.ended
	t.mu.Unlock()
	select {
	case <-ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// withTakenWatches counts the watches on taken connections in t.
func withTakenWatches(t *takenWatches) handlerOption {
	return func(c *handlerConfig) { c.taken = t }
}
