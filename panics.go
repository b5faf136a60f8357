package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
)

// errPanic is wrapped by the errors that recovered panics become.
var errPanic = errors.New("panic")

// recoverAsError, deferred, turns a panic of the function that deferred it
// into an error wrapping errPanic in *err: one bad input then fails one call
// (one event, one read, one session) instead of ending the process.
func recoverAsError(err *error) {
	if p := recover(); p != nil {
		*err = fmt.Errorf("%w: %v", errPanic, p)
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
	log.Error("request handler panicked", "method", r.Method, "target", r.URL.RequestURI(),
		"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	if rec.code != 0 {
		panic(http.ErrAbortHandler)
	}
	writeProblem(rec, newProblem(http.StatusInternalServerError, "internal error while answering %s; the server logged it", r.URL.Path))
}
