package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"
)

// errPanic is what the errors that recovered panics become are (errors.Is).
var errPanic = errors.New("panic")

// panicError is a recovered panic, with the stack where it happened, so
// that the bug can be found from the log line that reports it.
type panicError struct {
	value any
	stack string
}

// newPanicError is the error of p, recovered by a deferred function: the
// stack is still the panicking one.
func newPanicError(p any) error { return &panicError{value: p, stack: string(debug.Stack())} }

func (e *panicError) Error() string        { return fmt.Sprintf("panic: %v", e.value) }
func (e *panicError) Is(target error) bool { return target == errPanic }

// recoverAsError, deferred, turns a panic of the function that deferred it
// into a panicError in *err: one bad input then fails one call (one event,
// one read, one session) instead of ending the process.
func recoverAsError(err *error) {
	if p := recover(); p != nil {
		*err = newPanicError(p)
	}
}

// errorAttrs are the log attributes of err: its message, and the stack of
// a recovered panic in its chain.
func errorAttrs(err error) []any {
	attrs := []any{"error", err.Error()}
	var pe *panicError
	if errors.As(err, &pe) {
		attrs = append(attrs, "stack", pe.stack)
	}
	return attrs
}

// loopRestartPause is the pause before a loop that panicked runs again, so
// that a panic at every turn does not spin.
const loopRestartPause = time.Second

// keepRunning runs loop until ctx is done, and runs it again after a pause
// whenever it panics: a bug met in one of the server's long-lived loops
// (delivery to the sink, the token file's reload) is logged, with its
// stack, instead of ending the process. A loop must keep its progress in
// its own fields, so that it resumes where it was.
func keepRunning(ctx context.Context, log *slog.Logger, name string, loop func(context.Context)) {
	for {
		panicked := func() (panicked bool) {
			defer func() {
				if p := recover(); p != nil {
					log.Error("loop panicked; running it again", "loop", name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
					panicked = true
				}
			}()
			loop(ctx)
			return false
		}()
		if !panicked || !sleep(ctx, loopRestartPause) {
			return
		}
	}
}

// answerPanic, deferred by a handler wrapper, answers a panicking request
// with 500 problem+json and logs the panic with its stack. If the answer
// had begun, the connection is cut instead (as net/http does), so that the
// client does not take a partial answer for a whole one.
func answerPanic(rec *statusRecorder, r *http.Request, log *slog.Logger) {
	p := recover()
	if p == nil {
		return
	}
	if p == http.ErrAbortHandler {
		panic(p)
	}
	log.Error("request handler panicked", "method", r.Method, "target", logTarget(r),
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	if rec.code != 0 {
		panic(http.ErrAbortHandler)
	}
	writeProblem(rec, newProblem(http.StatusInternalServerError, "internal error while answering %s; the server logged it", r.URL.Path))
}
