package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"unsafe"
)

// benchRecordSize is the payload of the benchmarks' records: about the
// size of a vSphere event's CloudEvent.
const benchRecordSize = 1 << 10

func benchPayload() []byte {
	b := make([]byte, benchRecordSize)
	for i := range b {
		b[i] = 'x'
	}
	return b
}

// BenchmarkJournalAppend appends to a full journal (every append seals
// and purges in turn), the steady state of a long-running server.
func BenchmarkJournalAppend(b *testing.B) {
	j := newJournal(1000)
	data := benchPayload()
	offset := int64(0)
	for range 2000 {
		offset++
		_ = j.append(record{offset: offset, data: data})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		offset++
		if err := j.append(record{offset: offset, data: data}); err != nil {
			b.Fatal(err)
		}
	}
}

func filledJournal(b *testing.B, segment int) (*journal, int64) {
	b.Helper()
	j := newJournal(segment)
	data := benchPayload()
	for k := int64(1); k <= int64(2*segment); k++ {
		if err := j.append(record{offset: k * 2, data: data}); err != nil { // gaps between keys
			b.Fatal(err)
		}
	}
	return j, int64(4 * segment)
}

func BenchmarkJournalRead(b *testing.B) {
	j, latest := filledJournal(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := j.read(2 + int64(i)%latest&^1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJournalReadPage(b *testing.B) {
	j, latest := filledJournal(b, 1000)
	page := make([]record, 0, 50)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		var err error
		if page, err = j.readFrom(2+int64(i)%(latest-100), 50, page[:0]); err != nil || len(page) != 50 {
			b.Fatal(err, len(page))
		}
	}
}

// BenchmarkJournalFanOut: one writer appends while readers wait for each
// append, wake and read it, as watches do. An operation is one append
// read by every reader.
func BenchmarkJournalFanOut(b *testing.B) {
	for _, readers := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			j := newJournal(1 << 16)
			data := benchPayload()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			// Each reader reports the offset it reached; the writer goes on
			// when all have read the last append, so readers never lag.
			var ready, done sync.WaitGroup
			progress := make([]chan int64, readers)
			for r := range readers {
				progress[r] = make(chan int64, 1)
				ready.Add(1)
				done.Add(1)
				go func() {
					defer done.Done()
					batch := make([]record, 0, 16)
					next := int64(1)
					ready.Done()
					for {
						if j.wait(ctx, position{next: next}) != nil {
							return
						}
						batch, _ = j.readNext(next, 16, batch[:0])
						next = batch[len(batch)-1].offset + 1
						progress[r] <- next - 1
					}
				}()
			}
			ready.Wait()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				offset := int64(i + 1)
				if err := j.append(record{offset: offset, data: data}); err != nil {
					b.Fatal(err)
				}
				for _, p := range progress {
					for <-p < offset {
					}
				}
			}
			b.StopTimer()
			cancel()
			done.Wait()
		})
	}
}

// BenchmarkJournalMemory fills a journal of 2 x 10,000 records of 1 KiB
// and reports the heap it takes beyond the payload, per record, and the
// size of a record's entry.
func BenchmarkJournalMemory(b *testing.B) {
	const segment = 10000
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		j := newJournal(segment)
		// Distinct payloads, as the collector makes one per event.
		for k := int64(1); k <= 2*segment; k++ {
			if err := j.append(record{offset: k, data: benchPayload()}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		records, bytes := j.stats()
		heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.ReportMetric(heap/float64(records)-float64(bytes)/float64(records), "overhead-B/record")
		b.ReportMetric(float64(unsafe.Sizeof(record{})), "entry-B")
		runtime.KeepAlive(j)
	}
}
