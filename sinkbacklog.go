package main

import (
	"context"
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

// sinkRoom returns how many events the next page may hold: size, or, while
// the first catch-up reads the backlog (pacesSink), no more than the journal
// takes without purging an event the sink still needs. While that is none
// it waits for the sink, with the watchdog paused (the wait is not
// vCenter's) and the session kept alive, as long as the sink takes events;
// one that takes none for sinkPatience is waited for no more.
func (c *Collector) sinkRoom(ctx context.Context, size int, watchdog *sessionWatchdog, keepAlive func() error) (int, error) {
	if !c.pacesSink() {
		return size, nil
	}
	done, progressAt := c.sink.done.Load(), time.Now()
	for {
		needs := c.sink.needsFrom()
		if needs < 0 {
			// The first event held, or on an empty journal the first
			// appended: the same room either way.
			needs, _, _ = c.journal.Range()
		}
		if room := c.journal.roomBefore(needs); room > 0 {
			return min(size, room), nil
		}
		through, _ := c.journal.nextPurge()
		c.log.Debug("waiting for the sink before reading on", "sink_needs", needs, "purges_through", through)
		if !watchdog.pause(func() bool { return c.waitForSink(ctx, through) }) {
			return 0, context.Cause(ctx)
		}
		c.status.beat()
		if now := c.sink.done.Load(); now != done {
			done, progressAt = now, time.Now()
		}
		if time.Since(progressAt) >= c.opts.sinkPatience {
			c.sinkGaveUp = true
			c.log.Warn("the sink took no event for a while: reading vCenter's backlog on without it; the events it needs may be purged before delivery (sink_lost_total)",
				"sink_needs", needs, "waited", c.opts.sinkPatience.String())
			return size, nil
		}
		if err := keepAlive(); err != nil {
			return 0, err
		}
	}
}

// pacesSink reports whether the collector reads at the sink's pace: on
// its first catch-up, while it reads the events created before it began.
// Then it reads on as fast as vCenter answers, even for a sink slower than
// vCenter's own rate: the catch-up ends, and the server gets ready.
func (c *Collector) pacesSink() bool {
	return c.sink != nil && !c.sinkGaveUp && !c.status.Ready() &&
		(c.lastCreated.IsZero() || c.lastCreated.Before(c.backlogUntil))
}

// waitForSink waits until the sink is done with offset, for at most the
// shorter of sinkPatience and the keep-alive interval; it reports false if
// ctx ended first.
func (c *Collector) waitForSink(ctx context.Context, offset int64) bool {
	bound := time.NewTimer(min(c.opts.sinkPatience, c.opts.keepAlive))
	defer bound.Stop()
	select {
	case <-c.sink.doneThrough(offset):
	case <-bound.C:
	case <-ctx.Done():
		return false
	}
	return true
}
