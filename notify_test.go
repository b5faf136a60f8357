package main

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
)

// TestNotifierWakesEveryWaiter: one notify wakes every waiter, each of
// which then finds its condition; none is dropped (as a channel that one
// waiter at a time may hold would drop the others).
func TestNotifierWakesEveryWaiter(t *testing.T) {
	t.Parallel()
	var n notifier
	var value atomic.Int64
	const waiters = 50
	var wg sync.WaitGroup
	ready := make(chan struct{}, waiters)
	for i := range waiters {
		wg.Go(func() {
			// Each waits for its own value, all of them reached at once.
			first := true
			if !n.waitFor(t.Context(), func() bool {
				if first {
					first = false
					ready <- struct{}{}
				}
				return value.Load() >= int64(i%5)+1
			}) {
				t.Errorf("waiter %d: context ended", i)
			}
		})
	}
	for range waiters {
		<-ready
	}
	value.Store(5)
	n.notify()
	wg.Wait()
}

// TestNotifierNoMissedChange: a change made between a waiter's look at its
// condition and its wait still wakes it, because the waiter took the
// channel before it looked.
func TestNotifierNoMissedChange(t *testing.T) {
	t.Parallel()
	var n notifier
	changed := n.changed()
	// The change lands after changed() and before the wait.
	n.notify()
	select {
	case <-changed:
	default:
		t.Fatal("a notify after changed() did not close its channel")
	}
	// With nobody waiting, a notify makes no channel.
	n.notify()
	if n.next != nil {
		t.Error("notify with no waiter made a channel")
	}
}

// TestNotifierContextEnds: waitFor reports false once its context ends.
func TestNotifierContextEnds(t *testing.T) {
	t.Parallel()
	var n notifier
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan bool)
	go func() { done <- n.waitFor(ctx, func() bool { return false }) }()
	cancel()
	if <-done {
		t.Error("waitFor = true after its context ended")
	}
	if !n.waitFor(t.Context(), func() bool { return true }) {
		t.Error("waitFor = false for a condition that holds")
	}
}
