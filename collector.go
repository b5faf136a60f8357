package main

import (
	"context"
	"errors"
	"fmt"
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

	// checkpointChecked: the sink's checkpoint, if any, was looked for in
	// vCenter (checkCheckpoint).
	checkpointChecked bool
	// unreachable is the newest key vCenter announced that no read
	// reached (announcedUnreachable), -1 before; the first is logged.
	unreachable       int64
	unreachableLogged bool
}

// newCollector returns a collector for cfg's vCenter that appends to j and
// reports to status, at the pace of a sink (nil: none).
func newCollector(cfg config, opts collectorOptions, j *journal, status *collectorStatus, pace *sinkPace, log *slog.Logger) *collector {
	return &collector{
		vc:          newVCLogin(cfg),
		streamBegin: cfg.streamBegin,
		opts:        opts,
		journal:     j,
		converter:   &eventConverter{source: epochSource(cfg.vcenterURL, j.currentTimeline().epoch), maxRecordSize: cfg.maxRecordSize},
		status:      status,
		log:         log,
		pace:        pace,

		unknownTypes: make(map[string]bool),
		unreachable:  -1,
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
	c.checkInstance(about.InstanceUuid)
	now, err := s.now(ctx)
	if err != nil {
		return false, err
	}
	if err := c.checkCheckpoint(ctx, s); err != nil {
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
	newest, err := live.newest(ctx)
	if err != nil {
		return false, err
	}
	if newest != nil {
		c.checkNewest(int64(newest.GetEvent().Key), newest)
	}
	c.log.Info("collecting vCenter events", "begin", begin, "push", s.mode == modePush)

	// announced is the newest key the last announcement carried: a read
	// that reaches it need not be confirmed by an empty one. -1: read
	// until a read finds nothing, as after a wait that ended without news
	// (the safety interval, a poll), in case an announcement was missed.
	announced := int64(-1)
	for {
		c.status.beat()
		c.checkNewest(announced, nil)
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
		if c.pace != nil && c.journal.currentTimeline().epoch == c.pace.resume.Epoch {
			// The checkpoint is of the timeline held (checkCheckpoint).
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
			if announced >= 0 && c.lastKey() < announced {
				c.announcedUnreachable(announced)
			}
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
	// A new session re-reads some events; skip them before encoding,
	// unless vCenter's keys went back.
	if c.reread(ev, key) {
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

// reread reports whether ev, whose key is key, is not to be appended: it
// is an event held already (a new session reads some again), or one
// vCenter delivered after a higher key. An event whose key is not above the
// newest held that is neither means vCenter's keys went back: a new epoch
// starts (keysWentBack), and ev is the first event of the new timeline.
func (c *collector) reread(ev types.BaseEvent, key int64) bool {
	earliest, latest, ok := c.journal.bounds()
	if !ok || key > latest {
		return false
	}
	held, err := c.journal.read(key)
	created := ev.GetEvent().CreatedTime
	switch {
	case err == nil && c.sameEvent(held, ev):
		c.status.countSkipped()
		c.log.Debug("skipped event already seen", "offset", key)
		return true
	case err == nil:
		c.keysWentBack(key-1, fmt.Sprintf("vCenter's event %d is another event than the one held (%s created %s; held: %s created %s)",
			key, c.eventType(ev), formatTime(created), held.eventType, formatTime(recordTime(held))))
		return false
	case !c.lastCreated.IsZero() && created.After(c.lastCreated):
		// Not held, and newer than every event held: not a re-read.
		c.keysWentBack(key-1, fmt.Sprintf("vCenter's event %d, created %s, is not held though newer than the newest held (%d, created %s)",
			key, formatTime(created), latest, formatTime(c.lastCreated)))
		return false
	case errors.Is(err, errNotFound) && key >= earliest:
		// Not a re-read: vCenter delivered this key after a higher one,
		// and with an older time. Offsets only grow, so it cannot be
		// appended; say so.
		c.status.countSkipped()
		c.log.Warn("event arrived after a higher key: not appended", "offset", key, "latest", latest)
		return true
	}
	// Below the journal: purged, or from before the stream began.
	c.status.countSkipped()
	c.log.Debug("skipped event already seen", "offset", key)
	return true
}

// sameEvent reports whether ev, read from vCenter, is the event held as
// rec: the same key, creation time and type.
func (c *collector) sameEvent(rec record, ev types.BaseEvent) bool {
	e := ev.GetEvent()
	return rec.offset == int64(e.Key) && rec.created == createdNanos(e.CreatedTime) && rec.eventType == c.eventType(ev)
}

// eventType is the CloudEvent type of ev.
func (c *collector) eventType(ev types.BaseEvent) string {
	name, _ := eventTypeAndClass(ev)
	return c.converter.cloudEventType(name)
}

// createdNanos is a creation time as a record holds it.
func createdNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// formatTime is t for a log line or an error, "unknown" if zero.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// checkInstance starts a new epoch if the session is on another vCenter
// than the journal's (another instance UUID: a reinstall, or another
// vCenter behind the same name): nothing held is this vCenter's, and its
// events are read from the stream's begin, as at a first start.
func (c *collector) checkInstance(instanceUUID string) {
	held := c.journal.currentTimeline().instanceUUID
	switch {
	case held == "":
		c.journal.identify(instanceUUID)
	case held != instanceUUID:
		c.startEpoch(instanceUUID, -1, fmt.Sprintf("another vCenter: instance UUID %s, was %s", instanceUUID, held))
		c.begin, c.lastCreated = time.Time{}, time.Time{}
		// The checkpoint is the other vCenter's: the deliverer follows the
		// reset.
		c.checkpointChecked = true
	}
}

// checkCheckpoint looks for the sink checkpoint's event in vCenter, once,
// before anything is appended: unless vCenter holds the same event (its
// key, created at the checkpoint's time), the checkpoint's offsets are of a
// timeline vCenter no longer has (its keys went back while the server was
// down, or the checkpoint is another vCenter's), and the journal starts a
// new epoch, so that no event of the new timeline goes out under a
// (source, id) the sink has seen.
func (c *collector) checkCheckpoint(ctx context.Context, s *vcSession) error {
	if c.checkpointChecked || c.pace == nil || c.pace.resume.Time.IsZero() {
		c.checkpointChecked = true
		return nil
	}
	cp := c.pace.resume
	created, found, err := findEvent(ctx, s, cp.Offset, cp.Time)
	if err != nil {
		return err
	}
	c.checkpointChecked = true
	switch {
	case !found:
		c.startEpoch(c.journal.currentTimeline().instanceUUID, -1, fmt.Sprintf(
			"vCenter holds no event %d created at %s, the sink checkpoint's: its keys went back while the server was down, or the checkpoint is another vCenter's",
			cp.Offset, formatTime(cp.Time)))
	case !created.IsZero() && !created.Equal(cp.Time):
		c.startEpoch(c.journal.currentTimeline().instanceUUID, -1, fmt.Sprintf(
			"vCenter's event %d, the sink checkpoint's, is another event (created %s, the checkpoint's %s)",
			cp.Offset, formatTime(created), formatTime(cp.Time)))
	}
	return nil
}

// findEvent looks for the event key created about at (within resumeMargin)
// in vCenter, and returns its creation time; found is false if vCenter has
// no such event then.
func findEvent(ctx context.Context, s *vcSession, key int64, at time.Time) (created time.Time, found bool, err error) {
	h, err := s.openHistory(ctx, at.Add(-resumeMargin), at.Add(resumeMargin))
	if err != nil {
		return created, false, err
	}
	defer h.close(ctx)
	for {
		events, err := h.readNext(ctx, readPageSize)
		switch {
		case errors.Is(err, errPanic):
			// A page that cannot be decoded: the event cannot be told.
			return created, false, nil
		case err != nil:
			return created, false, err
		case len(events) == 0:
			return created, false, nil
		}
		for _, ev := range events {
			if ev == nil {
				continue
			}
			if e := ev.GetEvent(); int64(e.Key) == key {
				return e.CreatedTime, true, nil
			}
		}
	}
}

// checkNewest starts a new epoch if vCenter's newest key (from a latest
// page, with its event if at hand; -1: none) is below the newest held: its
// keys went back to it (a restore from backup, a wrap), and the events
// held above it belong to a timeline vCenter no longer has. If vCenter's
// event there is another than the one held, the timelines parted below
// it: the reads that follow find where (reread).
func (c *collector) checkNewest(newest int64, ev types.BaseEvent) {
	_, latest, ok := c.journal.bounds()
	if !ok || newest < 0 || newest >= latest {
		return
	}
	if ev != nil {
		if held, err := c.journal.read(newest); err == nil && !c.sameEvent(held, ev) {
			return
		}
	}
	c.keysWentBack(newest, fmt.Sprintf("vCenter's newest event key is %d, below the newest held, %d", newest, latest))
}

// keysWentBack starts a new epoch of the same vCenter whose keys went back
// to keptThrough: the events up to it are the same events as before.
func (c *collector) keysWentBack(keptThrough int64, reason string) {
	c.startEpoch(c.journal.currentTimeline().instanceUUID, keptThrough, reason+": vCenter's keys went back (a restore from backup, or a wrap)")
}

// startEpoch starts a new timeline of the vCenter instanceUUID in the
// journal, keeping the events up to keptThrough (none with -1), loudly: an
// error in the log with both timelines, a count, the epoch metric.
func (c *collector) startEpoch(instanceUUID string, keptThrough int64, reason string) {
	before := c.journal.currentTimeline()
	_, latest, held := c.journal.bounds()
	r := c.journal.startEpoch(instanceUUID, keptThrough, reason)
	c.converter.source = epochSource(c.vc.url, r.to.epoch)
	c.lastCreated = time.Time{}
	if _, newest, ok := c.journal.bounds(); ok {
		if rec, err := c.journal.read(newest); err == nil {
			c.lastCreated = recordTime(rec)
		}
	}
	c.status.countReset()
	attrs := []any{"reason", reason, "epoch", r.to.epoch, "previousEpoch", before.epoch,
		"instanceUuid", instanceUUID, "previousInstanceUuid", before.instanceUUID,
		"keptThrough", r.keptThrough, "source", c.converter.source}
	if held {
		attrs = append(attrs, "previousLatest", latest)
	}
	c.log.Error("vCenter's event keys started over: a new epoch begins; events held of the old timeline are dropped, open watches past it end, the sink goes on with the new timeline", attrs...)
}

// announcedUnreachable records that vCenter announced key (its latest page)
// but reading returns no event up to it: on a real vCenter, an event of an
// entity the user has no rights to. The stream goes on with later events;
// the first is logged, each counted.
func (c *collector) announcedUnreachable(key int64) {
	if key <= c.unreachable {
		return
	}
	c.unreachable = key
	c.status.countUnreachable()
	if c.unreachableLogged {
		c.log.Debug("vCenter announced an event no read returns", "key", key)
		return
	}
	c.unreachableLogged = true
	c.log.Warn("vCenter announced an event that no read returns (the user may lack rights to some entities): going on with later events; further ones are only counted (events_unreachable_total)",
		"key", key, "latest", c.lastKey())
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
