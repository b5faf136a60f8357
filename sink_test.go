package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/client"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/protocol"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/vmware/govmomi/vim25/types"
)

// misbehaviour is how the test sink answers one request.
type misbehaviour int

const (
	behave         misbehaviour = iota // hand the event to the SDK's receiver
	answer503                          // 503 Service Unavailable
	answer429                          // 429 Too Many Requests, Retry-After: 1
	hang                               // no answer until the client gives up
	resetConn                          // close the connection with a TCP reset
	holdThenBehave                     // report on holding, wait for release, then behave
)

// sinkRequest is one request the test sink got.
type sinkRequest struct {
	id          string
	contentType string
	body        []byte
	at          time.Time
	answer      misbehaviour
}

// testSink is a CloudEvents sink on loopback: the SDK's HTTP receiver,
// behind a middleware that misbehaves as the test's plan says.
type testSink struct {
	url string

	mu       sync.Mutex
	requests []sinkRequest
	acked    []cloudevents.Event // events answered 2xx, in the order answered
	// plan returns how to answer the nth request (from 1), for event id.
	plan func(n int, id string) misbehaviour
	// reject returns whether to answer the event with 400.
	reject  func(ev cloudevents.Event) bool
	changed chan struct{}
	// A request planned holdThenBehave sends its id to holding, then
	// waits until release is closed.
	holding chan string
	release chan struct{}
}

// startTestSink serves a sink on addr ("127.0.0.1:0" for any port) until
// the test ends.
func startTestSink(t testing.TB, addr string, plan func(int, string) misbehaviour, reject func(cloudevents.Event) bool) *testSink {
	t.Helper()
	s := &testSink{plan: plan, reject: reject, changed: make(chan struct{}), holding: make(chan string, 16), release: make(chan struct{})}
	if s.plan == nil {
		s.plan = func(int, string) misbehaviour { return behave }
	}
	if s.reject == nil {
		s.reject = func(cloudevents.Event) bool { return false }
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.url = "http://" + ln.Addr().String() + "/"
	p, err := cehttp.New(cehttp.WithListener(ln), cehttp.WithMiddleware(s.misbehave))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(p, client.WithBlockingCallback())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.StartReceiver(ctx, s.receive); err != nil {
			t.Errorf("sink receiver: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

// receive is the SDK receiver's callback: it answers before the client
// sees the answer, so the order of acked is the order of acknowledgements.
func (s *testSink) receive(ctx context.Context, ev cloudevents.Event) protocol.Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.notify()
	if s.reject(ev) {
		return cehttp.NewResult(http.StatusBadRequest, "test sink refuses event %s", ev.ID())
	}
	s.acked = append(s.acked, ev)
	return nil
}

func (s *testSink) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// misbehave is the middleware in front of the SDK's handler.
func (s *testSink) misbehave(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		id := r.Header.Get("Ce-Id")
		if id == "" {
			var structured struct{ ID string }
			_ = json.Unmarshal(body, &structured)
			id = structured.ID
		}
		s.mu.Lock()
		n := len(s.requests) + 1
		answer := s.plan(n, id)
		s.requests = append(s.requests, sinkRequest{id: id, contentType: r.Header.Get("Content-Type"), body: body, at: time.Now(), answer: answer})
		s.notify()
		s.mu.Unlock()
		switch answer {
		case answer503:
			http.Error(w, "not now", http.StatusServiceUnavailable)
		case answer429:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case hang:
			<-r.Context().Done()
		case holdThenBehave:
			s.holding <- id
			select {
			case <-s.release:
				next.ServeHTTP(w, r)
			case <-r.Context().Done():
			}
		case resetConn:
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				panic(err)
			}
			if tcp, ok := conn.(*net.TCPConn); ok {
				_ = tcp.SetLinger(0) // close with RST, not FIN
			}
			_ = conn.Close()
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// waitFor waits until cond, called with the sink locked, holds.
func (s *testSink) waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		ok, changed := cond(), s.changed
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("test sink: no %s within %v", what, waitTimeout)
		}
	}
}

// waitAcked waits until the sink has acknowledged key.
func (s *testSink) waitAcked(t testing.TB, key int64) {
	t.Helper()
	id := strconv.FormatInt(key, 10)
	s.waitFor(t, "acknowledgement of "+id, func() bool {
		return slices.ContainsFunc(s.acked, func(ev cloudevents.Event) bool { return ev.ID() == id })
	})
}

// ackedKeys returns the keys acknowledged, in order, repeats included.
func (s *testSink) ackedKeys(t testing.TB) []int64 {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	return eventIDKeys(t, len(s.acked), func(i int) string { return s.acked[i].ID() })
}

// requestKeys returns the keys of the events the sink was sent, one per
// request, in the order the requests came.
func (s *testSink) requestKeys(t testing.TB) []int64 {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	return eventIDKeys(t, len(s.requests), func(i int) string { return s.requests[i].id })
}

// eventIDKeys returns the keys that the n event ids id(0) to id(n-1) spell.
func eventIDKeys(t testing.TB, n int, id func(int) string) []int64 {
	t.Helper()
	keys := make([]int64, n)
	for i := range keys {
		k, err := strconv.ParseInt(id(i), 10, 64)
		if err != nil {
			t.Fatalf("event id %q", id(i))
		}
		keys[i] = k
	}
	return keys
}

// heldEvents returns the server's events from earliest on, as the API
// serves them, by id.
func heldEvents(t *testing.T, srv *testServer) ([]string, map[string]json.RawMessage) {
	t.Helper()
	earliest, _ := serverRange(t, srv)
	body := mustGet(t, fmt.Sprintf("%s/api/v1/events?offset=%d&limit=1000", srv.url, earliest))
	var raw []json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	var ids []string
	byID := map[string]json.RawMessage{}
	for _, r := range raw {
		var e struct{ ID string }
		if err := json.Unmarshal(r, &e); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
		byID[e.ID] = r
	}
	return ids, byID
}

// waitCaughtUp waits until the server's deliverer is done with key and
// idle: its status and metrics are then final.
func waitCaughtUp(t testing.TB, srv *testServer, key int64) {
	t.Helper()
	srv.waitSink(t, fmt.Sprintf("idle deliverer done with %d", key), func() bool {
		return srv.sink.ready().State == sinkStateIdle && srv.sink.pace.doneWith() >= key
	})
}

// firstOccurrences returns keys without repeats, in the order first seen.
func firstOccurrences(keys []int64) []int64 {
	seen := map[int64]bool{}
	var out []int64
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

func serverMetrics(t *testing.T, srv *testServer) map[string]float64 {
	t.Helper()
	return parseMetrics(t, string(mustGet(t, srv.url+"/metrics")))
}

// TestSinkMisbehavingReceiver: a sink that refuses connections at first,
// then answers 503, 429 with Retry-After, nothing until the timeout, resets
// a connection and rejects one event with 400: every event held is still
// acknowledged, first acknowledgements in offset order, with the
// overrides and the API's data; the 400 event is skipped and counted.
func TestSinkMisbehavingReceiver(t *testing.T) {
	t.Parallel()
	// An address that refuses connections until the sink starts on it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, map[string]string{
		envSink:        "http://" + addr + "/",
		envCEOverrides: `{"extensions":{"cluster":"test","team":"vmware"}}`,
		envSinkTimeout: "300ms",
	})
	srv.waitSink(t, "a retry", func() bool { return srv.sink.retries.Load() > 0 })
	if msg := *srv.sink.ready().LastError; !strings.Contains(msg, "refused") {
		t.Errorf("first failure %q, want connection refused", msg)
	}

	var rejectedID string // guarded by the sink's lock
	distinct := map[string]bool{}
	sink := startTestSink(t, addr, func(n int, id string) misbehaviour {
		switch n {
		case 1, 2:
			return answer503
		case 3:
			return answer429
		case 5:
			return hang
		case 7:
			return resetConn
		}
		return behave
	}, func(ev cloudevents.Event) bool {
		distinct[ev.ID()] = true
		if rejectedID == "" && len(distinct) == 3 {
			rejectedID = ev.ID()
		}
		return ev.ID() == rejectedID
	})
	vc.postEvents(t, 5)
	latest := vc.latestKey(t)
	sink.waitAcked(t, latest)
	waitCaughtUp(t, srv, latest)

	ids, byID := heldEvents(t, srv)
	// The overrides are the sink's alone: the API's events do not carry them.
	for id, raw := range byID {
		if bytes.Contains(raw, []byte(`"cluster"`)) || bytes.Contains(raw, []byte(`"team"`)) {
			t.Errorf("the API's event %s carries the sink's overrides: %s", id, raw)
		}
	}
	sink.mu.Lock()
	rejected := rejectedID
	sink.mu.Unlock()
	acked := sink.ackedKeys(t)
	first := firstOccurrences(acked)
	if !slices.IsSorted(first) {
		t.Errorf("first acknowledgements not in offset order: %v", first)
	}
	ackedSet := map[string]bool{}
	for _, k := range acked {
		ackedSet[strconv.FormatInt(k, 10)] = true
	}
	for _, id := range ids {
		if id == rejected {
			if ackedSet[id] {
				t.Errorf("rejected event %s was acknowledged", id)
			}
			continue
		}
		if !ackedSet[id] {
			t.Errorf("held event %s was never acknowledged", id)
		}
	}

	sink.mu.Lock()
	for _, ev := range sink.acked {
		if ev.Extensions()["cluster"] != "test" || ev.Extensions()["team"] != "vmware" {
			t.Errorf("event %s lacks the overrides: %v", ev.ID(), ev.Extensions())
		}
		api, ok := byID[ev.ID()]
		if !ok {
			continue // acknowledged, then purged: not here
		}
		var want struct {
			Type, Source string
			Time         time.Time
			EventClass   string
			Data         json.RawMessage
		}
		if err := json.Unmarshal(api, &want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ev.Data(), want.Data) {
			t.Errorf("event %s: data differs from the API's:\n%s\n%s", ev.ID(), ev.Data(), want.Data)
		}
		if ev.Type() != want.Type || ev.Source() != want.Source || !ev.Time().Equal(want.Time) || ev.Extensions()[extEventClass] != want.EventClass {
			t.Errorf("event %s: attributes differ from the API's: %v", ev.ID(), ev)
		}
	}
	// The 400 was tried once; the 429's retry waited for Retry-After; the
	// request left hanging and the reset one were sent again.
	var rejectedTries int
	for i, r := range sink.requests {
		if r.id == rejected && r.answer == behave {
			rejectedTries++
		}
		if r.answer == answer429 || r.answer == hang || r.answer == resetConn || r.answer == answer503 {
			if i+1 >= len(sink.requests) || sink.requests[i+1].id != r.id {
				t.Errorf("request %d (answer %d) for %s was not retried next", i+1, r.answer, r.id)
			} else if r.answer == answer429 && sink.requests[i+1].at.Sub(r.at) < time.Second {
				t.Errorf("retry after a 429 with Retry-After: 1 came %v later", sink.requests[i+1].at.Sub(r.at))
			}
		}
		if r.contentType != "application/json" {
			t.Errorf("binary mode request with Content-Type %q", r.contentType)
		}
	}
	sink.mu.Unlock()
	if rejectedTries != 1 {
		t.Errorf("rejected event %s answered 400 %d times, want 1 (no retry)", rejected, rejectedTries)
	}
	srv.waitSink(t, "a rejected event", func() bool { return srv.sink.rejected.Load() > 0 })
	// Every attempt is counted, those refused at connect too.
	sink.mu.Lock()
	requests := len(sink.requests)
	sink.mu.Unlock()
	srv.waitSink(t, fmt.Sprintf("%d attempts", requests+1), func() bool { return srv.sink.requestDurations().count >= uint64(requests+1) })

	m := serverMetrics(t, srv)
	p := metricPrefix
	for name, want := range map[string]float64{
		p + "sink_rejected_total":        1,
		p + "sink_lost_total":            0,
		p + "sink_last_delivered_offset": float64(latest),
		p + "sink_lag_events":            0,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	if got := m[p+"sink_delivered_total"]; got < float64(len(first)) || got > float64(len(acked)) {
		t.Errorf("sink_delivered_total = %v, want %d (or up to %d with repeats)", got, len(first), len(acked))
	}
	// Refused connections (at least one), 2 x 503, 429, timeout, reset.
	if got := m[p+"sink_retries_total"]; got < 6 {
		t.Errorf("sink_retries_total = %v, want at least 6", got)
	}
	if got := m[p+`sink_request_duration_seconds_bucket{le="+Inf"}`]; got < float64(len(acked)+7) {
		t.Errorf("request duration histogram counts %v requests, want at least %d", got, len(acked)+7)
	}

	var ready struct {
		Sink *sinkReady `json:"sink"`
	}
	if err := json.Unmarshal(mustGet(t, srv.url+"/readyz"), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Sink == nil || ready.Sink.State != sinkStateIdle || ready.Sink.LastError == nil || ready.Sink.LastErrorTime == nil ||
		ready.Sink.LastDeliveredOffset == nil || *ready.Sink.LastDeliveredOffset != latest {
		t.Errorf("/readyz sink = %+v, want idle, last delivered %d, with the last error", ready.Sink, latest)
	} else if !strings.Contains(*ready.Sink.LastError, "400") {
		t.Errorf("/readyz sink last error %q, want the 400", *ready.Sink.LastError)
	}
}

// TestSinkRestartResumes: after a graceful restart with a checkpoint,
// delivery resumes right after the last event acknowledged: the events
// logged while the server was down are delivered, however many times the
// journal they are, and nothing is sent twice. The second start replays nothing of vCenter's past by itself
// (VCENTER_STREAM_BEGIN=0s): the checkpoint's time makes the collector
// reach back.
func TestSinkRestartResumes(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	cpFile := filepath.Join(t.TempDir(), "sink.checkpoint")
	// A journal of 10 events: the backlog after the restart is 4 times it.
	env := map[string]string{envSink: sink.url, envSinkCheckpointFile: cpFile, envMaxSegmentSize: "5"}

	first := startServer(t, sim, env)
	vc.postEvents(t, 3)
	before := vc.latestKey(t)
	sink.waitAcked(t, before)
	// Written within a second while running, not only at shutdown: a
	// crash now would send nothing again.
	first.waitSink(t, fmt.Sprintf("checkpoint %d", before), func() bool { return first.sink.checkpointed.Load() == before })
	if m := serverMetrics(t, first); m[metricPrefix+"sink_checkpoint_offset"] != float64(before) {
		t.Errorf("sink_checkpoint_offset = %v, want %d", m[metricPrefix+"sink_checkpoint_offset"], before)
	}
	first.shutdown(t)
	cp, ok, err := loadCheckpoint(cpFile)
	if err != nil || !ok || cp.Offset != before {
		t.Fatalf("checkpoint after shutdown = %+v %v %v, want offset %d", cp, ok, err, before)
	}

	// While no server runs. The first catch-up reads them no faster than
	// the sink takes them, rather than purge what it has not yet taken.
	vc.postEvents(t, 40)
	env[envStreamBegin] = "0s"
	second := startServer(t, sim, env)
	// Before it writes one, the checkpoint it resumes from.
	if m := serverMetrics(t, second); m[metricPrefix+"sink_checkpoint_offset"] < float64(before) {
		t.Errorf("sink_checkpoint_offset after the restart = %v, want at least %d", m[metricPrefix+"sink_checkpoint_offset"], before)
	}
	vc.postEvents(t, 2)
	latest := vc.latestKey(t)
	sink.waitAcked(t, latest)

	acked := sink.ackedKeys(t)
	if !slices.IsSorted(acked) || len(firstOccurrences(acked)) != len(acked) {
		t.Fatalf("acknowledged keys repeat or are out of order: %v", acked)
	}
	for k := before + 1; k <= latest; k++ {
		if !slices.Contains(acked, k) {
			t.Errorf("event %d (after the checkpoint %d) never delivered; acknowledged %v", k, before, acked)
		}
	}
	if m := serverMetrics(t, second); m[metricPrefix+"sink_lost_total"] != 0 {
		t.Errorf("sink_lost_total = %v after a restart, want 0", m[metricPrefix+"sink_lost_total"])
	}
}

// TestSinkKilled: the server process is killed (SIGKILL) while the sink
// holds an event's request. The checkpoint it leaves is whole, the next
// process sends again exactly the events acknowledged after it (at least
// once: the event in flight included) and nothing is lost, events logged
// while no server ran included.
func TestSinkKilled(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	var inFlight atomic.Value // the id of the event to hold
	inFlight.Store("")
	var held sync.Once
	sink := startTestSink(t, "127.0.0.1:0", func(_ int, id string) misbehaviour {
		answer := behave
		if id == inFlight.Load() {
			held.Do(func() { answer = holdThenBehave })
		}
		return answer
	}, nil)
	cpFile := filepath.Join(t.TempDir(), "sink.checkpoint")
	env := []string{envSink + "=" + sink.url, envSinkCheckpointFile + "=" + cpFile, envDebug + "=true"}

	first := startChild(t, sim, env)
	start := vc.latestKey(t) // after the server's login, an event too
	inFlight.Store(strconv.FormatInt(start+6, 10))
	vc.postEvents(t, 3)
	saved := start + 3
	sink.waitAcked(t, saved)
	first.logs.waitWhere(t, "sink checkpoint written", nil, func(rec map[string]any) bool { return rec["offset"] == float64(saved) })
	vc.postEvents(t, 3) // start+4, start+5 acknowledged, start+6 held
	if id := <-sink.holding; id != inFlight.Load() {
		t.Fatalf("sink held event %s, want %s", id, inFlight.Load())
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Wait()
	// The held request may still reach the receiver: a sink that took an
	// event whose answer the server never read, as after a real crash.
	close(sink.release)
	cp, ok, err := loadCheckpoint(cpFile)
	if err != nil || !ok || cp.Offset < saved || cp.Offset > start+5 {
		t.Fatalf("checkpoint after the kill = %+v %v %v, want an offset from %d to %d", cp, ok, err, saved, start+5)
	}
	sentBefore := len(sink.requestKeys(t))

	vc.postEvents(t, 2) // while no server runs
	startChild(t, sim, env)
	latest := vc.latestKey(t)
	sink.waitAcked(t, latest)

	var want []int64
	for k := cp.Offset + 1; k <= latest; k++ {
		want = append(want, k)
	}
	if again := sink.requestKeys(t)[sentBefore:]; !slices.Equal(again, want) {
		t.Errorf("after the kill the server sent %v, want the events after the checkpoint (%d) once each, in order: %v", again, cp.Offset, want)
	}
	acked := sink.ackedKeys(t)
	for k := start + 1; k <= latest; k++ {
		if !slices.Contains(acked, k) {
			t.Errorf("event %d never acknowledged; acknowledged %v", k, acked)
		}
	}
}

// TestSinkCheckpointAheadOfVCenter: a checkpoint beyond vCenter's newest
// key (vCenter's keys went back while the server was down, or another
// vCenter's checkpoint) does not stop delivery for good: a new epoch starts
// before anything is appended, and delivery from the first event held, under
// the new epoch's source; the checkpoint then names the new timeline.
func TestSinkCheckpointAheadOfVCenter(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	cpFile := filepath.Join(t.TempDir(), "sink.checkpoint")
	ahead := vc.latestKey(t) + 1000
	if err := saveCheckpoint(cpFile, checkpoint{Offset: ahead, Time: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, sim, map[string]string{envSink: sink.url, envSinkCheckpointFile: cpFile})
	// vCenter has no event under the checkpoint's key: a new epoch starts
	// before anything is appended, so that nothing of this timeline goes
	// out under an id the sink saw for another event.
	rec := srv.logs.wait(t, keysStartedOver, srv.stopped)
	if reason, _ := rec["reason"].(string); !strings.Contains(reason, "the sink checkpoint's") || rec["epoch"] != 1.0 {
		t.Errorf("reset %v", rec)
	}
	srv.logs.wait(t, "vCenter's event keys were reset: delivering the new timeline's events", srv.stopped)
	vc.postEvents(t, 2)
	latest := vc.latestKey(t)
	sink.waitAcked(t, latest)
	expectDeliveredFromFirstHeld(t, srv, sink, sim.url.String()+"?epoch=1")
	// The checkpoint now names the new timeline.
	srv.waitSink(t, "checkpoint of "+strconv.FormatInt(latest, 10), func() bool { return srv.sink.checkpointed.Load() == latest })
	cp, _, err := loadCheckpoint(cpFile)
	if err != nil || cp.Epoch != 1 || cp.InstanceUUID == "" || cp.Offset != latest {
		t.Errorf("checkpoint after the reset = %+v, %v; want offset %d of epoch 1 with the instance UUID", cp, err, latest)
	}
}

// TestSinkLostEvents: a sink so slow that the journal purges its next
// events: the loss is logged with its range and counted, and delivery
// goes on from the earliest event held.
func TestSinkLostEvents(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	// The sink stalls once the server has caught up: the first catch-up
	// would wait for it (TestSinkRestartBacklogBeyondJournal).
	var armed atomic.Bool
	var held sync.Once
	sink := startTestSink(t, "127.0.0.1:0", func(int, string) misbehaviour {
		answer := behave
		if armed.Load() {
			held.Do(func() { answer = holdThenBehave })
		}
		return answer
	}, nil)
	srv := startServer(t, sim, map[string]string{envSink: sink.url, envMaxSegmentSize: "5"})
	sink.waitAcked(t, vc.latestKey(t))
	armed.Store(true)
	vc.postEvents(t, 30)
	<-sink.holding
	latest := vc.latestKey(t)
	waitForKey(t, srv, latest)
	close(sink.release)
	sink.waitAcked(t, latest)

	lost := srv.logs.wait(t, "events purged before delivery to the sink: lost", srv.stopped)
	from, to, n := lost["from"].(float64), lost["to"].(float64), lost["lost"].(float64)
	if n <= 0 || to-from+1 != n {
		t.Errorf("lost log line from %v to %v lost %v", from, to, n)
	}
	acked := sink.ackedKeys(t)
	if !slices.IsSorted(acked) {
		t.Errorf("acknowledged out of order: %v", acked)
	}
	for _, k := range acked {
		if float64(k) >= from && float64(k) <= to {
			t.Errorf("lost event %d was delivered", k)
		}
	}
	if m := serverMetrics(t, srv); m[metricPrefix+"sink_lost_total"] < n {
		t.Errorf("sink_lost_total = %v, want at least %v", m[metricPrefix+"sink_lost_total"], n)
	}
}

// TestSinkStructured: structured mode sends the journal's event as it is
// (byte for byte what the API serves); with overrides, the event with them.
func TestSinkStructured(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	plain := startTestSink(t, "127.0.0.1:0", nil, nil)
	withOverrides := startTestSink(t, "127.0.0.1:0", nil, nil)
	a := startServer(t, sim, map[string]string{envSink: plain.url, envSinkMode: "structured", envSinkFilter: "eventclass=eventex"})
	b := startServer(t, sim, map[string]string{envSink: withOverrides.url, envSinkMode: "structured", envCEOverrides: `{"extensions":{"cluster":"x"}}`})
	vc.postEvents(t, 3)
	latest := vc.latestKey(t)
	plain.waitAcked(t, latest)
	withOverrides.waitAcked(t, latest)

	_, byID := heldEvents(t, a)
	plain.mu.Lock()
	for _, r := range plain.requests {
		if r.contentType != "application/cloudevents+json" {
			t.Errorf("structured request with Content-Type %q", r.contentType)
		}
		if !bytes.Equal(r.body, byID[r.id]) {
			t.Errorf("event %s: body differs from the API's:\n%s\n%s", r.id, r.body, byID[r.id])
		}
	}
	for _, ev := range plain.acked {
		if ev.Extensions()[extEventClass] != "eventex" {
			t.Errorf("filter eventclass=eventex let event %s of class %v through", ev.ID(), ev.Extensions()[extEventClass])
		}
	}
	if len(plain.acked) < 3 {
		t.Errorf("%d events delivered, want the 3 EventEx posted at least", len(plain.acked))
	}
	plain.mu.Unlock()

	_, byID = heldEvents(t, b)
	withOverrides.mu.Lock()
	defer withOverrides.mu.Unlock()
	for _, ev := range withOverrides.acked {
		if ev.Extensions()["cluster"] != "x" {
			t.Errorf("event %s lacks the override", ev.ID())
		}
		var want struct{ Data json.RawMessage }
		if err := json.Unmarshal(byID[ev.ID()], &want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ev.Data(), want.Data) {
			t.Errorf("event %s: data differs from the API's", ev.ID())
		}
	}
	for _, r := range withOverrides.requests {
		if r.contentType != "application/cloudevents+json" {
			t.Errorf("structured request with Content-Type %q", r.contentType)
		}
	}
}

// TestSinkShutdown: at shutdown the request in flight may still finish
// (and its acknowledgement is in the checkpoint); one that does not finish
// within the grace is cancelled, and the server still exits within 5 s.
func TestSinkShutdown(t *testing.T) {
	t.Parallel()
	t.Run("answered during shutdown", func(t *testing.T) {
		t.Parallel()
		sim := startTestSimulation(t)
		vc := connectVCenter(t, sim)
		var target string // guarded by the sink's lock
		var held sync.Once
		sink := startTestSink(t, "127.0.0.1:0", func(_ int, id string) misbehaviour {
			answer := behave
			if id == target {
				held.Do(func() { answer = holdThenBehave })
			}
			return answer
		}, nil)
		cpFile := filepath.Join(t.TempDir(), "cp")
		srv := startServer(t, sim, map[string]string{envSink: sink.url, envSinkCheckpointFile: cpFile})
		before := vc.latestKey(t)
		sink.waitAcked(t, before)
		sink.mu.Lock()
		target = strconv.FormatInt(before+1, 10)
		sink.mu.Unlock()
		vc.postEvents(t, 1)
		if id := <-sink.holding; id != target {
			t.Fatalf("held %s, want %s", id, target)
		}
		srv.stop()
		srv.logs.wait(t, "shutting down", nil)
		close(sink.release)
		srv.shutdown(t)
		cp, ok, err := loadCheckpoint(cpFile)
		if err != nil || !ok || strconv.FormatInt(cp.Offset, 10) != target {
			t.Errorf("checkpoint %+v %v %v, want offset %s (answered during shutdown)", cp, ok, err, target)
		}
	})
	t.Run("never answered", func(t *testing.T) {
		t.Parallel()
		sim := startTestSimulation(t)
		sink := startTestSink(t, "127.0.0.1:0", func(int, string) misbehaviour { return hang }, nil)
		cpFile := filepath.Join(t.TempDir(), "cp")
		srv := startServer(t, sim, map[string]string{envSink: sink.url, envSinkCheckpointFile: cpFile, envSinkTimeout: "1m"})
		sink.waitFor(t, "request", func() bool { return len(sink.requests) > 0 })
		start := time.Now()
		srv.shutdown(t) // fails the test beyond 5 s
		if d := time.Since(start); d < sinkShutdownGrace {
			t.Errorf("shut down after %v: the request in flight did not get the grace of %v", d, sinkShutdownGrace)
		}
		if _, ok, err := loadCheckpoint(cpFile); ok || err != nil {
			t.Errorf("checkpoint written (%v, %v) though nothing was acknowledged", ok, err)
		}
	})
}

func TestSinkConfigErrors(t *testing.T) {
	t.Parallel()
	missingDir := filepath.Join(t.TempDir(), "no", "such", "dir", "cp")
	dirAsFile := t.TempDir()
	for _, tc := range []struct {
		variable, value string
	}{
		{envSink, "not a url"},
		{envSink, "ftp://sink.example.com"},
		{envSink, "http://"},
		{envSink, "/just/a/path"},
		{envCEOverrides, "{"},
		{envCEOverrides, `{"extensions":{"a":1}}`},
		{envCEOverrides, `{"ext":{"a":"b"}}`},
		{envCEOverrides, `{"extensions":{"Bad-Name":"b"}}`},
		{envCEOverrides, `{"extensions":{"id":"b"}}`},
		{envCEOverrides, `{"extensions":{}} x`},
		{envSinkMode, "batch"},
		{envSinkFilter, "typ=VmPoweredOnEvent"},
		{envSinkFilter, "eventclass=nope"},
		{envSinkFilter, "type="},
		{envSinkFilter, "type=%zz"},
		{envSinkCheckpointFile, missingDir},
		{envSinkCheckpointFile, dirAsFile},
		{envSinkTimeout, "10"},
		{envSinkTimeout, "0s"},
		{envSinkTimeout, "-1s"},
	} {
		t.Run(tc.variable+"="+tc.value, func(t *testing.T) {
			t.Parallel()
			_, err := parseConfig(configEnv(map[string]string{tc.variable: tc.value}), false)
			checkConfigError(t, err, tc.variable)
		})
	}
	// A key in K_SINK's query or user stays out of the error (and so of
	// the log), however the URL is wrong.
	for _, value := range []string{"ftp://user:secret@sink.example.com/?key=secret", "http://%zz/?key=secret", "/path?key=secret"} {
		_, err := parseConfig(configEnv(map[string]string{envSink: value}), false)
		checkConfigError(t, err, envSink)
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s=%s: error %q shows the key", envSink, value, err)
		}
	}
	t.Run("valid", func(t *testing.T) {
		cp := filepath.Join(t.TempDir(), "cp")
		cfg, err := parseConfig(configEnv(map[string]string{
			envSink: "http://broker-ingress.knative-eventing.svc.cluster.local/ns/default", envCEOverrides: `{"extensions":{"cluster":"a1"}}`,
			envSinkMode: "structured", envSinkFilter: "type=VmPoweredOnEvent&type=vmware.vsphere.VmPoweredOffEvent.v0&eventclass=event",
			envSinkCheckpointFile: cp, envSinkTimeout: "2s",
		}), false)
		if err != nil {
			t.Fatal(err)
		}
		s := cfg.sink
		if s.url == nil || !s.structured || s.extensions["cluster"] != "a1" || s.checkpointFile != cp || s.timeout != 2*time.Second ||
			!slices.Equal(s.filter.types, []string{cloudEventType("VmPoweredOnEvent"), cloudEventType("VmPoweredOffEvent")}) ||
			!slices.Equal(s.filter.classes, []eventClass{classEvent}) {
			t.Errorf("sink config %+v", s)
		}
		if entries, _ := os.ReadDir(filepath.Dir(cp)); len(entries) != 0 {
			t.Errorf("checking the checkpoint directory left %d files", len(entries))
		}
	})
	t.Run("defaults", func(t *testing.T) {
		cfg, err := parseConfig(configEnv(nil), false)
		if err != nil {
			t.Fatal(err)
		}
		if s := cfg.sink; s.url != nil || s.structured || s.timeout != defaultSinkTimeout || !s.filter.all() || s.checkpointFile != "" {
			t.Errorf("default sink config %+v", s)
		}
	})
	t.Run("corrupt checkpoint", func(t *testing.T) {
		cp := filepath.Join(t.TempDir(), "cp")
		writeFile(t, cp, "garbage")
		cfg, err := parseConfig(configEnv(map[string]string{envSink: "http://127.0.0.1:1/", envSinkCheckpointFile: cp}), false)
		if err != nil {
			t.Fatal(err)
		}
		_, err = newSinkPace(cfg.sink.checkpointFile, sinkPatience, newCollectorStatus(time.Minute))
		checkConfigError(t, err, envSinkCheckpointFile)
		if !errors.Is(err, errCheckpointCorrupt) && !strings.Contains(err.Error(), errCheckpointCorrupt.Error()) {
			t.Errorf("error %v does not say the checkpoint is corrupt", err)
		}
	})
}

func TestCheckpointFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "cp")
	if _, ok, err := loadCheckpoint(path); ok || err != nil {
		t.Fatalf("missing checkpoint: ok %v, err %v", ok, err)
	}
	at := time.Date(2026, 11, 25, 1, 2, 3, 456789000, time.UTC)
	for i := range 3 {
		want := checkpoint{Offset: int64(100 + i), Time: at.Add(time.Duration(i) * time.Second)}
		if err := saveCheckpoint(path, want); err != nil {
			t.Fatal(err)
		}
		got, ok, err := loadCheckpoint(path)
		if err != nil || !ok || got.Offset != want.Offset || !got.Time.Equal(want.Time) {
			t.Fatalf("loaded %+v %v %v, want %+v", got, ok, err, want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the checkpoint's directory, want 1 (no temporary files left)", len(entries))
	}
	if err := saveCheckpoint(filepath.Join(dir, "missing", "cp"), checkpoint{Offset: 1, Time: at}); err == nil {
		t.Error("saving into a missing directory succeeded")
	}
	writeFile(t, path, `{"offset":-1,"time":"2026-11-25T00:00:00Z"}`)
	if _, _, err := loadCheckpoint(path); !errors.Is(err, errCheckpointCorrupt) {
		t.Errorf("negative offset: %v, want ErrCheckpointCorrupt", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		"0":                             0,
		"-5":                            0,
		"abc":                           0,
		"Wed, 25 Nov 2026 01:00:10 GMT": 10 * time.Second,
		"Wed, 25 Nov 2026 00:59:00 GMT": 0,
		"Mon, 30 Nov 2026 01:00:00 GMT": time.Hour, // days ahead: a skewed clock
		"999999999999":                  time.Hour,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

// newTestDeliverer returns a deliverer of j for cfg, at the pace of a
// collector that never runs.
func newTestDeliverer(t testing.TB, cfg sinkConfig, j *journal, log *slog.Logger) *deliverer {
	t.Helper()
	pace, err := newSinkPace(cfg.checkpointFile, sinkPatience, newCollectorStatus(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDeliverer(cfg, j, pace, log)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// runDeliverer runs, until the test ends, a deliverer of j configured by
// env (tune, if set, adjusts it first), and returns its debug log and a
// channel closed when it stops.
func runDeliverer(t *testing.T, j *journal, env map[string]string, tune func(*deliverer)) (*logRecorder, *sinkStatus, <-chan struct{}) {
	t.Helper()
	cfg, err := parseConfig(configEnv(env), false)
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogRecorder()
	d := newTestDeliverer(t, cfg.sink, j, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if tune != nil {
		tune(d)
	}
	return logs, d.status, runUntilCleanup(t, d.run)
}

// TestSinkFilterAdvancesCheckpoint: events SINK_FILTER leaves out are not
// sent, but delivery is done with them: the checkpoint moves past them
// (with their time), so a restart does not scan them again, and it is
// written within a second while idle.
func TestSinkFilterAdvancesCheckpoint(t *testing.T) {
	t.Parallel()
	conv := &eventConverter{source: "https://vc.example.com/sdk", maxRecordSize: defaultMaxRecordSize}
	created := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	j := newJournal(100)
	for key := int32(1); key <= 10; key++ {
		base := types.Event{Key: key, ChainId: key, CreatedTime: created.Add(time.Duration(key) * time.Second)}
		var ev types.BaseEvent = &types.VmPoweredOnEvent{VmEvent: types.VmEvent{Event: base}}
		if key%2 == 1 {
			ev = &types.EventEx{Event: base, EventTypeId: "com.example.odd"}
		}
		c, err := conv.convert(ev)
		if err != nil {
			t.Fatal(err)
		}
		if err := j.append(c.record); err != nil {
			t.Fatal(err)
		}
	}
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	cpFile := filepath.Join(t.TempDir(), "cp")
	_, status, stopped := runDeliverer(t, j, map[string]string{envSink: sink.url, envSinkFilter: "eventclass=eventex", envSinkCheckpointFile: cpFile}, nil)
	sink.waitAcked(t, 9)
	waitUntil(t, &status.changes, stopped, "checkpoint 10", func() bool { return status.checkpointed.Load() == 10 })
	if got := sink.ackedKeys(t); !slices.Equal(got, []int64{1, 3, 5, 7, 9}) {
		t.Errorf("delivered %v, want the EventEx only: [1 3 5 7 9]", got)
	}
	cp, ok, err := loadCheckpoint(cpFile)
	if err != nil || !ok || cp.Offset != 10 || !cp.Time.Equal(created.Add(10*time.Second)) {
		t.Errorf("checkpoint %+v %v %v, want offset 10 (filtered out, but done) at its time", cp, ok, err)
	}
}

// TestSinkCheckpointEventWithoutTime: an event whose time could not be read
// (an unknown type with a broken field) never gives the checkpoint a zero
// time, which the next start would refuse: the checkpoint keeps the time
// before it, or waits for an event with a time.
func TestSinkCheckpointEventWithoutTime(t *testing.T) {
	t.Parallel()
	conv := &eventConverter{source: "https://vc.example.com/sdk", maxRecordSize: defaultMaxRecordSize}
	created := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	j := newJournal(100)
	appendAt := func(key int32, at time.Time) {
		t.Helper()
		c, err := conv.convert(&types.EventEx{Event: types.Event{Key: key, CreatedTime: at}, EventTypeId: "com.example.test"})
		if err == nil {
			err = j.append(c.record)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	appendAt(1, time.Time{}) // the first event done: no time before it
	appendAt(2, created.Add(2*time.Second))
	appendAt(3, created.Add(3*time.Second))
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	cpFile := filepath.Join(t.TempDir(), "cp")
	logs, status, stopped := runDeliverer(t, j, map[string]string{envSink: sink.url, envSinkCheckpointFile: cpFile}, nil)
	checkpointAt := func(offset int64, at time.Time) {
		t.Helper()
		sink.waitAcked(t, offset)
		waitUntil(t, &status.changes, stopped, fmt.Sprintf("checkpoint %d", offset), func() bool { return status.checkpointed.Load() == offset })
		cp, ok, err := loadCheckpoint(cpFile)
		if err != nil || !ok || cp.Offset != offset || !cp.Time.Equal(at) {
			t.Fatalf("checkpoint %+v %v %v, want offset %d at %v", cp, ok, err, offset, at)
		}
	}
	checkpointAt(3, created.Add(3*time.Second))
	appendAt(4, time.Time{})
	checkpointAt(4, created.Add(3*time.Second))
	if n := logs.count("cannot write the sink checkpoint"); n != 0 {
		t.Errorf("%d failed checkpoint writes", n)
	}
}

// TestSinkRetryAfterHonoured: the sink's Retry-After holds even beyond the
// deliverer's own longest backoff.
func TestSinkRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	sink := startTestSink(t, "127.0.0.1:0", func(n int, _ string) misbehaviour {
		if n == 1 {
			return answer429 // Retry-After: 1
		}
		return behave
	}, nil)
	j := newJournal(10)
	if err := j.append(benchRecords(t, 1)[0]); err != nil {
		t.Fatal(err)
	}
	runDeliverer(t, j, map[string]string{envSink: sink.url}, func(d *deliverer) {
		d.backoffMin, d.backoffMax = time.Millisecond, 10*time.Millisecond
	})
	sink.waitFor(t, "the retry", func() bool { return len(sink.acked) == 1 })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.requests) != 2 {
		t.Fatalf("%d requests, want 2", len(sink.requests))
	}
	if gap := sink.requests[1].at.Sub(sink.requests[0].at); gap < time.Second {
		t.Errorf("retried %v after a 429 with Retry-After: 1", gap)
	}
}

// TestSinkAnswers: what each answer of the sink leads to: 2xx move on,
// 408, 429 and 5xx are retried, any other status skips the event.
func TestSinkAnswers(t *testing.T) {
	t.Parallel()
	var status atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(int(status.Load()))
		_, _ = io.WriteString(w, "answer body")
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	d := newTestDeliverer(t, sinkConfig{url: u, timeout: 5 * time.Second}, newJournal(1), slog.New(slog.DiscardHandler))
	msg, err := d.message(benchRecords(t, 1)[0])
	if err != nil {
		t.Fatal(err)
	}
	for code, want := range map[int]sinkMode{
		200: modeAcked, 202: modeAcked, 204: modeAcked,
		408: modeBackoff, 429: modeBackoff, 500: modeBackoff, 502: modeBackoff, 503: modeBackoff, 504: modeBackoff,
		400: modeSkip, 401: modeSkip, 403: modeSkip, 404: modeSkip, 409: modeSkip, 413: modeSkip, 415: modeSkip, 422: modeSkip,
	} {
		status.Store(int64(code))
		res := d.attempt(context.Background(), 7, msg, 1)
		if got := decide(context.Background(), res); got != want {
			t.Errorf("status %d: mode %d, want %d (result %+v)", code, got, want, res)
		}
		if res.status != code {
			t.Errorf("status %d read as %d", code, res.status)
		}
		if want == modeSkip && (res.body != "answer body" || !errors.Is(res.err, errSinkRejected)) {
			t.Errorf("status %d: body %q, error %v", code, res.body, res.err)
		}
		if want == modeBackoff && (res.retryAfter != 2*time.Second || !errors.Is(res.err, errSinkUnavailable)) {
			t.Errorf("status %d: Retry-After %v, error %v", code, res.retryAfter, res.err)
		}
	}
	// No answer at all: retried, unless shutting down.
	srv.Close()
	res := d.attempt(context.Background(), 7, msg, 1)
	if got := decide(context.Background(), res); got != modeBackoff || !errors.Is(res.err, errSinkUnavailable) {
		t.Errorf("closed sink: mode %d, error %v", got, res.err)
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if got := decide(done, res); got != modeStop {
		t.Errorf("failure during shutdown: mode %d, want stop", got)
	}
}

// TestSinkWithTokensAndTLS: delivery to the sink is the server's own
// outgoing traffic, untouched by the API's tokens and TLS; /readyz still
// shows the sink's state to the kubelet without a token, and its metrics
// need one.
func TestSinkWithTokensAndTLS(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	s, ca, _ := startHTTPSServerEnv(t, sim, tokenAlice+"\n", map[string]string{envSink: sink.url})
	client := httpsClient(ca)

	vc.postEvents(t, 2)
	latest := vc.latestKey(t)
	sink.waitAcked(t, latest)
	if acked := sink.ackedKeys(t); !slices.IsSorted(acked) || len(firstOccurrences(acked)) != len(acked) {
		t.Errorf("acknowledged keys repeat or are out of order: %v", acked)
	}

	resp, body := authGet(t, client, s.url+"/readyz", "")
	var ready struct {
		Sink *sinkReady `json:"sink"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &ready) != nil || ready.Sink == nil {
		t.Fatalf("/readyz without a token: %s %s, want 200 with the sink's state", resp.Status, body)
	}
	if resp, _ := authGet(t, client, s.url+"/metrics", ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/metrics without a token: %s, want 401", resp.Status)
	}
	resp, body = authGet(t, client, s.url+"/metrics", tokenAlice)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics with a token: %s", resp.Status)
	}
	if m := parseMetrics(t, string(body)); m[metricPrefix+"sink_last_delivered_offset"] < float64(latest) {
		t.Errorf("sink_last_delivered_offset = %v, want %d", m[metricPrefix+"sink_last_delivered_offset"], latest)
	}
}

// TestSinkBacklogStalledSink: a sink that takes nothing does not hold the
// first catch-up back for ever: after sinkPatience the collector reads on
// (saying so once), catches up and serves the newest events.
func TestSinkBacklogStalledSink(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	cfg := config{vcenterURL: sim.url, insecure: true, username: sim.username, password: sim.password,
		streamBegin: defaultStreamBegin, maxRecordSize: defaultMaxRecordSize, maxSegmentSize: 5}
	opts := defaultCollectorOptions()
	journal := newJournal(cfg.maxSegmentSize)
	status := newCollectorStatus(opts.stuckAfter())
	logs := newLogRecorder()
	// No deliverer takes from it: the sink needs the first event held.
	pace, err := newSinkPace("", 50*time.Millisecond, status)
	if err != nil {
		t.Fatal(err)
	}
	collector := newCollector(cfg, opts, journal, status, pace, slog.New(slog.NewJSONHandler(logs, nil)))
	stopped := runUntilCleanup(t, collector.run)

	waitUntil(t, &status.changes, stopped, "the catch-up with vCenter", status.isReady)
	if n := logs.count("the sink took no event for a while: reading vCenter's backlog on without it; the events it needs may be purged before delivery (sink_lost_total)"); n != 1 {
		t.Errorf("%d warnings that the catch-up reads on without the sink, want 1", n)
	}
	if _, latest, _ := journal.bounds(); latest != vc.latestKey(t) {
		t.Errorf("caught up to %d, want vCenter's newest %d", latest, vc.latestKey(t))
	}
}

// TestCollectorPacesSink: the first catch-up waits for the sink only while
// it reads the backlog (events created before the first session began):
// with a sink slower than vCenter's own rate it would never end otherwise.
func TestCollectorPacesSink(t *testing.T) {
	t.Parallel()
	began := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name        string
		lastCreated time.Time
		noSink      bool
		gaveUp      bool
		ready       bool
		want        bool
	}{
		{name: "nothing read yet", want: true},
		{name: "in the backlog", lastCreated: began.Add(-time.Second), want: true},
		{name: "past the backlog", lastCreated: began},
		{name: "no sink", noSink: true},
		{name: "gave up on the sink", gaveUp: true},
		{name: "caught up once", ready: true},
	} {
		status := newCollectorStatus(time.Minute)
		pace, err := newSinkPace("", sinkPatience, status)
		if err != nil {
			t.Fatal(err)
		}
		if tc.noSink {
			pace = nil
		}
		c := &collector{status: status, pace: pace, backlogUntil: began,
			lastCreated: tc.lastCreated, sinkGaveUp: tc.gaveUp}
		if tc.ready {
			c.status.setReady()
		}
		if got := c.pacesSink(); got != tc.want {
			t.Errorf("%s: pacesSink() = %v, want %v", tc.name, got, tc.want)
		}
	}
}
