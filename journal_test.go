package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// journalTestTimeout bounds every wait in these tests, so a bug shows up as
// a failure rather than a hung test binary. It is generous for -race.
const journalTestTimeout = 60 * time.Second

// recordData is the payload the tests store under key: it lets a reader check
// that a record's data belongs to its offset (and was not overwritten when a
// purged segment's array was reused).
func recordData(key int64) []byte {
	return []byte("event-" + strconv.FormatInt(key, 10))
}

// newTestJournal returns a journal with maxSegment holding keys, each with
// recordData as its data.
func newTestJournal(t *testing.T, maxSegment int, keys ...int64) *journal {
	t.Helper()
	j := newJournal(maxSegment)
	for _, k := range keys {
		if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
			t.Fatalf("Append(%d): %v", k, err)
		}
	}
	return j
}

func offsetsOf(recs []record) []int64 {
	out := make([]int64, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.offset)
	}
	return out
}

// checkRecords fails unless recs hold exactly the keys want, in order, each
// with its own data.
func checkRecords(t *testing.T, what string, recs []record, want []int64) {
	t.Helper()
	if got := offsetsOf(recs); !slices.Equal(got, want) {
		t.Errorf("%s: offsets %v, want %v", what, got, want)
		return
	}
	for _, r := range recs {
		if string(r.data) != string(recordData(r.offset)) {
			t.Errorf("%s: record %d has data %q", what, r.offset, r.data)
		}
	}
}

// journalGapKeys returns n increasing keys starting at 1 with irregular gaps,
// like vCenter's event keys.
func journalGapKeys(n int) []int64 {
	keys := make([]int64, n)
	k := int64(1)
	for i := range keys {
		keys[i] = k
		k++
		switch {
		case i%7 == 3:
			k += 4
		case i%13 == 5:
			k += 1
		case i%97 == 50:
			k += 1000
		}
	}
	return keys
}

// eventually waits until cond holds, failing the test after a deadline. cond
// is polled, yielding the processor between polls: it is for conditions that
// no channel announces (such as a goroutine having blocked).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(journalTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// hasWaiter reports whether a reader is blocked (or about to block) in Wait:
// Wait makes the notifier's channel just before it blocks, and Append clears it.
func hasWaiter(j *journal) bool {
	j.appends.mu.Lock()
	defer j.appends.mu.Unlock()
	return j.appends.next != nil
}

func TestJournalRollOverAndPurge(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 3, 5, 8} {
		t.Run(fmt.Sprintf("maxSegment=%d", n), func(t *testing.T) {
			t.Parallel()
			keys := journalGapKeys(4*n + 1)
			j := newJournal(n)
			for count := 1; count <= len(keys); count++ {
				k := keys[count-1]
				if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
					t.Fatalf("Append(%d): %v", k, err)
				}
				// Model: appends fill segments of n records in turn; the
				// active segment holds the records from index sealed*n
				// on, the history the n before it, everything older is
				// purged.
				sealed := (count - 1) / n
				first := max(0, (sealed-1)*n)
				held := keys[first:count]
				step := fmt.Sprintf("after %d appends", count)

				earliest, latest, ok := j.bounds()
				if !ok || earliest != held[0] || latest != k {
					t.Fatalf("%s: Range() = %d, %d, %v; want %d, %d, true", step, earliest, latest, ok, held[0], k)
				}
				wantBytes := 0
				for _, h := range held {
					wantBytes += len(recordData(h))
				}
				if records, bytes := j.stats(); records != len(held) || bytes != wantBytes {
					t.Fatalf("%s: Stats() = %d records, %d bytes; want %d, %d", step, records, bytes, len(held), wantBytes)
				}
				got, err := j.readFrom(held[0], len(keys), nil)
				if err != nil {
					t.Fatalf("%s: ReadFrom(earliest): %v", step, err)
				}
				checkRecords(t, step, got, held)
				for _, p := range keys[:first] {
					if _, err := j.read(p); !errors.Is(err, errPurged) {
						t.Fatalf("%s: Read(%d) of a purged key: %v, want ErrPurged", step, p, err)
					}
				}
				for _, h := range held {
					if r, err := j.read(h); err != nil || r.offset != h {
						t.Fatalf("%s: Read(%d) = %d, %v", step, h, r.offset, err)
					}
				}
				// The segments themselves: at most n records each, the
				// active one never empty.
				j.mu.RLock()
				nh, na := len(j.history), len(j.active)
				j.mu.RUnlock()
				if wantActive := count - sealed*n; na != wantActive || nh != len(held)-wantActive {
					t.Fatalf("%s: segments hold %d (history) + %d (active), want %d + %d", step, nh, na, len(held)-wantActive, wantActive)
				}
			}
		})
	}
}

// TestJournalSegmentBoundaries spells out the three boundaries of the
// roll-over test above for one segment size.
func TestJournalSegmentBoundaries(t *testing.T) {
	t.Parallel()
	const n = 4
	keys := []int64{10, 11, 12, 13, 20, 21, 22, 23, 30}
	j := newTestJournal(t, n, keys[:n]...)
	if e, l, _ := j.bounds(); e != 10 || l != 13 {
		t.Fatalf("N records: Range = %d, %d", e, l)
	}
	if recs, bytes := j.stats(); recs != n || bytes != n*len("event-10") {
		t.Fatalf("N records: Stats = %d, %d", recs, bytes)
	}

	// N+1: the full active segment is sealed as the history, nothing is lost.
	if err := j.append(record{offset: 20, data: recordData(20)}); err != nil {
		t.Fatal(err)
	}
	if len(j.history) != n || j.history[0].offset != 10 || len(j.active) != 1 {
		t.Fatalf("N+1: history %v, active %v", offsetsOf(j.history), offsetsOf(j.active))
	}
	if recs, _ := j.stats(); recs != n+1 {
		t.Fatalf("N+1: Stats records %d", recs)
	}

	for _, k := range keys[n+1 : 2*n] {
		if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if e, l, _ := j.bounds(); e != 10 || l != 23 {
		t.Fatalf("2N records: Range = %d, %d", e, l)
	}

	// 2N+1: exactly the first segment is purged; earliest becomes the first
	// key of the old active segment.
	if err := j.append(record{offset: 30, data: recordData(30)}); err != nil {
		t.Fatal(err)
	}
	if e, l, _ := j.bounds(); e != 20 || l != 30 {
		t.Fatalf("2N+1: Range = %d, %d, want 20, 30", e, l)
	}
	if recs, bytes := j.stats(); recs != n+1 || bytes != (n+1)*len("event-10") {
		t.Fatalf("2N+1: Stats = %d, %d", recs, bytes)
	}
	for _, k := range keys[:n] {
		if _, err := j.read(k); !errors.Is(err, errPurged) {
			t.Errorf("2N+1: Read(%d) = %v, want ErrPurged", k, err)
		}
	}
	if r, err := j.read(20); err != nil || string(r.data) != "event-20" {
		t.Errorf("2N+1: Read(20) = %q, %v", r.data, err)
	}
}

func TestJournalEmpty(t *testing.T) {
	t.Parallel()
	j := newJournal(3)
	if e, l, ok := j.bounds(); ok {
		t.Errorf("Range() = %d, %d, true on an empty journal", e, l)
	}
	if recs, bytes := j.stats(); recs != 0 || bytes != 0 {
		t.Errorf("Stats() = %d, %d", recs, bytes)
	}
	for _, off := range []int64{0, 1, 1000} {
		if _, err := j.read(off); !errors.Is(err, errNotFound) {
			t.Errorf("Read(%d) = %v, want ErrNotFound", off, err)
		}
		if got, err := j.readFrom(off, 10, nil); err != nil || len(got) != 0 {
			t.Errorf("ReadFrom(%d) = %v, %v; want nothing", off, offsetsOf(got), err)
		}
		if got, err := j.readNext(off, 10, nil); err != nil || len(got) != 0 {
			t.Errorf("ReadNext(%d) = %v, %v; want nothing", off, offsetsOf(got), err)
		}
	}
	if got := j.readLast(10, nil); len(got) != 0 {
		t.Errorf("ReadLast = %v", offsetsOf(got))
	}
}

func TestJournalMinimumSegment(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, -5} {
		j := newTestJournal(t, n, 1, 2, 3)
		// Treated as 1: two records held.
		if e, l, _ := j.bounds(); e != 2 || l != 3 {
			t.Errorf("NewJournal(%d): Range = %d, %d; want 2, 3", n, e, l)
		}
	}
}

func TestJournalReadGaps(t *testing.T) {
	t.Parallel()
	// maxSegment 2: history [10 11], active [15 20].
	j := newTestJournal(t, 2, 10, 11, 15, 20)
	if len(j.history) != 2 || len(j.active) != 2 {
		t.Fatalf("setup: history %v, active %v", offsetsOf(j.history), offsetsOf(j.active))
	}

	for _, tc := range []struct {
		offset int64
		err    error
	}{
		{0, errPurged},
		{9, errPurged},
		{10, nil},
		{11, nil},
		{12, errNotFound},
		{14, errNotFound},
		{15, nil},
		{17, errNotFound},
		{20, nil},
		{21, errNotFound},
		{1 << 40, errNotFound},
	} {
		r, err := j.read(tc.offset)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Read(%d) = %v, want %v", tc.offset, err, tc.err)
			}
			continue
		}
		if err != nil || r.offset != tc.offset || string(r.data) != string(recordData(tc.offset)) {
			t.Errorf("Read(%d) = {%d %q}, %v", tc.offset, r.offset, r.data, err)
		}
	}

	for _, tc := range []struct {
		offset int64
		limit  int
		want   []int64
		err    error
	}{
		{offset: 0, limit: 10, err: errPurged},
		{offset: 9, limit: 10, err: errPurged},
		{offset: 10, limit: 10, want: []int64{10, 11, 15, 20}},
		{offset: 12, limit: 10, want: []int64{15, 20}},
		{offset: 12, limit: 1, want: []int64{15}},
		{offset: 11, limit: 2, want: []int64{11, 15}},
		{offset: 10, limit: 3, want: []int64{10, 11, 15}},
		{offset: 10, limit: 2, want: []int64{10, 11}},
		{offset: 10, limit: 1, want: []int64{10}},
		{offset: 10, limit: 0, want: []int64{}},
		{offset: 20, limit: 10, want: []int64{20}},
		{offset: 16, limit: 10, want: []int64{20}},
		{offset: 21, limit: 10, want: []int64{}},
		{offset: 1 << 40, limit: 10, want: []int64{}},
	} {
		name := fmt.Sprintf("ReadFrom(%d, %d)", tc.offset, tc.limit)
		got, err := j.readFrom(tc.offset, tc.limit, nil)
		if tc.err != nil {
			if !errors.Is(err, tc.err) || len(got) != 0 {
				t.Errorf("%s = %v, %v; want %v", name, offsetsOf(got), err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		checkRecords(t, name, got, tc.want)
	}

	// dst is extended, not overwritten.
	prefix := []record{{offset: -1}}
	got, err := j.readFrom(15, 10, prefix)
	if err != nil || !slices.Equal(offsetsOf(got), []int64{-1, 15, 20}) {
		t.Errorf("ReadFrom into a non-empty dst = %v, %v", offsetsOf(got), err)
	}

	for _, tc := range []struct {
		limit int
		want  []int64
	}{
		{-1, []int64{}},
		{0, []int64{}},
		{1, []int64{20}},
		{2, []int64{15, 20}},
		{3, []int64{11, 15, 20}},
		{4, []int64{10, 11, 15, 20}},
		{100, []int64{10, 11, 15, 20}},
	} {
		checkRecords(t, fmt.Sprintf("ReadLast(%d)", tc.limit), j.readLast(tc.limit, nil), tc.want)
	}
	checkRecords(t, "ReadLast with only an active segment", newTestJournal(t, 5, 3, 7, 9).readLast(2, nil), []int64{7, 9})
	for _, tc := range []struct {
		before int64
		limit  int
		want   []int64
	}{
		{20, 2, []int64{11, 15}},  // across the segments
		{15, 10, []int64{10, 11}}, // fewer than the limit
		{16, 1, []int64{15}},      // within a gap
		{21, 1, []int64{20}},
		{10, 5, []int64{}}, // nothing below the earliest
		{12, 0, []int64{}},
	} {
		checkRecords(t, fmt.Sprintf("ReadBefore(%d, %d)", tc.before, tc.limit), j.readBefore(tc.before, tc.limit, nil), tc.want)
	}

	// After a purge, everything below the new earliest is purged, gaps
	// included: history [15 20], active [30].
	if err := j.append(record{offset: 30, data: recordData(30)}); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{10, 11, 12, 14} {
		if _, err := j.read(off); !errors.Is(err, errPurged) {
			t.Errorf("after purge: Read(%d) = %v, want ErrPurged", off, err)
		}
		if _, err := j.readFrom(off, 10, nil); !errors.Is(err, errPurged) {
			t.Errorf("after purge: ReadFrom(%d) = %v, want ErrPurged", off, err)
		}
	}
	checkRecords(t, "after purge: ReadLast(10)", j.readLast(10, nil), []int64{15, 20, 30})
}

func TestJournalReadNextAfterPurge(t *testing.T) {
	t.Parallel()
	type readerCase struct {
		next int64
		want []int64 // nil: errPurged
	}
	// The stages run in order on one journal with maxSegment 2.
	j := newJournal(2)
	for _, stage := range []struct {
		name   string
		append []int64
		cases  []readerCase
	}{{
		name:   "before any purge", // history [10 11], active [20 21]
		append: []int64{10, 11, 20, 21},
		cases: []readerCase{
			// Below the first offset ever appended: from before the
			// stream began.
			{0, nil},
			{9, nil},
			// A negative offset reads from whatever is first.
			{-1, []int64{10, 11, 20, 21}},
			{10, []int64{10, 11, 20, 21}},
			{11, []int64{11, 20, 21}},
			{12, []int64{20, 21}},
			{22, []int64{}},
		},
	}, {
		name:   "first purge", // 10 11 purged; history [20 21], active [30]
		append: []int64{30},
		cases: []readerCase{
			{0, nil},
			{10, nil},
			{11, nil}, // has not seen 11
			// Has seen 11: only a gap lies between it and the earliest.
			{12, []int64{20, 21, 30}},
			{19, []int64{20, 21, 30}},
			{20, []int64{20, 21, 30}},
			{25, []int64{30}},
			{31, []int64{}},
		},
	}, {
		name:   "second purge", // 20 21 purged; history [30 31], active [40]
		append: []int64{31, 40},
		cases: []readerCase{
			{12, nil},
			{21, nil},
			{22, []int64{30, 31, 40}},
			{30, []int64{30, 31, 40}},
			{32, []int64{40}},
			{41, []int64{}},
		},
	}} {
		for _, k := range stage.append {
			if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range stage.cases {
			name := fmt.Sprintf("%s: ReadNext(%d)", stage.name, c.next)
			got, err := j.readNext(c.next, 10, nil)
			if c.want == nil {
				if !errors.Is(err, errPurged) || len(got) != 0 {
					t.Errorf("%s = %v, %v; want ErrPurged", name, offsetsOf(got), err)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v, want no error", name, err)
				continue
			}
			checkRecords(t, name, got, c.want)
		}
		// A limit still applies across the segments.
		if got, err := j.readNext(0, 0, nil); len(got) != 0 && err == nil {
			t.Errorf("%s: ReadNext with limit 0 = %v", stage.name, offsetsOf(got))
		}
	}
	if got, err := j.readNext(22, 2, nil); err != nil || !slices.Equal(offsetsOf(got), []int64{30, 31}) {
		t.Errorf("ReadNext(22, 2) = %v, %v; want [30 31]", offsetsOf(got), err)
	}
}

func TestJournalAppendOutOfOrder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		keys []int64 // appended first; maxSegment 2
	}{
		{"one record", []int64{10}},
		{"active segment full", []int64{10, 20}},
		{"both segments full", []int64{10, 20, 30, 40}},
		{"after a purge", []int64{10, 20, 30, 40, 50}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := newTestJournal(t, 2, tc.keys...)
			e0, l0, _ := j.bounds()
			r0, b0 := j.stats()
			all0, _ := j.readFrom(e0, 100, nil)
			latest := tc.keys[len(tc.keys)-1]
			for _, bad := range []int64{latest, latest - 1, tc.keys[0], tc.keys[0] - 1, 0, -1} {
				if err := j.append(record{offset: bad, data: []byte("bad")}); !errors.Is(err, errOutOfOrder) {
					t.Errorf("Append(%d) after %v = %v, want ErrOutOfOrder", bad, tc.keys, err)
				}
			}
			if e, l, _ := j.bounds(); e != e0 || l != l0 {
				t.Errorf("Range changed from %d, %d to %d, %d", e0, l0, e, l)
			}
			if r, b := j.stats(); r != r0 || b != b0 {
				t.Errorf("Stats changed from %d, %d to %d, %d", r0, b0, r, b)
			}
			all, _ := j.readFrom(e0, 100, nil)
			checkRecords(t, "records after rejected appends", all, offsetsOf(all0))
			// The journal still takes the next key.
			if err := j.append(record{offset: latest + 1, data: recordData(latest + 1)}); err != nil {
				t.Errorf("Append(%d) after the rejected ones: %v", latest+1, err)
			}
		})
	}
}

func TestJournalSharesRecords(t *testing.T) {
	t.Parallel()
	j := newJournal(2)
	data := make([]byte, 3, 64)
	copy(data, "abc")
	if err := j.append(record{offset: 7, data: data}); err != nil {
		t.Fatal(err)
	}
	same := func(what string, r record) {
		t.Helper()
		if r.offset != 7 {
			t.Errorf("%s: got record %d, want 7", what, r.offset)
			return
		}
		if len(r.data) != len(data) || cap(r.data) != cap(data) || &r.data[0] != &data[0] {
			t.Errorf("%s: Data is a copy, want the appended slice", what)
		}
	}
	r, err := j.read(7)
	if err != nil {
		t.Fatal(err)
	}
	same("Read", r)
	first := func(recs []record, err error) record {
		if err != nil || len(recs) == 0 {
			return record{}
		}
		return recs[0]
	}
	same("ReadFrom", first(j.readFrom(7, 1, nil)))
	same("ReadNext", first(j.readNext(-1, 1, nil)))
	same("ReadLast", first(j.readLast(1, nil), nil))

	// Records read out stay intact when their segment is purged and its
	// array reused for new appends.
	batch, _ := j.readFrom(7, 10, nil)
	for k := int64(8); k < 20; k++ {
		if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
			t.Fatal(err)
		}
	}
	if len(batch) != 1 || batch[0].offset != 7 || string(batch[0].data) != "abc" {
		t.Fatalf("record read before the purge changed to %v", batch)
	}
	same("record read before the purge", batch[0])
}

// startWait runs j.Wait(ctx, offset) in a goroutine and delivers its result.
func startWait(ctx context.Context, j *journal, offset int64) <-chan error {
	done := make(chan error, 1)
	go func() { done <- j.wait(ctx, position{next: offset}) }()
	return done
}

// waitResult returns the result of a Wait started by startWait, failing the
// test if it does not come before the deadline.
func waitResult(t *testing.T, what string, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(journalTestTimeout):
		t.Fatalf("%s: Wait did not return", what)
		return nil
	}
}

func TestJournalWaitReturnsAtOnce(t *testing.T) {
	t.Parallel()
	j := newTestJournal(t, 2, 10, 11, 20, 21, 30) // holds 20 21 30
	// A cancelled context: Wait must not block at all when a record >=
	// offset is held, so it never looks at the context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, off := range []int64{0, 10, 12, 20, 25, 30} {
		if err := j.wait(ctx, position{next: off}); err != nil {
			t.Errorf("Wait(%d) with latest 30 = %v, want nil at once", off, err)
		}
	}
	if err := j.wait(ctx, position{next: 31}); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait(31) with a cancelled context = %v, want context.Canceled", err)
	}
	if err := newJournal(2).wait(ctx, position{next: 0}); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait(0) on an empty journal with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestJournalWaitWokenByAppend(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		initial []int64
		wait    int64
		smaller []int64 // appended first: must not release the waiter
		release int64   // must release it
	}{
		{"empty journal", nil, 0, nil, 0},
		{"empty journal, future offset", nil, 100, []int64{5, 50, 99}, 150},
		{"next offset", []int64{10}, 11, nil, 11},
		{"past a gap", []int64{10}, 100, []int64{20, 99}, 100},
		{"key above the offset", []int64{10}, 100, []int64{50}, 120},
		{"across a roll-over", []int64{1, 2, 3, 4}, 10, []int64{5, 6, 7}, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), journalTestTimeout)
			defer cancel()
			j := newTestJournal(t, 2, tc.initial...)
			done := startWait(ctx, j, tc.wait)
			for _, k := range tc.smaller {
				eventually(t, "the reader to wait", func() bool {
					select {
					case err := <-done:
						t.Fatalf("Wait(%d) returned %v before key %d", tc.wait, err, k)
					default:
					}
					return hasWaiter(j)
				})
				if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
					t.Fatal(err)
				}
			}
			// The reader waits again after the smaller keys woke it.
			eventually(t, "the reader to wait", func() bool {
				select {
				case err := <-done:
					t.Fatalf("Wait(%d) returned %v after keys %v only", tc.wait, err, tc.smaller)
				default:
				}
				return hasWaiter(j)
			})
			if err := j.append(record{offset: tc.release, data: recordData(tc.release)}); err != nil {
				t.Fatal(err)
			}
			if err := waitResult(t, "after the append", done); err != nil {
				t.Errorf("Wait(%d) = %v after Append(%d), want nil", tc.wait, err, tc.release)
			}
		})
	}
}

func TestJournalWaitCancelled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		initial []int64
		wait    int64
	}{
		{"empty journal", nil, 0},
		{"future offset", []int64{1, 2, 3}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := newTestJournal(t, 2, tc.initial...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := startWait(ctx, j, tc.wait)
			eventually(t, "the reader to wait", func() bool { return hasWaiter(j) })
			cancel()
			if err := waitResult(t, "after cancel", done); !errors.Is(err, context.Canceled) {
				t.Errorf("Wait = %v, want context.Canceled", err)
			}
			// A deadline that passes gives the context's DeadlineExceeded.
			dctx, dcancel := context.WithTimeout(context.Background(), time.Millisecond)
			defer dcancel()
			if err := waitResult(t, "after the deadline", startWait(dctx, j, tc.wait)); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Wait past its deadline = %v, want context.DeadlineExceeded", err)
			}
			// The journal still works for others.
			if err := j.append(record{offset: tc.wait, data: recordData(tc.wait)}); err != nil {
				t.Fatal(err)
			}
			if err := j.wait(context.Background(), position{next: tc.wait}); err != nil {
				t.Errorf("Wait after the append = %v", err)
			}
		})
	}
}

// manyWaitersWait is the body of each goroutine of TestJournalWaitManyWaiters;
// its name lets the test find these goroutines in a stack dump.
func manyWaitersWait(ctx context.Context, j *journal, offset int64, done chan<- error) {
	done <- j.wait(ctx, position{next: offset})
}

// blockedWaiters counts the goroutines blocked in journal.wait that were
// started as manyWaitersWait. (Frames are named after the package's import
// path in a test binary, "main" otherwise: match the suffix.)
func blockedWaiters() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "[select") &&
			strings.Contains(g, ".(*journal).wait(") &&
			strings.Contains(g, ".manyWaitersWait(") {
			count++
		}
	}
	return count
}

func TestJournalWaitManyWaiters(t *testing.T) {
	t.Parallel()
	const waiters = 50
	ctx, cancel := context.WithTimeout(context.Background(), journalTestTimeout)
	defer cancel()
	j := newTestJournal(t, 4, 1, 2, 3)
	done := make(chan error, waiters)
	for i := range waiters {
		// Various offsets, all released by the one append of key 100.
		go manyWaitersWait(ctx, j, int64(4+i), done)
	}
	eventually(t, "every reader to block in Wait", func() bool { return blockedWaiters() == waiters })
	if err := j.append(record{offset: 100, data: recordData(100)}); err != nil {
		t.Fatal(err)
	}
	for i := range waiters {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("waiter returned %v", err)
			}
		case <-ctx.Done():
			t.Fatalf("only %d of %d waiters woken by one append", i, waiters)
		}
	}
}

// followJournal reads j from the writer's first key with readNext and Wait as a watch does,
// checking each record against keys, the writer's sequence: every record
// must be the key following the previous one seen. It returns how many keys
// it saw and the error that ended it (nil once it saw them all). onSeen, if
// not nil, is told the count after each batch.
func followJournal(ctx context.Context, j *journal, keys []int64, limit int, yield bool, onSeen func(int)) (int, error) {
	seen := 0
	next := keys[0] // from the writer's first key: all or errPurged
	batch := make([]record, 0, limit)
	for seen < len(keys) {
		var err error
		batch, err = j.readNext(next, limit, batch[:0])
		if err != nil {
			return seen, err
		}
		if len(batch) > limit {
			return seen, fmt.Errorf("ReadNext(%d, %d) gave %d records", next, limit, len(batch))
		}
		if len(batch) == 0 {
			if err := j.wait(ctx, position{next: next}); err != nil {
				return seen, fmt.Errorf("Wait(%d) after %d keys: %w", next, seen, err)
			}
			continue
		}
		for _, r := range batch {
			if seen == len(keys) || r.offset != keys[seen] {
				prev := "nothing"
				if seen > 0 {
					prev = strconv.FormatInt(keys[seen-1], 10)
				}
				return seen, fmt.Errorf("after %s got key %d, want %d (a skip or duplicate)", prev, r.offset, keys[min(seen, len(keys)-1)])
			}
			if string(r.data) != string(recordData(r.offset)) {
				return seen, fmt.Errorf("record %d has data %q", r.offset, r.data)
			}
			seen++
			next = r.offset + 1
		}
		if onSeen != nil {
			onSeen(seen)
		}
		if yield {
			runtime.Gosched()
		}
	}
	return seen, nil
}

// pacer holds the writer back so that one reader is never more than a
// segment behind.
type pacer struct {
	mu   sync.Mutex
	cond *sync.Cond
	seen int
}

func newPacer() *pacer {
	p := &pacer{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *pacer) set(seen int) {
	p.mu.Lock()
	p.seen = max(p.seen, seen)
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *pacer) waitFor(seen int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.seen < seen {
		p.cond.Wait()
	}
}

func TestJournalConcurrentReaders(t *testing.T) {
	t.Parallel()
	const readers = 50
	keys := journalGapKeys(3000)
	for _, tc := range []struct {
		name       string
		maxSegment int
		// small: the journal holds fewer than all keys, so readers may fall
		// behind and get errPurged, except reader 0, which the writer waits
		// for so that it is never more than a segment behind: it must see
		// every key through all the roll-overs and purges.
		small bool
	}{
		{"journal holds all", len(keys), false},
		{"journal holds all in two segments", len(keys)/2 + 1, false},
		{"tiny segments", 3, true},
		{"one-record segments", 1, true},
		{"segments of 64", 64, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), journalTestTimeout)
			defer cancel()
			j := newJournal(tc.maxSegment)
			pace := newPacer()
			start := make(chan struct{})
			var wg sync.WaitGroup
			var mu sync.Mutex
			finished, purged, purgedSeen := 0, 0, 0
			for r := range readers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var onSeen func(int)
					if tc.small && r == 0 {
						onSeen = pace.set
						// Release the writer even if this reader fails.
						defer pace.set(len(keys))
					}
					<-start
					limit := 1 + r%17
					seen, err := followJournal(ctx, j, keys, limit, r%2 == 1, onSeen)
					switch {
					case err == nil:
						mu.Lock()
						finished++
						mu.Unlock()
					case tc.small && r != 0 && errors.Is(err, errPurged):
						// Legitimate only if the key the reader had not
						// yet seen is gone; earliest only grows, so it is
						// still gone now.
						if earliest, _, _ := j.bounds(); earliest <= keys[seen] {
							t.Errorf("reader %d: ErrPurged after %d keys, but key %d is held (earliest %d)", r, seen, keys[seen], earliest)
						}
						mu.Lock()
						purged++
						purgedSeen += seen
						mu.Unlock()
					default:
						t.Errorf("reader %d (limit %d): after %d keys: %v", r, limit, seen, err)
					}
				}()
			}
			writerErr := make(chan error, 1)
			go func() {
				<-start
				for i, k := range keys {
					if tc.small {
						pace.waitFor(i - tc.maxSegment + 1)
					}
					if err := j.append(record{offset: k, data: recordData(k)}); err != nil {
						writerErr <- fmt.Errorf("Append(%d): %w", k, err)
						cancel() // release the readers
						return
					}
					if i%5 == 0 {
						runtime.Gosched()
					}
				}
				writerErr <- nil
			}()
			close(start)
			wg.Wait()
			if err := <-writerErr; err != nil {
				t.Fatal(err)
			}
			if !tc.small && finished != readers {
				t.Errorf("%d of %d readers saw every key", finished, readers)
			}
			t.Logf("%d readers saw every key, %d fell behind (ErrPurged) after %d keys on average", finished, purged, purgedSeen/max(purged, 1))
			if finished+purged != readers && !t.Failed() {
				t.Errorf("%d readers finished, %d purged, of %d", finished, purged, readers)
			}
			// The active segment holds the last 1..maxSegment keys, the
			// history the maxSegment before them.
			want := len(keys)
			if want > tc.maxSegment {
				want = tc.maxSegment + (len(keys)-1)%tc.maxSegment + 1
			}
			if records, _ := j.stats(); records != want {
				t.Errorf("Stats records %d after %d appends with maxSegment %d, want %d", records, len(keys), tc.maxSegment, want)
			}
		})
	}
}

// TestJournalRoomBefore: how many appends a record survives, as the first
// catch-up with a sink counts it (sinkbacklog.go), checked against what
// appending actually purges: exactly for a record held, at least for one
// yet to come.
func TestJournalRoomBefore(t *testing.T) {
	t.Parallel()
	const segment = 3
	for held := 0; held <= 3*segment; held++ {
		for offset := int64(1); offset <= int64(held)+2; offset++ {
			j := newJournal(segment)
			for k := int64(1); k <= int64(held); k++ {
				if err := j.append(record{offset: k, data: nil}); err != nil {
					t.Fatal(err)
				}
			}
			if earliest, _, ok := j.bounds(); ok && offset < earliest {
				continue // purged already
			}
			room := j.roomBefore(offset)
			through, purges := j.nextPurge()
			// Append room records: the first record at or after offset is
			// still held; one more purges it.
			next := int64(held) + 1
			for range room {
				if err := j.append(record{offset: next, data: nil}); err != nil {
					t.Fatal(err)
				}
				next++
			}
			if earliest, _, _ := j.bounds(); earliest > offset {
				t.Errorf("%d held, offset %d: purged within the room of %d", held, offset, room)
			}
			if offset > int64(held) {
				continue // not yet appended: the room is a lower bound
			}
			if err := j.append(record{offset: next, data: nil}); err != nil {
				t.Fatal(err)
			}
			if earliest, _, _ := j.bounds(); earliest <= offset {
				t.Errorf("%d held, offset %d: still held after room %d + 1 appends", held, offset, room)
			}
			if room == 0 && (!purges || through < offset) {
				t.Errorf("%d held, offset %d: no room, but the next append purges through %d (%v)", held, offset, through, purges)
			}
		}
	}
}

// TestJournalStartEpoch: a reset keeps the records up to the keys kept, in
// either segment, lets the next append reuse the dropped offsets, and
// tells each follower whether its position is still good: one that read
// no further than the keys kept goes on, one past them gets a *resetError
// with where to resume; a wait past them wakes.
func TestJournalStartEpoch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		keys        []int64
		keptThrough int64
		wantHeld    []int64
		next        int64 // a follower's position before the reset
		wantResume  int64 // -2: its position stays good
	}{
		{"restore into the active segment", []int64{1, 2, 3, 4, 5, 6}, 5, []int64{3, 4, 5}, 6, -2},
		{"restore into the history", []int64{1, 2, 3, 4, 5, 6}, 3, []int64{3}, 7, 4},
		{"restore below the journal", []int64{1, 2, 3, 4, 5, 6}, 1, nil, 5, 2},
		{"another vCenter", []int64{1, 2, 3, 4, 5, 6}, -1, nil, 7, -1},
		{"a follower at the keys kept", []int64{1, 2, 3}, 2, []int64{1, 2}, 3, -2},
		{"a follower from the first held", []int64{1, 2, 3}, -1, nil, -1, -2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := newTestJournal(t, 2, tc.keys...) // [3 4] [5 6] for six keys
			j.identify("uuid-a")
			before := position{next: tc.next, timeline: j.currentTimeline()}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			woken := make(chan error, 1)
			waiting := position{next: 100, timeline: before.timeline}
			go func() { woken <- j.wait(ctx, waiting) }()

			r := j.startEpoch("uuid-a", tc.keptThrough, "test")
			if r.to.epoch != 1 || j.currentTimeline() != (timeline{instanceUUID: "uuid-a", epoch: 1}) {
				t.Fatalf("timeline after the reset = %+v, reset %+v", j.currentTimeline(), r)
			}
			if err := <-woken; err != nil {
				t.Fatalf("a wait past the keys kept was not woken by the reset: %v", err)
			}
			checkRecords(t, "held after the reset", j.readLast(10, nil), tc.wantHeld)
			records, bytes := j.stats()
			wantBytes := 0
			for _, k := range tc.wantHeld {
				wantBytes += len(recordData(k))
			}
			if records != len(tc.wantHeld) || bytes != wantBytes {
				t.Errorf("stats = %d records, %d bytes; want %d, %d", records, bytes, len(tc.wantHeld), wantBytes)
			}
			// The new timeline's first key reuses an offset dropped.
			first := max(tc.keptThrough, 0) + 1
			if err := j.append(record{offset: first, data: recordData(first)}); err != nil {
				t.Fatalf("append %d after the reset: %v", first, err)
			}

			p := before
			got, err := j.follow(&p, 10, nil)
			if tc.wantResume == -2 {
				if err != nil || p.timeline.epoch != 1 {
					t.Fatalf("follow from %d = %v, %v (epoch %d); want the position to stay good", tc.next, offsetsOf(got), err, p.timeline.epoch)
				}
				return
			}
			var reset *resetError
			if !errors.Is(err, errReset) || !errors.As(err, &reset) || reset.resumeFrom != tc.wantResume {
				t.Fatalf("follow from %d = %v, %v; want errReset resuming from %d", tc.next, offsetsOf(got), err, tc.wantResume)
			}
			if !strings.Contains(err.Error(), "test") {
				t.Errorf("the reset's error %q does not say why", err)
			}
			// Where it says to resume, a follower of the new timeline goes on
			// with the first event of the new timeline.
			p = position{next: reset.resumeFrom, timeline: j.currentTimeline()}
			if got, err := j.follow(&p, 10, nil); err != nil || len(got) == 0 || got[len(got)-1].offset != first {
				t.Fatalf("follow from %d after the reset = %v, %v; want it to end with %d", reset.resumeFrom, offsetsOf(got), err, first)
			}
		})
	}
}

// TestJournalStartEpochTwice: a follower that slept through two resets
// resumes from the lower of their keys kept.
func TestJournalStartEpochTwice(t *testing.T) {
	t.Parallel()
	j := newTestJournal(t, 10, 1, 2, 3, 4, 5, 6)
	p := position{next: 7, timeline: j.currentTimeline()}
	j.startEpoch("", 2, "first")
	if err := j.append(record{offset: 3, data: recordData(3)}); err != nil {
		t.Fatal(err)
	}
	j.startEpoch("", 4, "second")
	var reset *resetError
	if _, err := j.follow(&p, 10, nil); !errors.As(err, &reset) || reset.resumeFrom != 3 || reset.reset.reason != "first" {
		t.Fatalf("follow after two resets = %v; want the first's, resuming from 3", err)
	}
}
