package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25/mo"
)

// readyState is the part of /readyz the fault tests look at.
type readyState struct {
	code      int
	connected bool
}

func readyz(t testing.TB, s *testServer) readyState {
	t.Helper()
	code, body := get(t, s.url+"/readyz")
	var r readyResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("readyz %d %s: %v", code, body, err)
	}
	return readyState{code: code, connected: r.VCenterConnected}
}

// waitReconnecting waits for the nth failed session.
func waitReconnecting(t testing.TB, s *testServer, n int) {
	t.Helper()
	s.waitStatus(t, fmt.Sprintf("failed session #%d", n), func() bool { return s.status.reconnects.Load() >= int64(n) })
}

// waitCollecting waits until a session after a failed one collects events.
func waitCollecting(t testing.TB, s *testServer) {
	t.Helper()
	s.waitStatus(t, "a new session", func() bool { return s.status.reconnects.Load() > 0 && s.status.isConnected() })
}

// checkOutage checks what clients see while vCenter is gone: the server
// stays ready, says vCenter is not connected, and serves cached events.
func checkOutage(t *testing.T, s *testServer, cached int64) {
	t.Helper()
	if r := readyz(t, s); r.code != http.StatusOK || r.connected {
		t.Errorf("during the outage /readyz = %+v, want 200 and not connected", r)
	}
	if code, _ := get(t, fmt.Sprintf("%s/api/v1/events/%d", s.url, cached)); code != http.StatusOK {
		t.Errorf("during the outage a cached event answers %d", code)
	}
}

// TestCollectorConnectionCut: every connection to vCenter is cut and new
// ones refused while events happen; after healing, a watch opened before
// the cut has received exactly vCenter's history since it opened.
func TestCollectorConnectionCut(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	proxy := startFaultProxy(t, sim.url.Host)
	srv := startServer(t, sim, map[string]string{envVCenterURL: proxy.url(sim)})

	before, w := watchFromNow(t, vc, srv)
	vc.powerCycleVMs(t, 1)

	proxy.cut()
	vc.powerCycleVMs(t, 1) // while the server cannot see vCenter
	waitReconnecting(t, srv, 2)
	checkOutage(t, srv, before)

	proxy.heal()
	waitCollecting(t, srv)
	vc.powerCycleVMs(t, 1)
	expectEvents(t, w, vc.events(t, before))
	if r := readyz(t, srv); !r.connected {
		t.Error("after healing /readyz says vCenter is not connected")
	}
}

// TestCollectorSessionTerminated: an administrator terminates the server's
// session; it logs in again and resumes with nothing lost or repeated.
func TestCollectorSessionTerminated(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)
	before, w := watchFromNow(t, vc, srv)

	vc.terminateServerSession(t)

	vc.powerCycleVMs(t, 1)
	waitReconnecting(t, srv, 1)
	waitCollecting(t, srv)
	vc.powerCycleVMs(t, 1)
	expectEvents(t, w, vc.events(t, before))
	// A reconnect that reads events again is no reset.
	if n := srv.status.resets.Load(); n != 0 || srv.journal.currentTimeline().epoch != 0 {
		t.Errorf("%d resets, epoch %d after a reconnect; want none", n, srv.journal.currentTimeline().epoch)
	}
}

// terminateServerSession terminates the server's session in vCenter, as
// an administrator would.
func (v *vcenter) terminateServerSession(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	var sm mo.SessionManager
	if err := property.DefaultCollector(v.client.Client).RetrieveOne(ctx, *v.client.ServiceContent.SessionManager, []string{"sessionList"}, &sm); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range sm.SessionList {
		if s.UserAgent == userAgent {
			keys = append(keys, s.Key)
		}
	}
	if len(keys) != 1 {
		t.Fatalf("want one session of the server, found %d", len(keys))
	}
	if err := session.NewManager(v.client.Client).TerminateSession(ctx, keys); err != nil {
		t.Fatal(err)
	}
}

// TestCollectorVCenterDownAtStart: the server serves (not ready) while
// vCenter is unreachable, keeps trying, and streams once vCenter is up.
func TestCollectorVCenterDownAtStart(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	proxy := startFaultProxy(t, sim.url.Host)
	proxy.cut()
	srv := launchServer(t, sim, map[string]string{envVCenterURL: proxy.url(sim)})

	if r := readyz(t, srv); r.code != http.StatusServiceUnavailable || r.connected {
		t.Errorf("before vCenter is reached /readyz = %+v, want 503", r)
	}
	if code, _ := get(t, srv.url+"/api/v1/range"); code != http.StatusNoContent {
		t.Errorf("range before vCenter is reached: %d, want 204", code)
	}
	waitReconnecting(t, srv, 3)

	proxy.heal()
	srv.waitReady(t)
	if r := readyz(t, srv); r.code != http.StatusOK || !r.connected {
		t.Errorf("after vCenter came up /readyz = %+v, want 200 and connected", r)
	}
	vc.powerCycleVMs(t, 1)
	history := vc.events(t, 0)
	w := openWatch(t, srv, fmt.Sprintf("&offset=%d", history[0].GetEvent().Key))
	expectEvents(t, w, history)
}

// TestCollectorStall: vCenter's connections stay open but carry no bytes
// (no error, no progress). The watchdog, shortened here, rebuilds the
// session and nothing is lost.
func TestCollectorStall(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	proxy := startFaultProxy(t, sim.url.Host)
	srv := startServer(t, sim, map[string]string{envVCenterURL: proxy.url(sim)}, "--watchdog=3s")
	before, w := watchFromNow(t, vc, srv)

	proxy.stall()
	vc.powerCycleVMs(t, 1)
	// The log says why the session failed: the operator's only clue.
	failure := srv.logs.wait(t, "vCenter session failed; reconnecting", srv.stopped)
	if msg, _ := failure["error"].(string); !strings.Contains(msg, errStalled.Error()) {
		t.Errorf("session failed with %q, want the watchdog's %q", msg, errStalled)
	}
	checkOutage(t, srv, before)

	proxy.heal()
	vc.powerCycleVMs(t, 1)
	expectEvents(t, w, vc.events(t, before))
}

// TestCollectorReplicaHandoff: a client reads half of the events from one
// replica and the rest from another with offset=last+1, and has every
// event exactly once.
func TestCollectorReplicaHandoff(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	first := startServer(t, sim, nil)
	second := startServer(t, sim, nil)
	vc.powerCycleVMs(t, 2)
	history := vc.events(t, 0)
	latest := int64(history[len(history)-1].GetEvent().Key)
	waitForKey(t, first, latest)
	waitForKey(t, second, latest)

	half := len(history) / 2
	fromFirst := expectEvents(t, openWatch(t, first, fmt.Sprintf("&offset=%d", history[0].GetEvent().Key)), history[:half])
	last := decodeEvent(t, fromFirst[half-1]).Data.Key
	fromSecond := expectEvents(t, openWatch(t, second, fmt.Sprintf("&offset=%d", last+1)), history[half:])

	got := append(fromFirst, fromSecond...)
	keys := make([]int64, len(got))
	for i, line := range got {
		keys[i] = decodeEvent(t, line).Data.Key
	}
	if !sort.SliceIsSorted(keys, func(i, j int) bool { return keys[i] < keys[j] }) || len(slices.Compact(slices.Clone(keys))) != len(keys) {
		t.Fatalf("keys not strictly increasing: %v", keys)
	}
	// And each line is byte for byte what the other replica has.
	for _, line := range got {
		id := decodeEvent(t, line).ID
		if _, other := get(t, first.url+"/api/v1/events/"+id); string(other) != string(line) {
			t.Fatalf("event %s differs between replicas", id)
		}
	}
}

// BenchmarkWatchLatency measures the time from PostEvent returning to the
// watcher receiving the line, with push (update notifications) and with
// the polling fallback. Run it with a fixed count, e.g.
//
//	go test -run '^$' -bench WatchLatency -benchtime 50x
func BenchmarkWatchLatency(b *testing.B) {
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"push", nil},
		{"poll-1s", []string{"--push=false", "--poll-interval=1s"}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			sim := startTestSimulation(b)
			vc := connectVCenter(b, sim)
			srv := startServer(b, sim, map[string]string{envDebug: "false"}, mode.args...)
			w := openWatch(b, srv, "")
			latencies := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				vc.postEvents(b, 1)
				posted := time.Now()
				w.next(b)
				latencies = append(latencies, time.Since(posted))
			}
			b.StopTimer()
			slices.Sort(latencies)
			quantile := func(q float64) float64 {
				return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(quantile(0.5), "p50-ms")
			b.ReportMetric(quantile(0.99), "p99-ms")
			b.ReportMetric(quantile(1), "max-ms")
		})
	}
}

// TestCollectorPollingFallback: when waiting for vCenter's update
// notifications keeps failing, the collector polls and loses nothing.
func TestCollectorPollingFallback(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	sim.failMethod("WaitForUpdatesEx")
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)
	// The warning is what tells an operator that push mode is off.
	srv.logs.wait(t, "falling back to polling vCenter", srv.stopped)

	before, w := watchFromNow(t, vc, srv)
	vc.postEvents(t, 5) // power operations would wait for their tasks with WaitForUpdatesEx
	expectEvents(t, w, vc.events(t, before))
}

// TestCollectorPollLongerThanWatchdog: the watchdog bounds calls to
// vCenter, not the pause between polls; a poll interval longer than it
// neither ends the session at every pause nor (as it once did) the process.
func TestCollectorPollLongerThanWatchdog(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil, "--push=false", "--poll-interval=4s", "--watchdog=3s")
	before, w := watchFromNow(t, vc, srv)
	vc.postEvents(t, 2)
	// Read at the end of a pause of 4 s: the watchdog's 3 s have passed.
	expectEvents(t, w, vc.events(t, before))
	if n := srv.logs.count("vCenter session failed; reconnecting"); n != 0 {
		t.Errorf("%d sessions failed while polling; log:\n%s", n, srv.logs)
	}
}

// TestCollectorShutdownWhileReconnecting: shutdown ends the reconnect loop
// at once (the harness checks run returns nil within 5 s).
func TestCollectorShutdownWhileReconnecting(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	proxy := startFaultProxy(t, sim.url.Host)
	proxy.cut()
	srv := launchServer(t, sim, map[string]string{envVCenterURL: proxy.url(sim)})
	waitReconnecting(t, srv, 2)
	srv.shutdown(t)
}

// TestCollectorLiveness: /livez fails only when the collector's loop has
// not turned for its bound.
func TestCollectorLiveness(t *testing.T) {
	t.Parallel()
	status := newCollectorStatus(time.Minute)
	srv := httptest.NewServer(newHandler(handlerDeps{journal: newJournal(10), status: status, log: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	if code, body := get(t, srv.URL+"/livez"); code != http.StatusOK {
		t.Fatalf("livez of a turning loop: %d %s", code, body)
	}
	status.heartbeat.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	if code, body := get(t, srv.URL+"/livez"); code != http.StatusServiceUnavailable {
		t.Fatalf("livez of a stuck loop: %d %s", code, body)
	}
	status.beat()
	if code, _ := get(t, srv.URL+"/livez"); code != http.StatusOK {
		t.Fatalf("livez after the loop turned again: %d", code)
	}
}

// TestCollectorAppendedWithoutTime: an event whose time could not be read
// keeps the collector's place in time (where a reconnect reads from) and
// its status as they were.
func TestCollectorAppendedWithoutTime(t *testing.T) {
	t.Parallel()
	c := &collector{status: &collectorStatus{}}
	created := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	c.appended(created)
	c.appended(time.Time{})
	if !c.lastCreated.Equal(created) || c.status.lastEvent.Load() != created.UnixNano() || c.status.ingested.Load() != 2 {
		t.Errorf("after an event without a time: last created %v, status last event %d, ingested %d; want %v, %d, 2",
			c.lastCreated, c.status.lastEvent.Load(), c.status.ingested.Load(), created, created.UnixNano())
	}
}
