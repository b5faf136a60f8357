package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHandlerPanic: a handler's panic answers 500 problem+json, is logged
// and counted, and the server goes on serving.
func TestHandlerPanic(t *testing.T) {
	t.Parallel()
	logs := newLogRecorder()
	log := slog.New(slog.NewJSONHandler(logs, nil))
	metrics := newHTTPMetrics()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /boom", func(http.ResponseWriter, *http.Request) { panic("boom") })
	mux.HandleFunc("GET /half", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "partial")
		panic("after the answer began")
	})
	mux.HandleFunc("GET /ok", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := httptest.NewServer(instrument(mux, metrics, log))
	t.Cleanup(srv.Close)

	// A token in the query (RFC 6750's access_token) is not logged.
	res, err := http.Get(srv.URL + "/boom?offset=3&access_token=" + tokenAlice)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var p problem
	if res.StatusCode != http.StatusInternalServerError || res.Header.Get("Content-Type") != "application/problem+json" ||
		json.Unmarshal(body, &p) != nil || p.Status != http.StatusInternalServerError {
		t.Errorf("panicking handler: %d %s %s", res.StatusCode, res.Header.Get("Content-Type"), body)
	}
	rec := logs.wait(t, "request handler panicked", nil)
	if rec["panic"] != "boom" || !strings.Contains(rec["stack"].(string), "panics_test.go") ||
		rec["target"] != "/boom?offset=3&access_token=REDACTED" {
		t.Errorf("log line %v", rec)
	}
	if strings.Contains(logs.String(), tokenAlice) {
		t.Errorf("the log holds the token:\n%s", logs)
	}
	// An answer already under way is cut, not completed with a problem.
	if res, err := http.Get(srv.URL + "/half"); err == nil {
		_, err = io.ReadAll(res.Body)
		res.Body.Close()
		if err == nil {
			t.Error("a half-written answer ended cleanly")
		}
	}
	if code, body := get(t, srv.URL+"/ok"); code != http.StatusOK || string(body) != "ok" {
		t.Errorf("after the panics: %d %s", code, body)
	}
	metrics.mu.Lock()
	n := metrics.requests[requestKey{route: "GET /boom", code: http.StatusInternalServerError}]
	metrics.mu.Unlock()
	if n != 1 {
		t.Errorf("500s counted for /boom: %d", n)
	}
}

// panickingHandler is a slog handler that panics once on a message: a
// fault injected into the collector's loop without a hook in its code.
type panickingHandler struct {
	slog.Handler
	msg      string
	panicked *atomic.Bool
}

func (h panickingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg && h.panicked.CompareAndSwap(false, true) {
		panic("injected into the collector's loop")
	}
	return h.Handler.Handle(ctx, r)
}

// runCollector runs a collector of sim's events (without the rest of the
// program) until the test ends, after prepare, if set, has adjusted it.
func runCollector(t *testing.T, sim *simulation, log *slog.Logger, prepare func(*collector)) (*journal, *collectorStatus, <-chan struct{}) {
	t.Helper()
	cfg := config{vcenterURL: sim.url, insecure: true, username: sim.username, password: sim.password,
		streamBegin: defaultStreamBegin, maxRecordSize: defaultMaxRecordSize, maxSegmentSize: defaultMaxSegmentSize}
	opts := defaultCollectorOptions()
	journal := newJournal(cfg.maxSegmentSize)
	status := newCollectorStatus(opts.stuckAfter())
	collector := newCollector(cfg, opts, journal, status, nil, log)
	if prepare != nil {
		prepare(collector)
	}
	return journal, status, runUntilCleanup(t, collector.run)
}

// TestCollectorSessionPanic: a panic in the collector's loop ends that
// session as an error; the collector opens a new one and catches up.
func TestCollectorSessionPanic(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	logs := newLogRecorder()
	log := slog.New(panickingHandler{
		Handler: slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
		msg:     "collecting vCenter events", panicked: new(atomic.Bool),
	})
	_, status, done := runCollector(t, sim, log, nil)
	rec := logs.wait(t, "vCenter session failed; reconnecting", done)
	if !strings.Contains(rec["error"].(string), "injected into the collector's loop") {
		t.Errorf("session error %v", rec["error"])
	}
	waitUntil(t, &status.changes, done, "the catch-up after the panic", status.isReady)
}

// TestKeepRunning: a loop that panics runs again after a pause, logged with
// its stack, and stops for good with its context.
func TestKeepRunning(t *testing.T) {
	t.Parallel()
	logs := newLogRecorder()
	log := slog.New(slog.NewJSONHandler(logs, nil))
	runs := 0
	keepRunning(t.Context(), log, "test loop", func(context.Context) {
		if runs++; runs < 3 {
			panic(fmt.Sprint("run ", runs))
		}
	})
	if runs != 3 || logs.count("loop panicked; running it again") != 2 {
		t.Errorf("%d runs, log:\n%s", runs, logs)
	}
	rec := logs.wait(t, "loop panicked; running it again", nil)
	if rec["loop"] != "test loop" || rec["panic"] != "run 1" || !strings.Contains(rec["stack"].(string), "panics_test.go") {
		t.Errorf("log line %v", rec)
	}

	// Cancelled during the pause, it does not run again.
	ctx, cancel := context.WithCancel(t.Context())
	runs = 0
	keepRunning(ctx, log, "test loop", func(context.Context) {
		runs++
		cancel()
		panic("always")
	})
	if runs != 1 {
		t.Errorf("ran %d times after its context ended", runs)
	}
}

// TestSinkLoopPanic: a panic in the sink's delivery loop is logged and the
// loop runs again: every event is still delivered.
func TestSinkLoopPanic(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	logs := newLogRecorder()
	logs.panicOn = "delivering events to the sink"
	s := launchServerLogging(t, sim, map[string]string{envSink: sink.url}, logs)
	rec := s.logs.wait(t, "loop panicked; running it again", s.stopped)
	if rec["loop"] != "sink delivery" {
		t.Errorf("log line %v", rec)
	}
	vc.postEvents(t, 2)
	sink.waitAcked(t, vc.latestKey(t))
}

// TestSinkEventPanic: a panic while sending one event skips that event,
// logged and counted, and delivery goes on with the next.
func TestSinkEventPanic(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	logs := newLogRecorder()
	logs.panicOn = "sink attempt" // the debug line of each attempt
	s := launchServerLogging(t, sim, map[string]string{envSink: sink.url}, logs)
	rec := s.logs.wait(t, "cannot deliver an event: skipped", s.stopped)
	if !strings.Contains(fmt.Sprint(rec["error"]), "injected") {
		t.Errorf("log line %v", rec)
	}
	vc.postEvents(t, 2)
	sink.waitAcked(t, vc.latestKey(t))
	if got := serverMetrics(t, s)[metricPrefix+"sink_rejected_total"]; got != 1 {
		t.Errorf("sink_rejected_total = %v, want 1", got)
	}
	if n := s.logs.count("loop panicked; running it again"); n != 0 {
		t.Errorf("the delivery loop was restarted %d times for one event", n)
	}
}

// TestBackoff: pauses grow from lowest, never below it nor above highest.
func TestBackoff(t *testing.T) {
	t.Parallel()
	for attempt := 1; attempt <= 40; attempt++ {
		for range 20 {
			d := backoff(attempt, 100*time.Millisecond, 30*time.Second)
			want := min(30*time.Second, 100*time.Millisecond<<min(attempt-1, 31))
			if attempt >= 32 {
				want = 30 * time.Second
			}
			if d < want || d > min(30*time.Second, want+want/2) {
				t.Fatalf("attempt %d: %v, want within [%v, %v]", attempt, d, want, min(30*time.Second, want+want/2))
			}
		}
	}
}

// TestTakenWatchPanic: a watch that panics after taking its connection
// over is cut, not ended like a whole stream, and the panic is logged.
func TestTakenWatchPanic(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	logs := newLogRecorder()
	logs.panicOn = "watch started" // logged once the stream has begun
	s := launchServerLogging(t, sim, nil, logs)
	s.waitReady(t)
	resp, err := http.Get(s.url + "/api/v1/events?watch=true&timeoutSeconds=5")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the panicked watch ended like a whole stream")
	}
	rec := s.logs.wait(t, "request handler panicked", s.stopped)
	if !strings.Contains(fmt.Sprint(rec["panic"]), "injected") {
		t.Errorf("log line %v", rec)
	}
}

// TestIngestPanic: a panic in the collector's handling of one event, after
// its append, is recovered in ingest: logged with the key, counted, and the
// stream goes on with the event served whole.
func TestIngestPanic(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	logs := newLogRecorder()
	logs.panicOn = "appended event" // ingest's debug line, after the append
	s := launchServerLogging(t, sim, nil, logs)
	rec := s.logs.wait(t, "event could not be processed", s.stopped)
	key := int64(rec["offset"].(float64))
	if !strings.Contains(fmt.Sprint(rec["error"]), "injected") || !strings.Contains(fmt.Sprint(rec["stack"]), "harness_test.go") {
		t.Errorf("log line %v", rec)
	}
	s.waitReady(t)
	if code, body := get(t, fmt.Sprintf("%s/api/v1/events/%d", s.url, key)); code != http.StatusOK || !strings.Contains(string(body), `"data":{`) {
		t.Errorf("event %d: %d %s", key, code, body)
	}
	before, w := watchFromNow(t, vc, s)
	vc.postEvents(t, 2)
	expectEvents(t, w, vc.events(t, before))
	if got := serverMetrics(t, s)[metricPrefix+"events_failed_total"]; got != 1 {
		t.Errorf("events_failed_total = %v, want 1", got)
	}
	if n := s.logs.count("vCenter session failed; reconnecting"); n != 0 {
		t.Errorf("the session failed %d times for one event", n)
	}
}
