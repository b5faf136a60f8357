package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// problem is an RFC 9457 problem details body. Offset errors also carry the
// journal's range, so a client can pick a valid offset without another call.
type problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Earliest *int64 `json:"earliest,omitempty"`
	Latest   *int64 `json:"latest,omitempty"`
}

// newProblem returns a problem of the generic type, whose title is the
// status text (RFC 9457, section 4.2.1).
func newProblem(status int, format string, args ...any) *problem {
	return &problem{
		Type:   "about:blank",
		Title:  http.StatusText(status),
		Status: status,
		Detail: fmt.Sprintf(format, args...),
	}
}

// offsetProblem describes a journal error for offset, with the range held.
func offsetProblem(j *journal, offset int64, err error) *problem {
	var p *problem
	switch {
	case errors.Is(err, errPurged):
		p = newProblem(http.StatusGone, "invalid offset %d: purged or before the stream began (below the earliest offset held)", offset)
	case errors.Is(err, errReset):
		p = newProblem(http.StatusGone, "invalid offset %d: %v", offset, err)
	case errors.Is(err, errNotFound):
		p = newProblem(http.StatusNotFound, "invalid offset %d: not found (no event has this key: a gap in vCenter's keys, or not yet happened)", offset)
	default:
		p = newProblem(http.StatusInternalServerError, "read offset %d: %v", offset, err)
	}
	return p.withRange(j)
}

// withRange adds the journal's range to p, if the journal holds any record.
func (p *problem) withRange(j *journal) *problem {
	if earliest, latest, ok := j.bounds(); ok {
		p.Earliest, p.Latest = &earliest, &latest
	}
	return p
}

func writeProblem(w http.ResponseWriter, p *problem) {
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}
