package main

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
)

// Errors returned by the Journal. Callers test them with errors.Is.
var (
	// ErrPurged is returned for an offset below the earliest record held:
	// the record was purged with an old segment, or came before the stream began.
	ErrPurged = errors.New("invalid offset: purged")
	// ErrNotFound is returned for an offset that is held by no record: a gap
	// in vCenter's keys, an offset not yet reached, or an empty journal.
	ErrNotFound = errors.New("invalid offset: not found")
	// ErrOutOfOrder is returned by Append for an offset that is not above
	// the latest one: offsets only grow and are never reused.
	ErrOutOfOrder = errors.New("offset not above the latest")
)

// Record is one journal entry: a vCenter event key and its encoded
// CloudEvent. Records are immutable once appended, so Data is shared by all
// readers and must never be modified.
type Record struct {
	Offset int64
	Data   []byte
	// Type is the CloudEvent type; readers filter on it and on Class
	// without decoding Data. Equal types share one string.
	Type  string
	Class EventClass
}

// Journal is a bounded, in-memory log of records keyed by offset, in two
// segments: appends go to the active segment; when it is full it is sealed
// as the history segment and the previous history is purged. Offsets grow
// but may have gaps (vCenter keys do). One writer and any number of readers
// may use it concurrently.
type Journal struct {
	maxSegment int

	mu      sync.RWMutex
	history []Record // sealed; empty until the first roll-over
	active  []Record // takes appends; cap maxSegment
	bytes   int      // len(Data) summed over both segments
	// purgedThrough is the highest offset ever purged, -1 before the first
	// purge. A reader has missed records only if its next offset is at or
	// below it: vCenter's key gaps alone never count as missed.
	purgedThrough int64
	// first is the first offset ever appended, -1 before: records below it
	// came before the stream began, so no reader can have them.
	first int64
	// appends wakes the readers that wait for a record (Wait).
	appends notifier
}

// NewJournal returns an empty journal holding at most 2 x maxSegment records.
func NewJournal(maxSegment int) *Journal {
	if maxSegment < 1 {
		maxSegment = 1
	}
	return &Journal{
		maxSegment:    maxSegment,
		purgedThrough: -1,
		first:         -1,
		// Segments grow on demand up to maxSegment: a large setting costs
		// memory only once that many events have arrived.
		active: make([]Record, 0, min(maxSegment, 1024)),
	}
}

// AppendRecord adds rec, whose offset must be above every offset held. The
// journal keeps rec.Data as it is: the caller must not modify it afterwards.
func (j *Journal) AppendRecord(rec Record) error {
	if err := j.add(rec); err != nil {
		return err
	}
	// After the lock is released: a woken reader finds the record.
	j.appends.notify()
	return nil
}

// add appends rec under the lock.
func (j *Journal) add(rec Record) error {
	offset := rec.Offset
	j.mu.Lock()
	defer j.mu.Unlock()
	if latest, ok := j.latestLocked(); ok && offset <= latest {
		return ErrOutOfOrder
	}
	if len(j.active) == j.maxSegment {
		// Seal the active segment and reuse the purged history's array for
		// the new one: readers copy records out under the lock and never
		// keep a reference into a segment, so the array is free.
		for _, r := range j.history {
			j.bytes -= len(r.Data)
		}
		if len(j.history) > 0 {
			j.purgedThrough = j.history[len(j.history)-1].Offset
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
		grown := make([]Record, len(j.active), min(2*cap(j.active)+1, j.maxSegment))
		copy(grown, j.active)
		j.active = grown
	}
	j.active = append(j.active, rec)
	j.bytes += len(rec.Data)
	return nil
}

// roomBefore returns how many records can be appended before the record at
// offset (or the first held or appended after it) would be purged: until
// the next roll-over if it is in the history segment, else until the one
// after.
func (j *Journal) roomBefore(offset int64) int {
	j.mu.RLock()
	defer j.mu.RUnlock()
	room := j.maxSegment - len(j.active)
	if len(j.history) == 0 || offset > j.history[len(j.history)-1].Offset {
		room += j.maxSegment
	}
	return room
}

// nextPurge returns the latest offset the next append purges; ok is false
// if it purges nothing.
func (j *Journal) nextPurge() (through int64, ok bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if len(j.active) < j.maxSegment || len(j.history) == 0 {
		return 0, false
	}
	return j.history[len(j.history)-1].Offset, true
}

// Range returns the earliest and latest offsets held; ok is false while the
// journal is empty.
func (j *Journal) Range() (earliest, latest int64, ok bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.rangeLocked()
}

// First returns the first offset ever appended; ok is false before the
// first append.
func (j *Journal) First() (offset int64, ok bool) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.first, j.first >= 0
}

// Stats returns the number of records and the bytes of data held.
func (j *Journal) Stats() (records, bytes int) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return len(j.history) + len(j.active), j.bytes
}

// Read returns the record stored under offset. It fails with ErrPurged for
// an offset below the earliest held, and with ErrNotFound where no record
// has that offset.
func (j *Journal) Read(offset int64) (Record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	earliest, _, ok := j.rangeLocked()
	if !ok {
		return Record{}, ErrNotFound
	}
	if offset < earliest {
		return Record{}, ErrPurged
	}
	for _, seg := range j.segmentsLocked() {
		if i, found := searchOffset(seg, offset); found {
			return seg[i], nil
		}
	}
	return Record{}, ErrNotFound
}

// ReadFrom appends to dst up to limit records with offsets >= offset, oldest
// first, and returns the extended slice. It fails with ErrPurged if offset is
// below the earliest record held (the reader would miss records); an offset
// above the latest gives no records and no error. Passing a reused dst keeps
// reads free of allocation.
func (j *Journal) ReadFrom(offset int64, limit int, dst []Record) ([]Record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if earliest, _, ok := j.rangeLocked(); ok && offset < earliest {
		return dst, ErrPurged
	}
	return j.readLocked(offset, limit, dst), nil
}

// ReadNext is ReadFrom for a reader that follows the journal and has read
// every record below next: it fails with ErrPurged if a record at or above
// next was purged before the reader got to it, or if next is below the
// first offset ever appended (the reader asked for events from before the
// stream began). Unlike ReadFrom, a next offset below the earliest record is
// no error when only a gap in the keys lies between. A negative next reads
// from the first record held, whatever its offset.
func (j *Journal) ReadNext(next int64, limit int, dst []Record) ([]Record, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if next >= 0 && (next <= j.purgedThrough || next < j.first) {
		return dst, ErrPurged
	}
	return j.readLocked(next, limit, dst), nil
}

func (j *Journal) readLocked(offset int64, limit int, dst []Record) []Record {
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

// ReadLast appends to dst the newest limit records, oldest first.
func (j *Journal) ReadLast(limit int, dst []Record) []Record {
	return j.ReadBefore(math.MaxInt64, limit, dst)
}

// ReadBefore appends to dst the newest limit records with offsets below
// offset, oldest first: a reader going back through the journal.
func (j *Journal) ReadBefore(offset int64, limit int, dst []Record) []Record {
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

// Wait blocks until the journal holds a record with an offset >= offset, or
// ctx is done, in which case it returns ctx's error. Readers are woken by
// the appends: no polling, and an idle reader costs nothing.
func (j *Journal) Wait(ctx context.Context, offset int64) error {
	if !j.appends.waitFor(ctx, func() bool { return j.holds(offset) }) {
		return ctx.Err()
	}
	return nil
}

// holds reports whether the journal holds offset or a later one.
func (j *Journal) holds(offset int64) bool {
	_, latest, ok := j.Range()
	return ok && latest >= offset
}

// appended returns a channel closed by the next append, for a waiter that
// also waits for something else (the watch waker).
func (j *Journal) appended() <-chan struct{} { return j.appends.changed() }

func (j *Journal) segmentsLocked() [2][]Record {
	return [2][]Record{j.history, j.active}
}

func (j *Journal) rangeLocked() (earliest, latest int64, ok bool) {
	if len(j.active) == 0 {
		// The active segment is empty only before the first append: a
		// roll-over happens on append, never leaving it empty.
		return 0, 0, false
	}
	latest = j.active[len(j.active)-1].Offset
	if len(j.history) > 0 {
		return j.history[0].Offset, latest, true
	}
	return j.active[0].Offset, latest, true
}

func (j *Journal) latestLocked() (int64, bool) {
	_, latest, ok := j.rangeLocked()
	return latest, ok
}

// searchOffset returns the index of the first record with an offset >=
// offset in seg, and whether that record has exactly this offset.
func searchOffset(seg []Record, offset int64) (int, bool) {
	return slices.BinarySearchFunc(seg, offset, func(r Record, o int64) int {
		switch {
		case r.Offset < o:
			return -1
		case r.Offset > o:
			return 1
		}
		return 0
	})
}
