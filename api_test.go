package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// apiTestTimeout bounds every request and every wait of the API tests: a
// broken server fails a test instead of hanging it.
const apiTestTimeout = 30 * time.Second

// apiRecord is the synthetic record stored under key: small, valid,
// compact JSON that names its key.
func apiRecord(key int64) []byte {
	return []byte(`{"id":"` + strconv.FormatInt(key, 10) + `"}`)
}

// apiBigRecord is a record of about size bytes under key.
func apiBigRecord(key int64, size int) []byte {
	return []byte(`{"id":"` + strconv.FormatInt(key, 10) + `","pad":"` + strings.Repeat("x", size) + `"}`)
}

// apiRecordKey returns the key named by a record.
func apiRecordKey(t *testing.T, data []byte) int64 {
	t.Helper()
	var r struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("record %.200q is not JSON: %v", data, err)
	}
	key, err := strconv.ParseInt(r.ID, 10, 64)
	if err != nil {
		t.Fatalf("record %.200q has no numeric id: %v", data, err)
	}
	return key
}

// apiGapKeys returns n increasing keys from first, with gaps of varying
// size between them, as vCenter's keys have.
func apiGapKeys(first int64, n int) []int64 {
	keys := make([]int64, n)
	k := first
	for i := range keys {
		keys[i] = k
		k += 1 + int64(i*7%5) // steps 1, 3, 5, 2, 4, 1, ...
	}
	return keys
}

func apiKeyRange(first, last int64) []int64 {
	var keys []int64
	for k := first; k <= last; k++ {
		keys = append(keys, k)
	}
	return keys
}

func apiLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// apiContext is a context for one test's requests, ended by the deadline.
func apiContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), apiTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// apiServer is the HTTP handler served over real HTTP, with the journal
// and collector status behind it.
type apiServer struct {
	t       *testing.T
	journal *journal
	status  *collectorStatus
	srv     *httptest.Server
	client  *http.Client
}

// newAPIServer serves a journal of the given segment size that holds keys.
func newAPIServer(t *testing.T, segment int, keys ...int64) *apiServer {
	t.Helper()
	s := &apiServer{t: t, journal: newJournal(segment), status: &collectorStatus{}}
	s.append(keys...)
	s.srv = httptest.NewServer(newHandler(handlerDeps{journal: s.journal, status: s.status, log: apiLogger()}))
	t.Cleanup(s.srv.Close)
	s.client = s.srv.Client()
	return s
}

// append appends the synthetic record of each key.
func (s *apiServer) append(keys ...int64) {
	s.t.Helper()
	for _, k := range keys {
		if err := s.journal.append(record{offset: k, data: apiRecord(k)}); err != nil {
			s.t.Fatalf("append %d: %v", k, err)
		}
	}
}

// request sends one request and reads the whole answer. No answer may
// ever be a server error.
func (s *apiServer) request(method, target string) (*http.Response, []byte) {
	s.t.Helper()
	req, err := http.NewRequestWithContext(apiContext(s.t), method, s.srv.URL+target, nil)
	if err != nil {
		s.t.Fatalf("%s %.100s: %v", method, target, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		s.t.Fatalf("%s %.100s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %.100s: read body: %v", method, target, err)
	}
	if resp.StatusCode >= 500 && !(resp.StatusCode == http.StatusServiceUnavailable && target == "/readyz") {
		s.t.Errorf("%s %.100s: server error %s: %s", method, target, resp.Status, body)
	}
	return resp, body
}

func (s *apiServer) get(target string) (*http.Response, []byte) {
	s.t.Helper()
	return s.request(http.MethodGet, target)
}

// apiProblem is an RFC 9457 problem as a client reads it.
type apiProblem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail"`
	Earliest *int64 `json:"earliest"`
	Latest   *int64 `json:"latest"`
}

// checkProblem checks that an answer is a problem of the given status.
func checkProblem(t *testing.T, what string, resp *http.Response, body []byte, code int) apiProblem {
	t.Helper()
	var p apiProblem
	if resp.StatusCode != code {
		t.Errorf("%s: status %d, want %d; body %.300s", what, resp.StatusCode, code, body)
		return p
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type %q, want application/problem+json", what, ct)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Errorf("%s: body %.300q is not a JSON object: %v", what, body, err)
		return p
	}
	for _, name := range []string{"type", "title", "status", "detail"} {
		if _, ok := fields[name]; !ok {
			t.Errorf("%s: problem %s has no %q", what, body, name)
		}
	}
	if err := json.Unmarshal(body, &p); err != nil {
		t.Errorf("%s: problem %s: %v", what, body, err)
	}
	if p.Status != code {
		t.Errorf("%s: problem status %d, want %d", what, p.Status, code)
	}
	if p.Type == "" || p.Title == "" || p.Detail == "" {
		t.Errorf("%s: problem %s has an empty type, title or detail", what, body)
	}
	return p
}

// checkOffsetProblem checks an offset error: it says invalid offset and
// carries the journal's range.
func checkOffsetProblem(t *testing.T, what string, resp *http.Response, body []byte, code int, earliest, latest int64) {
	t.Helper()
	p := checkProblem(t, what, resp, body, code)
	if resp.StatusCode != code {
		return
	}
	if !strings.Contains(p.Detail, "invalid offset") {
		t.Errorf("%s: detail %q does not say invalid offset", what, p.Detail)
	}
	if p.Earliest == nil || p.Latest == nil || *p.Earliest != earliest || *p.Latest != latest {
		t.Errorf("%s: problem %s, want earliest %d and latest %d", what, body, earliest, latest)
	}
}

// listKeys checks that a list answer is a JSON array of exactly the
// records' bytes and returns their keys.
func listKeys(t *testing.T, what string, resp *http.Response, body []byte) []int64 {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d, want 200; body %.300s", what, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil {
		t.Fatalf("%s: body %.300q is not a JSON array: %v", what, body, err)
	}
	keys := make([]int64, 0, len(items))
	for _, item := range items {
		k := apiRecordKey(t, item)
		if !bytes.Equal(item, apiRecord(k)) {
			t.Errorf("%s: item %s, want the record's exact bytes %s", what, item, apiRecord(k))
		}
		keys = append(keys, k)
	}
	return keys
}

func checkKeys(t *testing.T, what string, got, want []int64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: keys\n%v\nwant\n%v", what, got, want)
	}
}

// heldKeys returns the keys the journal holds, read without the API.
func heldKeys(t *testing.T, j *journal) []int64 {
	t.Helper()
	earliest, _, ok := j.bounds()
	if !ok {
		return nil
	}
	recs, err := j.readFrom(earliest, 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]int64, len(recs))
	for i, r := range recs {
		keys[i] = r.offset
	}
	return keys
}

func TestAPIRange(t *testing.T) {
	t.Parallel()

	checkRange := func(t *testing.T, s *apiServer, earliest, latest int64) {
		t.Helper()
		resp, body := s.get("/api/v1/range")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
		var got map[string]int64
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		want := map[string]int64{"earliest": earliest, "latest": latest}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("range %s, want %v", body, want)
		}
	}

	t.Run("empty", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10)
		resp, body := s.get("/api/v1/range")
		if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
			t.Errorf("status %d body %q, want 204 without a body", resp.StatusCode, body)
		}
	})
	t.Run("held", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 5, 6, 8, 9)
		checkRange(t, s, 5, 9)
		s.append(12)
		checkRange(t, s, 5, 12)
	})
	t.Run("moves after purge", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 3, apiKeyRange(1, 7)...) // history 4-6, active 7
		checkRange(t, s, 4, 7)
		s.append(8, 9)
		checkRange(t, s, 4, 9)
		s.append(11) // seals 7-9, purges 4-6
		checkRange(t, s, 7, 11)
	})
	t.Run("HEAD", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10)
		resp, body := s.request(http.MethodHead, "/api/v1/range")
		if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
			t.Errorf("HEAD on empty: status %d body %q, want 204", resp.StatusCode, body)
		}
		s.append(3)
		resp, body = s.request(http.MethodHead, "/api/v1/range")
		if resp.StatusCode != http.StatusOK || len(body) != 0 {
			t.Errorf("HEAD: status %d body %q, want 200 without a body", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("HEAD: Content-Type %q, want application/json", ct)
		}
	})
	t.Run("parameters", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 1)
		for _, target := range []string{"/api/v1/range?offset=1", "/api/v1/range?x", "/api/v1/range?watch=true"} {
			resp, body := s.get(target)
			checkProblem(t, target, resp, body, http.StatusBadRequest)
		}
	})
}

func TestAPIEvent(t *testing.T) {
	t.Parallel()
	// Segments of 4: 1-4 purged, history 6 7 9 10, active 12 13 15 16.
	keys := []int64{1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16}
	const earliest, latest = 6, 16
	s := newAPIServer(t, 4, keys...)

	t.Run("found", func(t *testing.T) {
		t.Parallel()
		for _, k := range keys[4:] {
			resp, body := s.get("/api/v1/events/" + strconv.FormatInt(k, 10))
			if resp.StatusCode != http.StatusOK {
				t.Errorf("event %d: status %d, want 200; body %s", k, resp.StatusCode, body)
				continue
			}
			if !bytes.Equal(body, apiRecord(k)) {
				t.Errorf("event %d: body %q, want %q", k, body, apiRecord(k))
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("event %d: Content-Type %q, want application/json", k, ct)
			}
		}
	})
	t.Run("malformed", func(t *testing.T) {
		t.Parallel()
		for _, id := range []string{"abc", "-1", "+5", "1.5", "99999999999999999999", "0x10", "1e3", "%201", "6%20", "٣"} {
			resp, body := s.get("/api/v1/events/" + id)
			checkOffsetProblem(t, "id "+id, resp, body, http.StatusBadRequest, earliest, latest)
		}
	})
	t.Run("purged", func(t *testing.T) {
		t.Parallel()
		for _, id := range []string{"0", "1", "4", "5"} {
			resp, body := s.get("/api/v1/events/" + id)
			checkOffsetProblem(t, "id "+id, resp, body, http.StatusGone, earliest, latest)
		}
	})
	t.Run("not found", func(t *testing.T) {
		t.Parallel()
		for _, id := range []string{"8", "11", "14", "17", "1000", "9223372036854775807"} {
			resp, body := s.get("/api/v1/events/" + id)
			checkOffsetProblem(t, "id "+id, resp, body, http.StatusNotFound, earliest, latest)
		}
	})
	t.Run("below the first key", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 100, 101, 105)
		for _, id := range []string{"0", "99"} {
			resp, body := s.get("/api/v1/events/" + id)
			checkOffsetProblem(t, "id "+id, resp, body, http.StatusGone, 100, 105)
		}
	})
	t.Run("empty journal", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10)
		resp, body := s.get("/api/v1/events/1")
		p := checkProblem(t, "empty", resp, body, http.StatusNotFound)
		if !strings.Contains(p.Detail, "invalid offset") {
			t.Errorf("detail %q does not say invalid offset", p.Detail)
		}
	})
	t.Run("parameters", func(t *testing.T) {
		t.Parallel()
		for _, target := range []string{"/api/v1/events/6?watch=true", "/api/v1/events/6?limit=1", "/api/v1/events/6?x="} {
			resp, body := s.get(target)
			checkProblem(t, target, resp, body, http.StatusBadRequest)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		t.Parallel()
		resp, body := s.request(http.MethodHead, "/api/v1/events/6")
		if resp.StatusCode != http.StatusOK || len(body) != 0 {
			t.Errorf("status %d body %q, want 200 without a body", resp.StatusCode, body)
		}
	})
}

// linkNext matches a Link header with a next relation (RFC 8288).
var linkNext = regexp.MustCompile(`^<([^>]+)>; rel="next"$`)

// walkPages reads the pages from target, following the Link headers, and
// returns every key read and the number of pages.
func walkPages(t *testing.T, s *apiServer, target string) ([]int64, int) {
	t.Helper()
	base, err := url.Parse(s.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	var keys []int64
	pages := 0
	for target != "" {
		pages++
		if pages > 10000 {
			t.Fatalf("more than 10000 pages; at %s", target)
		}
		resp, body := s.get(target)
		page := listKeys(t, target, resp, body)
		if len(page) == 0 {
			t.Fatalf("%s: empty page", target)
		}
		keys = append(keys, page...)
		links := resp.Header.Values("Link")
		if len(links) == 0 {
			break
		}
		m := linkNext.FindStringSubmatch(links[0])
		if len(links) > 1 || m == nil {
			t.Fatalf("%s: Link %q, want one <...>; rel=\"next\"", target, links)
		}
		next, err := base.Parse(m[1])
		if err != nil {
			t.Fatalf("%s: Link target %q: %v", target, m[1], err)
		}
		if next.Host != base.Host || next.Path != "/api/v1/events" {
			t.Fatalf("%s: Link %q leads elsewhere", target, m[1])
		}
		target = next.RequestURI()
	}
	return keys, pages
}

func TestAPIEventsList(t *testing.T) {
	t.Parallel()

	t.Run("empty", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10)
		for _, target := range []string{"/api/v1/events", "/api/v1/events?offset=5", "/api/v1/events?limit=3", "/api/v1/events?watch=false"} {
			resp, body := s.get(target)
			if resp.StatusCode != http.StatusNoContent || len(body) != 0 {
				t.Errorf("%s: status %d body %q, want 204 without a body", target, resp.StatusCode, body)
			}
		}
	})
	t.Run("newest page", func(t *testing.T) {
		t.Parallel()
		keys := apiGapKeys(1000, 120)
		s := newAPIServer(t, 1000, keys...)
		resp, body := s.get("/api/v1/events")
		checkKeys(t, "newest", listKeys(t, "newest", resp, body), keys[len(keys)-50:])
		if link := resp.Header.Get("Link"); link != "" {
			t.Errorf("newest page has Link %q", link)
		}
		resp, body = s.get("/api/v1/events?limit=7")
		checkKeys(t, "newest 7", listKeys(t, "newest 7", resp, body), keys[len(keys)-7:])
	})
	t.Run("fewer than a page", func(t *testing.T) {
		t.Parallel()
		keys := apiGapKeys(3, 10)
		s := newAPIServer(t, 1000, keys...)
		resp, body := s.get("/api/v1/events")
		checkKeys(t, "all", listKeys(t, "all", resp, body), keys)
	})
	t.Run("limits", func(t *testing.T) {
		t.Parallel()
		keys := apiGapKeys(1, 1500)
		s := newAPIServer(t, 1000, keys...)
		resp, body := s.get("/api/v1/events?offset=1")
		checkKeys(t, "default limit", listKeys(t, "default limit", resp, body), keys[:50])
		if resp.Header.Get("Link") == "" {
			t.Error("default limit: no Link while more events exist")
		}
		resp, body = s.get("/api/v1/events?offset=1&limit=1000")
		checkKeys(t, "limit 1000", listKeys(t, "limit 1000", resp, body), keys[:1000])
		resp, body = s.get("/api/v1/events?limit=1000")
		checkKeys(t, "newest 1000", listKeys(t, "newest 1000", resp, body), keys[500:])
		resp, body = s.get("/api/v1/events?offset=1&limit=1")
		checkKeys(t, "limit 1", listKeys(t, "limit 1", resp, body), keys[:1])
	})
	t.Run("walk", func(t *testing.T) {
		t.Parallel()
		// 200 keys in segments of 40: the journal holds the last 80.
		keys := apiGapKeys(10, 200)
		s := newAPIServer(t, 40, keys...)
		held := keys[120:]
		checkKeys(t, "held", heldKeys(t, s.journal), held)
		for _, limit := range []int{1, 7, 40, 79, 80, 81, 1000} {
			target := fmt.Sprintf("/api/v1/events?offset=%d&limit=%d", held[0], limit)
			got, pages := walkPages(t, s, target)
			checkKeys(t, target, got, held)
			if want := (len(held) + limit - 1) / limit; pages != want {
				t.Errorf("%s: %d pages, want %d", target, pages, want)
			}
		}
		// The default limit, from an offset in a gap: the first key above.
		gap := held[2] + 1
		if held[3] == gap {
			t.Fatalf("no gap after %d", held[2])
		}
		got, pages := walkPages(t, s, fmt.Sprintf("/api/v1/events?offset=%d", gap))
		checkKeys(t, "from a gap", got, held[3:])
		if pages != 2 {
			t.Errorf("from a gap: %d pages, want 2", pages)
		}
	})
	t.Run("link", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 100, 1, 2, 3, 5, 8)
		resp, _ := s.get("/api/v1/events?limit=2&offset=1")
		want := `</api/v1/events?limit=2&offset=3>; rel="next"`
		if got := resp.Header.Get("Link"); got != want {
			t.Errorf("Link %q, want %q", got, want)
		}
		resp, body := s.get("/api/v1/events?offset=3&limit=2")
		checkKeys(t, "page 2", listKeys(t, "page 2", resp, body), []int64{3, 5})
		if got := resp.Header.Get("Link"); got != `</api/v1/events?limit=2&offset=6>; rel="next"` {
			t.Errorf("page 2: Link %q", got)
		}
		resp, body = s.get("/api/v1/events?offset=6&limit=2")
		checkKeys(t, "last page", listKeys(t, "last page", resp, body), []int64{8})
		if got := resp.Header.Values("Link"); got != nil {
			t.Errorf("last page: Link %q", got)
		}
		// A last page that is full has no Link either.
		resp, _ = s.get("/api/v1/events?offset=5&limit=2")
		if got := resp.Header.Values("Link"); got != nil {
			t.Errorf("full last page: Link %q", got)
		}
	})
	t.Run("purged offset", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 4, apiKeyRange(1, 12)...) // holds 5-12
		for _, offset := range []string{"0", "1", "4"} {
			target := "/api/v1/events?offset=" + offset
			resp, body := s.get(target)
			checkOffsetProblem(t, target, resp, body, http.StatusGone, 5, 12)
		}
	})
	t.Run("offset beyond latest", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 1, 2, 3)
		for _, target := range []string{"/api/v1/events?offset=4", "/api/v1/events?offset=1000&limit=5", "/api/v1/events?offset=9223372036854775807"} {
			resp, body := s.get(target)
			if resp.StatusCode != http.StatusOK || string(body) != "[]" {
				t.Errorf("%s: status %d body %q, want 200 []", target, resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s: Content-Type %q", target, ct)
			}
			if link := resp.Header.Get("Link"); link != "" {
				t.Errorf("%s: Link %q", target, link)
			}
		}
		resp, body := s.get("/api/v1/events?offset=3")
		checkKeys(t, "offset latest", listKeys(t, "offset latest", resp, body), []int64{3})
	})
	t.Run("malformed offset has the range", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 4, 5)
		for _, offset := range []string{"abc", "-1", "99999999999999999999"} {
			target := "/api/v1/events?offset=" + offset
			resp, body := s.get(target)
			checkOffsetProblem(t, target, resp, body, http.StatusBadRequest, 4, 5)
		}
	})
	t.Run("watch false is a list", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 1, 2, 3)
		for _, v := range []string{"false", "0", "f", "F", "FALSE", "False"} {
			target := "/api/v1/events?offset=2&watch=" + v
			resp, body := s.get(target)
			checkKeys(t, target, listKeys(t, target, resp, body), []int64{2, 3})
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 10, 1, 2, 3)
		resp, body := s.request(http.MethodHead, "/api/v1/events?offset=1&limit=1")
		if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Link") == "" {
			t.Errorf("status %d body %q Link %q, want 200, no body, a Link", resp.StatusCode, body, resp.Header.Get("Link"))
		}
	})
}

func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, 10, apiKeyRange(1, 5)...)

	// A request target of exactly the limit is served; one byte more is 414.
	const long = "/api/v1/events?x="
	atLimit := long + strings.Repeat("a", maxRequestTarget-len(long))

	tests := []struct {
		target string
		code   int
	}{
		// Unknown parameters; bad and empty filters.
		{"/api/v1/events?foo=1", 400},
		{"/api/v1/events?x", 400},
		{"/api/v1/events?Offset=1", 400},
		{"/api/v1/events?eventclass=bogus", 400},
		{"/api/v1/events?eventclass=event&eventclass=", 400},
		{"/api/v1/events?type=", 400},
		{"/api/v1/events?type=VmPoweredOnEvent&type=", 400},
		{"/api/v1/events?watch=true&foo=1", 400},
		// Empty, repeated and malformed.
		{"/api/v1/events?offset=", 400},
		{"/api/v1/events?limit=", 400},
		{"/api/v1/events?watch=", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=", 400},
		{"/api/v1/events?offset=1&offset=2", 400},
		{"/api/v1/events?offset=1&offset=1", 400},
		{"/api/v1/events?watch=true&watch=true", 400},
		{"/api/v1/events?limit=1&limit=2", 400},
		{"/api/v1/events?%zz", 400},
		{"/api/v1/events?offset=%zz", 400},
		{"/api/v1/events?offset=1;limit=2", 400},
		// Offsets.
		{"/api/v1/events?offset=-1", 400},
		{"/api/v1/events?offset=abc", 400},
		{"/api/v1/events?offset=%2B1", 400},
		{"/api/v1/events?offset=1.5", 400},
		{"/api/v1/events?offset=99999999999999999999", 400},
		{"/api/v1/events?offset=0x1", 400},
		{"/api/v1/events?offset=%201", 400},
		{"/api/v1/events?watch=true&offset=-1", 400},
		{"/api/v1/events?watch=true&offset=abc", 400},
		// Limits.
		{"/api/v1/events?limit=1001", 400},
		{"/api/v1/events?limit=0", 400},
		{"/api/v1/events?limit=-1", 400},
		{"/api/v1/events?limit=abc", 400},
		{"/api/v1/events?limit=%2B5", 400},
		{"/api/v1/events?limit=1.5", 400},
		{"/api/v1/events?limit=99999999999999999999", 400},
		{"/api/v1/events?watch=true&limit=5", 400},
		{"/api/v1/events?limit=5&watch=true&offset=1", 400},
		// Watch and its timeout.
		{"/api/v1/events?watch=yes", 400},
		{"/api/v1/events?watch=2", 400},
		{"/api/v1/events?watch=on", 400},
		{"/api/v1/events?timeoutSeconds=5", 400},
		{"/api/v1/events?watch=false&timeoutSeconds=5", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=0", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=-1", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=abc", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=1.5", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=%2B1", 400},
		{"/api/v1/events?watch=true&timeoutSeconds=99999999999999999999", 400},
		// Parameters where none are taken.
		{"/api/v1/range?offset=1", 400},
		{"/api/v1/events/1?offset=1", 400},
		{"/api/v1/events/1?%zz", 400},
		// Overlong request targets.
		{atLimit, 400},
		{atLimit + "a", 414},
		{"/api/v1/events?offset=1&x=" + strings.Repeat("a", 9000), 414},
		{"/" + strings.Repeat("a", 9000), 414},
		// Unknown paths.
		{"/index.html", 404}, // "/" is the live event viewer (viewer.go)
		{"/ui/", 404},
		{"/nope", 404},
		{"/api", 404},
		{"/api/v1", 404},
		{"/api/v1/", 404},
		{"/api/v1/events/", 404},
		{"/api/v1/events/1/2", 404},
		{"/api/v1/ranges", 404},
		{"/api/v2/events", 404},
		{"/API/V1/EVENTS", 404},
	}
	for _, tt := range tests {
		resp, body := s.get(tt.target)
		checkProblem(t, fmt.Sprintf("GET %.80s", tt.target), resp, body, tt.code)
	}

	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "PROPFIND"} {
		for _, target := range []string{"/api/v1/events", "/api/v1/events?watch=true", "/api/v1/range", "/api/v1/events/1", "/livez", "/readyz", "/nope"} {
			what := method + " " + target
			resp, body := s.request(method, target)
			checkProblem(t, what, resp, body, http.StatusMethodNotAllowed)
			allow := resp.Header.Get("Allow")
			if !strings.Contains(allow, "GET") || !strings.Contains(allow, "HEAD") {
				t.Errorf("%s: Allow %q, want GET and HEAD", what, allow)
			}
		}
	}
}

func TestAPILivez(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, 10)
	resp, body := s.get("/livez")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200; body %s", resp.StatusCode, body)
	}
	resp, _ = s.request(http.MethodHead, "/livez")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD: status %d, want 200", resp.StatusCode)
	}
}

func TestAPIReadyz(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, 10)

	type ready struct {
		Ready            *bool           `json:"ready"`
		VCenterConnected *bool           `json:"vcenterConnected"`
		Range            json.RawMessage `json:"range"`
		LastEventTime    json.RawMessage `json:"lastEventTime"`
		Tokens           json.RawMessage `json:"tokens"`
	}
	readyz := func(code int) ready {
		t.Helper()
		resp, body := s.get("/readyz")
		if resp.StatusCode != code {
			t.Fatalf("status %d, want %d; body %s", resp.StatusCode, code, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		for _, name := range []string{"ready", "vcenterConnected", "range", "lastEventTime", "tokens"} {
			if _, ok := fields[name]; !ok {
				t.Errorf("body %s has no %q", body, name)
			}
		}
		var r ready
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		if r.Ready == nil || r.VCenterConnected == nil {
			t.Fatalf("body %s: ready or vcenterConnected missing", body)
		}
		return r
	}

	r := readyz(http.StatusServiceUnavailable)
	if string(r.Tokens) != "false" {
		t.Errorf("tokens %s with no API_TOKENS_PATH, want false", r.Tokens)
	}
	if *r.Ready || *r.VCenterConnected || string(r.Range) != "null" || string(r.LastEventTime) != "null" {
		t.Errorf("before the first read: %+v", r)
	}

	created := time.Date(2026, 3, 4, 5, 6, 7, 890, time.UTC)
	s.append(41, 42)
	s.status.connected.Store(true)
	s.status.lastEvent.Store(created.UnixNano())
	s.status.ready.Store(true)
	r = readyz(http.StatusOK)
	if !*r.Ready || !*r.VCenterConnected {
		t.Errorf("after the first read: ready %v connected %v", *r.Ready, *r.VCenterConnected)
	}
	if string(r.Range) != `{"earliest":41,"latest":42}` {
		t.Errorf("range %s", r.Range)
	}
	var last time.Time
	if err := json.Unmarshal(r.LastEventTime, &last); err != nil || !last.Equal(created) {
		t.Errorf("lastEventTime %s, want %v (%v)", r.LastEventTime, created, err)
	}

	// A vCenter outage: still ready, serving the cached events.
	s.status.connected.Store(false)
	r = readyz(http.StatusOK)
	if !*r.Ready || *r.VCenterConnected {
		t.Errorf("during an outage: ready %v connected %v", *r.Ready, *r.VCenterConnected)
	}
}

// apiWatch is an open watch read line by line.
type apiWatch struct {
	t      *testing.T
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// watch opens a watch with the given query (after watch=true) and checks
// that it is established: Do returns once the headers are flushed.
func (s *apiServer) watch(query string) *apiWatch {
	s.t.Helper()
	return s.watchWith(s.client, query)
}

func (s *apiServer) watchWith(client *http.Client, query string) *apiWatch {
	s.t.Helper()
	ctx, cancel := context.WithCancel(apiContext(s.t))
	target := s.srv.URL + "/api/v1/events?watch=true" + query
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		s.t.Fatalf("watch %s: %v", query, err)
	}
	w := &apiWatch{t: s.t, resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	s.t.Cleanup(w.close)
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		s.t.Fatalf("watch %s: status %d, want 200; body %s", query, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		s.t.Errorf("watch %s: Content-Type %q, want application/x-ndjson", query, ct)
	}
	return w
}

func (w *apiWatch) close() {
	w.cancel()
	_ = w.resp.Body.Close()
}

// line reads the next line of the stream, which must be compact JSON.
func (w *apiWatch) line() []byte {
	w.t.Helper()
	line, err := w.r.ReadBytes('\n')
	if err != nil {
		w.t.Fatalf("watch: read %.200q: %v", line, err)
	}
	line = line[:len(line)-1]
	var compact bytes.Buffer
	if err := json.Compact(&compact, line); err != nil || !bytes.Equal(compact.Bytes(), line) {
		w.t.Fatalf("watch: line %.200q is not compact JSON (%v)", line, err)
	}
	return line
}

// keys reads n events and returns their keys; each must be its record.
func (w *apiWatch) keys(n int) []int64 {
	w.t.Helper()
	keys := make([]int64, n)
	for i := range keys {
		line := w.line()
		keys[i] = apiRecordKey(w.t, line)
		if !bytes.Equal(line, apiRecord(keys[i])) {
			w.t.Fatalf("watch: line %.200q, want the record's exact bytes", line)
		}
	}
	return keys
}

// end checks that the stream ends cleanly, with nothing more to read.
func (w *apiWatch) end() {
	w.t.Helper()
	rest, err := io.ReadAll(w.r)
	if err != nil || len(rest) != 0 {
		w.t.Fatalf("watch: end: read %.200q, %v; want a clean EOF", rest, err)
	}
}

func TestAPIWatch(t *testing.T) {
	t.Parallel()

	t.Run("from now", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 100, 1, 2, 3, 4, 5)
		w := s.watch("")
		s.append(6, 8, 9)
		checkKeys(t, "watch", w.keys(3), []int64{6, 8, 9})
		s.append(20)
		checkKeys(t, "watch", w.keys(1), []int64{20})
	})
	t.Run("from now on an empty journal", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 100)
		w := s.watch("")
		s.append(0, 3, 4)
		checkKeys(t, "watch", w.keys(3), []int64{0, 3, 4})
	})
	t.Run("from now after a purge", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 3, apiKeyRange(1, 9)...) // purged through 3, holds 4-9
		w := s.watch("")
		s.append(10, 11, 12, 13) // purges through 9, never past the watcher
		checkKeys(t, "watch", w.keys(4), []int64{10, 11, 12, 13})
	})
	t.Run("replay then live", func(t *testing.T) {
		t.Parallel()
		keys := apiGapKeys(1, 700)
		s := newAPIServer(t, 1000, keys[:500]...)
		for _, from := range []int64{keys[0], keys[200], keys[200] + 1, keys[499]} {
			i, _ := slices.BinarySearch(keys, from)
			w := s.watch(fmt.Sprintf("&offset=%d", from))
			checkKeys(t, fmt.Sprintf("replay from %d", from), w.keys(500-i), keys[i:500])
		}
		// Live, with every watcher reading while events are appended.
		w := s.watch(fmt.Sprintf("&offset=%d", keys[300]))
		var got []int64
		got = append(got, w.keys(100)...) // part of the replay
		for _, k := range keys[500:] {
			s.append(k)
			if k%3 == 0 {
				got = append(got, w.keys(1)...)
			}
		}
		got = append(got, w.keys(len(keys[300:])-len(got))...)
		checkKeys(t, "replay and live", got, keys[300:])
	})
	t.Run("purged offset", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 4, apiKeyRange(1, 12)...) // holds 5-12
		for _, offset := range []string{"0", "1", "4"} {
			target := "/api/v1/events?watch=true&offset=" + offset
			resp, body := s.get(target)
			checkOffsetProblem(t, target, resp, body, http.StatusGone, 5, 12)
		}
		s = newAPIServer(t, 10, 100, 101)
		resp, body := s.get("/api/v1/events?watch=true&offset=99")
		checkOffsetProblem(t, "before the first key", resp, body, http.StatusGone, 100, 101)
	})
	t.Run("future offset", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 100, 1, 2, 3, 4, 5)
		w := s.watch("&offset=10")
		s.append(6, 7, 8, 9)
		s.append(10, 11)
		checkKeys(t, "watch", w.keys(2), []int64{10, 11})

		w = s.watch("&offset=20")
		s.append(19, 21, 22)
		checkKeys(t, "watch from a gap", w.keys(2), []int64{21, 22})

		e := newAPIServer(t, 100)
		w = e.watch("&offset=7")
		e.append(5, 6, 7, 9)
		checkKeys(t, "watch on an empty journal", w.keys(2), []int64{7, 9})
	})
	t.Run("offset before the stream began, on an empty journal", func(t *testing.T) {
		t.Parallel()
		// The watch is established before the journal knows where the
		// stream begins; the first event shows that the offset lies
		// before it: a 410 line, not a silent start at the first event.
		s := newAPIServer(t, 100)
		w := s.watch("&offset=1")
		s.append(38, 39)
		line := w.line()
		var e struct {
			Error struct {
				Status   int    `json:"status"`
				Detail   string `json:"detail"`
				Earliest int64  `json:"earliest"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &e); err != nil || e.Error.Status != http.StatusGone ||
			e.Error.Earliest != 38 || !strings.HasPrefix(e.Error.Detail, "invalid offset 1") {
			t.Fatalf("first line %s, want a 410 error line with earliest 38", line)
		}
		w.end()
	})
	t.Run("timeoutSeconds", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 100, 1, 2, 3)
		w := s.watch("&timeoutSeconds=1")
		w.end()
		w = s.watch("&offset=1&timeoutSeconds=1")
		checkKeys(t, "watch", w.keys(3), []int64{1, 2, 3})
		w.end()
	})
	t.Run("boolean values", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 100, 1)
		for _, v := range []string{"1", "t", "T", "true", "TRUE", "True"} {
			ctx, cancel := context.WithCancel(apiContext(t))
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.srv.URL+"/api/v1/events?offset=1&watch="+v, nil)
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatalf("watch=%s: %v", v, err)
			}
			if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
				t.Errorf("watch=%s: status %d Content-Type %q, want a watch", v, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			cancel()
			resp.Body.Close()
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 4, apiKeyRange(1, 12)...)
		for _, target := range []string{"/api/v1/events?watch=true", "/api/v1/events?watch=true&offset=5", "/api/v1/events?watch=true&offset=1000"} {
			resp, body := s.request(http.MethodHead, target)
			if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
				t.Errorf("HEAD %s: status %d body %q Content-Type %q, want 200 x-ndjson without a body",
					target, resp.StatusCode, body, resp.Header.Get("Content-Type"))
			}
		}
		resp, _ := s.request(http.MethodHead, "/api/v1/events?watch=true&offset=1")
		if resp.StatusCode != http.StatusGone {
			t.Errorf("HEAD purged offset: status %d, want 410", resp.StatusCode)
		}
	})
	t.Run("many watchers", func(t *testing.T) {
		t.Parallel()
		s := newAPIServer(t, 1000, 1)
		keys := apiGapKeys(2, 300)
		var watches []*apiWatch
		for range 5 {
			watches = append(watches, s.watch(""))
		}
		watches = append(watches, s.watch("&offset=1"))
		s.append(keys...)
		for i, w := range watches {
			want := keys
			if i == len(watches)-1 {
				want = append([]int64{1}, keys...)
			}
			checkKeys(t, fmt.Sprintf("watcher %d", i), w.keys(len(want)), want)
		}
	})
}

// smallBufferListener caps the send buffer of the connections it accepts,
// so a client that does not read blocks the server's writes early.
type smallBufferListener struct{ net.Listener }

func (l smallBufferListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4 << 10)
	}
	return c, err
}

// TestAPIWatchLagging has a watcher that does not read while the journal
// purges past it: it gets what it had been sent, in order, then the error
// line, and the stream ends.
func TestAPIWatchLagging(t *testing.T) {
	t.Parallel()
	j := newJournal(4)
	for k := int64(1); k <= 4; k++ {
		if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewUnstartedServer(newHandler(handlerDeps{journal: j, log: apiLogger()}))
	srv.Listener = smallBufferListener{srv.Listener}
	srv.Start()
	t.Cleanup(srv.Close)
	// The socket buffers, capped at both ends, hold well under a MiB; the
	// records appended below are 16 MiB.
	transport := srv.Client().Transport.(*http.Transport).Clone()
	transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4 << 10)
		}
		return c, err
	}
	t.Cleanup(transport.CloseIdleConnections)
	s := &apiServer{t: t, journal: j, status: &collectorStatus{}, srv: srv, client: &http.Client{Transport: transport}}

	w := s.watch("&offset=1")
	// The watch is under way before the flood: a handler not yet scheduled
	// would otherwise find its offset purged before its first event.
	if key := apiRecordKey(t, w.line()); key != 1 {
		t.Fatalf("watch: first key %d, want 1", key)
	}
	const last = 260
	for k := int64(5); k <= last; k++ {
		if err := j.append(record{offset: k, data: apiBigRecord(k, 64<<10)}); err != nil {
			t.Fatal(err)
		}
	}
	// The error line tells the range when the watch found itself purged,
	// which may be before the last append.
	next := int64(2)
	for {
		line := w.line()
		if bytes.HasPrefix(line, []byte(`{"error"`)) {
			var e struct {
				Error struct {
					Status   int    `json:"status"`
					Detail   string `json:"detail"`
					Earliest *int64 `json:"earliest"`
					Latest   *int64 `json:"latest"`
				} `json:"error"`
			}
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatalf("error line %s: %v", line, err)
			}
			if e.Error.Status != http.StatusGone || e.Error.Earliest == nil || e.Error.Latest == nil ||
				*e.Error.Earliest <= next || *e.Error.Latest < *e.Error.Earliest || *e.Error.Latest > last {
				t.Errorf("error line %s, want status 410 and a range above offset %d", line, next)
			}
			if want := fmt.Sprintf("invalid offset %d", next); !strings.HasPrefix(e.Error.Detail, want) {
				t.Errorf("error detail %q, want it to start with %q", e.Error.Detail, want)
			}
			break
		}
		key := apiRecordKey(t, line)
		if key != next {
			t.Fatalf("watch: key %d, want %d", key, next)
		}
		next++
	}
	w.end()
}

// gatedWriter is a ResponseWriter whose writes of the body call onWrite
// first, which may block: the test decides when a watch can go on.
type gatedWriter struct {
	onWrite func()
	flushed chan struct{} // closed by the first Flush, if not nil
	once    sync.Once

	mu     sync.Mutex
	header http.Header
	code   int
	body   bytes.Buffer
}

func newGatedWriter(onWrite func()) *gatedWriter {
	return &gatedWriter{onWrite: onWrite, header: make(http.Header)}
}

func (w *gatedWriter) Header() http.Header { return w.header }

func (w *gatedWriter) WriteHeader(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.code == 0 {
		w.code = code
	}
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	if w.onWrite != nil {
		w.onWrite()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.body.Write(p)
}

func (w *gatedWriter) Flush() {
	if w.flushed != nil {
		w.once.Do(func() { close(w.flushed) })
	}
}

func (w *gatedWriter) lines() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.SplitAfter(w.body.Bytes(), []byte{'\n'})
}

// serveGated runs the handler on a request in a goroutine and returns a
// channel closed when the handler returns.
func serveGated(ctx context.Context, h http.Handler, w http.ResponseWriter, target string) <-chan struct{} {
	r := httptest.NewRequest(http.MethodGet, target, nil).WithContext(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(w, r)
	}()
	return done
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(apiTestTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// TestAPIWatchLaggingGated is TestAPIWatchLagging without sockets: the
// watch blocks in its first write of an event until the journal has purged
// past it.
func TestAPIWatchLaggingGated(t *testing.T) {
	t.Parallel()
	j := newJournal(2)
	for _, k := range []int64{1, 2} {
		if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
			t.Fatal(err)
		}
	}
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	w := newGatedWriter(func() {
		once.Do(func() {
			close(blocked)
			<-release
		})
	})
	done := serveGated(apiContext(t), newHandler(handlerDeps{journal: j, log: apiLogger()}), w, "/api/v1/events?watch=true&offset=1")
	waitClosed(t, "the watch to write", blocked)
	for k := int64(3); k <= 10; k++ { // purges through 6: holds 7-10
		if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	waitClosed(t, "the watch to end", done)

	if w.code != http.StatusOK || w.header.Get("Content-Type") != "application/x-ndjson" {
		t.Errorf("status %d Content-Type %q", w.code, w.header.Get("Content-Type"))
	}
	want := []string{
		`{"id":"1"}` + "\n",
		`{"id":"2"}` + "\n",
		`{"error":{"status":410,"detail":"invalid offset 3: purged or before the stream began (below the earliest offset held)","earliest":7,"latest":10}}` + "\n",
		"",
	}
	got := w.lines()
	if len(got) != len(want) {
		t.Fatalf("stream %q, want %q", got, want)
	}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Errorf("line %d: %q, want %q", i, got[i], want[i])
		}
	}
}

// TestAPIWatchEndsWithContext checks that a watch ends when its request's
// context does (the client left, timeoutSeconds passed, the server shuts
// down): while waiting for events, and while working off a backlog.
func TestAPIWatchEndsWithContext(t *testing.T) {
	t.Parallel()

	t.Run("waiting", func(t *testing.T) {
		t.Parallel()
		j := newJournal(100)
		ctx, cancel := context.WithCancel(apiContext(t))
		w := newGatedWriter(nil)
		w.flushed = make(chan struct{})
		done := serveGated(ctx, newHandler(handlerDeps{journal: j, log: apiLogger()}), w, "/api/v1/events?watch=true")
		waitClosed(t, "the watch to answer", w.flushed)
		cancel()
		waitClosed(t, "the watch to end", done)
		if w.code != http.StatusOK || len(w.lines()[0]) != 0 {
			t.Errorf("status %d, body %q", w.code, w.lines())
		}
	})
	t.Run("backlog", func(t *testing.T) {
		t.Parallel()
		j := newJournal(2000)
		for k := int64(1); k <= 2000; k++ {
			if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(apiContext(t))
		w := newGatedWriter(cancel) // the client leaves as the first event is written
		done := serveGated(ctx, newHandler(handlerDeps{journal: j, log: apiLogger()}), w, "/api/v1/events?watch=true&offset=1&timeoutSeconds=3600")
		waitClosed(t, "the watch to end", done)
		lines := w.lines()
		n := len(lines) - 1 // the last is empty
		if n < 1 || n > watchBatch {
			t.Errorf("the watch wrote %d events after its context ended, want at most a batch (%d)", n, watchBatch)
		}
		for i, line := range lines[:n] {
			if string(line) != string(apiRecord(int64(i+1)))+"\n" {
				t.Fatalf("line %d: %q", i, line)
			}
		}
	})
}

// FuzzAPIRequest sends arbitrary requests to the handler: none may yield
// a server error or a panic, and every error is a problem.
func FuzzAPIRequest(f *testing.F) {
	for _, seed := range []string{
		"/api/v1/events?offset=3&limit=2",
		"/api/v1/events?watch=true&offset=3",
		"/api/v1/events?watch=1",
		"/api/v1/events?watch=true&timeoutSeconds=1",
		"/api/v1/events/3",
		"/api/v1/events/-3",
		"/api/v1/range",
		"/api/v1/range?x=1",
		"/readyz",
		"/livez",
		"/api/v1/events?%zz",
		"/api/v1/events?offset=1;2",
		"*",
		"/api/v1/events/%2e%2e/range",
		"/api/v1//events",
	} {
		f.Add(http.MethodGet, seed)
	}
	f.Add(http.MethodHead, "/api/v1/events?watch=true")
	f.Add(http.MethodPost, "/api/v1/events")
	f.Add(http.MethodOptions, "*")

	j := newJournal(4)
	for _, k := range []int64{1, 2, 3, 5, 8, 13, 21} {
		if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
			f.Fatal(err)
		}
	}
	h := newHandler(handlerDeps{journal: j, log: apiLogger()})
	// The request context has ended: a watch answers and ends at once.
	ended, cancel := context.WithCancel(context.Background())
	cancel()

	f.Fuzz(func(t *testing.T, method, target string) {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(method + " " + target + " HTTP/1.1\r\nHost: example.com\r\n\r\n")))
		if err != nil {
			return // the server would not get this far
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r.WithContext(ended))
		what := fmt.Sprintf("%s %.100q", method, target)
		readyz := w.Code == http.StatusServiceUnavailable && r.URL.Path == "/readyz" // not ready: a JSON status
		if w.Code >= 500 && !readyz {
			t.Fatalf("%s: status %d: %s", what, w.Code, w.Body)
		}
		if w.Code < 400 || readyz || method == http.MethodHead {
			return
		}
		checkProblem(t, what, w.Result(), w.Body.Bytes(), w.Code)
	})
}

// BenchmarkAPIPage is one page request through the whole handler (routing,
// metrics, the debug log off), the API's common path.
func BenchmarkAPIPage(b *testing.B) {
	j := newJournal(4)
	for _, k := range []int64{1, 2, 3} {
		if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
			b.Fatal(err)
		}
	}
	h := newHandler(handlerDeps{journal: j, log: slog.New(slog.DiscardHandler)})
	r := httptest.NewRequest(http.MethodGet, "/api/v1/events?offset=1&limit=2&type=VmPoweredOnEvent", nil)
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
}
