package main

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strings"
)

// Filter parameters of /api/v1/events, each repeatable (OR).
const (
	paramType       = "type"
	paramEventClass = "eventclass"
)

// eventFilter selects records by CloudEvent type and event class. The
// zero value selects every record. Filters never change offsets: a reader
// skips what does not match and moves on by offset.
type eventFilter struct {
	types   []string     // full CloudEvent types; empty: any
	classes []eventClass // empty: any
}

// parseParams parses a query in the API's syntax (a request's, or
// SINK_FILTER), allowing only the given parameters, each with a value and,
// but for the filters, once.
func parseParams(rawQuery string, allowed ...string) (url.Values, error) {
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("malformed query: %w", err)
	}
	for name, v := range values {
		if !slices.Contains(allowed, name) {
			if len(allowed) == 0 {
				return nil, fmt.Errorf("unknown parameter %q: this resource takes no parameters", name)
			}
			return nil, fmt.Errorf("unknown parameter %q (allowed: %s)", name, strings.Join(allowed, ", "))
		}
		if len(v) > 1 && name != paramType && name != paramEventClass {
			return nil, fmt.Errorf("parameter %s is given %d times; give it once", name, len(v))
		}
		if slices.Contains(v, "") {
			return nil, fmt.Errorf("parameter %s has an empty value", name)
		}
	}
	return values, nil
}

// parseFilter reads a filter on its own, as SINK_FILTER gives it: the
// same parameters, repetitions and refusals as in a request.
func parseFilter(rawQuery string) (eventFilter, error) {
	values, err := parseParams(rawQuery, paramType, paramEventClass)
	if err != nil {
		return eventFilter{}, err
	}
	return parseEventFilter(values)
}

// parseEventFilter reads type= (the full CloudEvent type or just the
// vSphere name, as in VmPoweredOnEvent) and eventclass=.
func parseEventFilter(values url.Values) (eventFilter, error) {
	var f eventFilter
	for _, t := range values[paramType] {
		if !strings.HasPrefix(t, cloudEventTypePrefix) || !strings.HasSuffix(t, cloudEventTypeSuffix) {
			t = cloudEventType(t)
		}
		f.types = append(f.types, t)
	}
	for _, v := range values[paramEventClass] {
		c, ok := parseEventClass(v)
		if !ok {
			return f, fmt.Errorf("parameter eventclass: %q is not one of %s, %s, %s", v, classEvent, classEventEx, classExtendedEvent)
		}
		f.classes = append(f.classes, c)
	}
	return f, nil
}

// all reports whether the filter selects every record.
func (f eventFilter) all() bool { return len(f.types) == 0 && len(f.classes) == 0 }

func (f eventFilter) match(r record) bool {
	return (len(f.types) == 0 || slices.Contains(f.types, r.eventType)) &&
		(len(f.classes) == 0 || slices.Contains(f.classes, r.class))
}

// readPage returns up to limit records that match f, with offsets >=
// offset, oldest first, and the last offset it scanned (-1 if none), from
// which the next page continues. It fails with errPurged if offset is below
// the earliest record held.
func (f eventFilter) readPage(j *journal, offset int64, limit int) (page []record, scanned int64, err error) {
	page = make([]record, 0, min(limit, 64))
	if f.all() {
		page, err = j.readFrom(offset, limit, page)
		if n := len(page); n > 0 {
			return page, page[n-1].offset, err
		}
		return page, -1, err
	}
	scanned = -1
	chunk := make([]record, 0, max(limit, 256))
	for len(page) < limit {
		if scanned < 0 {
			chunk, err = j.readFrom(offset, cap(chunk), chunk[:0])
			if err != nil {
				return nil, -1, err
			}
		} else if chunk, err = j.readNext(scanned+1, cap(chunk), chunk[:0]); err != nil {
			// Purged while scanning: the page ends here and the next one
			// reports it.
			return page, scanned, nil
		}
		if len(chunk) == 0 {
			break
		}
		for _, r := range chunk {
			scanned = r.offset
			if f.match(r) {
				if page = append(page, r); len(page) == limit {
					break
				}
			}
		}
	}
	return page, scanned, nil
}

// readNewest returns the newest limit records that match f, oldest first.
// It goes back through the journal a chunk at a time, so that it holds no
// more than the page and one chunk, however many records match.
func (f eventFilter) readNewest(j *journal, limit int) []record {
	if f.all() {
		return j.readLast(limit, make([]record, 0, limit))
	}
	var page []record // newest first
	chunk := make([]record, 0, 256)
	for before := int64(math.MaxInt64); len(page) < limit; {
		if chunk = j.readBefore(before, cap(chunk), chunk[:0]); len(chunk) == 0 {
			break
		}
		for i := len(chunk) - 1; i >= 0 && len(page) < limit; i-- {
			if f.match(chunk[i]) {
				page = append(page, chunk[i])
			}
		}
		before = chunk[0].offset
	}
	slices.Reverse(page)
	return page
}
