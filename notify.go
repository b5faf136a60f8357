package main

import (
	"context"
	"sync"
	"time"
)

// notifier tells any number of waiters that something changed: the
// journal's appends, the sink's progress, the collector's state, the
// count of watches on taken connections. A waiter takes the channel of
// the next change first, then looks at the condition it waits for, then
// waits on the channel: a change between the look and the wait closes the
// channel it holds, so none is missed. The zero value is ready to use; it
// is safe for concurrent use.
type notifier struct {
	mu sync.Mutex
	// next is closed by the next notify. It is made only when someone
	// waits, so that a change nobody waits for costs a lock and no
	// allocation.
	next chan struct{}
}

// changed returns a channel closed by the next notify.
func (n *notifier) changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.next == nil {
		n.next = make(chan struct{})
	}
	return n.next
}

// notify wakes every waiter.
func (n *notifier) notify() {
	n.mu.Lock()
	if n.next != nil {
		close(n.next)
		n.next = nil
	}
	n.mu.Unlock()
}

// waitFor waits until cond holds, looking again at every change, and
// reports true; or until ctx is done, and reports false. This is the one
// loop the server waits in for something another goroutine changes.
func (n *notifier) waitFor(ctx context.Context, cond func() bool) bool {
	for {
		changed := n.changed()
		if cond() {
			return true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
}

// sleep waits for d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
