package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Fuzz targets. Their seed corpora are the files under testdata/fuzz/<name>/
// (run as ordinary tests by "go test"); the f.Add seeds here are only the
// minimum that keeps a target meaningful without them. FuzzAPIRequest, in
// api_test.go, is the fourth target. .ci/run fuzzes each one for a while.

// fuzzWatchWindow is how long a fuzzed request may stream: its context ends
// after it, so every watch ends, and quickly.
const fuzzWatchWindow = 20 * time.Millisecond

// fuzzHangLimit is how long a handler may take to return once its request's
// context has ended: a watch that outlives its client is a bug.
const fuzzHangLimit = 10 * time.Second

// fuzzEvent is one event of the fuzzed journal: its key, CloudEvent type and
// eventclass.
type fuzzEvent struct {
	key   int64
	typ   string
	class string
}

// fuzzEvents fill the journal of FuzzEventsQuery. With segments of 4, the
// journal holds keys 8..144 (earliest 8, latest 144), with gaps, after a
// purge: offsets below 8 are 410, and a next page exists for most offsets.
var fuzzEvents = []fuzzEvent{
	{1, "vmware.vsphere.VmPoweredOnEvent.v0", "event"},
	{2, "vmware.vsphere.UserLoginSessionEvent.v0", "event"},
	{3, "vmware.vsphere.com.vmware.vc.HA.DasHostFailedEvent.v0", "eventex"},
	{5, "vmware.vsphere.com.vmware.cl.CreateLibraryEvent.v0", "extendedevent"},
	{8, "vmware.vsphere.VmPoweredOnEvent.v0", "event"},
	{13, "vmware.vsphere.UserLoginSessionEvent.v0", "event"},
	{21, "vmware.vsphere.com.vmware.vc.HA.DasHostFailedEvent.v0", "eventex"},
	{34, "vmware.vsphere.com.vmware.cl.CreateLibraryEvent.v0", "extendedevent"},
	{55, "vmware.vsphere.VmPoweredOffEvent.v0", "event"},
	{89, "vmware.vsphere.VmPoweredOnEvent.v0", "event"},
	{144, "vmware.vsphere.UserLogoutSessionEvent.v0", "event"},
}

// fuzzRecord is the CloudEvent record of e, shaped as the collector's.
func fuzzRecord(e fuzzEvent) []byte {
	id := strconv.FormatInt(e.key, 10)
	return []byte(`{"specversion":"1.0","id":"` + id + `","source":"https://vc.example.com/sdk","type":"` + e.typ +
		`","datacontenttype":"application/json","time":"2024-01-02T03:04:05.123456789Z","data":{"Key":` + id +
		`,"ChainId":` + id + `,"FullFormattedMessage":"fuzz \u003c\u0026\u003e"},"eventclass":"` + e.class + `"}`)
}

// fuzzCloudEvent is what the checks read of a CloudEvent (or of a watch's
// final error line).
type fuzzCloudEvent struct {
	ID         string          `json:"id"`
	Type       string          `json:"type"`
	EventClass string          `json:"eventclass"`
	Error      json.RawMessage `json:"error"`
}

// FuzzEventsQuery sends GET /api/v1/events with an arbitrary query, Accept
// and Last-Event-ID, to a journal with events and to an empty one. It checks
// what the contract (API.md) promises: no 5xx but a 503 with Retry-After,
// every error a problem whose status is the code, a malformed query 400 (or
// 414 when overlong), and for a valid one, pages and streams that hold
// what the query asked for.
func FuzzEventsQuery(f *testing.F) {
	f.Add("offset=8&limit=2", "", "")

	full := newJournal(4)
	for _, e := range fuzzEvents {
		class, ok := parseEventClass(e.class)
		if !ok {
			f.Fatalf("event class %q", e.class)
		}
		if err := full.append(record{offset: e.key, data: fuzzRecord(e), eventType: e.typ, class: class}); err != nil {
			f.Fatal(err)
		}
	}
	journals := []struct {
		name    string
		journal *journal
		empty   bool
	}{
		{"journal 8..144", full, false},
		{"empty journal", newJournal(4), true},
	}
	logger := slog.New(slog.DiscardHandler)
	for i := range journals {
		if _, _, ok := journals[i].journal.bounds(); ok == journals[i].empty {
			f.Fatalf("%s: Range ok %v", journals[i].name, ok)
		}
	}
	handlers := make([]http.Handler, len(journals))
	for i, j := range journals {
		handlers[i] = newHandler(handlerDeps{journal: j.journal, log: logger})
	}

	f.Fuzz(func(t *testing.T, query, accept, lastEventID string) {
		target := "/api/v1/events?" + query
		head := "GET " + target + " HTTP/1.1\r\nHost: example.com\r\n"
		for _, h := range []struct{ name, value string }{{"Accept", accept}, {"Last-Event-ID", lastEventID}} {
			if h.value == "" {
				continue
			}
			if !fuzzValidHeaderValue(h.value) {
				return // a server refuses it before any handler
			}
			head += h.name + ": " + h.value + "\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head + "\r\n")))
		if err != nil {
			return // the server would not get this far
		}
		// ReadRequest trims the header values, as a server does.
		accept, lastEventID = r.Header.Get("Accept"), r.Header.Get("Last-Event-ID")
		want := fuzzParseEventsQuery(r.URL.RawQuery, fuzzAcceptsEventStream(accept))
		what := fmt.Sprintf("GET %.200q (Accept %.50q, Last-Event-ID %.50q)", target, accept, lastEventID)

		for i, h := range handlers {
			j := journals[i]
			what := what + " on the " + j.name
			w := fuzzServe(t, h, r, what)
			resp, body := w.Result(), w.Body.Bytes()
			code := resp.StatusCode

			// Anything: no server error but a watch refused for load, and
			// every error is a problem.
			if code >= 500 && (code != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "") {
				t.Fatalf("%s: status %d: %.300s", what, code, body)
			}
			if code < 200 || code >= 300 {
				fuzzCheckProblem(t, what, resp, body)
			}
			if code == http.StatusServiceUnavailable {
				continue // a watch cap is no property of the query
			}

			switch {
			case len(r.RequestURI) > maxRequestTarget:
				if code != http.StatusRequestURITooLong {
					t.Fatalf("%s: target of %d bytes: status %d, want 414", what, len(r.RequestURI), code)
				}
				continue
			case want.invalid != "":
				if code != http.StatusBadRequest {
					t.Fatalf("%s: %s: status %d, want 400: %.300s", what, want.invalid, code, body)
				}
				continue
			case want.unsure:
				continue // the contract leaves the answer open
			}

			// A valid query.
			switch code {
			case http.StatusOK:
				switch ct := resp.Header.Get("Content-Type"); {
				case ct == "application/json" && want.maybeList:
					if j.empty {
						t.Fatalf("%s: status 200 on an empty journal, want 204: %.300s", what, body)
					}
					fuzzCheckPage(t, what, resp, body, want)
				case ct == "application/x-ndjson" && want.watch,
					ct == "text/event-stream" && want.maybeWatch && want.sse:
					fuzzCheckStream(t, what, resp, body, want, lastEventID)
				default:
					t.Fatalf("%s: status 200 with Content-Type %q, want a %s: %.300q", what, ct, want.answer(), body)
				}
			case http.StatusNoContent:
				if !want.maybeList || !j.empty {
					t.Fatalf("%s: status 204, but the journal is not empty or this is a watch", what)
				}
			case http.StatusGone:
				// Only a start below the earliest (8) is gone: the offset,
				// or for a watch the key after the Last-Event-ID.
				lastID, lastOK := fuzzDigitsValue(lastEventID)
				if !(want.hasOffset && want.offset < 8) && !(lastOK && lastID < 7) {
					t.Fatalf("%s: status 410 without a start below the earliest: %.300s", what, body)
				}
				if j.empty {
					t.Fatalf("%s: status 410 on an empty journal: %.300s", what, body)
				}
			case http.StatusBadRequest:
				// Filter values and Last-Event-ID have no documented syntax
				// beyond "not empty": an implementation may refuse some.
				if len(want.types) == 0 && len(want.classes) == 0 && lastEventID == "" {
					t.Fatalf("%s: status 400 for a valid query: %.300s", what, body)
				}
			case http.StatusNotAcceptable:
				if accept == "" {
					t.Fatalf("%s: status 406 without an Accept header: %.300s", what, body)
				}
			default:
				t.Fatalf("%s: status %d for a valid query: %.300s", what, code, body)
			}
		}
	})
}

// fuzzServe serves r with a context that ends after fuzzWatchWindow, and
// fails if the handler does not return soon after.
func fuzzServe(t *testing.T, h http.Handler, r *http.Request, what string) *httptest.ResponseRecorder {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fuzzWatchWindow)
	defer cancel()
	w := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(w, r.Clone(ctx))
	}()
	select {
	case <-done:
	case <-time.After(fuzzWatchWindow + fuzzHangLimit):
		t.Fatalf("%s: the handler did not return %v after the request's context ended", what, fuzzHangLimit)
	}
	return w
}

// fuzzValidHeaderValue reports whether a server accepts v as a header value
// (RFC 9110, section 5.5): no control characters but tab.
func fuzzValidHeaderValue(v string) bool {
	for i := range len(v) {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// fuzzQuery is what the contract says of a query of /api/v1/events.
type fuzzQuery struct {
	// invalid says why the query must be refused with 400; empty if not.
	invalid string
	// unsure is set when the contract leaves the answer open.
	unsure bool
	// sse is set when the client accepts text/event-stream.
	sse bool
	// watch is set by watch=true; maybeWatch also when an SSE client gives
	// no watch parameter (an EventSource may well be taken as a watch),
	// maybeList when the answer may be a page.
	watch, maybeWatch, maybeList bool
	offset                       int64
	hasOffset                    bool
	limit                        int
	types                        []string
	classes                      []string
}

// answer names the answers the query may have.
func (q fuzzQuery) answer() string {
	var s []string
	if q.maybeList {
		s = append(s, "page (application/json)")
	}
	if q.watch {
		s = append(s, "NDJSON watch")
	}
	if q.maybeWatch && q.sse {
		s = append(s, "SSE watch")
	}
	return strings.Join(s, " or ")
}

// fuzzAcceptsEventStream reports whether an Accept header value names
// text/event-stream.
func fuzzAcceptsEventStream(accept string) bool {
	for media := range strings.SplitSeq(accept, ",") {
		media, _, _ = strings.Cut(media, ";")
		if strings.EqualFold(strings.TrimSpace(media), "text/event-stream") {
			return true
		}
	}
	return false
}

// fuzzParseEventsQuery is the contract's reading of a query (API.md), written
// apart from the server's: the oracle of FuzzEventsQuery. sse is whether the
// client accepts text/event-stream.
func fuzzParseEventsQuery(raw string, sse bool) fuzzQuery {
	q := fuzzQuery{limit: defaultPageSize, sse: sse}
	values, err := url.ParseQuery(raw)
	if err != nil {
		q.invalid = "malformed query"
		return q
	}
	for name, v := range values {
		switch name {
		case paramOffset, paramLimit, paramWatch, paramTimeout:
			if len(v) > 1 {
				q.invalid = name + " given more than once"
				return q
			}
		case "type":
			q.types = v
		case "eventclass":
			if len(v) > 1 {
				q.unsure = true // repeatable or not: API.md does not say
			}
			q.classes = v
		default:
			q.invalid = "unknown parameter " + name
			return q
		}
		for _, s := range v {
			if s == "" {
				q.invalid = "empty " + name
				return q
			}
		}
	}
	v, watchGiven := values[paramWatch]
	if watchGiven {
		b, err := strconv.ParseBool(v[0])
		if err != nil {
			q.invalid = "watch not a boolean"
			return q
		}
		q.watch = b
		if sse && !b {
			q.unsure = true // SSE but watch=false: API.md does not say
		}
	}
	q.maybeWatch = q.watch || (sse && !watchGiven)
	q.maybeList = !q.watch
	if v, ok := values[paramOffset]; ok {
		n, ok := fuzzDigitsValue(v[0])
		if !ok {
			q.invalid = "offset not a non-negative integer"
			return q
		}
		q.offset, q.hasOffset = n, true
	}
	if v, ok := values[paramLimit]; ok {
		n, ok := fuzzDigitsValue(v[0])
		if !ok || n < 1 || n > maxPageSize {
			q.invalid = "limit not an integer from 1 to 1000"
			return q
		}
		q.limit = int(n)
		if q.maybeWatch {
			q.unsure = true // a limit on a watch: API.md does not say
		}
	}
	if v, ok := values[paramTimeout]; ok {
		n, ok := fuzzDigitsValue(v[0])
		switch {
		case !ok || n < 1:
			q.invalid = "timeoutSeconds not a positive integer"
			return q
		case !q.maybeWatch:
			q.invalid = "timeoutSeconds without a watch"
			return q
		case n > maxTimeoutSeconds:
			q.unsure = true // a bound the server may set
		}
	}
	return q
}

// fuzzDigitsValue returns the value of s if s is ASCII digits (at least one)
// whose value fits an int64, computed without strconv.
func fuzzDigitsValue(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	const max = 1<<63 - 1
	var n int64
	for i := range len(s) {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (max-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// fuzzTypeMatches reports whether a CloudEvent type is selected by a type=
// value: the full type, or just the name in vmware.vsphere.<Name>.v0.
func fuzzTypeMatches(typ, value string) bool {
	return typ == value || typ == "vmware.vsphere."+value+".v0"
}

// fuzzCheckEvent checks an event of a page or a stream against the query,
// with prev the id of the event before it (-1 for none), and returns its id
// and type.
func fuzzCheckEvent(t *testing.T, what string, data []byte, q fuzzQuery, prev int64) (int64, string) {
	t.Helper()
	var ev fuzzCloudEvent
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatalf("%s: event %.300q is not JSON: %v", what, data, err)
	}
	id, ok := fuzzDigitsValue(ev.ID)
	if !ok {
		t.Fatalf("%s: event %.300s has no numeric id", what, data)
	}
	if id <= prev {
		t.Fatalf("%s: event %d after %d: not oldest first", what, id, prev)
	}
	if q.hasOffset && id < q.offset {
		t.Fatalf("%s: event %d below offset %d", what, id, q.offset)
	}
	if len(q.types) > 0 && !fuzzAny(q.types, func(v string) bool { return fuzzTypeMatches(ev.Type, v) }) {
		t.Fatalf("%s: event %d of type %q passed the filter type=%q", what, id, ev.Type, q.types)
	}
	if len(q.classes) > 0 && !fuzzAny(q.classes, func(v string) bool { return ev.EventClass == v }) {
		t.Fatalf("%s: event %d of eventclass %q passed the filter eventclass=%q", what, id, ev.EventClass, q.classes)
	}
	return id, ev.Type
}

func fuzzAny(values []string, match func(string) bool) bool {
	for _, v := range values {
		if match(v) {
			return true
		}
	}
	return false
}

// fuzzCheckPage checks the 200 answer to a list.
func fuzzCheckPage(t *testing.T, what string, resp *http.Response, body []byte, q fuzzQuery) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: page with Content-Type %q", what, ct)
	}
	var page []json.RawMessage
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatalf("%s: page %.300q is not a JSON array: %v", what, body, err)
	}
	if len(page) > q.limit {
		t.Fatalf("%s: page of %d events, limit %d", what, len(page), q.limit)
	}
	last := int64(-1)
	for _, data := range page {
		last, _ = fuzzCheckEvent(t, what, data, q, last)
	}
	link := resp.Header.Get("Link")
	if link == "" {
		return
	}
	target, ok := strings.CutSuffix(link, `>; rel="next"`)
	target, ok2 := strings.CutPrefix(target, "<")
	if !ok || !ok2 {
		t.Fatalf("%s: Link %q is not <...>; rel=\"next\"", what, link)
	}
	u, err := url.Parse(target)
	if err != nil {
		t.Fatalf("%s: Link %q: %v", what, link, err)
	}
	next, ok := fuzzDigitsValue(u.Query().Get(paramOffset))
	if !ok || next <= last || (q.hasOffset && next <= q.offset) {
		t.Fatalf("%s: Link %q after events up to %d: the next offset does not move on", what, link, last)
	}
	// The next page is the same query from a later offset.
	if got := fuzzParseEventsQuery(u.RawQuery, false); got.invalid != "" || got.limit != q.limit ||
		!slices.Equal(got.types, q.types) || !slices.Equal(got.classes, q.classes) {
		t.Fatalf("%s: Link %q is not the same query (%+v)", what, link, got)
	}
}

// fuzzCheckStream checks the 200 answer to a watch, NDJSON or SSE. The
// journal takes no appends while it runs, so only a replay (from an offset
// or a Last-Event-ID) has events.
func fuzzCheckStream(t *testing.T, what string, resp *http.Response, body []byte, q fuzzQuery, lastEventID string) {
	t.Helper()
	replay := q.hasOffset || lastEventID != ""
	if lastEventID != "" {
		// An EventSource reconnects to the same URL with the Last-Event-ID
		// of its last event: that, not the offset, says where to resume.
		q.hasOffset = false
	}
	last := int64(-1)
	ct := resp.Header.Get("Content-Type")
	switch {
	case ct == "application/x-ndjson":
		lines := bytes.Split(body, []byte{'\n'})
		if partial := lines[len(lines)-1]; len(partial) != 0 {
			t.Fatalf("%s: stream ends in a partial line %.300q", what, partial)
		}
		for _, line := range lines[:len(lines)-1] {
			if bytes.HasPrefix(line, []byte(`{"error":`)) {
				// A lagging client's last line.
				if !json.Valid(line) {
					t.Fatalf("%s: watch error line %.300q is not JSON", what, line)
				}
				continue
			}
			last, _ = fuzzCheckEvent(t, what, line, q, last)
		}
	case ct == "text/event-stream":
		var id, event string
		var data []string
		for line := range strings.SplitSeq(string(body), "\n") {
			line = strings.TrimSuffix(line, "\r")
			name, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch name {
			case "": // a blank line ends an event; ":" starts a comment
				if line == "" && len(data) > 0 {
					joined := strings.Join(data, "\n")
					if event == "error" {
						if !json.Valid([]byte(joined)) {
							t.Fatalf("%s: SSE error %.300q is not JSON", what, joined)
						}
					} else {
						var typ string
						last, typ = fuzzCheckEvent(t, what, []byte(joined), q, last)
						if id != strconv.FormatInt(last, 10) {
							t.Fatalf("%s: SSE id %q for event %d", what, id, last)
						}
						if event != typ {
							t.Fatalf("%s: SSE event %q for event %d of type %q", what, event, last, typ)
						}
					}
				}
				if line == "" {
					id, event, data = "", "", nil
				}
			case "id":
				id = value
			case "event":
				event = value
			case "data":
				data = append(data, value)
			case "retry":
			default:
				t.Fatalf("%s: SSE line %.300q", what, line)
			}
		}
	default:
		t.Fatalf("%s: watch with Content-Type %q", what, ct)
	}
	if last >= 0 && !replay {
		t.Fatalf("%s: a watch from now streamed event %d, appended before it began", what, last)
	}
}

// fuzzCheckProblem checks that an error answer is an RFC 9457 problem whose
// status is the response's.
func fuzzCheckProblem(t *testing.T, what string, resp *http.Response, body []byte) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("%s: status %d with Content-Type %q, want application/problem+json: %.300q", what, resp.StatusCode, ct, body)
	}
	var p struct {
		Type   *string `json:"type"`
		Title  *string `json:"title"`
		Status *int    `json:"status"`
		Detail *string `json:"detail"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatalf("%s: status %d with a body that is no JSON object: %v: %.300q", what, resp.StatusCode, err, body)
	}
	if p.Type == nil || p.Title == nil || p.Status == nil || p.Detail == nil {
		t.Fatalf("%s: problem %.300s lacks type, title, status or detail", what, body)
	}
	if *p.Status != resp.StatusCode {
		t.Fatalf("%s: problem status %d in a %d answer", what, *p.Status, resp.StatusCode)
	}
}

// FuzzWireString checks appendString, the JSON string encoder of the wire
// format: its output is valid JSON that decodes to the input, with invalid
// UTF-8 bytes replaced by U+FFFD one for one (as encoding/json does), and
// holds no raw control characters, U+2028 or U+2029.
func FuzzWireString(f *testing.F) {
	f.Add("a\"b\\c\n\x00<&>\u2028\xff")
	f.Fuzz(func(t *testing.T, s string) {
		prefix := []byte(`{"k":`)
		out := appendString(bytes.Clone(prefix), s)
		if !bytes.HasPrefix(out, prefix) {
			t.Fatalf("appendString(%q) lost the bytes it appends to: %q", s, out)
		}
		out = out[len(prefix):]
		if !json.Valid(out) {
			t.Fatalf("appendString(%q) = %q: not valid JSON", s, out)
		}
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("appendString(%q) = %q: %v", s, out, err)
		}
		if want := fuzzReplaceInvalid(s); got != want {
			t.Fatalf("appendString(%q) = %q decodes to %q, want %q", s, out, got, want)
		}
		if utf8.ValidString(s) && got != s {
			t.Fatalf("appendString(%q) = %q decodes to %q", s, out, got)
		}
		// encoding/json decodes its own encoding to the same string.
		std, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var stdGot string
		if err := json.Unmarshal(std, &stdGot); err != nil {
			t.Fatal(err)
		}
		if got != stdGot {
			t.Fatalf("appendString(%q) decodes to %q, encoding/json's encoding to %q", s, got, stdGot)
		}
		if !utf8.Valid(out) {
			t.Fatalf("appendString(%q) = %q: not valid UTF-8", s, out)
		}
		for _, r := range string(out) {
			if r < 0x20 || r == '\u2028' || r == '\u2029' {
				t.Fatalf("appendString(%q) = %q: holds %U unescaped", s, out, r)
			}
		}
		// Records are for people and jq: <, > and & stay as they are.
		if n := strings.Count(s, "<") + strings.Count(s, ">") + strings.Count(s, "&"); n != bytes.Count(out, []byte("<"))+bytes.Count(out, []byte(">"))+bytes.Count(out, []byte("&")) {
			t.Fatalf("appendString(%q) = %q: escapes <, > or &", s, out)
		}
	})
}

// fuzzReplaceInvalid replaces each byte of s that is not part of valid UTF-8
// with U+FFFD. Unlike strings.ToValidUTF8, which replaces a run of such
// bytes with one U+FFFD, this is what encoding/json does.
func fuzzReplaceInvalid(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// FuzzParseOffset checks that parseOffset accepts exactly the strings of
// ASCII digits whose value fits an int64, returning that value, and answers
// anything else with a 400 offset problem.
func FuzzParseOffset(f *testing.F) {
	f.Add("42")
	f.Fuzz(func(t *testing.T, s string) {
		got, p := parseOffset("offset", s)
		want, ok := fuzzDigitsValue(s)
		switch {
		case ok && p != nil:
			t.Fatalf("parseOffset(%q) = problem %+v, want %d", s, *p, want)
		case ok && got != want:
			t.Fatalf("parseOffset(%q) = %d, want %d", s, got, want)
		case !ok && p == nil:
			t.Fatalf("parseOffset(%q) = %d, want a problem", s, got)
		case !ok:
			if p.Status != http.StatusBadRequest {
				t.Fatalf("parseOffset(%q): problem status %d, want 400", s, p.Status)
			}
			if !strings.Contains(p.Detail, "invalid offset") || !strings.Contains(p.Detail, "offset") {
				t.Fatalf("parseOffset(%q): problem detail %q does not say invalid offset", s, p.Detail)
			}
			if p.Type == "" || p.Title == "" {
				t.Fatalf("parseOffset(%q): problem %+v has no type or title", s, *p)
			}
		}
	})
}
