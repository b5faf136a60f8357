package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// Delivery settings.
const (
	// sinkBackoffMin and sinkBackoffMax bound the pause before a retry;
	// it doubles from one to the other, with jitter.
	sinkBackoffMin = 100 * time.Millisecond
	sinkBackoffMax = 30 * time.Second
	// sinkCheckpointInterval is the most often the checkpoint is written
	// while delivering: after a crash, at most this much is sent again.
	sinkCheckpointInterval = time.Second
	// sinkShutdownGrace is how long the request in flight at shutdown may
	// still take, within the 5 s the contract allows for the whole exit.
	sinkShutdownGrace = 3500 * time.Millisecond
	// sinkReadBatch is how many records the deliverer takes from the
	// journal at a time.
	sinkReadBatch = 256
	// sinkBodyExcerpt is how much of a refusal's body is logged.
	sinkBodyExcerpt = 512
	// sinkDrainLimit is how much of an answer's body is read to keep its
	// connection for the next request; a longer body costs a new one.
	sinkDrainLimit = 64 << 10
)

// Errors of the deliverer, testable with errors.Is.
var (
	// errSinkRejected is a refusal the sink will not change its mind on
	// (a 4xx other than 408 and 429): the event is skipped.
	errSinkRejected = errors.New("sink rejected the event")
	// errSinkUnavailable is a failure worth retrying: a network error, a
	// timeout, 408, 429 or 5xx.
	errSinkUnavailable = errors.New("sink unavailable")
)

// The states of delivery, as /readyz shows them.
const (
	sinkStateStarting   = "starting"   // not yet running
	sinkStateIdle       = "idle"       // every event held is done; waiting for the next
	sinkStateDelivering = "delivering" // sending an event
	sinkStateRetrying   = "retrying"   // backing off after a failed attempt
	sinkStateStopped    = "stopped"    // shut down
)

// sinkMode is what the deliverer does next with the event at hand.
type sinkMode int

const (
	// modeDeliver sends the event.
	modeDeliver sinkMode = iota
	// modeBackoff waits (the sink failed or asked to wait), then sends the
	// event again.
	modeBackoff
	// modeSkip moves past an event the sink refused for good.
	modeSkip
	// modeAcked moves past an event the sink acknowledged.
	modeAcked
	// modeStop leaves the event for the next start: shutting down.
	modeStop
)

// attemptResult is how one delivery attempt ended.
type attemptResult struct {
	status     int           // HTTP status; 0 if no answer came
	err        error         // nil for a 2xx
	retryAfter time.Duration // the sink's Retry-After, 0 if none
	body       string        // an excerpt of the answer of a refusal
}

// deliverer pushes every event of the journal that its filter selects to a
// CloudEvents sink, one at a time in offset order, at least once: the next
// event goes only after the sink acknowledged the previous one.
type deliverer struct {
	cfg      sinkConfig
	journal  *journal
	status   *sinkStatus
	log      *slog.Logger
	protocol *cehttp.Protocol
	// pace is where the deliverer tells the collector how far it has got,
	// and learns of the collector's first catch-up: then the journal tells
	// whether the checkpoint is this vCenter's.
	pace *sinkPace
	// resume is the checkpoint to check at start (checkResume), zero
	// without one or once checked.
	resume checkpoint
	// backoffMin and backoffMax bound retry pauses; grace is what the
	// request in flight at shutdown may still take.
	backoffMin, backoffMax time.Duration
	grace                  time.Duration

	// pos is where delivery is in the journal: the first offset to
	// deliver (-1 for the first event held) and its timeline. It and the
	// fields below are owned by Run's goroutine.
	pos       position
	done      record    // the last record done with, if doneOK
	doneIn    timeline  // done's timeline
	doneOK    bool      // something was done with since the start
	saved     int64     // the offset of the checkpoint last written
	savedAt   time.Time // when it was written
	savedTime time.Time // the event time it holds
	// untimed: the checkpoint waits for an event with a time (checkpoint).
	untimed bool
}

// newDeliverer returns the deliverer for cfg, which has a sink URL, at
// pace: delivery resumes after the pace's checkpoint, if any.
func newDeliverer(cfg sinkConfig, j *journal, pace *sinkPace, log *slog.Logger) (*deliverer, error) {
	// A transport of its own, so that the connection to the sink is kept
	// alive between events whatever else uses the default one.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 4
	p, err := cehttp.New(cehttp.WithTarget(cfg.url.String()), cehttp.WithClient(http.Client{Transport: transport}))
	if err != nil {
		return nil, &configError{envSink, err.Error()}
	}
	d := &deliverer{
		cfg: cfg, journal: j, log: log.With("sink", redactedURL(cfg.url)), protocol: p,
		pace: pace, status: newSinkStatus(pace), pos: position{next: -1, timeline: j.currentTimeline()}, saved: -1,
		backoffMin: sinkBackoffMin, backoffMax: sinkBackoffMax, grace: sinkShutdownGrace,
	}
	if cp := pace.resume; !cp.Time.IsZero() {
		d.pos = position{next: cp.Offset + 1, timeline: cp.timeline()}
		d.saved, d.savedTime, d.resume = cp.Offset, cp.Time, cp
		d.status.setCheckpointed(cp.Offset)
	}
	return d, nil
}

// run delivers until ctx is done. A request in flight then gets up to
// the shutdown grace to finish before it is cancelled; the checkpoint is
// written after the last acknowledgement.
func (d *deliverer) run(ctx context.Context) {
	requests, cancelRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelRequests()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.NewTimer(d.grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelRequests()
		case <-requests.Done():
		}
	})
	defer stopGrace()

	d.log.Info("delivering events to the sink", "from", d.pos.next, "structured", d.cfg.structured, "filter", !d.cfg.filter.all())
	if !d.resume.Time.IsZero() && !d.checkResume(ctx) {
		d.status.setState(sinkStateStopped)
		return
	}
	batch := make([]record, 0, sinkReadBatch)
	for ctx.Err() == nil {
		if !d.wait(ctx) {
			break
		}
		var err error
		batch, err = d.journal.follow(&d.pos, sinkReadBatch, batch[:0])
		switch {
		case errors.Is(err, errPurged):
			d.lose()
			continue
		case errors.Is(err, errReset):
			d.followReset(err)
			continue
		}
		for _, rec := range batch {
			if d.cfg.filter.match(rec) && !d.deliver(ctx, requests, rec) {
				break
			}
			d.markDone(rec)
			d.checkpoint(false)
		}
	}
	d.checkpoint(true)
	d.status.setState(sinkStateStopped)
	d.log.Info("stopped delivering events to the sink", "next", d.pos.next)
}

// checkResume makes sure that the checkpoint is one of this vCenter's
// offsets. vCenter's keys only grow, so once the collector has caught up,
// a journal whose newest key is below the checkpoint's means that vCenter
// was reinstalled or that the checkpoint is another vCenter's: waiting for
// the key after it would stop delivery for good, so delivery starts from
// the first event held instead, with a warning. It reports false if ctx
// ended first.
func (d *deliverer) checkResume(ctx context.Context) bool {
	defer func() {
		// Checked once: a Run started again (keepRunning) goes on.
		d.resume = checkpoint{}
	}()
	// The checkpoint's own key held (or a later one): the same vCenter.
	// Start at once, before the collector has read the whole backlog,
	// which the journal may not hold all of.
	held := func() bool { return d.journal.holds(d.resume.Offset) }
	if !d.pace.waitCaughtUp(ctx, held) {
		return false
	}
	if held() {
		return true
	}
	// Caught up below the checkpoint, or with nothing since its time: the
	// first event appended tells.
	if d.journal.wait(ctx, position{next: math.MinInt64, timeline: d.pos.timeline}) != nil {
		return false
	}
	if d.journal.currentTimeline().epoch != d.pos.timeline.epoch {
		// The collector found the checkpoint's timeline gone: the reset
		// tells the deliverer where to go on (followReset).
		return true
	}
	if _, latest, _ := d.journal.bounds(); latest < d.resume.Offset {
		d.log.Warn("the sink checkpoint is ahead of vCenter's newest event: vCenter holds its event (same key and time) but no event after it was read; delivering from the first event held",
			"checkpoint", d.resume.Offset, "latest", latest)
		d.pos.next = -1
	}
	return true
}

// followReset goes on after vCenter's keys started over, which err (a
// *resetError) tells: from the first event of the new timeline, never
// skipping one. After a restore the events up to the keys kept were of both
// timelines and were delivered; with another vCenter, from the first event
// held.
func (d *deliverer) followReset(err error) {
	var reset *resetError
	if !errors.As(err, &reset) {
		return
	}
	from := d.pos.next
	d.pos = position{next: reset.resumeFrom, timeline: d.journal.currentTimeline()}
	d.log.Warn("vCenter's event keys were reset: delivering the new timeline's events",
		"reason", reset.reset.reason, "was_next", from, "next", d.pos.next, "epoch", d.pos.timeline.epoch)
}

// wait blocks until the journal holds the next offset; it reports false
// when ctx is done. A checkpoint not yet written is written once it is due,
// so that an idle deliverer keeps it at most a second old.
func (d *deliverer) wait(ctx context.Context) bool {
	for {
		if d.journal.ready(d.pos) {
			return true
		}
		d.status.setState(sinkStateIdle)
		d.log.Debug("sink caught up", "next", d.pos.next)
		waitCtx, cancel := ctx, context.CancelFunc(func() {})
		if d.dirty() {
			waitCtx, cancel = context.WithDeadline(ctx, d.savedAt.Add(sinkCheckpointInterval))
		}
		err := d.journal.wait(waitCtx, d.pos)
		cancel()
		switch {
		case err == nil:
			return true
		case ctx.Err() != nil:
			return false
		default: // the checkpoint is due
			d.checkpoint(true)
		}
	}
}

// lose moves past events purged before they could be delivered: the sink
// is more than the journal behind. It never stops delivery for good.
func (d *deliverer) lose() {
	earliest, latest, ok := d.journal.bounds()
	if !ok || earliest <= d.pos.next {
		return
	}
	lost := earliest - d.pos.next
	d.status.countLost(lost)
	d.log.Error("events purged before delivery to the sink: lost",
		"from", d.pos.next, "to", earliest-1, "lost", lost, "earliest", earliest, "latest", latest)
	d.pos.next = earliest
}

// markDone records that the deliverer is done with rec.
func (d *deliverer) markDone(rec record) {
	d.done, d.doneOK, d.untimed = rec, true, false
	d.doneIn = d.pos.timeline
	d.pos.next = rec.offset + 1
	d.pace.setDone(rec.offset)
}

// dirty reports whether the checkpoint file is behind what is done.
func (d *deliverer) dirty() bool {
	return d.cfg.checkpointFile != "" && d.doneOK && d.done.offset != d.saved && !d.untimed
}

// checkpoint writes the checkpoint if there is one to write and, unless
// now is set, the last was written over a second ago.
func (d *deliverer) checkpoint(now bool) {
	if !d.dirty() || (!now && time.Since(d.savedAt) < sinkCheckpointInterval) {
		return
	}
	// A checkpoint not written now (a failed write, or no time to give
	// it) is tried again a second later, not at once.
	d.savedAt = time.Now()
	cp := checkpoint{Offset: d.done.offset, Time: recordTime(d.done), InstanceUUID: d.doneIn.instanceUUID, Epoch: d.doneIn.epoch}
	if cp.Time.IsZero() {
		// An event whose time vCenter's answer did not let us read. The
		// time of the checkpoint before is no later than its, so reading
		// again from there includes what follows it; with none, the
		// checkpoint waits for an event with a time.
		if d.savedTime.IsZero() {
			d.untimed = true
			return
		}
		cp.Time = d.savedTime
	}
	if err := saveCheckpoint(d.cfg.checkpointFile, cp); err != nil {
		d.status.setError(err)
		d.log.Error("cannot write the sink checkpoint", "error", err)
		return
	}
	d.saved, d.savedTime = cp.Offset, cp.Time
	d.status.setCheckpointed(cp.Offset)
	d.log.Debug("sink checkpoint written", "offset", cp.Offset, "time", cp.Time)
}

// recordTime returns the time attribute of a record.
func recordTime(r record) time.Time {
	if r.created != 0 {
		return time.Unix(0, r.created).UTC()
	}
	var ce struct {
		Time time.Time `json:"time"`
	}
	_ = json.Unmarshal(r.data, &ce)
	return ce.Time
}

// deliver sends rec until the sink acknowledges it or refuses it for good
// (true), or ctx is done first (false). The mode loop below is the one
// place that decides what comes after each attempt.
func (d *deliverer) deliver(ctx, requests context.Context, rec record) (done bool) {
	// One event that cannot be sent, whether its message cannot be made
	// or something panics on the way, is skipped like one the sink
	// refuses: the stream goes on.
	skip := func(err error) bool {
		d.status.countRejected()
		d.status.setError(err)
		d.log.Error("cannot deliver an event: skipped", append(errorAttrs(err), "key", rec.offset)...)
		return true
	}
	defer func() {
		if p := recover(); p != nil {
			done = skip(newPanicError(p))
		}
	}()
	msg, err := d.message(rec)
	if err != nil {
		// Not to happen: the journal holds only what was encoded at ingest.
		return skip(err)
	}
	mode, attempt := modeDeliver, 0
	var res attemptResult
	for {
		switch mode {
		case modeDeliver:
			if ctx.Err() != nil {
				mode = modeStop
				continue
			}
			attempt++
			d.status.setState(sinkStateDelivering)
			res = d.attempt(requests, rec.offset, msg, attempt)
			mode = decide(ctx, res)
		case modeBackoff:
			d.status.countRetry()
			d.status.setState(sinkStateRetrying)
			// A retry may take long: keep the checkpoint current meanwhile.
			d.checkpoint(true)
			// The sink's Retry-After is honoured whole (parseRetryAfter
			// caps it at an hour): asking sooner only earns another refusal.
			wait := max(backoff(attempt, d.backoffMin, d.backoffMax), res.retryAfter)
			d.log.Warn("sink did not take the event; retrying", "key", rec.offset, "attempt", attempt,
				"status", res.status, "error", res.err, "backoff", wait.String())
			if !sleep(ctx, wait) {
				mode = modeStop
				continue
			}
			mode = modeDeliver
		case modeSkip:
			d.status.countRejected()
			d.log.Error("sink rejected the event: skipped", "key", rec.offset, "status", res.status, "body", res.body)
			return true
		case modeAcked:
			d.status.acked(rec.offset)
			return true
		case modeStop:
			return false
		}
	}
}

// decide is what comes after an attempt: acknowledged, retried (network
// errors, timeouts, 408, 429, 5xx), or skipped (any other answer). A
// failure during shutdown stops instead: the event goes after the restart.
func decide(ctx context.Context, res attemptResult) sinkMode {
	switch {
	case res.err == nil:
		return modeAcked
	case ctx.Err() != nil:
		return modeStop
	case errors.Is(res.err, errSinkRejected):
		return modeSkip
	}
	return modeBackoff
}

// sinkMessage is an event ready to send, made once however many attempts
// it takes.
type sinkMessage struct {
	event      *cloudevents.Event // binary mode
	structured []byte             // structured mode: the whole event
}

// message prepares rec for the sink: the journal's event with the
// overrides' extensions. Structured mode without overrides sends the
// record's bytes as they are.
func (d *deliverer) message(rec record) (sinkMessage, error) {
	if d.cfg.structured && len(d.cfg.extensions) == 0 {
		return sinkMessage{structured: rec.data}, nil
	}
	ev := cloudevents.New()
	if err := json.Unmarshal(rec.data, &ev); err != nil {
		return sinkMessage{}, fmt.Errorf("decode event %d: %w", rec.offset, err)
	}
	for name, value := range d.cfg.extensions {
		ev.SetExtension(name, value)
	}
	if !d.cfg.structured {
		return sinkMessage{event: &ev}, nil
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return sinkMessage{}, fmt.Errorf("encode event %d: %w", rec.offset, err)
	}
	return sinkMessage{structured: b}, nil
}

// attempt sends msg once with the SDK's HTTP protocol and reads the answer.
func (d *deliverer) attempt(requests context.Context, key int64, msg sinkMessage, attempt int) attemptResult {
	ctx, cancel := context.WithTimeout(requests, d.cfg.timeout)
	defer cancel()
	var m binding.Message
	if msg.structured != nil {
		m = rawStructuredMessage(msg.structured)
	} else {
		m = binding.ToMessage(msg.event)
		ctx = binding.WithForceBinary(ctx)
	}
	start := time.Now()
	answer, err := d.protocol.Request(ctx, m)
	elapsed := time.Since(start)
	d.status.observe(elapsed)

	res := attemptResult{}
	var httpResult *cehttp.Result
	switch {
	case protocol.ResultAs(err, &httpResult):
		res.status = httpResult.StatusCode
	case err != nil:
		// A network error quotes the URL, query and all: what it holds
		// (a key) must not reach /readyz, which needs no token, nor the log.
		res.err = fmt.Errorf("%w: %w", errSinkUnavailable, redactURLError(err, d.cfg.url))
	}
	if answer != nil {
		if hm, ok := answer.(*cehttp.Message); ok && res.status != 0 {
			res.retryAfter = parseRetryAfter(hm.Header.Get("Retry-After"), time.Now())
			res.body = drainAnswer(hm.BodyReader, res.status)
		}
		_ = answer.Finish(nil)
	}
	switch s := res.status; {
	case s == 0:
	case s >= 200 && s < 300:
	case s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500:
		res.err = fmt.Errorf("%w: status %d", errSinkUnavailable, s)
	default:
		res.err = fmt.Errorf("%w: status %d", errSinkRejected, s)
	}
	if res.err != nil {
		d.status.setError(fmt.Errorf("event %d: %w", key, res.err))
	}
	d.log.Debug("sink attempt", "key", key, "attempt", attempt, "status", res.status,
		"duration", elapsed.String(), "error", res.err)
	return res
}

// drainAnswer reads the answer's body, so that its connection is kept for
// the next request, and returns an excerpt of it unless it is a 2xx.
func drainAnswer(body io.ReadCloser, status int) string {
	if body == nil {
		return ""
	}
	excerpt := make([]byte, sinkBodyExcerpt)
	n, _ := io.ReadFull(body, excerpt)
	_, _ = io.Copy(io.Discard, io.LimitReader(body, sinkDrainLimit))
	if status >= 200 && status < 300 {
		return ""
	}
	return string(bytes.ToValidUTF8(excerpt[:n], []byte("?")))
}

// parseRetryAfter reads a Retry-After header: seconds, or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, int64(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), maxRetryAfter)
	}
	return 0
}

// maxRetryAfter caps a sink's Retry-After: a date days ahead (a skewed
// clock) must not stop delivery for days.
const maxRetryAfter = time.Hour

// rawStructuredMessage is an event already encoded as structured JSON,
// written to the request as it is: no decoding or encoding per attempt.
type rawStructuredMessage []byte

func (m rawStructuredMessage) ReadEncoding() binding.Encoding { return binding.EncodingStructured }

func (m rawStructuredMessage) ReadStructured(ctx context.Context, w binding.StructuredWriter) error {
	return w.SetStructuredEvent(ctx, format.JSON, bytes.NewReader(m))
}

func (m rawStructuredMessage) ReadBinary(context.Context, binding.BinaryWriter) error {
	return binding.ErrNotBinary
}

func (m rawStructuredMessage) Finish(error) error { return nil }

// sinkStatus is what the deliverer reports about itself to /readyz and
// /metrics. Its methods are safe for concurrent use.
type sinkStatus struct {
	delivered, retries, rejected, lost atomic.Int64
	// lastDelivered is the offset of the last event acknowledged, -1 before.
	lastDelivered atomic.Int64
	// checkpointed is the offset of the checkpoint last written, -1 before.
	checkpointed atomic.Int64
	// changes is notified whenever any of the above or the state changes.
	changes notifier
	// pace tells the last offset done with (the lag is measured from it).
	pace      *sinkPace
	mu        sync.Mutex
	state     string
	lastError string
	errorAt   time.Time
	durations histogram
}

// newSinkStatus returns the status of a deliverer at pace that has not
// started yet.
func newSinkStatus(pace *sinkPace) *sinkStatus {
	s := &sinkStatus{pace: pace, state: sinkStateStarting, durations: newHistogram(sinkDurationBuckets)}
	s.lastDelivered.Store(-1)
	s.checkpointed.Store(-1)
	return s
}

// countRetry counts an attempt that failed and is tried again.
func (s *sinkStatus) countRetry() { s.count(&s.retries, 1) }

// countRejected counts an event the sink refused for good, or that could
// not be sent: skipped.
func (s *sinkStatus) countRejected() { s.count(&s.rejected, 1) }

// countLost counts n events purged before they could be delivered.
func (s *sinkStatus) countLost(n int64) { s.count(&s.lost, n) }

// count adds n to one of the status's counters.
func (s *sinkStatus) count(counter *atomic.Int64, n int64) {
	counter.Add(n)
	s.changes.notify()
}

// acked records that the sink acknowledged offset.
func (s *sinkStatus) acked(offset int64) {
	s.delivered.Add(1)
	s.lastDelivered.Store(offset)
	s.changes.notify()
}

// setCheckpointed records that the checkpoint file now holds offset.
func (s *sinkStatus) setCheckpointed(offset int64) {
	s.checkpointed.Store(offset)
	s.changes.notify()
}

// setState records what the deliverer does now, as /readyz shows it.
func (s *sinkStatus) setState(state string) {
	s.mu.Lock()
	changed := s.state != state
	s.state = state
	s.mu.Unlock()
	if changed {
		s.changes.notify()
	}
}

// setError records the last failure, as /readyz shows it.
func (s *sinkStatus) setError(err error) {
	s.mu.Lock()
	s.lastError, s.errorAt = err.Error(), time.Now().UTC()
	s.mu.Unlock()
	s.changes.notify()
}

// observe records the duration of one delivery request.
func (s *sinkStatus) observe(d time.Duration) {
	s.mu.Lock()
	s.durations.observe(d.Seconds())
	s.mu.Unlock()
	s.changes.notify()
}

// requestDurations is a copy of the histogram of delivery requests made,
// answered or not.
func (s *sinkStatus) requestDurations() histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.durations.clone()
}

// sinkReady is the sink's part of the /readyz body.
type sinkReady struct {
	State string `json:"state"`
	// LastDeliveredOffset is the last offset acknowledged; null before.
	LastDeliveredOffset *int64     `json:"lastDeliveredOffset"`
	LastError           *string    `json:"lastError"`
	LastErrorTime       *time.Time `json:"lastErrorTime"`
}

// ready returns the sink's part of the /readyz body.
func (s *sinkStatus) ready() *sinkReady {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &sinkReady{State: s.state}
	if n := s.lastDelivered.Load(); n >= 0 {
		r.LastDeliveredOffset = &n
	}
	if s.lastError != "" {
		msg, at := s.lastError, s.errorAt
		r.LastError, r.LastErrorTime = &msg, &at
	}
	return r
}

// writeMetrics writes the sink's metrics in the text exposition format.
func (s *sinkStatus) writeMetrics(w io.Writer, j *journal) {
	metric := func(name, kind, help string, value float64) { writeMetric(w, name, kind, help, value) }
	metric("sink_delivered_total", "counter", "Events the sink acknowledged.", float64(s.delivered.Load()))
	metric("sink_retries_total", "counter", "Delivery attempts that failed and were retried (network errors, timeouts, 408, 429, 5xx).", float64(s.retries.Load()))
	metric("sink_rejected_total", "counter", "Events the sink refused for good (4xx other than 408 and 429) and that were skipped.", float64(s.rejected.Load()))
	metric("sink_lost_total", "counter", "Offsets purged from the journal before they could be delivered.", float64(s.lost.Load()))
	if n := s.lastDelivered.Load(); n >= 0 {
		metric("sink_last_delivered_offset", "gauge", "Offset of the last event the sink acknowledged.", float64(n))
	}
	if n := s.checkpointed.Load(); n >= 0 {
		metric("sink_checkpoint_offset", "gauge", "Offset the checkpoint file holds, where delivery resumes after a restart.", float64(n))
	}
	if _, latest, ok := j.bounds(); ok {
		// Measured from the last offset done with, so that events the
		// filter leaves out do not count as lag.
		done := s.pace.doneWith()
		lag := latest - done
		if done < 0 {
			earliest, _, _ := j.bounds()
			lag = latest - earliest + 1
		}
		metric("sink_lag_events", "gauge", "Latest offset held minus the last offset delivered (or skipped).", float64(max(lag, 0)))
	}
	s.requestDurations().write(w, metricPrefix+"sink_request_duration_seconds", "Duration of delivery requests to the sink, answered or not.")
}

// sinkDurationBuckets are the upper bounds of the request duration
// histogram, in seconds.
var sinkDurationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// histogram is a Prometheus histogram; its owner serializes access.
type histogram struct {
	bounds []float64
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

func newHistogram(bounds []float64) histogram {
	return histogram{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i]++
	h.sum += v
	h.count++
}

func (h histogram) clone() histogram {
	h.counts = append([]uint64(nil), h.counts...)
	return h
}

func (h histogram) write(w io.Writer, name, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	var cumulative uint64
	for i, b := range h.bounds {
		cumulative += h.counts[i]
		fmt.Fprintf(w, "%s_bucket{le=\"%s\"} %d\n", name, formatValue(b), cumulative)
	}
	fmt.Fprintf(w, "%s_bucket{le=\"+Inf\"} %d\n%s_sum %s\n%s_count %d\n", name, h.count, name, formatValue(h.sum), name, h.count)
}
