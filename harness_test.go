package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// waitTimeout bounds every wait for a condition in the end-to-end tests.
const waitTimeout = 20 * time.Second

// logRecorder is the stderr of a server under test: it keeps the JSON log
// lines and lets a test wait for one.
type logRecorder struct {
	mu      sync.Mutex
	lines   []map[string]any
	raw     bytes.Buffer
	changed chan struct{} // closed and replaced on every line

	// panicOn, if set, makes the first write of a line with that message
	// panic: a fault injected into whichever loop logs it.
	panicOn  string
	panicked atomic.Bool
}

func newLogRecorder() *logRecorder {
	return &logRecorder{changed: make(chan struct{})}
}

// Write takes whole lines, as slog's JSON handler writes them.
func (l *logRecorder) Write(p []byte) (int, error) {
	if l.panicOn != "" && bytes.Contains(p, []byte(`"msg":"`+l.panicOn+`"`)) && l.panicked.CompareAndSwap(false, true) {
		panic("injected: logging " + l.panicOn)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.raw.Write(p)
	for _, line := range bytes.Split(bytes.TrimSpace(p), []byte{'\n'}) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil {
			l.lines = append(l.lines, rec)
		}
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *logRecorder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raw.String()
}

// wait returns the first log line with message msg, waiting for it.
func (l *logRecorder) wait(t testing.TB, msg string, stopped <-chan struct{}) map[string]any {
	t.Helper()
	return l.waitN(t, msg, 1, stopped)
}

// waitN returns the nth log line with message msg, waiting for it.
func (l *logRecorder) waitN(t testing.TB, msg string, n int, stopped <-chan struct{}) map[string]any {
	t.Helper()
	return l.waitFind(t, fmt.Sprintf("%q (#%d)", msg, n), stopped, func(lines []map[string]any) map[string]any {
		seen := 0
		for _, rec := range lines {
			if rec["msg"] == msg {
				if seen++; seen == n {
					return rec
				}
			}
		}
		return nil
	})
}

// waitWhere returns the first log line with message msg for which match
// holds, waiting for it.
func (l *logRecorder) waitWhere(t testing.TB, msg string, stopped <-chan struct{}, match func(map[string]any) bool) map[string]any {
	t.Helper()
	return l.waitFind(t, fmt.Sprintf("matching %q", msg), stopped, func(lines []map[string]any) map[string]any {
		for _, rec := range lines {
			if rec["msg"] == msg && match(rec) {
				return rec
			}
		}
		return nil
	})
}

// waitFind waits until find, given the lines so far, returns one.
func (l *logRecorder) waitFind(t testing.TB, what string, stopped <-chan struct{}, find func([]map[string]any) map[string]any) map[string]any {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		rec := find(l.lines)
		changed := l.changed
		l.mu.Unlock()
		if rec != nil {
			return rec
		}
		select {
		case <-changed:
		case <-stopped:
			t.Fatalf("server stopped before logging %s; log:\n%s", what, l)
		case <-deadline.C:
			t.Fatalf("no log line %s within %v; log:\n%s", what, waitTimeout, l)
		}
	}
}

// count returns how many log lines have message msg so far.
func (l *logRecorder) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, rec := range l.lines {
		if rec["msg"] == msg {
			n++
		}
	}
	return n
}

// testServer is the whole program, started through run.
type testServer struct {
	url     string // http://127.0.0.1:port
	logs    *logRecorder
	stop    context.CancelFunc
	stopped <-chan struct{}
	err     error // run's result, set before stopped is closed
	// running is what run's started callback handed over: the values a
	// test waits on.
	running
}

// simulatorCreation serializes the creation of simulators: govmomi's
// simulator keeps package-level state (its evaluation license) that each
// new inventory writes. Once created, simulators are independent.
var simulatorCreation sync.Mutex

// startTestSimulation starts an in-process vCenter simulator for one test.
func startTestSimulation(t testing.TB) *simulation {
	t.Helper()
	return startTestSimulationTLS(t, new(tls.Config))
}

// startTestSimulationTLS starts a simulator with the given TLS settings;
// nil serves plain HTTP.
func startTestSimulationTLS(t testing.TB, config *tls.Config) *simulation {
	t.Helper()
	simulatorCreation.Lock()
	sim, err := startSimulationTLS(config)
	simulatorCreation.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.close)
	return sim
}

// failMethod makes every call of the vCenter method fail with a fault.
func (s *simulation) failMethod(method string) {
	s.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName: method, ObjectType: "*", ObjectName: "*",
		Probability: 1, FaultType: simulator.FaultTypeGeneric, Message: "injected", Enabled: true,
	})
}

// keysStartedOver is the collector's log line of a new epoch.
const keysStartedOver = "vCenter's event keys started over: a new epoch begins; events held of the old timeline are dropped, open watches past it end, the sink goes on with the new timeline"

// startServer runs the program against sim with env added to a working
// configuration and args added to its flags, and waits until it has caught
// up with vCenter.
func startServer(t testing.TB, sim *simulation, env map[string]string, args ...string) *testServer {
	t.Helper()
	s := launchServer(t, sim, env, args...)
	s.waitReady(t)
	return s
}

// waitReady waits until the server has caught up with vCenter.
func (s *testServer) waitReady(t testing.TB) {
	t.Helper()
	s.waitStatus(t, "the catch-up with vCenter", s.status.isReady)
}

// waitStatus waits until cond holds, looking again whenever the
// collector's status changes (which includes every append).
func (s *testServer) waitStatus(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitUntil(t, &s.status.changes, s.stopped, what, cond)
}

// waitSink waits until cond holds, looking again whenever the sink's
// status changes.
func (s *testServer) waitSink(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitUntil(t, &s.sink.changes, s.stopped, what, cond)
}

// waitUntil waits until cond holds, looking again at every change n
// announces; it fails the test if stopped (may be nil) is closed first
// (the server or loop under test ended) or waitTimeout passes.
func waitUntil(t testing.TB, n *notifier, stopped <-chan struct{}, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeoutCause(t.Context(), waitTimeout, fmt.Errorf("no %s within %v", what, waitTimeout))
	defer cancel()
	go func() {
		select {
		case <-stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	if !n.waitFor(ctx, cond) {
		if cause := context.Cause(ctx); cause != context.Canceled {
			t.Fatal(cause)
		}
		t.Fatalf("stopped before %s", what)
	}
}

// launchServer runs the program and waits only until it serves HTTP.
func launchServer(t testing.TB, sim *simulation, env map[string]string, args ...string) *testServer {
	t.Helper()
	return launchServerLogging(t, sim, env, newLogRecorder(), args...)
}

// launchServerLogging is launchServer with the log written to logs.
func launchServerLogging(t testing.TB, sim *simulation, env map[string]string, logs *logRecorder, args ...string) *testServer {
	t.Helper()
	secrets := t.TempDir()
	// Trailing newlines, as `echo user > username` leaves them.
	writeFile(t, filepath.Join(secrets, "username"), sim.username+"\n")
	writeFile(t, filepath.Join(secrets, "password"), sim.password+"\n")
	vars := map[string]string{
		envVCenterURL:      sim.url.String(),
		envVCenterInsecure: "true",
		envSecretPath:      secrets,
		envPort:            "0",
		envDebug:           "true",
	}
	for k, v := range env {
		vars[k] = v
	}
	getenv := func(k string) string { return vars[k] }

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	s := &testServer{logs: logs, stop: cancel, stopped: stopped}
	started := make(chan running, 1)
	go func() {
		defer close(stopped)
		s.err = run(ctx, append([]string{"vsphere-event-streaming", "--poll-interval=10ms"}, args...), getenv, io.Discard, s.logs,
			func(r running) { started <- r })
	}()
	t.Cleanup(func() {
		s.shutdown(t)
		// E2E_LOGS=1 shows the server's log of passing tests too.
		if t.Failed() || os.Getenv("E2E_LOGS") != "" {
			t.Logf("server log:\n%s", s.logs)
		}
	})

	select {
	case s.running = <-started:
	case <-stopped:
		t.Fatalf("server stopped before it served HTTP: %v; log:\n%s", s.err, s.logs)
	case <-time.After(waitTimeout):
		t.Fatalf("server did not serve HTTP within %v; log:\n%s", waitTimeout, s.logs)
	}
	s.url = "http://127.0.0.1:" + strconv.Itoa(s.addr.(*net.TCPAddr).Port)
	return s
}

// shutdown stops the server as SIGTERM would and checks that it exits
// cleanly within the 5 s of API.md.
func (s *testServer) shutdown(t testing.TB) {
	t.Helper()
	s.stop()
	select {
	case <-s.stopped:
		if s.err != nil {
			t.Errorf("run returned %v after shutdown", s.err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("server did not shut down within 5s")
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// get fetches url and returns its status and body.
func get(t testing.TB, url string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := fetch(t, http.DefaultClient, req)
	return resp.StatusCode, body
}

// fetch sends req with client and returns the answer, its body read.
func fetch(t testing.TB, client *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// serverRange returns the server's /api/v1/range.
func serverRange(t testing.TB, s *testServer) (earliest, latest int64) {
	t.Helper()
	code, body := get(t, s.url+"/api/v1/range")
	if code != http.StatusOK {
		t.Fatalf("range: %d %s", code, body)
	}
	var r rangeResponse
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return r.Earliest, r.Latest
}

// watchStream is an open NDJSON watch whose lines a test takes one by one.
type watchStream struct {
	resp  *http.Response
	lines chan []byte
	err   error // how the body ended; read it once lines is closed
}

// openWatch opens a watch on the server; it is closed when the test ends.
func openWatch(t testing.TB, s *testServer, query string) *watchStream {
	t.Helper()
	return openWatchWith(t, http.DefaultClient, s.url+"/api/v1/events?watch=true"+query, nil)
}

// openWatchWith opens the watch at url with client, sending header, and
// reads its lines until the test ends.
func openWatchWith(t testing.TB, client *http.Client, url string, header http.Header) *watchStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("watch %s: %d %s", url, resp.StatusCode, body)
	}
	w := &watchStream{resp: resp, lines: make(chan []byte, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(w.lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			select {
			case w.lines <- bytes.Clone(sc.Bytes()):
			case <-ctx.Done(): // the test ended without taking every line
				return
			}
		}
		w.err = sc.Err()
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-done
	})
	return w
}

// next returns the next line of the watch.
func (w *watchStream) next(t testing.TB) []byte {
	t.Helper()
	select {
	case line, ok := <-w.lines:
		if !ok {
			t.Fatal("watch ended")
		}
		return line
	case <-time.After(waitTimeout):
		t.Fatalf("no watch line within %v", waitTimeout)
		return nil
	}
}

// end waits for the watch to end and returns how its body ended: nil for
// a clean end of the stream. Lines not yet taken are dropped.
func (w *watchStream) end(t testing.TB) error {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case _, ok := <-w.lines:
			if !ok {
				return w.err
			}
		case <-deadline:
			t.Fatalf("watch did not end within %v", waitTimeout)
		}
	}
}

// watchedEvent is the part of a CloudEvent the tests look at.
type watchedEvent struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	Data struct {
		Key                  int64
		FullFormattedMessage string
	} `json:"data"`
}

func decodeEvent(t testing.TB, line []byte) watchedEvent {
	t.Helper()
	var e watchedEvent
	if err := json.Unmarshal(line, &e); err != nil {
		t.Fatalf("decode %s: %v", line, err)
	}
	if e.ID != strconv.FormatInt(e.Data.Key, 10) {
		t.Fatalf("id %q is not the event key %d", e.ID, e.Data.Key)
	}
	return e
}

// vcenter is a test's own session with the simulator, acting as a user.
type vcenter struct {
	client *govmomi.Client
	vm     types.ManagedObjectReference // a VM to log events on
}

func connectVCenter(t testing.TB, sim *simulation) *vcenter {
	t.Helper()
	ctx := context.Background()
	c, err := sim.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Logout(context.Background()) })
	vms, err := listVMs(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	return &vcenter{client: c, vm: vms[0].Reference()}
}

// powerCycleVMs changes the power state of every VM n times.
func (v *vcenter) powerCycleVMs(t testing.TB, n int) {
	t.Helper()
	ctx := context.Background()
	vms, err := listVMs(ctx, v.client)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		for _, vm := range vms {
			if err := powerCycle(ctx, vm); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// postEvents logs n EventEx on a VM: events without a task, whose wait
// would need WaitForUpdatesEx.
func (v *vcenter) postEvents(t testing.TB, n int) {
	t.Helper()
	for i := range n {
		if err := v.postEvent(context.Background(), fmt.Sprint("test event ", i)); err != nil {
			t.Fatal(err)
		}
	}
}

// postEvent logs one EventEx with the given message on a VM.
func (v *vcenter) postEvent(ctx context.Context, msg string) error {
	return postEvent(ctx, v.client, &types.EventEx{
		EventTypeId: "com.example.test", Message: msg,
		ObjectId: v.vm.Value, ObjectType: v.vm.Type,
	})
}

// events returns vCenter's own history of events with keys above after,
// oldest first: what the server must have served.
func (v *vcenter) events(t testing.TB, after int64) []types.BaseEvent {
	t.Helper()
	page, err := event.NewManager(v.client.Client).QueryEvents(context.Background(), types.EventFilterSpec{MaxCount: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []types.BaseEvent
	for i := len(page) - 1; i >= 0; i-- { // the page is newest first
		if int64(page[i].GetEvent().Key) > after {
			out = append(out, page[i])
		}
	}
	if len(page) == 1000 && len(out) == len(page) {
		t.Fatal("vCenter's page is full: the expected history may be cut")
	}
	return out
}

// latestKey is vCenter's newest event key.
func (v *vcenter) latestKey(t testing.TB) int64 {
	t.Helper()
	all := v.events(t, 0)
	if len(all) == 0 {
		t.Fatal("vCenter has no events")
	}
	return int64(all[len(all)-1].GetEvent().Key)
}

// waitForKey waits until the server holds key: a watch from that offset
// delivers it as its first line.
func waitForKey(t testing.TB, s *testServer, key int64) {
	t.Helper()
	w := openWatch(t, s, fmt.Sprintf("&offset=%d", key))
	if got := decodeEvent(t, w.next(t)); got.Data.Key != key {
		t.Fatalf("watch from %d began with %d", key, got.Data.Key)
	}
}

// watchFromNow opens a watch once the server holds vCenter's newest event,
// and returns that event's key: the watch gets exactly the events after it.
func watchFromNow(t testing.TB, vc *vcenter, s *testServer) (int64, *watchStream) {
	t.Helper()
	before := vc.latestKey(t)
	waitForKey(t, s, before)
	return before, openWatch(t, s, "")
}

// expectEvents takes len(want) lines from w and checks they are exactly
// want: same keys, in order, same types and messages.
func expectEvents(t testing.TB, w *watchStream, want []types.BaseEvent) [][]byte {
	t.Helper()
	lines := make([][]byte, 0, len(want))
	for i, ev := range want {
		line := w.next(t)
		got := decodeEvent(t, line)
		name, _ := eventTypeAndClass(ev)
		base := ev.GetEvent()
		if got.Data.Key != int64(base.Key) || got.Type != cloudEventType(name) || got.Data.FullFormattedMessage != base.FullFormattedMessage {
			t.Fatalf("line %d: got key %d %s %q, want key %d %s %q", i, got.Data.Key, got.Type,
				got.Data.FullFormattedMessage, base.Key, cloudEventType(name), base.FullFormattedMessage)
		}
		lines = append(lines, line)
	}
	return lines
}

func keysOf(events []types.BaseEvent) string {
	var b strings.Builder
	for _, ev := range events {
		fmt.Fprintf(&b, "%d ", ev.GetEvent().Key)
	}
	return b.String()
}

// runUntilCleanup runs loop in a goroutine until the test ends, when its
// context is cancelled and the test waits for it to return; the channel
// is closed once it has returned.
func runUntilCleanup(t testing.TB, loop func(context.Context)) <-chan struct{} {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		loop(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return done
}
