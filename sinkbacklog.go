package main

import (
	"context"
	"time"
)

// A sink that resumes from a checkpoint needs every event vCenter logged
// since, but the collector reads vCenter's backlog far faster than a sink
// takes events, and the journal, the delivery buffer, would purge the
// oldest before they were delivered, though vCenter still has them. So on
// its first catch-up the collector reads no further than the journal has
// room for without purging an event the sink still needs, and waits for
// the sink otherwise. Only then: once caught up, a slow sink loses events
// (sink_lost_total) rather than hold back the stream everyone else reads.

// sinkRoom returns how many events the next page may hold: size, or, on
// the first catch-up with a sink, no more than the journal takes without
// purging an event the sink still needs. While that is none it waits for
// the sink (the watchdog paused: the wait is not vCenter's), as long as
// the sink takes events; one that takes none for sinkPatience is waited
// for no more.
func (c *Collector) sinkRoom(ctx context.Context, size int, watchdog *sessionWatchdog) (int, error) {
	if c.sink == nil || c.sinkGaveUp || c.status.Ready() {
		return size, nil
	}
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
		doneBefore := c.sink.done.Load()
		outcome := sinkWaitReached
		if !watchdog.pause(func() bool {
			outcome = c.waitForSink(ctx, through)
			return outcome != sinkWaitEnded
		}) {
			return 0, context.Cause(ctx)
		}
		c.status.beat() // waiting on a sink that makes progress is no wedge
		if outcome == sinkWaitTimedOut && c.sink.done.Load() == doneBefore {
			c.sinkGaveUp = true
			c.log.Warn("the sink took no event for a while: reading vCenter's backlog on without it; the events it needs may be purged before delivery (sink_lost_total)",
				"sink_needs", needs, "waited", c.opts.sinkPatience.String())
			return size, nil
		}
	}
}

// sinkWait is how a wait for the sink ended.
type sinkWait int

const (
	sinkWaitReached  sinkWait = iota // the sink is done with the offset
	sinkWaitTimedOut                 // sinkPatience passed first
	sinkWaitEnded                    // the context ended
)

// waitForSink waits until the sink is done with offset, for at most
// sinkPatience.
func (c *Collector) waitForSink(ctx context.Context, offset int64) sinkWait {
	patience := time.NewTimer(c.opts.sinkPatience)
	defer patience.Stop()
	select {
	case <-c.sink.doneThrough(offset):
		return sinkWaitReached
	case <-patience.C:
		return sinkWaitTimedOut
	case <-ctx.Done():
		return sinkWaitEnded
	}
}
