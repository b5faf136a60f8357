package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// checkPrivate fails unless the answer is marked for its client only:
// Cache-Control private (or no-store), Vary naming Authorization and Cookie.
func checkPrivate(t testing.TB, what string, h http.Header) {
	t.Helper()
	cc := h.Values("Cache-Control")
	if !hasListToken(cc, "private") && !hasListToken(cc, "no-store") || hasListToken(cc, "public") {
		t.Errorf("%s: Cache-Control %q, want private or no-store", what, cc)
	}
	vary := h.Values("Vary")
	for _, name := range []string{"Authorization", "Cookie"} {
		if !hasListToken(vary, name) {
			t.Errorf("%s: Vary %q lacks %s", what, vary, name)
		}
	}
}

// TestAuthPrivateAnswers: with tokens on, every answer admitted by a token
// or a session (event pages, single events, watches over HTTP/1.1 and
// HTTP/2, the viewer) keeps shared caches out, and keeps what the handler
// set itself.
func TestAuthPrivateAnswers(t *testing.T) {
	t.Parallel()
	for _, tls := range []bool{false, true} {
		srv, _ := authTestServer(t, tls)
		client := srv.Client()
		proto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[tls]
		var rng rangeResponse
		resp, body := authGet(t, client, srv.URL+"/api/v1/range", tokenAlice)
		if err := json.Unmarshal(body, &rng); err != nil {
			t.Fatalf("range: %d %s", resp.StatusCode, body)
		}
		checkPrivate(t, proto+" range", resp.Header)
		for _, path := range []string{
			"/api/v1/events", fmt.Sprintf("/api/v1/events?offset=%d&limit=1", rng.Earliest),
			fmt.Sprintf("/api/v1/events/%d", rng.Latest), "/api/v1/openapi.yaml", "/metrics", "/", "/ui/viewer.js",
			"/api/v1/events?watch=true&timeoutSeconds=1", "/api/v1/events/999999999", "/no/such/path",
		} {
			what := proto + " " + path
			resp, body := authGet(t, client, srv.URL+path, tokenBob)
			if resp.StatusCode >= 500 {
				t.Errorf("%s: %d %s", what, resp.StatusCode, body)
			}
			if (tls && resp.ProtoMajor != 2) || (!tls && resp.ProtoMajor != 1) {
				t.Errorf("%s: answered over %s", what, resp.Proto)
			}
			checkPrivate(t, what, resp.Header)
			if n := len(resp.Header.Values("Vary")); n != 1 {
				t.Errorf("%s: Vary given %d times: %q", what, n, resp.Header.Values("Vary"))
			}
			if strings.HasPrefix(path, "/ui/") || path == "/" {
				// Revalidated by its ETag, as without tokens.
				if cc := resp.Header.Values("Cache-Control"); !hasListToken(cc, "no-cache") {
					t.Errorf("%s: Cache-Control %q lost no-cache", what, cc)
				}
				again, _ := authGet(t, client, srv.URL+path, tokenBob, "If-None-Match", resp.Header.Get("ETag"))
				if again.StatusCode != http.StatusNotModified {
					t.Errorf("%s revalidated: %d, want 304", what, again.StatusCode)
				}
				checkPrivate(t, what+" (304)", again.Header)
			}
		}
		// The same through a browser's session.
		browser := browserLogin(t, srv.URL, client, tokenAlice)
		resp, _ = authGet(t, browser, srv.URL+"/api/v1/events", "")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s page with a session: %d", proto, resp.StatusCode)
		}
		checkPrivate(t, proto+" page with a session", resp.Header)
	}

	// Without tokens nothing is added: the answers are the same for all.
	h := newHandler(handlerDeps{journal: openAPIGoldenJournal(t), log: apiLogger()})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/events", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Vary") != "" || rec.Header().Get("Cache-Control") != "" {
		t.Errorf("without tokens: %d, Vary %q, Cache-Control %q", rec.Code, rec.Header().Get("Vary"), rec.Header().Get("Cache-Control"))
	}
}

func TestMarkPrivate(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cc, vary         []string
		wantCC, wantVary []string
	}{
		{nil, nil, []string{"private"}, []string{"Authorization, Cookie"}},
		{[]string{"no-store"}, []string{"Accept"}, []string{"no-store"}, []string{"Accept", "Authorization, Cookie"}},
		{[]string{"no-cache"}, []string{"accept, cookie"}, []string{"private, no-cache"}, []string{"accept, cookie", "Authorization"}},
		{[]string{"public, max-age=60"}, []string{"*"}, []string{"private, max-age=60"}, []string{"*"}},
		{[]string{"Private"}, []string{"Authorization", "Cookie"}, []string{"Private"}, []string{"Authorization", "Cookie"}},
	} {
		h := http.Header{}
		for _, v := range c.cc {
			h.Add("Cache-Control", v)
		}
		for _, v := range c.vary {
			h.Add("Vary", v)
		}
		markPrivate(h)
		markPrivate(h) // twice: the same
		if got := h.Values("Cache-Control"); !slices.Equal(got, c.wantCC) {
			t.Errorf("Cache-Control %q: got %q, want %q", c.cc, got, c.wantCC)
		}
		if got := h.Values("Vary"); !slices.Equal(got, c.wantVary) {
			t.Errorf("Vary %q: got %q, want %q", c.vary, got, c.wantVary)
		}
	}
}
