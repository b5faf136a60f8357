package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
)

// Errors returned by the journal. Callers test them with errors.Is.
var (
	// errPurged is returned for an offset below the earliest record held:
	// the record was purged with an old segment, or came before the stream began.
	errPurged = errors.New("invalid offset: purged")
	// errNotFound is returned for an offset that is held by no record: a gap
	// in vCenter's keys, an offset not yet reached, or an empty journal.
	errNotFound = errors.New("invalid offset: not found")
	// errOutOfOrder is returned by Append for an offset that is not above
	// the latest one: offsets only grow and are never reused.
	errOutOfOrder = errors.New("offset not above the latest")
	// errReset is returned to a reader that follows the journal (follow)
	// whose position a start of vCenter's keys over made meaningless: it
	// has read, or waits for, offsets of a timeline vCenter no longer has.
	// The error is a *resetError, which tells where to resume.
	errReset = errors.New("vCenter's event keys were reset")
)

// timeline is which of vCenter's key sequences the journal holds: the
// vCenter's instance UUID ("" until the first login) and the epoch, the
// number of times this server saw vCenter's keys start over (continued
// from the sink's checkpoint). An offset means one event only within a
// timeline.
type timeline struct {
	instanceUUID string
	epoch        int
}

// keyReset is one start of a new timeline.
type keyReset struct {
	// to is the timeline it started.
	to timeline
	// keptThrough is the highest offset of the timeline before that stays
	// held as part of the new one (a restore to a backup whose newest key
	// it is); -1 if none does (another vCenter).
	keptThrough int64
	// reason says what was detected, for logs and for the readers it ends.
	reason string
}

// resumeFrom is where a reader whose position the reset made meaningless
// goes on: the offset after the ones kept, or -1 (the first record held)
// if none was kept.
func (r keyReset) resumeFrom() int64 {
	if r.keptThrough < 0 {
		return -1
	}
	return r.keptThrough + 1
}

// resetError is errReset for one reader: the reset that ended its
// position, and where it goes on from (the lowest of the resets' if more
// than one happened since it last read).
type resetError struct {
	reset      keyReset
	resumeFrom int64
}

func (e *resetError) Error() string {
	if e.resumeFrom < 0 {
		return fmt.Sprintf("%v (%s): the events served before belong to a timeline vCenter no longer has; read again from the earliest offset", errReset, e.reset.reason)
	}
	return fmt.Sprintf("%v (%s): the events served above offset %d belong to a timeline vCenter no longer has; resume from offset %d", errReset, e.reset.reason, e.resumeFrom-1, e.resumeFrom)
}

func (e *resetError) Is(target error) bool { return target == errReset }

// position is where a reader that follows the journal (follow, wait)
// stands: the next offset it reads, -1 for the first record held, in the
// timeline of the records it read before.
type position struct {
	next     int64
	timeline timeline
}

// record is one journal entry: a vCenter event key and its encoded
// CloudEvent. Records are immutable once appended, so Data is shared by all
// readers and must never be modified.
type record struct {
	offset int64
	data   []byte
	// Type is the CloudEvent type; readers filter on it and on Class
	// without decoding Data. Equal types share one string.
	eventType string
	class     eventClass
	// created is the event's creation time in vCenter (Unix nanoseconds),
	// 0 if it could not be read: with the key and the type it tells an
	// event read again from another that reuses its key.
	created int64
}

// journal is a bounded, in-memory log of records keyed by offset, in two
// segments: appends go to the active segment; when it is full it is sealed
// as the history segment and the previous history is purged. Offsets grow
// but may have gaps (vCenter keys do). One writer and any number of readers
// may use it concurrently.
type journal struct {
	maxSegment int

	mu      sync.RWMutex
	history []record // sealed; empty until the first roll-over
	active  []record // takes appends; cap maxSegment
	bytes   int      // len(Data) summed over both segments
	// purgedThrough is the highest offset ever purged, -1 before the first
	// purge. A reader has missed records only if its next offset is at or
	// below it: vCenter's key gaps alone never count as missed.
	purgedThrough int64
	// first is the first offset ever appended, -1 before: records below it
	// came before the stream began, so no reader can have them.
	first int64
	// timeline is the key sequence held; resets are the starts of new
	// ones, oldest first, by which a reader's position in an earlier
	// timeline is checked.
	timeline timeline
	resets   []keyReset
	// appends wakes the readers that wait for a record (wait), at each
	// append and at each reset.
	appends notifier
}

// newJournal returns an empty journal holding at most 2 x maxSegment
// records, of the first timeline (epoch 0) of a vCenter not yet known.
func newJournal(maxSegment int) *journal {
	if maxSegment < 1 {
		maxSegment = 1
	}
	return &journal{
		maxSegment:    maxSegment,
		purgedThrough: -1,
		first:         -1,
		// Segments grow on demand up to maxSegment: a large setting costs
		// memory only once that many events have arrived.
		active: make([]record, 0, min(maxSegment, 1024)),
	}
}

// append adds rec, whose offset must be above every offset held. The
// journal keeps rec.Data as it is: the caller must not modify it afterwards.
func (j *journal) append(rec record) error {
	if err := j.add(rec); err != nil {
		return err
	}
	// After the lock is released: a woken reader finds the record.
	j.appends.notify()
	return nil
}

// add appends rec under the lock.
func (j *journal) add(rec record) error {
	offset := rec.offset
	j.mu.Lock()
	defer j.mu.Unlock()
	if latest, ok := j.latestLocked(); ok && offset <= latest {
		return errOutOfOrder
	}
	if len(j.active) == j.maxSegment {
		// Seal the active segment and reuse the purged history's array for
		// the new one: readers copy records out under the lock and never
		// keep a reference into a segment, so the array is free.
		for _, r := range j.history {
			j.bytes -= len(r.data)
		}
		if len(j.history) > 0 {
			j.purgedThrough = j.history[len(j.history)-1].offset
		}
		purged := j.history
		clear(purged[:cap(purged)])
		j.history, j.active = j.active, purged[:0]
	}
	if j.first < 0 {
		j.first = offset
	}
	if len(j.active) == cap(j.active) {
		// Grow by doubling, but never past the segment size: append's own
		// growth would leave unused capacity in every segment.
		grown := make([]record, len(j.active), min(2*cap(j.active)+1, j.maxSegment))
		copy(grown, j.active)
		j.active = grown
	}
	j.active = append(j.active, rec)
	j.bytes += len(rec.data)
	return nil
}

// roomBefore returns how many records can be appended before the record at
// offset (or the first held or appended after it) would be purged: until
// the next roll-over if it is in the history segment, else until the one
// after.
func (j *journal) roomBefore(offset int64) int {
	j.mu.RLock()
	defer j.mu.RUnlock()
	room := j.maxSegment - len(j.active)
	if len(j.history) == 0 || offset > j.history[len(j.history)-1].offset {
		room += j.maxSegment
	}
	return room
}

// nextPurge returns the latest offset the next append purges; ok is false
// if it purges nothing.
func (j *journal) nextPurge() (through int64, ok bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if len(j.active) < j.maxSegment || len(j.history) == 0 {
		return 0, false
	}
	return j.history[len(j.history)-1].offset, true
}

// bounds returns the earliest and latest offsets held; ok is false while the
// journal is empty.
func (j *journal) bounds() (earliest, latest int64, ok bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.rangeLocked()
}

// firstOffset returns the first offset ever appended; ok is false before the
// first append.
func (j *journal) firstOffset() (offset int64, ok bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.first, j.first >= 0
}

// stats returns the number of records and the bytes of data held.
func (j *journal) stats() (records, bytes int) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return len(j.history) + len(j.active), j.bytes
}

// read returns the record stored under offset. It fails with errPurged for
// an offset below the earliest held, and with errNotFound where no record
// has that offset.
func (j *journal) read(offset int64) (record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	earliest, _, ok := j.rangeLocked()
	if !ok {
		return record{}, errNotFound
	}
	if offset < earliest {
		return record{}, errPurged
	}
	for _, seg := range j.segmentsLocked() {
		if i, found := searchOffset(seg, offset); found {
			return seg[i], nil
		}
	}
	return record{}, errNotFound
}

// readFrom appends to dst up to limit records with offsets >= offset, oldest
// first, and returns the extended slice. It fails with errPurged if offset is
// below the earliest record held (the reader would miss records); an offset
// above the latest gives no records and no error. Passing a reused dst keeps
// reads free of allocation.
func (j *journal) readFrom(offset int64, limit int, dst []record) ([]record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if earliest, _, ok := j.rangeLocked(); ok && offset < earliest {
		return dst, errPurged
	}
	return j.readLocked(offset, limit, dst), nil
}

// readNext is readFrom for a reader that has read every record below next:
// it fails with errPurged if a record at or above next was purged before
// the reader got to it, or if next is below the first offset ever
// appended (the reader asked for events from before the stream began).
// Unlike readFrom, a next offset below the earliest record is no error
// when only a gap in the keys lies between. A negative next reads from the
// first record held, whatever its offset.
func (j *journal) readNext(next int64, limit int, dst []record) ([]record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.readNextLocked(next, limit, dst)
}

// follow is readNext for a reader that follows the journal from p. A reset
// since the reader's last read
// leaves its position as it is when all it read stays held (it read no
// further than the keys kept), and fails with a *resetError (errReset)
// otherwise; the reader then goes on from the error's resumeFrom.
func (j *journal) follow(p *position, limit int, dst []record) ([]record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if err := j.checkLocked(p); err != nil {
		return dst, err
	}
	return j.readNextLocked(p.next, limit, dst)
}

// checkLocked moves p into the journal's timeline, or fails with a
// *resetError if a reset since made its offset meaningless.
func (j *journal) checkLocked(p *position) error {
	if p.timeline.epoch == j.timeline.epoch {
		p.timeline = j.timeline
		return nil
	}
	var ended *resetError
	for _, r := range j.resets {
		if r.to.epoch <= p.timeline.epoch || p.next <= r.keptThrough+1 {
			continue
		}
		if ended == nil || r.resumeFrom() < ended.resumeFrom {
			ended = &resetError{reset: r, resumeFrom: r.resumeFrom()}
		}
	}
	if ended != nil {
		return ended
	}
	p.timeline = j.timeline
	return nil
}

func (j *journal) readNextLocked(next int64, limit int, dst []record) ([]record, error) {
	if next >= 0 && (next <= j.purgedThrough || next < j.first) {
		return dst, errPurged
	}
	return j.readLocked(next, limit, dst), nil
}

func (j *journal) readLocked(offset int64, limit int, dst []record) []record {
	for _, seg := range j.segmentsLocked() {
		if limit <= 0 {
			break
		}
		i, _ := searchOffset(seg, offset)
		n := min(len(seg)-i, limit)
		dst = append(dst, seg[i:i+n]...)
		limit -= n
	}
	return dst
}

// readLast appends to dst the newest limit records, oldest first.
func (j *journal) readLast(limit int, dst []record) []record {
	return j.readBefore(math.MaxInt64, limit, dst)
}

// readBefore appends to dst the newest limit records with offsets below
// offset, oldest first: a reader going back through the journal.
func (j *journal) readBefore(offset int64, limit int, dst []record) []record {
	j.mu.RLock()
	defer j.mu.RUnlock()
	// Records before the one at index end of both segments, laid end to end.
	end := 0
	for _, seg := range j.segmentsLocked() {
		i, _ := searchOffset(seg, offset)
		end += i
	}
	skip := end - limit
	for _, seg := range j.segmentsLocked() {
		n := min(len(seg), end)
		end -= n
		if skip >= n {
			skip -= n
			continue
		}
		dst = append(dst, seg[max(skip, 0):n]...)
		skip = 0
	}
	return dst
}

// wait blocks until the journal holds a record at or after p, or a reset
// starts a new timeline (follow then tells whether p is still good), or
// ctx is done, in which case it returns ctx's error. Readers are woken by
// the appends: no polling, and an idle reader costs nothing.
func (j *journal) wait(ctx context.Context, p position) error {
	if !j.appends.waitFor(ctx, func() bool { return j.ready(p) }) {
		return ctx.Err()
	}
	return nil
}

// ready reports whether a reader at p has something to do: a record at or
// after p to read, or a reset to learn of.
func (j *journal) ready(p position) bool {
	j.mu.RLock()
	defer j.mu.RUnlock()
	_, latest, ok := j.rangeLocked()
	return (ok && latest >= p.next) || j.timeline.epoch != p.timeline.epoch
}

// currentTimeline is the timeline the journal holds.
func (j *journal) currentTimeline() timeline {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.timeline
}

// continueTimeline makes the journal, before its first append, hold the
// timeline t: the one the sink's checkpoint was written in.
func (j *journal) continueTimeline(t timeline) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.timeline = t
}

// identify names the vCenter of the timeline held, at the first login:
// the journal was of a vCenter not yet known.
func (j *journal) identify(instanceUUID string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.timeline.instanceUUID = instanceUUID
}

// startEpoch starts a new timeline of the vCenter instanceUUID, the
// journal's epoch plus one: the records above keptThrough (all, with -1)
// are dropped, since they belong to a timeline vCenter no longer has, and
// the next append may reuse their offsets. Readers that follow the journal
// are woken to learn of it (follow). It returns the reset.
func (j *journal) startEpoch(instanceUUID string, keptThrough int64, reason string) keyReset {
	j.mu.Lock()
	r := keyReset{to: timeline{instanceUUID: instanceUUID, epoch: j.timeline.epoch + 1}, keptThrough: max(keptThrough, -1), reason: reason}
	keep := func(seg []record) []record {
		i, _ := searchOffset(seg, r.keptThrough+1)
		for _, dropped := range seg[i:] {
			j.bytes -= len(dropped.data)
		}
		clear(seg[i:])
		return seg[:i]
	}
	j.history, j.active = keep(j.history), keep(j.active)
	if len(j.active) == 0 {
		// The active segment is empty only on an empty journal
		// (rangeLocked): what stays of the history takes its place.
		j.history, j.active = j.active, j.history
	}
	// What was purged up to the keys kept was of the same timeline.
	j.purgedThrough = min(j.purgedThrough, r.keptThrough)
	if len(j.active) == 0 {
		j.first = -1
	}
	j.timeline = r.to
	j.resets = append(j.resets, r)
	j.mu.Unlock()
	j.appends.notify()
	return r
}

// holds reports whether the journal holds offset or a later one.
func (j *journal) holds(offset int64) bool {
	_, latest, ok := j.bounds()
	return ok && latest >= offset
}

// appended returns a channel closed by the next append, for a waiter that
// also waits for something else (the watch waker).
func (j *journal) appended() <-chan struct{} { return j.appends.changed() }

func (j *journal) segmentsLocked() [2][]record {
	return [2][]record{j.history, j.active}
}

func (j *journal) rangeLocked() (earliest, latest int64, ok bool) {
	if len(j.active) == 0 {
		// The active segment is empty only before the first append: a
		// roll-over happens on append, never leaving it empty.
		return 0, 0, false
	}
	latest = j.active[len(j.active)-1].offset
	if len(j.history) > 0 {
		return j.history[0].offset, latest, true
	}
	return j.active[0].offset, latest, true
}

func (j *journal) latestLocked() (int64, bool) {
	_, latest, ok := j.rangeLocked()
	return latest, ok
}

// searchOffset returns the index of the first record with an offset >=
// offset in seg, and whether that record has exactly this offset.
func searchOffset(seg []record, offset int64) (int, bool) {
	return slices.BinarySearchFunc(seg, offset, func(r record, o int64) int {
		switch {
		case r.offset < o:
			return -1
		case r.offset > o:
			return 1
		}
		return 0
	})
}
