package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// takenServer serves newHandler over real HTTP and counts the watches on
// connections taken over from net/http; its log goes to logs.
type takenServer struct {
	srv   *httptest.Server
	j     *journal
	taken *takenWatches
	logs  *logRecorder

	mu    sync.Mutex
	conns map[net.Conn]struct{} // taken over
}

// startTakenServer serves the handler of d, with the server's journal, log
// and count of taken watches.
func startTakenServer(t *testing.T, tlsServer bool, d handlerDeps) *takenServer {
	t.Helper()
	s := &takenServer{j: newJournal(100), taken: new(takenWatches), logs: newLogRecorder(), conns: make(map[net.Conn]struct{})}
	log := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d.journal, d.log, d.taken = s.j, log, s.taken
	s.srv = httptest.NewUnstartedServer(newHandler(d))
	s.srv.Config.ConnState = func(c net.Conn, state http.ConnState) {
		if state == http.StateHijacked {
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
		}
	}
	if tlsServer {
		s.srv.EnableHTTP2 = true
		s.srv.StartTLS()
	} else {
		s.srv.Start()
	}
	t.Cleanup(func() {
		s.srv.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.conns {
			c.Close()
		}
	})
	return s
}

// waitTaken waits until no watch runs on a taken connection.
func (s *takenServer) waitTaken(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := s.taken.wait(ctx); err != nil {
		t.Fatalf("watches on taken connections still running: %v", err)
	}
}

// rawTakenWatch sends request (a request line and header fields, without the
// blank line) on a new TCP connection and reads the response head.
func rawTakenWatch(t *testing.T, addr, request string) (net.Conn, *bufio.Reader, *textproto.Reader, string, textproto.MIMEHeader) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(conn, request+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	tp := textproto.NewReader(br)
	status, err := tp.ReadLine()
	if err != nil {
		t.Fatal(err)
	}
	head, err := tp.ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	return conn, br, tp, status, head
}

// TestTakenWatchHead: over HTTP/1.1 a watch answers a head of its own
// (status 200, the watch's headers, Connection: close, chunked), then its
// events one chunk per write, then after timeoutSeconds the last chunk and
// the end of the connection. The request is counted and logged as 200.
func TestTakenWatchHead(t *testing.T) {
	t.Parallel()
	s := startTakenServer(t, false, handlerDeps{})
	if err := s.j.append(record{offset: 1, data: apiRecord(1)}); err != nil {
		t.Fatal(err)
	}
	conn, br, tp, status, head := rawTakenWatch(t, s.srv.Listener.Addr().String(),
		"GET /api/v1/events?watch=true&offset=1&timeoutSeconds=1 HTTP/1.1\r\nHost: x")
	if status != "HTTP/1.1 200 OK" {
		t.Errorf("status line %q", status)
	}
	for name, want := range map[string]string{
		"Content-Type":           "application/x-ndjson",
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
		"X-Accel-Buffering":      "no",
		"Connection":             "close",
		"Transfer-Encoding":      "chunked",
	} {
		if got := head.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if _, err := time.Parse(http.TimeFormat, head.Get("Date")); err != nil {
		t.Errorf("Date %q: %v", head.Get("Date"), err)
	}
	if head.Get("Content-Length") != "" {
		t.Errorf("Content-Length %q on a stream", head.Get("Content-Length"))
	}
	// The chunks, exactly: one per write.
	chunk := func() string {
		t.Helper()
		line, err := tp.ReadLine()
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(line, 16, 64)
		if err != nil {
			t.Fatalf("chunk size line %q", line)
		}
		data := make([]byte, n+2)
		if _, err := io.ReadFull(br, data); err != nil {
			t.Fatal(err)
		}
		if string(data[n:]) != "\r\n" {
			t.Fatalf("chunk %q does not end with CRLF", data)
		}
		return string(data[:n])
	}
	if got, want := chunk(), string(apiRecord(1))+"\n"; got != want {
		t.Errorf("first chunk %q, want %q", got, want)
	}
	if err := s.j.append(record{offset: 2, data: apiRecord(2)}); err != nil {
		t.Fatal(err)
	}
	if got, want := chunk(), string(apiRecord(2))+"\n"; got != want {
		t.Errorf("second chunk %q, want %q", got, want)
	}
	// timeoutSeconds=1: the last chunk ("0", no trailer), then the server
	// closes.
	if got := chunk(); got != "" {
		t.Errorf("chunk %q, want the last chunk", got)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the body: %q, %v; want the connection's end", rest, err)
	}
	conn.Close()
	s.waitTaken(t)
	end := s.logs.wait(t, "http request", nil)
	if end["route"] != "GET /api/v1/events" || end["status"] != float64(http.StatusOK) {
		t.Errorf("logged %v, want the watch with status 200", end)
	}
	_, metrics := get(t, s.srv.URL+"/metrics")
	if want := `vsphere_event_streaming_http_requests_total{route="GET /api/v1/events",code="200"} 1`; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %s:\n%s", want, metrics)
	}
}

// TestTakenWatchSSEAndHTTP10: an SSE watch over HTTP/1.1 starts with its
// retry: chunk; a watch asked in HTTP/1.0 has no chunks, and its body ends
// with the connection.
func TestTakenWatchSSEAndHTTP10(t *testing.T) {
	t.Parallel()
	s := startTakenServer(t, false, handlerDeps{})
	addr := s.srv.Listener.Addr().String()

	_, br, _, status, head := rawTakenWatch(t, addr, "GET /api/v1/events?watch=true HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream")
	if status != "HTTP/1.1 200 OK" || head.Get("Content-Type") != "text/event-stream" || head.Get("Transfer-Encoding") != "chunked" {
		t.Errorf("SSE: %q %v", status, head)
	}
	start := "retry: 3000\n\n"
	want := fmt.Sprintf("%x\r\n%s\r\n", len(start), start)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
		t.Errorf("SSE begins with %q (%v), want %q", got, err, want)
	}

	conn, br, _, status, head := rawTakenWatch(t, addr, "GET /api/v1/events?watch=true&timeoutSeconds=1 HTTP/1.0\r\nHost: x")
	if status != "HTTP/1.1 200 OK" || head.Get("Connection") != "close" || head.Get("Transfer-Encoding") != "" {
		t.Errorf("HTTP/1.0: %q %v", status, head)
	}
	if err := s.j.append(record{offset: 1, data: apiRecord(1)}); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(br)
	if err != nil || string(body) != string(apiRecord(1))+"\n" {
		t.Errorf("HTTP/1.0 body %q, %v", body, err)
	}
	conn.Close()
}

// TestTakenWatchClientLeaves: a watch notices its client leaving while it
// waits (NDJSON, SSE, and a client that sent bytes after its request),
// and ends: the count of open watches falls back to zero.
func TestTakenWatchClientLeaves(t *testing.T) {
	t.Parallel()
	s := startTakenServer(t, false, handlerDeps{maxWatches: 3})
	addr := s.srv.Listener.Addr().String()
	var conns []net.Conn
	for _, request := range []string{
		"GET /api/v1/events?watch=true HTTP/1.1\r\nHost: x",
		"GET /api/v1/events?watch=true HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream",
		"GET /api/v1/events?watch=true HTTP/1.1\r\nHost: x\r\n\r\nGET /api/v1/range HTTP/1.1\r\nHost: x",
	} {
		conn, _, _, status, _ := rawTakenWatch(t, addr, request)
		if status != "HTTP/1.1 200 OK" {
			t.Fatalf("%q: %s", request, status)
		}
		conns = append(conns, conn)
	}
	// More after the head too.
	if _, err := io.WriteString(conns[2], strings.Repeat("x", 2000)); err != nil {
		t.Fatal(err)
	}
	// The cap is reached: a fourth watch is refused.
	if code, _ := get(t, s.srv.URL+"/api/v1/events?watch=true"); code != http.StatusServiceUnavailable {
		t.Errorf("fourth watch: %d, want 503", code)
	}
	for _, c := range conns {
		c.Close()
	}
	s.waitTaken(t)
	// The three watches and the refused one, logged once they end, after
	// the count of watches.
	s.logs.waitN(t, "http request", 4, nil)
	_, metrics := get(t, s.srv.URL+"/metrics")
	if want := "vsphere_event_streaming_watchers 0\n"; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %q:\n%s", want, metrics)
	}
}

// TestTakenWatchHTTP2: an HTTP/2 watch cannot take its connection over
// and is served by net/http as before; over TLS, an HTTP/1.1 watch does
// take it over. Both get their events and end cleanly.
func TestTakenWatchHTTP2(t *testing.T) {
	t.Parallel()
	s := startTakenServer(t, true, handlerDeps{})
	h2 := s.srv.Client()
	h1 := &http.Client{Transport: &http.Transport{
		TLSClientConfig: h2.Transport.(*http.Transport).TLSClientConfig.Clone(),
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{}, // no HTTP/2
	}}
	t.Cleanup(h1.CloseIdleConnections)
	for i, tc := range []struct {
		name   string
		client *http.Client
		proto  int
		taken  bool
	}{
		{"HTTP/2", h2, 2, false},
		{"HTTP/1.1 over TLS", h1, 1, true},
	} {
		resp, err := tc.client.Get(s.srv.URL + "/api/v1/events?watch=true&timeoutSeconds=2")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != tc.proto {
			t.Errorf("%s: %s %s", tc.name, resp.Proto, resp.Status)
		}
		if got := resp.Close; got != tc.taken {
			t.Errorf("%s: Connection: close is %v, want %v", tc.name, got, tc.taken)
		}
		key := int64(i + 1)
		if err := s.j.append(record{offset: key, data: apiRecord(key)}); err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != string(apiRecord(key))+"\n" {
			t.Errorf("%s: body %q, %v; want event %d and a clean end", tc.name, body, err, key)
		}
	}
	s.mu.Lock()
	taken := len(s.conns)
	s.mu.Unlock()
	if taken != 1 {
		t.Errorf("%d connections taken over, want the HTTP/1.1 one", taken)
	}
}

// TestTakenWatchRevoked: removing a token ends the watches opened with it
// on taken connections (NDJSON and SSE) cleanly (the last chunk), and only
// those: a listed token's watches get the next event.
func TestTakenWatchRevoked(t *testing.T) {
	t.Parallel()
	a, path, _ := newTestAuth(t, tokenAlice+"\n"+tokenBob+"\n")
	s := startTakenServer(t, false, handlerDeps{auth: a})
	addr := s.srv.Listener.Addr().String()
	open := func(token, accept string) *bufio.Reader {
		t.Helper()
		_, br, _, status, head := rawTakenWatch(t, addr, "GET /api/v1/events?watch=true HTTP/1.1\r\nHost: x\r\nAccept: "+accept+"\r\nAuthorization: Bearer "+token)
		if status != "HTTP/1.1 200 OK" || head.Get("Connection") != "close" {
			t.Fatalf("watch: %q %v", status, head)
		}
		return br
	}
	alice, aliceSSE := open(tokenAlice, "application/x-ndjson"), open(tokenAlice, "text/event-stream")
	bob, bobSSE := open(tokenBob, "application/x-ndjson"), open(tokenBob, "text/event-stream")
	writeFile(t, path, tokenBob+"\n"+tokenCarol+"\n")
	a.reload()
	if rest, err := io.ReadAll(alice); err != nil || string(rest) != "0\r\n\r\n" {
		t.Errorf("watch of the removed token: %q, %v; want the last chunk and the end", rest, err)
	}
	if rest, err := io.ReadAll(aliceSSE); err != nil || !strings.HasSuffix(string(rest), "0\r\n\r\n") {
		t.Errorf("SSE watch of the removed token: %q, %v; want the last chunk and the end", rest, err)
	}
	if err := s.j.append(record{offset: 1, data: apiRecord(1)}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%x\r\n%s\n\r\n", len(apiRecord(1))+1, apiRecord(1))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(bob, got); err != nil || string(got) != want {
		t.Errorf("watch of a listed token: %q, %v; want %q", got, err, want)
	}
	for {
		line, err := bobSSE.ReadString('\n')
		if err != nil {
			t.Fatalf("SSE watch of a listed token: %v before event 1", err)
		}
		if line == "id: 1\n" {
			break
		}
	}
}
