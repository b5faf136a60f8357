package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// watchBatch is the most records a watch writes per flush: a burst reaches
// the client in few writes, and one slow client holds little memory.
const watchBatch = 256

// watchWriteTimeout bounds the writing of one batch: a client that stops
// reading does not hold its connection and goroutine for ever.
const watchWriteTimeout = 30 * time.Second

// watchBufferSize is how much of a batch a watch gathers before writing:
// a burst costs each watcher at most this much memory.
const watchBufferSize = 32 << 10

// sseRetry is the reconnection delay an EventSource is told to use.
const sseRetry = 3 * time.Second

// watchError is the last line of a watch whose next event was purged
// before the client read it.
type watchError struct {
	Error watchErrorBody `json:"error"`
}

type watchErrorBody struct {
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Earliest *int64 `json:"earliest,omitempty"`
	Latest   *int64 `json:"latest,omitempty"`
}

// streamFormat writes a watch in one of its two formats.
type streamFormat interface {
	contentType() string
	// start is written once, before any event.
	start(b []byte) []byte
	event(b []byte, r record) []byte
	// heartbeat keeps an idle stream alive through proxies; nil if the
	// format has none.
	heartbeat() []byte
	// position tells the client it has seen everything up to offset, so
	// that it resumes after it (SSE's id); filters skip records.
	position(b []byte, offset int64) []byte
	// failure is the last message of a stream that cannot go on.
	failure(b []byte, line []byte) []byte
}

// ndjson is one compact CloudEvent per line.
type ndjson struct{}

func (ndjson) contentType() string                  { return "application/x-ndjson" }
func (ndjson) start(b []byte) []byte                { return b }
func (ndjson) event(b []byte, r record) []byte      { return append(append(b, r.data...), '\n') }
func (ndjson) heartbeat() []byte                    { return nil }
func (ndjson) position(b []byte, _ int64) []byte    { return b }
func (ndjson) failure(b []byte, line []byte) []byte { return append(append(b, line...), '\n') }

// serverSentEvents is the text/event-stream of a browser's EventSource: the
// key as id (sent back as Last-Event-ID on reconnect), the CloudEvent type
// as event, the JSON as data.
type serverSentEvents struct{}

func (serverSentEvents) contentType() string { return "text/event-stream" }

func (serverSentEvents) start(b []byte) []byte {
	b = append(b, "retry: "...)
	b = strconv.AppendInt(b, sseRetry.Milliseconds(), 10)
	return append(b, "\n\n"...)
}

func (serverSentEvents) event(b []byte, r record) []byte {
	b = append(b, "id: "...)
	b = strconv.AppendInt(b, r.offset, 10)
	// A type id is any string a vCenter client chose; a line break in it
	// would forge fields.
	if r.eventType != "" && !strings.ContainsAny(r.eventType, "\r\n") {
		b = append(b, "\nevent: "...)
		b = append(b, r.eventType...)
	}
	b = append(b, "\ndata: "...)
	b = append(b, r.data...)
	return append(b, "\n\n"...)
}

func (serverSentEvents) heartbeat() []byte { return []byte(": ping\n\n") }

// position is an id with no data: EventSource takes it as its last event
// id without dispatching an event.
func (serverSentEvents) position(b []byte, offset int64) []byte {
	b = append(b, "id: "...)
	b = strconv.AppendInt(b, offset, 10)
	return append(b, "\n\n"...)
}

func (serverSentEvents) failure(b []byte, line []byte) []byte {
	b = append(b, "event: error\ndata: "...)
	b = append(b, line...)
	return append(b, "\n\n"...)
}

// watchSettings are a watch's fixed settings.
type watchSettings struct {
	format    streamFormat
	heartbeat time.Duration // interval of the format's heartbeat
	buffers   *watchBuffers
	log       *slog.Logger
	taken     *takenWatches // counts the watches on connections taken from net/http; may be nil
	waker     *watchWaker   // wakes the watches on taken connections; the handler's
	// release, if set, frees the watch's place under the cap (idempotent).
	// A watch on a taken connection calls it before it writes its end, so
	// that a client that saw the end can open another watch at once, as
	// with net/http, which writes the end after the handler returned.
	release func()
}

// watchLimit caps the watches open at once (--max-watches); the watchers
// metric reads how many are open. It is safe for concurrent use.
type watchLimit struct {
	max  int64 // 0: no limit
	open atomic.Int64
}

// acquire takes a watch's place under the cap, unless the cap is reached.
// release gives it back and may be called more than once: a watch on a
// taken connection gives its place back before it writes its end, and
// again when its handler returns.
func (l *watchLimit) acquire() (release func(), ok bool) {
	if n := l.open.Add(1); l.max > 0 && n > l.max {
		l.open.Add(-1)
		return nil, false
	}
	return sync.OnceFunc(func() { l.open.Add(-1) }), true
}

// watchBuffers lends watches what they need only while they write: the
// records of one batch and the bytes of one write. A waiting watch holds
// neither, so that an idle watch costs little more than its connection
// and its goroutine. Its pools are the handler's, shared by its watches.
type watchBuffers struct {
	batches sync.Pool // *[]record of capacity watchBatch
	bytes   sync.Pool // *[]byte
}

func newWatchBuffers() *watchBuffers {
	return &watchBuffers{
		batches: sync.Pool{New: func() any { b := make([]record, 0, watchBatch); return &b }},
		bytes:   sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }},
	}
}

// maxPooledBytes is the largest write buffer kept for reuse: a batch with
// one very large record does not pin its buffer.
const maxPooledBytes = 2 * watchBufferSize

func (p *watchBuffers) batch() *[]record { return p.batches.Get().(*[]record) }

// putBatch returns a batch, first dropping its records: a pooled batch
// must not keep purged records' data alive. Beyond its length a batch is
// already clear.
func (p *watchBuffers) putBatch(b *[]record) {
	clear(*b)
	*b = (*b)[:0]
	p.batches.Put(b)
}

func (p *watchBuffers) buffer() *[]byte { return p.bytes.Get().(*[]byte) }

func (p *watchBuffers) putBuffer(b *[]byte) {
	if cap(*b) > maxPooledBytes {
		return
	}
	*b = (*b)[:0]
	p.bytes.Put(b)
}

// errWriteFailed ends a watch whose client cannot be written to.
var errWriteFailed = errors.New("watch: write to the client failed")

// watchOutput is where a watch writes: the http.ResponseWriter, or the
// connection the watch took over from net/http (watch_conn.go).
type watchOutput interface {
	// begin empties b for the bytes of one write, keeping at its start
	// the room the output's framing needs.
	begin(b []byte) []byte
	// send writes b, begun by begin, so that it reaches the client now,
	// within watchWriteTimeout; it reports whether that worked. A b with
	// nothing after the room is not written.
	send(b []byte) bool
	// wait waits for a record at or above pos, or a reset, sending the
	// format's heartbeats meanwhile; it reports whether the watch goes on
	// (false once ctx ends, the client leaves or a write fails).
	wait(ctx context.Context, j *journal, pos position, s watchSettings) bool
}

// responseOutput writes through net/http: HTTP/2, and any ResponseWriter
// whose connection cannot be taken over.
type responseOutput struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (responseOutput) begin(b []byte) []byte { return b[:0] }

func (o responseOutput) wait(ctx context.Context, j *journal, pos position, s watchSettings) bool {
	return waitOrBeat(ctx, j, pos, o, s)
}

func (o responseOutput) send(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	_ = o.rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	_, err := o.w.Write(b)
	return err == nil && o.rc.Flush() == nil
}

// serveWatch streams the events that match q's filter, from q.offset or
// from the next event to arrive, until the client leaves, the server shuts
// down (the request's context ends) or the timeout passes.
func serveWatch(w http.ResponseWriter, r *http.Request, j *journal, q eventsQuery, s watchSettings) {
	// From now: on an empty journal, from whatever is appended first. The
	// offset asked for is of the timeline held now.
	pos := position{next: -1, timeline: j.currentTimeline()}
	if q.hasOffset {
		// Refuse a purged offset while a status can still say so. A client
		// resuming after its last event id has seen everything before: only
		// a purge of what comes after counts, not a gap in the keys.
		check := j.readFrom
		if q.resume {
			check = j.readNext
		}
		if _, err := check(q.offset, 0, nil); err != nil {
			p := offsetProblem(j, q.offset, err)
			if q.resume {
				// Name what the client sent, not the offset after it.
				p.Detail = fmt.Sprintf("resuming after Last-Event-ID %d: %s", q.offset-1, p.Detail)
			}
			writeProblem(w, p)
			return
		}
		pos.next = q.offset
	} else if _, latest, ok := j.bounds(); ok {
		pos.next = latest + 1
	}

	h := w.Header()
	h.Set("Content-Type", s.format.contentType())
	h.Set("Cache-Control", "no-store")
	// Tell nginx-style proxies not to buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}

	// Over HTTP/1.x the watch takes the connection over from net/http
	// (watch_conn.go): an idle watch then holds little more than its
	// goroutine. The status and headers go out at once either way, so
	// the client knows the watch is established.
	var out watchOutput
	ctx := r.Context()
	if s.taken != nil {
		// Counted before the connection is taken: http.Server.Shutdown
		// waits for the request until then, the server for the count
		// after (run).
		s.taken.add()
		defer s.taken.done()
	}
	if c := takeConn(w, r, s); c != nil {
		defer func() {
			// A panic must not end the body like a whole stream: close
			// without the last chunk, then let answerPanic log it.
			p := recover()
			if p != nil {
				c.failed = true
			}
			if s.release != nil {
				s.release()
			}
			c.close()
			if p != nil {
				panic(p)
			}
		}()
		out = c
	} else {
		rc := http.NewResponseController(w)
		// The deadline of the last write would still hold when the handler
		// returns and the response ends: give the end a fresh one.
		defer func() { _ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout)) }()
		w.WriteHeader(http.StatusOK)
		// The header goes on its own: net/http's path that writes it with
		// the first bytes of a body grows the goroutine's stack to 16 KiB,
		// which the watch would then hold while it waits (8 KiB more per
		// SSE watch).
		if rc.Flush() != nil {
			return
		}
		out = responseOutput{w: w, rc: rc}
	}
	if q.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, q.timeout)
		defer cancel()
	}
	if !writeStart(out, s, pos.next) {
		return
	}

	s.log.Debug("watch started", "remote", r.RemoteAddr, "offset", pos.next)
	for {
		// A watch that always has a backlog never waits: end it here when
		// the timeout passes, the client leaves or the server shuts down.
		if ctx.Err() != nil {
			return
		}
		if pos.next < 0 {
			// From the first record ever appended, so that a purge before
			// this watch read anything is noticed.
			if first, ok := j.firstOffset(); ok {
				pos.next = first
			}
		}
		sent, err := sendBatch(out, j, q.filter, s, &pos)
		switch {
		case errors.Is(err, errPurged), errors.Is(err, errReset):
			line, _ := json.Marshal(watchFailure(offsetProblem(j, pos.next, err)))
			buf := s.buffers.buffer()
			out.send(s.format.failure(out.begin(*buf), line))
			s.buffers.putBuffer(buf)
			why := "client fell behind the journal"
			if errors.Is(err, errReset) {
				why = "vCenter's event keys were reset"
			}
			s.log.Info("watch ended: "+why, "remote", r.RemoteAddr, "offset", pos.next)
			return
		case err != nil:
			return
		case !sent:
			if !out.wait(ctx, j, pos, s) {
				return
			}
		}
	}
}

// writeStart writes what a stream begins with, and the position before
// next if there is one.
func writeStart(out watchOutput, s watchSettings, next int64) bool {
	buf := s.buffers.buffer()
	defer s.buffers.putBuffer(buf)
	*buf = s.format.start(out.begin(*buf))
	if next > 0 {
		*buf = s.format.position(*buf, next-1)
	}
	return out.send(*buf)
}

// sendBatch writes the records from pos on, at most watchBatch of them,
// that match filter, and moves pos past them. It reports whether there
// were any records; the error is errPurged if the next record was purged,
// errReset if a reset ended the watch's timeline, errWriteFailed if the
// client could not be written to. The batch and the bytes are borrowed for
// the call only.
func sendBatch(out watchOutput, j *journal, filter eventFilter, s watchSettings, pos *position) (bool, error) {
	batch := s.buffers.batch()
	defer s.buffers.putBatch(batch)
	var err error
	*batch, err = j.follow(pos, watchBatch, (*batch)[:0])
	if err != nil || len(*batch) == 0 {
		return false, err
	}
	buf := s.buffers.buffer()
	defer s.buffers.putBuffer(buf)
	*buf = out.begin(*buf)
	for _, rec := range *batch {
		if !filter.match(rec) {
			continue
		}
		*buf = s.format.event(*buf, rec)
		if len(*buf) >= watchBufferSize {
			if !out.send(*buf) {
				return true, errWriteFailed
			}
			*buf = out.begin(*buf)
		}
	}
	last := (*batch)[len(*batch)-1]
	if !filter.match(last) {
		*buf = s.format.position(*buf, last.offset)
	}
	pos.next = last.offset + 1
	if !out.send(*buf) {
		return true, errWriteFailed
	}
	return true, nil
}

// waitOrBeat waits for a record at or above pos, or a reset; while none
// comes it sends the format's heartbeat every interval. It reports whether
// the watch goes on.
func waitOrBeat(ctx context.Context, j *journal, pos position, out watchOutput, s watchSettings) bool {
	beat := s.format.heartbeat()
	if beat == nil || s.heartbeat <= 0 {
		return j.wait(ctx, pos) == nil
	}
	for {
		beatCtx, cancel := context.WithTimeout(ctx, s.heartbeat)
		err := j.wait(beatCtx, pos)
		cancel()
		switch {
		case err == nil:
			return true
		case ctx.Err() != nil:
			return false
		case !writeHeartbeat(out, s, beat, pos.next):
			return false
		}
	}
}

// writeHeartbeat writes the format's heartbeat, with the position before
// next if there is one; it reports whether that worked.
func writeHeartbeat(out watchOutput, s watchSettings, beat []byte, next int64) bool {
	buf := s.buffers.buffer()
	defer s.buffers.putBuffer(buf)
	*buf = append(out.begin(*buf), beat...)
	if next > 0 {
		*buf = s.format.position(*buf, next-1)
	}
	return out.send(*buf)
}

// watchFailure is the final message of a watch that cannot go on.
func watchFailure(p *problem) watchError {
	return watchError{Error: watchErrorBody{Status: p.Status, Detail: p.Detail, Earliest: p.Earliest, Latest: p.Latest}}
}
