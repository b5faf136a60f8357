package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
)

func TestAuthLogTarget(t *testing.T) {
	t.Parallel()
	for target, want := range map[string]string{
		"/api/v1/events":  "/api/v1/events",
		"/api/v1/events?": "/api/v1/events?",
		"/api/v1/events?offset=3&limit=10&watch=true&timeoutSeconds=5&type=VmPoweredOnEvent&eventclass=event": "/api/v1/events?offset=3&limit=10&watch=true&timeoutSeconds=5&type=VmPoweredOnEvent&eventclass=event",
		"/api/v1/events?access_token=" + tokenAlice:                                                           "/api/v1/events?access_token=REDACTED",
		"/ui/login?token=" + tokenAlice:                                                                       "/ui/login?token=REDACTED",
		"/api/v1/events?offset=1;access_token=" + tokenAlice:                                                  "/api/v1/events?offset=1;access_token=REDACTED",
		"/api/v1/events?" + tokenAlice:                                                                        "/api/v1/events?REDACTED",
		"/api/v1/events?offset=1&&" + tokenAlice + "&limit=2":                                                 "/api/v1/events?offset=1&&REDACTED&limit=2",
		"/api/v1/events?%zz=" + tokenAlice:                                                                    "/api/v1/events?REDACTED",
		"/api/v1/events?Token=" + tokenAlice + "&q=" + tokenAlice:                                             "/api/v1/events?Token=REDACTED&q=REDACTED",
		"/api/v1/events?%6Fffset=" + tokenAlice:                                                               "/api/v1/events?%6Fffset=" + tokenAlice, // the API's offset: 400, never a secret
		"/ui/login?next=" + url.QueryEscape("/?type=a&access_token=x"):                                        "/ui/login?next=" + url.QueryEscape("/?type=a&access_token=REDACTED"),
		"/ui/login?next=" + url.QueryEscape("/ui/login?next="+url.QueryEscape("/?access_token=x")): "/ui/login?next=" +
			url.QueryEscape("/ui/login?next="+url.QueryEscape("/?access_token=REDACTED")),
		"/ui/login?next=%zz" + tokenAlice: "/ui/login?next=REDACTED",
	} {
		r := httptest.NewRequest(http.MethodGet, target, nil)
		if got := logTarget(r); got != want {
			t.Errorf("logTarget(%q) = %q, want %q", target, got, want)
		}
	}
	// next within next within ...: redacted whole beyond a depth.
	deep := "/?access_token=" + tokenAlice
	for range maxRedactDepth + 2 {
		deep = "/ui/login?next=" + url.QueryEscape(deep)
	}
	if got := logTarget(httptest.NewRequest(http.MethodGet, deep, nil)); strings.Contains(got, tokenAlice) {
		t.Errorf("logTarget(%q) = %q holds the token", deep, got)
	}
}

// TestAuthTokenInQueryNotLogged: with DEBUG on, requests that carry a
// token in their query, refused or not, leave it out of the server's log
// (startSecureServer checks the whole log when the test ends).
func TestAuthTokenInQueryNotLogged(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, tokenAlice+"\n"+tokenBob+"\n")
	s := startSecureServer(t, sim, map[string]string{envTokensPath: tokens})
	client := noRedirect(http.DefaultClient)

	for _, c := range []struct {
		target, token string
		header        []string
		status        int
		logged        string // the target as logged
	}{
		{target: loginPath + "?token=" + tokenAlice, status: http.StatusBadRequest, logged: loginPath + "?token=REDACTED"},
		{target: "/api/v1/events?access_token=" + tokenAlice, status: http.StatusUnauthorized, logged: "/api/v1/events?access_token=REDACTED"},
		{target: "/api/v1/range?access_token=" + tokenBob, token: tokenAlice, status: http.StatusBadRequest, logged: "/api/v1/range?access_token=REDACTED"},
		{target: "/api/v1/events?limit=1&access_token=" + tokenCarol, token: tokenAlice, status: http.StatusBadRequest, logged: "/api/v1/events?limit=1&access_token=REDACTED"},
		{target: "/api/v1/events?limit=1;access_token=" + tokenCarol, token: tokenAlice, status: http.StatusBadRequest, logged: "/api/v1/events?limit=1;access_token=REDACTED"},
		{target: "/api/v1/events?" + tokenBob, token: tokenAlice, status: http.StatusBadRequest, logged: "/api/v1/events?REDACTED"},
		// A browser sent to the login form: next carries the query on.
		{target: "/?access_token=" + tokenAlice, header: []string{"Accept", "text/html"}, status: http.StatusSeeOther, logged: "/?access_token=REDACTED"},
		{target: loginPath + "?next=" + url.QueryEscape("/?access_token="+tokenAlice), status: http.StatusOK,
			logged: loginPath + "?next=" + url.QueryEscape("/?access_token=REDACTED")},
		{target: "/api/v1/events?limit=1", token: tokenAlice, status: http.StatusOK, logged: "/api/v1/events?limit=1"},
	} {
		resp, body := authGet(t, client, s.url+c.target, c.token, c.header...)
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d %s, want %d", c.target, resp.StatusCode, body, c.status)
		}
		// The request is logged once answered: wait for its line.
		s.logs.waitWhere(t, "http request", s.stopped, func(m map[string]any) bool { return m["target"] == c.logged })
	}
	for _, token := range []string{tokenAlice, tokenBob, tokenCarol} {
		if strings.Contains(s.logs.String(), token) {
			t.Fatalf("the server's log holds token %s", token)
		}
	}
}

func TestSinkErrorRedacted(t *testing.T) {
	t.Parallel()
	sink, _ := url.Parse("http://user:pass@sink.example:8080/in?key=secret#frag")
	err := &url.Error{Op: "Post", URL: "http://user:***@sink.example:8080/in?key=secret", Err: errors.New("connection refused")}
	wrapped := redactURLError(errors.Join(errSinkUnavailable, err, errors.New("to "+sink.String())), sink)
	if msg := wrapped.Error(); strings.Contains(msg, "secret") || strings.Contains(msg, "pass") || strings.Contains(msg, "user") ||
		!strings.Contains(msg, `Post "http://sink.example:8080/in": connection refused`) {
		t.Errorf("redacted error %q", msg)
	}
	var ue *url.Error
	if !errors.Is(wrapped, errSinkUnavailable) || !errors.As(wrapped, &ue) {
		t.Errorf("redacted error %v lost its chain", wrapped)
	}
	plain := errors.New("status 503")
	if got := redactURLError(plain, sink); got != plain {
		t.Errorf("an error without the URL changed: %v", got)
	}
}

// TestSinkRefusedURLRedacted: a sink whose URL carries a key in its query
// refuses connections; /readyz (open to all) shows the error, and neither
// it nor the log quotes the key.
func TestSinkRefusedURLRedacted(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refused from now on
	const secret = "sink-key-5e0c1d"
	sim := startTestSimulation(t)
	s := startServer(t, sim, map[string]string{envSink: "http://" + addr + "/in?key=" + secret})
	s.logs.wait(t, "sink did not take the event; retrying", s.stopped)

	var ready struct {
		Sink *sinkReady `json:"sink"`
	}
	if err := json.Unmarshal(mustGet(t, s.url+"/readyz"), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Sink == nil || ready.Sink.LastError == nil {
		t.Fatalf("/readyz sink %+v, want the last error", ready.Sink)
	}
	if msg := *ready.Sink.LastError; strings.Contains(msg, secret) || !strings.Contains(msg, "http://"+addr+"/in") {
		t.Errorf("/readyz sink last error %q, want the sink's URL without its query", msg)
	}
	if strings.Contains(s.logs.String(), secret) {
		t.Errorf("the server's log holds the sink's key:\n%s", s.logs)
	}
}
