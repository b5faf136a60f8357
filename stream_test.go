package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sseEvent is one event of a text/event-stream as EventSource sees it.
type sseEvent struct {
	id, event, data string
}

// sseStream reads a text/event-stream the way a browser's EventSource
// does: fields up to a blank line make an event; comment lines (": ping")
// and retry: are noted on the side.
type sseStream struct {
	t       testing.TB
	resp    *http.Response
	r       *bufio.Reader
	retry   string
	lastID  string      // the last event id, as EventSource keeps it
	comment chan string // comment lines, buffered
}

// openSSE opens a Server-Sent Events watch at target with the given
// Last-Event-ID (none if empty). It is closed when the test ends.
func openSSE(t testing.TB, target, lastEventID string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("SSE %s: %d %s %s", target, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return &sseStream{t: t, resp: resp, r: bufio.NewReader(resp.Body), comment: make(chan string, 100)}
}

// next returns the next event, ending the test if the stream ends first.
func (s *sseStream) next() sseEvent {
	s.t.Helper()
	ev, err := s.read()
	if err != nil {
		s.t.Fatalf("SSE: %v", err)
	}
	return ev
}

func (s *sseStream) read() (sseEvent, error) {
	var ev sseEvent
	var data []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return ev, fmt.Errorf("read: %w (partial %q)", err, line)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if data == nil {
				// No data: nothing is dispatched, but an id still becomes
				// the last event id, as in EventSource.
				if ev.id != "" {
					s.lastID = ev.id
				}
				ev = sseEvent{}
				continue
			}
			ev.data = strings.Join(data, "\n")
			if ev.id != "" {
				s.lastID = ev.id
			}
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			select {
			case s.comment <- line:
			default:
			}
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.event = value
		case "data":
			data = append(data, value)
		case "retry":
			s.retry = value
		default:
			return ev, fmt.Errorf("unknown field in %q", line)
		}
	}
}

// TestSSEResume: a browser's EventSource reads half of the stream, loses
// the connection and reconnects with Last-Event-ID: it gets exactly the
// rest. Each event carries the key as id, the CloudEvent type as event and
// the same bytes as /events/{id}.
func TestSSEResume(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)
	vc.powerCycleVMs(t, 1)
	history := vc.events(t, 0)
	waitForKey(t, srv, int64(history[len(history)-1].GetEvent().Key))

	// The URL an EventSource keeps: where the stream began.
	target := fmt.Sprintf("%s/api/v1/events?watch=true&offset=%d", srv.url, history[0].GetEvent().Key)
	check := func(s *sseStream, want []int) string {
		t.Helper()
		var last string
		for _, i := range want {
			ev := s.next()
			key := int64(history[i].GetEvent().Key)
			name, _ := eventTypeAndClass(history[i])
			if ev.id != strconv.FormatInt(key, 10) || ev.event != cloudEventType(name) {
				t.Fatalf("event id %q type %q, want %d %s", ev.id, ev.event, key, cloudEventType(name))
			}
			if body := mustGet(t, srv.url+"/api/v1/events/"+ev.id); ev.data != string(body) {
				t.Fatalf("data of %s differs from /events/%s:\n%s\n%s", ev.id, ev.id, ev.data, body)
			}
			last = ev.id
		}
		return last
	}
	half := len(history) / 2
	first := openSSE(t, target, "")
	last := check(first, indexes(0, half))
	if first.retry != strconv.FormatInt(sseRetry.Milliseconds(), 10) {
		t.Errorf("retry: %q, want %d", first.retry, sseRetry.Milliseconds())
	}
	first.resp.Body.Close()

	again := openSSE(t, target, last)
	check(again, indexes(half, len(history)))
	latest := vc.latestKey(t)
	vc.powerCycleVMs(t, 1)
	for _, ev := range vc.events(t, latest) { // and live
		if got := again.next(); got.id != strconv.Itoa(int(ev.GetEvent().Key)) {
			t.Fatalf("live event %s, want %d", got.id, ev.GetEvent().Key)
		}
	}
}

func indexes(from, to int) []int {
	out := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// streamServer serves the handler of d, which logs to apiLogger.
func streamServer(t *testing.T, d handlerDeps) *httptest.Server {
	t.Helper()
	d.log = apiLogger()
	srv := httptest.NewServer(newHandler(d))
	t.Cleanup(srv.Close)
	return srv
}

// typedRecord is a record with a type and class, as the collector appends.
func typedRecord(key int64, name string, class eventClass) record {
	typ := cloudEventType(name)
	data := fmt.Sprintf(`{"id":"%d","type":"%s","eventclass":"%s"}`, key, typ, class)
	return record{offset: key, data: []byte(data), eventType: typ, class: class}
}

func TestSSEHeartbeatAndErrors(t *testing.T) {
	t.Parallel()
	t.Run("ping while idle", func(t *testing.T) {
		t.Parallel()
		srv := streamServer(t, handlerDeps{journal: newJournal(10), sseHeartbeat: 20 * time.Millisecond})
		s := openSSE(t, srv.URL+"/api/v1/events?watch=true", "")
		go func() { _, _ = s.read() }() // the reader notes comments as they come
		select {
		case c := <-s.comment:
			if c != ": ping" {
				t.Errorf("comment %q, want \": ping\"", c)
			}
		case <-time.After(waitTimeout):
			t.Fatal("no ping")
		}
	})
	t.Run("event: error when the offset is gone", func(t *testing.T) {
		t.Parallel()
		j := newJournal(10)
		srv := streamServer(t, handlerDeps{journal: j})
		s := openSSE(t, srv.URL+"/api/v1/events?offset=1", "") // Accept alone makes it a watch
		if err := j.append(typedRecord(38, "VmPoweredOnEvent", classEvent)); err != nil {
			t.Fatal(err)
		}
		ev := s.next()
		if ev.event != "error" || !strings.Contains(ev.data, `"status":410`) || !strings.Contains(ev.data, "invalid offset 1") {
			t.Fatalf("got %+v, want event: error with the 410", ev)
		}
		if _, err := s.read(); err == nil || !strings.Contains(err.Error(), "EOF") {
			t.Fatalf("stream goes on after the error: %v", err)
		}
	})
	t.Run("bad Last-Event-ID and contradicting watch", func(t *testing.T) {
		t.Parallel()
		srv := streamServer(t, handlerDeps{journal: newJournal(10)})
		for _, c := range []struct{ query, lastID string }{
			{"?watch=true", "abc"},
			{"?watch=true", "-1"},
			{"?watch=false", ""},
		} {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/events"+c.query, nil)
			req.Header.Set("Accept", "text/event-stream")
			if c.lastID != "" {
				req.Header.Set("Last-Event-ID", c.lastID)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Errorf("%s Last-Event-ID %q: %d %s", c.query, c.lastID, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
		}
	})
	t.Run("Accept decides, q=0 refuses", func(t *testing.T) {
		t.Parallel()
		j := newJournal(10)
		if err := j.append(typedRecord(1, "VmPoweredOnEvent", classEvent)); err != nil {
			t.Fatal(err)
		}
		srv := streamServer(t, handlerDeps{journal: j})
		for accept, want := range map[string]struct {
			status int
			detail string
		}{
			// q=0: not acceptable, so a page as without it.
			"text/event-stream;q=0":               {http.StatusOK, ""},
			"text/event-stream; q=0.0, */*":       {http.StatusOK, ""},
			"application/json, text/event-stream": {http.StatusBadRequest, "Accept: text/event-stream makes the request a watch"},
		} {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/v1/events?offset=1&limit=2", nil)
			req.Header.Set("Accept", accept)
			resp, body := fetch(t, http.DefaultClient, req)
			if resp.StatusCode != want.status || !strings.Contains(string(body), want.detail) {
				t.Errorf("Accept %q: %d %s, want %d naming %q", accept, resp.StatusCode, body, want.status, want.detail)
			}
		}
	})
	t.Run("timeoutSeconds", func(t *testing.T) {
		t.Parallel()
		srv := streamServer(t, handlerDeps{journal: newJournal(10)})
		s := openSSE(t, srv.URL+"/api/v1/events?watch=true&timeoutSeconds=1", "")
		want := fmt.Sprintf("retry: %d\n\n", sseRetry.Milliseconds())
		if rest, err := io.ReadAll(s.r); err != nil || string(rest) != want {
			t.Fatalf("stream %q, %v; want %q and a clean end", rest, err, want)
		}
	})
}

// TestFilters: type= (full or short, repeatable) and eventclass= select
// records in lists and in both watch formats, and never change offsets.
func TestFilters(t *testing.T) {
	t.Parallel()
	j := newJournal(100)
	kinds := []struct {
		name  string
		class eventClass
	}{
		{"VmPoweredOnEvent", classEvent},
		{"VmPoweredOffEvent", classEvent},
		{"com.vmware.vc.HA.Health", classEventEx},
		{"com.example.backup", classExtendedEvent},
	}
	want := map[string][]int64{} // filter query -> keys
	for i := range 40 {
		key := int64(10 + 2*i) // gaps between keys
		k := kinds[i%len(kinds)]
		if err := j.append(typedRecord(key, k.name, k.class)); err != nil {
			t.Fatal(err)
		}
		want["type="+k.name] = append(want["type="+k.name], key)
		if k.class == classEvent {
			want["eventclass=event"] = append(want["eventclass=event"], key)
			want["type=VmPoweredOnEvent&type=vmware.vsphere.VmPoweredOffEvent.v0"] = append(want["type=VmPoweredOnEvent&type=vmware.vsphere.VmPoweredOffEvent.v0"], key)
		} else {
			want["eventclass=eventex&eventclass=extendedevent"] = append(want["eventclass=eventex&eventclass=extendedevent"], key)
		}
		if k.class == classEventEx {
			want["type=com.vmware.vc.HA.Health&eventclass=eventex"] = append(want["type=com.vmware.vc.HA.Health&eventclass=eventex"], key)
		}
	}
	want["type=VmPoweredOnEvent&eventclass=eventex"] = nil
	srv := streamServer(t, handlerDeps{journal: j})

	// A filtered page's Link continues right after the last record
	// scanned, matching or not: backups are keys 16, 24, 32, 40, ...
	resp, err := http.Get(srv.URL + "/api/v1/events?offset=10&limit=3&type=com.example.backup")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if link := resp.Header.Get("Link"); !strings.Contains(link, "offset=33") || !strings.Contains(link, "type=com.example.backup") {
		t.Errorf("Link %q, want offset=33 with the filter", link)
	}

	for query, keys := range want {
		t.Run(query, func(t *testing.T) {
			t.Parallel()
			// Pages of 3 from the earliest offset, following Link.
			var got []int64
			target := srv.URL + "/api/v1/events?offset=10&limit=3&" + query
			for pages := 0; target != ""; pages++ {
				if pages > 50 {
					t.Fatal("too many pages")
				}
				resp, err := http.Get(target)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got = append(got, recordKeys(t, body)...)
				target = ""
				if link := resp.Header.Get("Link"); link != "" {
					target = srv.URL + strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(nilToEmpty(keys)) {
				t.Fatalf("pages: %v, want %v", got, keys)
			}

			// The newest page with the filter: the last keys.
			resp, err := http.Get(srv.URL + "/api/v1/events?limit=3&" + query)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			newest := keys[max(0, len(keys)-3):]
			if got := recordKeys(t, body); fmt.Sprint(got) != fmt.Sprint(nilToEmpty(newest)) {
				t.Fatalf("newest: %v, want %v", got, newest)
			}

			// Watches replay with the filter, in both formats.
			if len(keys) == 0 {
				return
			}
			w := openRawWatch(t, srv.URL+"/api/v1/events?watch=true&offset=10&"+query)
			for _, k := range keys {
				line, err := w.ReadBytes('\n')
				if err != nil || recordKey(t, line) != k {
					t.Fatalf("watch: %q %v, want key %d", line, err, k)
				}
			}
			s := openSSE(t, srv.URL+"/api/v1/events?watch=true&offset=10&"+query, "")
			for _, k := range keys {
				if ev := s.next(); ev.id != strconv.FormatInt(k, 10) {
					t.Fatalf("SSE: id %s, want %d", ev.id, k)
				}
			}
		})
	}
}

func nilToEmpty(k []int64) []int64 {
	if k == nil {
		return []int64{}
	}
	return k
}

func openRawWatch(t *testing.T, target string) *bufio.Reader {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch %s: %d", target, resp.StatusCode)
	}
	return bufio.NewReader(resp.Body)
}

func recordKey(t *testing.T, line []byte) int64 {
	t.Helper()
	keys := recordKeys(t, append(append([]byte{'['}, bytes.TrimSpace(line)...), ']'))
	return keys[0]
}

// recordKeys returns the ids of a JSON array of records.
func recordKeys(t *testing.T, body []byte) []int64 {
	t.Helper()
	keys := []int64{}
	if len(body) == 0 {
		return keys
	}
	for _, id := range strings.Split(string(body), `{"id":"`)[1:] {
		n, err := strconv.ParseInt(id[:strings.IndexByte(id, '"')], 10, 64)
		if err != nil {
			t.Fatalf("record ids in %s: %v", body, err)
		}
		keys = append(keys, n)
	}
	return keys
}

// TestWatchCap: beyond the cap a watch gets 503 with Retry-After; once a
// watch ends, there is room again.
func TestWatchCap(t *testing.T) {
	t.Parallel()
	srv := streamServer(t, handlerDeps{journal: newJournal(10), maxWatches: 2})
	openRawWatch(t, srv.URL+"/api/v1/events?watch=true")
	short := openRawWatch(t, srv.URL+"/api/v1/events?watch=true&timeoutSeconds=1")

	resp, err := http.Get(srv.URL + "/api/v1/events?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("watch beyond the cap: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	// Lists are not watches: not capped.
	if resp, err := http.Get(srv.URL + "/api/v1/events"); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("list while the watches are full: %v %v", resp, err)
	}
	// The short watch ends (its handler has returned once the body ends).
	if _, err := io.ReadAll(short); err != nil {
		t.Fatal(err)
	}
	openRawWatch(t, srv.URL+"/api/v1/events?watch=true")
}

// TestSSEPosition: records a filter skips still move the client's last
// event id (an id line without data), so a reconnect resumes after them.
func TestSSEPosition(t *testing.T) {
	t.Parallel()
	j := newJournal(100)
	for k := int64(1); k <= 20; k++ {
		if err := j.append(typedRecord(k, "VmPoweredOnEvent", classEvent)); err != nil {
			t.Fatal(err)
		}
	}
	srv := streamServer(t, handlerDeps{journal: j})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/events?watch=true&type=VmPoweredOffEvent", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	readUntil := func(want string) {
		t.Helper()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("no %q line: %v", want, err)
			}
			if strings.TrimSuffix(line, "\n") == want {
				return
			}
		}
	}
	readUntil("id: 20") // from now: the position at the start
	for k := int64(21); k <= 25; k++ {
		if err := j.append(typedRecord(k, "VmPoweredOnEvent", classEvent)); err != nil {
			t.Fatal(err)
		}
	}
	readUntil("id: 25") // skipped by the filter, but seen
}

// TestSSEResumeAcrossGap: a client resumes after its last event id; the
// records purged since were all below it, and only a gap in the keys lies
// between it and the earliest record held: nothing was missed, no 410.
func TestSSEResumeAcrossGap(t *testing.T) {
	t.Parallel()
	j := newJournal(2)
	for _, k := range []int64{10, 11, 20, 21, 30} { // 10 and 11 purged; earliest 20
		if err := j.append(typedRecord(k, "VmPoweredOnEvent", classEvent)); err != nil {
			t.Fatal(err)
		}
	}
	srv := streamServer(t, handlerDeps{journal: j})
	s := openSSE(t, srv.URL+"/api/v1/events?watch=true&offset=10", "15")
	if ev := s.next(); ev.id != "20" {
		t.Fatalf("resumed at %s, want 20", ev.id)
	}
	// Had the client not seen 11, resuming would be a 410.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/events?watch=true", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", "10")
	resp, body := fetch(t, http.DefaultClient, req)
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("resume after 10 (11 purged): %d, want 410", resp.StatusCode)
	}
	if !strings.Contains(string(body), "Last-Event-ID 10") {
		t.Errorf("the 410 does not name what the client sent: %s", body)
	}
}
