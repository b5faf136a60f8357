package main

import "testing"

// TestWatchBuffers: a batch goes back to the pool empty and without its
// records (a pooled batch must not keep purged data alive), and a buffer
// comes back empty.
func TestWatchBuffers(t *testing.T) {
	t.Parallel()
	p := newWatchBuffers()
	b := p.batch()
	if len(*b) != 0 || cap(*b) != watchBatch {
		t.Fatalf("new batch: len %d cap %d, want 0 and %d", len(*b), cap(*b), watchBatch)
	}
	*b = append(*b, record{offset: 1, data: []byte("x")}, record{offset: 2, data: []byte("y")})
	held := (*b)[:2]
	p.putBatch(b)
	if len(*b) != 0 {
		t.Fatalf("returned batch has %d records", len(*b))
	}
	for i, r := range held {
		if r.data != nil || r.offset != 0 {
			t.Fatalf("record %d still held after return: %+v", i, r)
		}
	}
	buf := p.buffer()
	*buf = append(*buf, "data"...)
	p.putBuffer(buf)
	if len(*buf) != 0 {
		t.Fatalf("returned buffer has %d bytes", len(*buf))
	}
	// A buffer grown past maxPooledBytes is left to the GC, not pooled.
	big := make([]byte, 0, 2*maxPooledBytes)
	p.putBuffer(&big)
	if got := p.buffer(); cap(*got) > maxPooledBytes {
		t.Fatalf("pooled a buffer of %d bytes", cap(*got))
	}
}
