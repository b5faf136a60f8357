package main

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/vmware/govmomi/vim25/types"
)

// resumeMargin is how far before the last event appended a new session
// begins reading.
const resumeMargin = time.Minute

// collectorOptions are the collector's timings, fixed at start.
type collectorOptions struct {
	sessionOptions
	// push makes the collector wait for vCenter to announce new events
	// (WaitForUpdatesEx on the history collector's latestPage). Without
	// it, or when those waits keep failing, the collector polls.
	push bool
	// backoffMin and backoffMax bound the pause before a new session.
	backoffMin, backoffMax time.Duration
}

// defaultCollectorOptions are the production timings.
func defaultCollectorOptions() collectorOptions {
	return collectorOptions{
		sessionOptions: sessionOptions{
			pollInterval:   time.Second,
			safetyInterval: 10 * time.Second,
			keepAlive:      30 * time.Second,
			watchdog:       2 * time.Minute,
		},
		push:       true,
		backoffMin: 500 * time.Millisecond,
		backoffMax: 30 * time.Second,
	}
}

// stuckAfter is how long the collector's loop may go without turning
// before the process counts as wedged: longer than anything the loop
// waits for (a stalled call until the watchdog ends it, then the cleanup
// and the longest backoff).
func (o collectorOptions) stuckAfter() time.Duration {
	return 2*(o.watchdog+o.safetyInterval) + cleanupTimeout + o.backoffMax
}

// collector reads events from vCenter and appends them to the journal,
// exactly once each, across every vCenter fault: it reconnects with
// backoff and resumes where it left off.
type collector struct {
	vc          vcLogin
	streamBegin time.Duration
	opts        collectorOptions

	journal   *journal
	converter *eventConverter
	status    *collectorStatus
	log       *slog.Logger

	// Owned by Run's goroutine.
	begin        time.Time       // where the first session began, on vCenter's clock
	lastCreated  time.Time       // CreatedTime of the newest event appended
	skew         time.Duration   // vCenter's clock minus ours, as the session last read it
	unknownTypes map[string]bool // event type names govmomi does not know, seen so far
	// readSingly is how many events to read one page of one at a time: after
	// a page whose decoding panicked, so that the one event at fault is
	// singled out and the others are not lost with it.
	readSingly int

	// pace is the sink's, nil without a sink: the first catch-up reads no
	// faster than the sink leaves room for (sinkRoom), from the sink's
	// checkpoint on. sinkGaveUp: the sink took nothing for the pace's
	// patience, so the catch-up no longer waits for it.
	pace       *sinkPace
	sinkGaveUp bool
	// backlogUntil is vCenter's time when the first session began: the
	// events created before it are the backlog that sinkRoom paces.
	backlogUntil time.Time
}

// newCollector returns a collector for cfg's vCenter that appends to j and
// reports to status, at the pace of a sink (nil: none).
func newCollector(cfg config, opts collectorOptions, j *journal, status *collectorStatus, pace *sinkPace, log *slog.Logger) *collector {
	return &collector{
		vc:          newVCLogin(cfg),
		streamBegin: cfg.streamBegin,
		opts:        opts,
		journal:     j,
		converter:   &eventConverter{source: cfg.vcenterURL.String(), maxRecordSize: cfg.maxRecordSize},
		status:      status,
		log:         log,
		pace:        pace,

		unknownTypes: make(map[string]bool),
	}
}

// run follows vCenter's event stream until ctx is done. A session that
// fails (vCenter unreachable, the connection dropped, the session
// terminated, a stall) is opened again after a capped, jittered backoff and
// resumes after the last event appended, so nothing is lost or repeated.
func (c *collector) run(ctx context.Context) {
	attempt := 0
	for {
		progressed, err := c.safeSession(ctx)
		c.status.setConnected(false)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			attempt = 0
		}
		attempt++
		c.status.reconnecting()
		delay := backoff(attempt, c.opts.backoffMin, c.opts.backoffMax)
		if certificateUntrusted(err) {
			c.log.Error("vCenter's certificate is not trusted; reconnecting. Fix one of three ways: put the CA that signed it (PEM) in the file ca.crt in "+envSecretPath+
				", set "+envVCenterThumbprint+" to the certificate's fingerprint, or set "+envVCenterInsecure+"=true to skip verification",
				append(errorAttrs(err), "sha256_fingerprint", presentedFingerprint(ctx, err, c.vc.url.Host), "attempt", attempt, "backoff", delay.String())...)
		} else {
			c.log.Warn("vCenter session failed; reconnecting", append(errorAttrs(err), "attempt", attempt, "backoff", delay.String())...)
		}
		c.status.beat()
		if !sleep(ctx, delay) {
			return
		}
	}
}

// safeSession is session, with a panic (a bug) ending the session with an
// error, so that the collector opens a new one rather than the process
// ending.
func (c *collector) safeSession(ctx context.Context) (progressed bool, err error) {
	defer recoverAsError(&err)
	return c.session(ctx)
}

// session runs one vCenter session: log in, read the backlog from where
// the stream left off, then follow vCenter's announcements (or poll) and
// read what they announce, until ctx is done or a call fails (the error;
// Run then reconnects). progressed tells whether any read succeeded.
func (c *collector) session(parent context.Context) (progressed bool, err error) {
	s, ctx, err := c.vc.open(parent, c.opts.sessionOptions, c.log)
	if err != nil {
		return false, err
	}
	defer s.close(ctx)
	about := s.client.ServiceContent.About
	c.status.loggedIn(vcenterIdentity{InstanceUUID: about.InstanceUuid, APIVersion: about.ApiVersion})
	now, err := s.now(ctx)
	if err != nil {
		return false, err
	}
	if c.backlogUntil.IsZero() {
		c.backlogUntil = now
	}
	begin := c.beginTime(now)
	live, err := s.openHistory(ctx, begin, time.Time{})
	if err != nil {
		return false, err
	}
	c.status.setConnected(true)
	if err := s.follow(ctx, live, c.opts.push); err != nil {
		return false, err
	}
	c.log.Info("collecting vCenter events", "begin", begin, "push", s.mode == modePush)

	// announced is the newest key the last announcement carried: a read
	// that reaches it need not be confirmed by an empty one. -1: read
	// until a read finds nothing, as after a wait that ended without news
	// (the safety interval, a poll), in case an announcement was missed.
	announced := int64(-1)
	for {
		c.status.beat()
		n, err := c.drain(ctx, s, live, announced)
		if err != nil {
			return progressed, failed(ctx, "read events", err)
		}
		if next := nextMode(s.mode, n, s.waitFailures); next != s.mode {
			c.log.Debug("collector mode changes", "from", s.mode.String(), "to", next.String(), "events", n)
			if next == modePoll {
				c.log.Warn("falling back to polling vCenter", "interval", c.opts.pollInterval.String())
			}
			if err := s.setMode(ctx, next); err != nil {
				return progressed, err
			}
		}
		progressed = true
		if c.status.setReady() {
			records, _ := c.journal.stats()
			c.log.Info("caught up with vCenter", "events", records)
		}
		if err := s.keepAlive(ctx); err != nil {
			return progressed, err
		}
		if announced, err = s.waitForEvents(ctx); err != nil {
			return progressed, err
		}
	}
}

// beginTime returns where a new history collector begins, given vCenter's
// current time: for the first session now minus streamBegin (vCenter's
// clock, not ours: they may differ by minutes), or earlier where the sink's
// checkpoint needs it; later resumeMargin before the creation time of the
// last event appended, so that an event logged late, with an older time
// but a higher key, is not lost. The keys already appended are skipped.
func (c *collector) beginTime(now time.Time) time.Time {
	if c.begin.IsZero() {
		c.begin = now.Add(-c.streamBegin)
		if c.pace != nil {
			c.begin = c.pace.beginBy(c.begin)
		}
	}
	if c.lastCreated.IsZero() {
		return c.begin
	}
	resume := c.lastCreated.Add(-resumeMargin)
	if resume.Before(c.begin) {
		resume = c.begin
	}
	return resume
}

// drain reads live's pages until vCenter has no more events for it, and
// returns how many events it appended; each page read puts the session's
// watchdog off (a long backlog is progress, not a stall). Reading whole
// pages back to back, rather than one page per interval, keeps up with any
// burst vCenter can produce. With an announced key (>= 0) it stops once it
// has read that event, and reads nothing if the journal holds it already:
// every later event has an announcement of its own. On the first catch-up
// with a sink, pages are no larger than the sink leaves room for
// (sinkRoom).
func (c *collector) drain(ctx context.Context, s *vcSession, live *eventHistory, announced int64) (int, error) {
	if _, latest, ok := c.journal.bounds(); announced >= 0 && ok && latest >= announced {
		return 0, nil
	}
	// The lag of what it appends is measured on vCenter's clock.
	c.skew = s.skew
	n := 0
	for {
		size := readPageSize
		if c.readSingly > 0 {
			size = 1
		}
		size, err := c.sinkRoom(ctx, s, size)
		if err != nil {
			return n, err
		}
		events, err := live.readNext(ctx, size)
		switch {
		case errors.Is(err, errPanic) && size > 1:
			// vCenter has moved the collector past the page, which is lost
			// to this session. The next one reads it again, one event at a
			// time, so that only the event at fault is lost.
			c.readSingly = readPageSize
			return n, err
		case errors.Is(err, errPanic):
			c.readSingly--
			c.status.countUnreadable()
			c.log.Error("event could not be decoded, so its key is unknown: not appended", append(errorAttrs(err), "after", c.lastKey())...)
			continue
		case err != nil:
			return n, err
		}
		if len(events) == 0 {
			c.readSingly = 0
			return n, nil
		}
		appended, lastRead := 0, int64(-1)
		for _, ev := range events {
			if c.ingest(ev) {
				appended++
			}
			if ev != nil { // nil: a type govmomi cannot map
				lastRead = int64(ev.GetEvent().Key)
			}
		}
		// Events re-read after a reconnect do not count: the single reads
		// must reach past the page that was lost.
		c.readSingly = max(0, c.readSingly-appended)
		n += appended
		c.status.beat()
		if announced >= 0 && lastRead >= announced {
			return n, nil
		}
	}
}

// ingest appends one event, skipping keys already appended; it reports
// whether it appended. Nothing about one event stops the stream: an event
// that cannot be decoded or encoded is recorded under its key without data
// (datadropped=error, by Convert) where its key can be read, and logged and
// counted in any case, as is a failure after its append.
func (c *collector) ingest(ev types.BaseEvent) (appended bool) {
	if ev == nil {
		// govmomi's decoder leaves nil for an element whose type it cannot
		// map to an event type (withUnknownEvents maps only names ending in
		// "Event"): there is no key to record it under.
		c.status.countUnreadable()
		c.log.Error("event of an unknown type could not be read: not appended", "after", c.lastKey())
		return false
	}
	if u, ok := ev.(*unknownEvent); ok && !u.keyRead {
		c.status.countUnreadable()
		c.log.Error("event has no readable key: not appended", "type", u.typeName, "after", c.lastKey(), "error", u.decodeErr)
		return false
	}
	key := int64(ev.GetEvent().Key)
	defer func() {
		// Convert recovers what fails in encoding: a panic here is in what
		// surrounds the append, which the event is then held whole or not.
		if p := recover(); p != nil {
			c.status.countFailed()
			c.log.Error("event could not be processed", append(errorAttrs(newPanicError(p)), "offset", key)...)
			appended = false
		}
	}()
	// A new session re-reads some events; skip them before encoding.
	if earliest, latest, ok := c.journal.bounds(); ok && key <= latest {
		c.status.countSkipped()
		if _, err := c.journal.read(key); errors.Is(err, errNotFound) && key >= earliest {
			// Not a re-read: vCenter delivered this key after a higher one.
			// Offsets only grow, so it cannot be appended; say so.
			c.log.Warn("event arrived after a higher key: not appended", "offset", key, "latest", latest)
			return false
		}
		c.log.Debug("skipped event already seen", "offset", key)
		return false
	}
	rec, err := c.converter.convert(ev)
	if err != nil {
		// Not even without its data.
		c.status.countFailed()
		c.log.Error("event could not be recorded: not appended", append(errorAttrs(err), "offset", key)...)
		return false
	}
	if err := c.journal.append(rec.record); err != nil {
		// Only the collector appends, and it checked the key above.
		c.log.Error("cannot append event", "offset", rec.offset, "error", err)
		return false
	}
	switch rec.dropped {
	case dropSize:
		c.log.Warn("event larger than the record size limit: recorded without data",
			"offset", rec.offset, "type", rec.eventType, "limit", c.converter.maxRecordSize)
	case dropError:
		c.status.countFailed()
		c.log.Error("event could not be decoded or encoded: recorded without data",
			append(errorAttrs(rec.err), "offset", rec.offset, "type", rec.eventType)...)
	}
	if u, ok := ev.(*unknownEvent); ok {
		c.status.countUnknownType()
		if !c.unknownTypes[u.typeName] {
			c.unknownTypes[u.typeName] = true
			c.log.Warn("event type unknown to this server's vSphere SDK: served with its own name and generic data",
				"type", u.typeName, "offset", rec.offset)
		}
	}
	c.appended(ev.GetEvent().CreatedTime)
	c.log.Debug("appended event", "offset", rec.offset, "type", rec.eventType, "bytes", len(rec.data))
	return true
}

// appended updates the status after an append of an event created at
// created. An event whose time could not be read (zero) leaves the times
// as they were: a reconnect must not start over from the stream's begin.
func (c *collector) appended(created time.Time) {
	if !created.IsZero() {
		c.lastCreated = created
	}
	c.status.appended(created, time.Now().Add(c.skew).Sub(created))
}

// lastKey is the latest offset held, for log lines about an event without
// a key of its own; -1 if none.
func (c *collector) lastKey() int64 {
	if _, latest, ok := c.journal.bounds(); ok {
		return latest
	}
	return -1
}

// backoff returns the pause before attempt (from 1): exponential from
// lowest, within lowest and highest, with jitter so that many replicas do not
// reconnect in step.
func backoff(attempt int, lowest, highest time.Duration) time.Duration {
	d := highest
	if attempt < 32 {
		d = lowest << (attempt - 1)
	}
	if d <= 0 || d > highest {
		d = highest
	}
	// Jitter above d, never below lowest: up to half of it again, capped.
	return min(highest, d+rand.N(d/2+1))
}
