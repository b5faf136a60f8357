package main

import (
	"context"
	"sync/atomic"
	"time"
)

// collectorStatus is what the collector reports about itself to the HTTP
// API (readiness, liveness, metrics). All methods are safe for concurrent use.
type collectorStatus struct {
	// ready is set after the first successful read from vCenter.
	ready atomic.Bool
	// connected is true while the collector holds a working session.
	connected atomic.Bool
	// changes is notified as ready or connected change and at each
	// append: whoever waits for the collector (waitFor) looks again then.
	changes notifier
	// vcenter is the vCenter of the last login, nil before the first.
	vcenter atomic.Pointer[vcenterIdentity]
	// lastEvent is the CreatedTime (Unix nanoseconds) of the newest event appended.
	lastEvent atomic.Int64
	// heartbeat is when the collector's loop last turned (Unix nanoseconds).
	heartbeat atomic.Int64
	// stuckAfter is how long the loop may go without turning before the
	// process counts as stuck; it is set once, before the collector runs.
	stuckAfter time.Duration

	// lag is how long the newest event took from its creation in vCenter
	// to its append (nanoseconds, on vCenter's clock).
	lag atomic.Int64

	ingested   atomic.Int64 // events appended to the journal
	skipped    atomic.Int64 // events not appended: their key was not above the latest (already seen)
	reconnects atomic.Int64 // sessions that ended in an error and were opened again

	unknownTypes atomic.Int64 // events of a type govmomi does not know, appended
	failed       atomic.Int64 // events that could not be decoded, encoded or appended whole
	unreadable   atomic.Int64 // events whose key could not be read: not appended
	unreachable  atomic.Int64 // keys vCenter announced that no read returned
	resets       atomic.Int64 // times vCenter's keys were found to start over
}

// newCollectorStatus returns the status of a collector that has not run yet;
// its loop counts as stuck if it does not turn within stuckAfter.
func newCollectorStatus(stuckAfter time.Duration) *collectorStatus {
	s := &collectorStatus{stuckAfter: stuckAfter}
	s.beat()
	return s
}

// isReady reports whether the collector has read from vCenter at least once.
func (s *collectorStatus) isReady() bool { return s.ready.Load() }

// setReady marks the collector ready, once it has read all of vCenter's
// events the first time; it reports whether it was not yet.
func (s *collectorStatus) setReady() bool {
	if s.ready.Swap(true) {
		return false
	}
	s.changes.notify()
	return true
}

// waitFor waits until cond holds and reports true, or until ctx is done
// (false). It looks at cond again whenever what the status reports
// changes: readiness, the connection, and each append, so that cond may
// also be about the journal the collector appends to.
func (s *collectorStatus) waitFor(ctx context.Context, cond func() bool) bool {
	return s.changes.waitFor(ctx, cond)
}

// isConnected reports whether the collector has a working vCenter session now.
func (s *collectorStatus) isConnected() bool { return s.connected.Load() }

// setConnected records whether the collector has a working session.
func (s *collectorStatus) setConnected(connected bool) {
	if s.connected.Swap(connected) != connected {
		s.changes.notify()
	}
}

// appended records the append of an event created at created (zero if its
// time could not be read: the times then stay as they were), which took
// lag from its creation in vCenter.
func (s *collectorStatus) appended(created time.Time, lag time.Duration) {
	s.ingested.Add(1)
	if !created.IsZero() {
		s.lastEvent.Store(created.UnixNano())
		s.lag.Store(int64(lag))
	}
	s.changes.notify()
}

// alive reports whether the collector's loop has turned recently. It is
// false only when the process itself is wedged: vCenter outages and stalls
// are handled by the loop and keep it turning.
func (s *collectorStatus) alive() bool {
	return s.stuckAfter <= 0 || time.Since(time.Unix(0, s.heartbeat.Load())) < s.stuckAfter
}

// lastEventTime returns the creation time of the newest event appended, or
// the zero time if there is none.
func (s *collectorStatus) lastEventTime() time.Time {
	if n := s.lastEvent.Load(); n != 0 {
		return time.Unix(0, n).UTC()
	}
	return time.Time{}
}

// countSkipped counts an event read again and skipped as already held.
func (s *collectorStatus) countSkipped() { s.skipped.Add(1) }

// countUnknownType counts an event appended whose type govmomi does not know.
func (s *collectorStatus) countUnknownType() { s.unknownTypes.Add(1) }

// countFailed counts an event that could not be decoded, encoded or
// appended whole.
func (s *collectorStatus) countFailed() { s.failed.Add(1) }

// countUnreadable counts an event whose key could not be read.
func (s *collectorStatus) countUnreadable() { s.unreadable.Add(1) }

// countUnreachable counts a key vCenter announced that no read returned.
func (s *collectorStatus) countUnreachable() {
	s.unreachable.Add(1)
	s.changes.notify()
}

// countReset counts a start of vCenter's keys over (a new epoch).
func (s *collectorStatus) countReset() {
	s.resets.Add(1)
	s.changes.notify()
}

// vcenterIdentity is which vCenter a session logged in to: its instance
// UUID names the vCenter (another after a reinstall, the same after a
// restore from backup), its API version the release it speaks.
type vcenterIdentity struct {
	InstanceUUID string `json:"instanceUuid"`
	APIVersion   string `json:"apiVersion"`
}

// loggedIn records the vCenter a session logged in to.
func (s *collectorStatus) loggedIn(id vcenterIdentity) { s.vcenter.Store(&id) }

// lastVCenter is the vCenter of the last login; nil before the first.
func (s *collectorStatus) lastVCenter() *vcenterIdentity { return s.vcenter.Load() }

// reconnecting records that a session failed and another is to be opened.
func (s *collectorStatus) reconnecting() {
	s.reconnects.Add(1)
	s.changes.notify()
}

// beat records that the collector's loop turned now (Alive).
func (s *collectorStatus) beat() { s.heartbeat.Store(time.Now().UnixNano()) }
