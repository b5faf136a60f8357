package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"
)

// watchBatch is the most records a watch writes per flush: a burst reaches
// the client in few writes, and one slow client holds little memory.
const watchBatch = 256

// watchWriteTimeout bounds the writing of one batch: a client that stops
// reading does not hold its connection and goroutine for ever.
const watchWriteTimeout = 30 * time.Second

// watchError is the last line of a watch whose next event was purged
// before the client read it.
type watchError struct {
	Error watchErrorBody `json:"error"`
}

type watchErrorBody struct {
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Earliest *int64 `json:"earliest,omitempty"`
	Latest   *int64 `json:"latest,omitempty"`
}

// serveWatch streams events as NDJSON, from q.offset or from the next event
// to arrive, until the client leaves, the server shuts down (the request's
// context ends) or the timeout passes.
func serveWatch(w http.ResponseWriter, r *http.Request, j *Journal, q eventsQuery, log *slog.Logger) {
	// From now: on an empty journal, from whatever is appended first.
	next := int64(-1)
	if q.hasOffset {
		// Refuse a purged offset while a status can still say so.
		if _, err := j.ReadFrom(q.offset, 0, nil); err != nil {
			writeProblem(w, offsetProblem(j, q.offset, err))
			return
		}
		next = q.offset
	} else if _, latest, ok := j.Range(); ok {
		next = latest + 1
	}

	ctx := r.Context()
	if q.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, q.timeout)
		defer cancel()
	}

	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// Tell nginx-style proxies not to buffer the stream.
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// Flush the status at once, so the client knows the watch is established.
	if err := rc.Flush(); err != nil || r.Method == http.MethodHead {
		return
	}

	log.Debug("watch started", "remote", r.RemoteAddr, "offset", next)
	batch := make([]Record, 0, watchBatch)
	newline := []byte{'\n'}
	for {
		// A watch that always has a backlog never waits: end it here when
		// the timeout passes, the client leaves or the server shuts down.
		if ctx.Err() != nil {
			return
		}
		var err error
		batch, err = j.ReadNext(next, watchBatch, batch[:0])
		if errors.Is(err, ErrPurged) {
			writeWatchError(w, offsetProblem(j, next, err))
			log.Info("watch ended: client fell behind the journal", "remote", r.RemoteAddr, "offset", next)
			return
		}
		if len(batch) == 0 {
			if err := j.Wait(ctx, next); err != nil {
				return
			}
			continue
		}
		_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
		for _, rec := range batch {
			if _, err := w.Write(rec.Data); err != nil {
				return
			}
			if _, err := w.Write(newline); err != nil {
				return
			}
		}
		next = batch[len(batch)-1].Offset + 1
		if err := rc.Flush(); err != nil {
			return
		}
	}
}

// writeWatchError writes p as the final line of an NDJSON watch.
func writeWatchError(w http.ResponseWriter, p *problem) {
	line, _ := json.Marshal(watchError{Error: watchErrorBody{
		Status: p.Status, Detail: p.Detail, Earliest: p.Earliest, Latest: p.Latest,
	}})
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	_, _ = w.Write(append(line, '\n'))
	_ = rc.Flush()
}
