package main

import (
	"context"
	"sync/atomic"
	"time"
)

// A sink that resumes from a checkpoint needs every event vCenter logged
// since, but the collector reads vCenter's backlog far faster than a sink
// takes events, and the journal, the delivery buffer, would purge the
// oldest before they were delivered, though vCenter still has them. So
// while it reads the events logged before it started, the collector reads
// no further than the journal has room for without purging an event the
// sink still needs, and waits for the sink otherwise. Only then: after
// that, a slow sink loses events (sink_lost_total) rather than hold back
// the stream everyone else reads.

// sinkPatience is how long the first catch-up waits at least for a sink
// that takes no event before it reads on without it.
const sinkPatience = time.Minute

// sinkPace is all that the collector and the deliverer know of each other;
// each is given it at construction. The deliverer tells how far the sink
// has got, which the collector's first catch-up reads no faster than
// (sinkRoom), from the checkpoint's time on (beginBy); the deliverer waits
// for that catch-up before it tells whether the checkpoint is this
// vCenter's (waitCaughtUp). It is safe for concurrent use.
type sinkPace struct {
	// resume is the checkpoint delivery resumes after; zero without one.
	resume checkpoint
	// patience is how long the first catch-up waits for a sink that takes
	// no event before it reads on regardless.
	patience time.Duration
	// collector tells of the collector's first catch-up and of each of
	// its appends.
	collector *collectorStatus
	// done is the last offset the sink is done with (acknowledged, refused
	// for good or not selected), -1 before; moved is notified as it grows.
	done  atomic.Int64
	moved notifier
}

// newSinkPace returns the pace of delivery to a sink: the first catch-up
// of collector waits patience for a sink that takes no event. With a
// checkpoint file (SINK_CHECKPOINT_FILE), delivery resumes after the
// offset it holds.
func newSinkPace(checkpointFile string, patience time.Duration, collector *collectorStatus) (*sinkPace, error) {
	p := &sinkPace{patience: patience, collector: collector}
	p.done.Store(-1)
	if checkpointFile == "" {
		return p, nil
	}
	cp, ok, err := loadCheckpoint(checkpointFile)
	if err != nil {
		return nil, &configError{envSinkCheckpointFile, err.Error()}
	}
	if ok {
		p.resume = cp
		p.done.Store(cp.Offset)
	}
	return p, nil
}

// setDone records that the sink is done with offset, waking a collector
// that waits for it.
func (p *sinkPace) setDone(offset int64) {
	p.done.Store(offset)
	p.moved.notify()
}

// doneWith is the last offset the sink is done with, -1 before.
func (p *sinkPace) doneWith() int64 { return p.done.Load() }

// needsFrom is the first offset the sink still needs the journal to hold;
// -1 for the first event held.
func (p *sinkPace) needsFrom() int64 {
	if done := p.done.Load(); done >= 0 {
		return done + 1
	}
	return -1
}

// waitDone waits until the sink is done with offset, or for at most bound;
// it reports false if ctx ended first.
func (p *sinkPace) waitDone(ctx context.Context, offset int64, bound time.Duration) bool {
	bounded, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	p.moved.waitFor(bounded, func() bool { return p.done.Load() >= offset })
	return ctx.Err() == nil
}

// beginBy returns begin, or where the first session must begin to read the
// event after the checkpoint if that is earlier: resumeMargin before the
// checkpoint's time, since that event may have been logged a little
// before it (a later key, an earlier time), as on a reconnect.
func (p *sinkPace) beginBy(begin time.Time) time.Time {
	if p.resume.Time.IsZero() {
		return begin
	}
	if by := p.resume.Time.Add(-resumeMargin); by.Before(begin) {
		return by
	}
	return begin
}

// waitCaughtUp waits until the collector has read vCenter's events the
// first time, or until held holds (looked at again at each event the
// collector appends), and reports true; false if ctx ended first.
func (p *sinkPace) waitCaughtUp(ctx context.Context, held func() bool) bool {
	return p.collector.waitFor(ctx, func() bool { return held() || p.collector.isReady() })
}

// sinkRoom returns how many events the next page may hold: size, or, while
// the first catch-up reads the backlog (pacesSink), no more than the journal
// takes without purging an event the sink still needs. While that is none
// it waits for the sink, with the watchdog paused (the wait is not
// vCenter's) and the session kept alive, as long as the sink takes events;
// one that takes none for the pace's patience is waited for no more.
func (c *collector) sinkRoom(ctx context.Context, s *vcSession, size int) (int, error) {
	if !c.pacesSink() {
		return size, nil
	}
	done, progressAt := c.pace.doneWith(), time.Now()
	for {
		needs := c.pace.needsFrom()
		if needs < 0 {
			// The first event held, or on an empty journal the first
			// appended: the same room either way.
			needs, _, _ = c.journal.bounds()
		}
		if room := c.journal.roomBefore(needs); room > 0 {
			return min(size, room), nil
		}
		through, _ := c.journal.nextPurge()
		c.log.Debug("waiting for the sink before reading on", "sink_needs", needs, "purges_through", through)
		// The keep-alive is due in the meantime.
		bound := min(c.pace.patience, c.opts.keepAlive)
		if !s.idle(func() bool { return c.pace.waitDone(ctx, through, bound) }) {
			return 0, context.Cause(ctx)
		}
		c.status.beat()
		if now := c.pace.doneWith(); now != done {
			done, progressAt = now, time.Now()
		}
		if time.Since(progressAt) >= c.pace.patience {
			c.sinkGaveUp = true
			c.log.Warn("the sink took no event for a while: reading vCenter's backlog on without it; the events it needs may be purged before delivery (sink_lost_total)",
				"sink_needs", needs, "waited", c.pace.patience.String())
			return size, nil
		}
		if err := s.keepAlive(ctx); err != nil {
			return 0, err
		}
	}
}

// pacesSink reports whether the collector reads at the sink's pace: with a
// sink, on its first catch-up, while it reads the events created before it
// began. Then it reads on as fast as vCenter answers, even for a sink
// slower than vCenter's own rate: the catch-up ends, and the server gets
// ready.
func (c *collector) pacesSink() bool {
	return c.pace != nil && !c.sinkGaveUp && !c.status.isReady() &&
		(c.lastCreated.IsZero() || c.lastCreated.Before(c.backlogUntil))
}
