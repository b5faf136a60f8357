package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/vim25/types"
)

// startTestSimulationOn starts a simulator listening on host, and returns
// it with its close, which may also be called before the test ends.
func startTestSimulationOn(t testing.TB, host string) (*simulation, func()) {
	t.Helper()
	simulatorCreation.Lock()
	sim, err := startSimulationOn(nil, host)
	simulatorCreation.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	stop := sync.OnceFunc(sim.close)
	t.Cleanup(stop)
	return sim, stop
}

// freeLoopbackHost returns a loopback host:port nothing listens on.
func freeLoopbackHost(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// servedEventID is what names a CloudEvent, and what tells two events apart.
type servedEventID struct{ source, id string }

// uniqueEvents records the events seen under each (source, id) and fails
// the test if one pair names two different events (another type or time).
type uniqueEvents map[servedEventID]string

func (u uniqueEvents) add(t testing.TB, where string, ev cloudevents.Event) {
	t.Helper()
	what := ev.Type() + " " + ev.Time().UTC().Format(time.RFC3339Nano)
	k := servedEventID{ev.Source(), ev.ID()}
	if seen, ok := u[k]; ok && seen != what {
		t.Errorf("%s: (source %s, id %s) names two events: %s and %s", where, k.source, k.id, seen, what)
	}
	u[k] = what
}

// apiEvents returns every event the server holds, as its API serves them.
func apiEvents(t testing.TB, srv *testServer) []cloudevents.Event {
	t.Helper()
	earliest, _ := serverRange(t, srv)
	status, body := get(t, fmt.Sprintf("%s/api/v1/events?offset=%d&limit=1000", srv.url, earliest))
	var events []cloudevents.Event
	if status != 200 || json.Unmarshal(body, &events) != nil {
		t.Fatalf("events: %d %s", status, body)
	}
	return events
}

// expectResetLine checks that a watch's last message is the lagging-client
// error of a reset: 410, and a detail that says the keys were reset and
// from where to resume.
func expectResetLine(t testing.TB, what, line string, resumeFrom string) {
	t.Helper()
	var msg watchError
	if err := json.Unmarshal([]byte(line), &msg); err != nil || msg.Error.Status != 410 ||
		!strings.Contains(msg.Error.Detail, "vCenter's event keys were reset") || !strings.Contains(msg.Error.Detail, resumeFrom) {
		t.Errorf("%s ended with %q, want the 410 line of a reset that says %q", what, line, resumeFrom)
	}
}

// resetWatches are an NDJSON and an SSE watch open from now: past every key
// a reset could keep.
type resetWatches struct {
	ndjson *watchStream
	sse    *sseStream
}

func openResetWatches(t testing.TB, srv *testServer) resetWatches {
	t.Helper()
	return resetWatches{ndjson: openWatch(t, srv, ""), sse: openSSE(t, srv.url+"/api/v1/events", "")}
}

// expectReset checks that both watches end with the reset's line.
func (w resetWatches) expectReset(t testing.TB, resumeFrom string) {
	t.Helper()
	expectResetLine(t, "the NDJSON watch", string(w.ndjson.next(t)), resumeFrom)
	ev := w.sse.next()
	if ev.event != "error" {
		t.Errorf("the SSE watch sent %q after the reset, want event: error", ev.event)
	}
	expectResetLine(t, "the SSE watch", ev.data, resumeFrom)
}

// expectNewTimeline checks, after a reset, that the server holds exactly
// want (vCenter's events of the new timeline), each at its key, with the
// new epoch's source; that the sink got each of them once, in order, under
// the same source, none skipped; and that no (source, id) pair named two
// events, in the API before and after the reset or at the sink.
func expectNewTimeline(t *testing.T, srv *testServer, sink *testSink, want []types.BaseEvent, source string, seen uniqueEvents) {
	t.Helper()
	served := apiEvents(t, srv)
	var keys, wantKeys []string
	for _, ev := range served {
		keys = append(keys, ev.ID())
		seen.add(t, "API", ev)
		if ev.Source() != source {
			t.Errorf("event %s has source %q, want %q", ev.ID(), ev.Source(), source)
		}
	}
	byKey := map[string]types.BaseEvent{}
	for _, ev := range want {
		k := strconv.Itoa(int(ev.GetEvent().Key))
		wantKeys = append(wantKeys, k)
		byKey[k] = ev
	}
	if strings.Join(keys, ",") != strings.Join(wantKeys, ",") {
		t.Fatalf("the server holds keys %v, want the new timeline's %v", keys, wantKeys)
	}
	for _, ev := range served {
		if !ev.Time().Equal(byKey[ev.ID()].GetEvent().CreatedTime) {
			t.Errorf("event %s: time %s, want the new timeline's %s", ev.ID(), ev.Time(), byKey[ev.ID()].GetEvent().CreatedTime)
		}
	}

	sink.waitFor(t, "the new timeline's events", func() bool {
		n := 0
		for _, ev := range sink.acked {
			if ev.Source() == source {
				n++
			}
		}
		return n >= len(want)
	})
	sink.mu.Lock()
	defer sink.mu.Unlock()
	var delivered []string
	for _, ev := range sink.acked {
		seen.add(t, "sink", ev)
		if ev.Source() == source {
			delivered = append(delivered, ev.ID())
		}
	}
	if strings.Join(delivered, ",") != strings.Join(wantKeys, ",") {
		t.Errorf("the sink got the new timeline's keys %v, want %v", delivered, wantKeys)
	}
}

// TestResetRestoredVCenter: vCenter is replaced by a fresh one on the same
// address with the same instance UUID, as after a restore from backup: its
// keys start over. Every event of the new vCenter is served at its key,
// none dropped; what the server held of the old one above them is gone;
// open watches get the reset line; the sink, resuming from a checkpoint,
// delivers the new events in order, none skipped; no (source, id) pair
// names two events.
func TestResetRestoredVCenter(t *testing.T) {
	t.Parallel()
	host := freeLoopbackHost(t)
	first, stopFirst := startTestSimulationOn(t, host)
	vc := connectVCenter(t, first)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	srv := startServer(t, first, map[string]string{envSink: sink.url, envSinkCheckpointFile: t.TempDir() + "/sink.checkpoint"})
	vc.postEvents(t, 30)
	old := vc.latestKey(t)
	sink.waitAcked(t, old)
	waitForKey(t, srv, old)
	seen := uniqueEvents{}
	for _, ev := range apiEvents(t, srv) {
		seen.add(t, "API before the reset", ev)
	}
	watches := openResetWatches(t, srv)

	stopFirst()
	second, _ := startTestSimulationOn(t, host)
	if second.url.Host != first.url.Host {
		t.Fatalf("the second simulator is on %s, the first was on %s", second.url.Host, first.url.Host)
	}
	vc = connectVCenter(t, second)
	vc.powerCycleVMs(t, 1)
	want := vc.events(t, 0)
	newest := int64(want[len(want)-1].GetEvent().Key)
	if newest >= old {
		t.Fatalf("the new vCenter's newest key %d is not below the old one's, %d: the test needs it", newest, old)
	}
	srv.waitStatus(t, fmt.Sprintf("a reset, then key %d", newest), func() bool {
		_, latest, ok := srv.journal.bounds()
		return srv.status.resets.Load() > 0 && ok && latest >= newest
	})
	// The server's own login is an event of the new vCenter too.
	want = vc.events(t, 0)
	watches.expectReset(t, "resume from offset 1")
	rec := srv.logs.wait(t, keysStartedOver, srv.stopped)
	if rec["level"] != "ERROR" || rec["keptThrough"] != 0.0 || rec["previousLatest"] != float64(old) || rec["instanceUuid"] != rec["previousInstanceUuid"] {
		t.Errorf("the reset's log line: %v", rec)
	}
	epoch := srv.journal.currentTimeline().epoch
	if epoch != 1 || srv.status.resets.Load() != 1 {
		t.Errorf("epoch %d after %d resets, want 1 after 1", epoch, srv.status.resets.Load())
	}
	expectNewTimeline(t, srv, sink, want, second.url.String()+"?epoch=1", seen)
	if status, _ := get(t, fmt.Sprintf("%s/api/v1/events/%d", srv.url, old)); status != 404 {
		t.Errorf("the old vCenter's event %d: %d, want 404 (gone with its timeline)", old, status)
	}

	// The stream goes on in the new timeline, and /metrics tells the epoch.
	vc.postEvents(t, 1)
	waitForKey(t, srv, vc.latestKey(t))
	_, metrics := get(t, srv.url+"/metrics")
	for _, line := range []string{metricPrefix + "vcenter_epoch 1", metricPrefix + "vcenter_key_resets_total 1"} {
		if !bytes.Contains(metrics, []byte(line+"\n")) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	_, ready := get(t, srv.url+"/readyz")
	if !bytes.Contains(ready, []byte(`"epoch":1`)) {
		t.Errorf("/readyz %s lacks the epoch", ready)
	}
}

// TestResetAnotherVCenter: vCenter's answers change instance UUID (a
// reinstall, another vCenter behind the same name): nothing held is the
// new vCenter's, so the journal starts empty in a new epoch and reads the
// new vCenter's events from the stream's begin; watches get the reset
// line; the sink delivers from the first event held; no (source, id) pair
// names two events.
func TestResetAnotherVCenter(t *testing.T) {
	t.Parallel()
	sim := startTestSimulationTLS(t, nil)
	vc := connectVCenter(t, sim)
	oldUUID := vc.client.ServiceContent.About.InstanceUuid
	const newUUID = "00000000-1111-2222-3333-444444444444"
	var reinstalled atomic.Bool
	proxied, _ := vcenterProxy(t, sim.url, func(body []byte) []byte {
		if reinstalled.Load() {
			return bytes.ReplaceAll(body, []byte(oldUUID), []byte(newUUID))
		}
		return body
	})
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	cpFile := t.TempDir() + "/sink.checkpoint"
	srv := startServer(t, sim, map[string]string{envVCenterURL: proxied.String(), envSink: sink.url, envSinkCheckpointFile: cpFile})
	vc.postEvents(t, 5)
	old := vc.latestKey(t)
	sink.waitAcked(t, old)
	seen := uniqueEvents{}
	for _, ev := range apiEvents(t, srv) {
		seen.add(t, "API before the reset", ev)
	}
	watches := openResetWatches(t, srv)

	reinstalled.Store(true)
	vc.terminateServerSession(t)
	vc.postEvents(t, 3)
	newest := vc.latestKey(t)
	srv.waitStatus(t, fmt.Sprintf("a reset, then key %d", newest), func() bool {
		_, latest, ok := srv.journal.bounds()
		return srv.status.resets.Load() > 0 && ok && latest >= newest
	})
	newest = vc.latestKey(t) // the server's login is an event too
	watches.expectReset(t, "read again from the earliest offset")
	rec := srv.logs.wait(t, keysStartedOver, srv.stopped)
	if rec["instanceUuid"] != newUUID || rec["previousInstanceUuid"] != oldUUID || rec["keptThrough"] != -1.0 {
		t.Errorf("the reset's log line: %v", rec)
	}
	if tl := srv.journal.currentTimeline(); tl != (timeline{instanceUUID: newUUID, epoch: 1}) {
		t.Errorf("timeline %+v, want epoch 1 of %s", tl, newUUID)
	}
	// The same simulator behind the proxy: its whole history, as at a
	// first start, under the new epoch's source.
	expectNewTimeline(t, srv, sink, vc.events(t, 0), proxied.String()+"?epoch=1", seen)
	srv.waitSink(t, "checkpoint of "+strconv.FormatInt(newest, 10), func() bool { return srv.sink.checkpointed.Load() == newest })
	if cp, _, err := loadCheckpoint(cpFile); err != nil || cp.InstanceUUID != newUUID || cp.Epoch != 1 {
		t.Errorf("checkpoint %+v, %v; want the new vCenter's epoch 1", cp, err)
	}
}

// TestResetRestartOnAnotherVCenter: a server restarts with a checkpoint of
// another vCenter (its instance UUID): the journal begins a new epoch
// before anything is appended, and the sink gets every event held under
// the new epoch's source, from the first.
func TestResetRestartOnAnotherVCenter(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	sink := startTestSink(t, "127.0.0.1:0", nil, nil)
	cpFile := t.TempDir() + "/sink.checkpoint"
	latest := vc.latestKey(t)
	if err := saveCheckpoint(cpFile, checkpoint{Offset: latest, Time: time.Now(), InstanceUUID: "another-vcenter", Epoch: 3}); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, sim, map[string]string{envSink: sink.url, envSinkCheckpointFile: cpFile})
	sink.waitAcked(t, latest)
	expectDeliveredFromFirstHeld(t, srv, sink, sim.url.String()+"?epoch=4")
}

// expectDeliveredFromFirstHeld checks that the sink got the events from the
// first one the server holds on, each under source.
func expectDeliveredFromFirstHeld(t *testing.T, srv *testServer, sink *testSink, source string) {
	t.Helper()
	earliest, _ := serverRange(t, srv)
	if acked := sink.ackedKeys(t); len(acked) == 0 || acked[0] != earliest {
		t.Errorf("delivery began at %v, want the first event held, %d", acked[:min(1, len(acked))], earliest)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, ev := range sink.acked {
		if ev.Source() != source {
			t.Errorf("event %s: source %q, want %q", ev.ID(), ev.Source(), source)
			return
		}
	}
}

// readNextEvent matches one event of a ReadNextEvents answer; its key is
// the group.
var readNextEvent = regexp.MustCompile(`(?s)<returnval [^>]*>.*?<key>(\d+)</key>.*?</returnval>`)

// TestUnreachableAnnouncedEvent: vCenter announces an event (its latest
// page) that reads do not return, as for a user without rights to its
// entity: the collector neither spins nor stalls; later events stream on,
// the first such event is logged once, each counted.
func TestUnreachableAnnouncedEvent(t *testing.T) {
	t.Parallel()
	sim := startTestSimulationTLS(t, nil)
	vc := connectVCenter(t, sim)
	var hidden atomic.Int64
	hidden.Store(-1)
	proxied, requests := vcenterProxy(t, sim.url, func(body []byte) []byte {
		if !bytes.Contains(body, []byte("ReadNextEventsResponse")) {
			return body
		}
		return readNextEvent.ReplaceAllFunc(body, func(ev []byte) []byte {
			if k, _ := strconv.ParseInt(string(readNextEvent.FindSubmatch(ev)[1]), 10, 64); k >= 0 && k == hidden.Load() {
				return nil
			}
			return ev
		})
	})
	srv := startServer(t, sim, map[string]string{envVCenterURL: proxied.String()})
	before, w := watchFromNow(t, vc, srv)

	hidden.Store(before + 1)
	vc.postEvents(t, 1)
	srv.waitStatus(t, "an unreachable key counted", func() bool { return srv.status.unreachable.Load() == 1 })
	// While nothing else happens, the collector waits for vCenter's next
	// announcement: a busy loop would send requests by the thousand.
	sent := requests.Load()
	window := time.NewTimer(2 * time.Second)
	<-window.C
	if n := requests.Load() - sent; n > 10 {
		t.Errorf("%d requests to vCenter in 2 s of waiting; want a handful at most", n)
	}

	vc.postEvents(t, 3)
	want := vc.events(t, before+1)
	expectEvents(t, w, want)
	hidden.Store(int64(want[len(want)-1].GetEvent().Key) + 1)
	vc.postEvents(t, 1)
	srv.waitStatus(t, "a second unreachable key counted", func() bool { return srv.status.unreachable.Load() == 2 })
	if n := srv.logs.count("vCenter announced an event that no read returns (the user may lack rights to some entities): going on with later events; further ones are only counted (events_unreachable_total)"); n != 1 {
		t.Errorf("the unreachable event was logged %d times, want once", n)
	}
	if srv.status.resets.Load() != 0 {
		t.Error("an unreachable event was taken for a reset")
	}
}

// TestCollectorResetRules: which events read again start a new epoch, and
// what each keeps. An event read again as it is held, or one delivered
// after a higher key with an older time, is no reset; a held key that is
// another event, a key not held but newer than every event held (a wrap),
// and vCenter's newest key below the newest held (a restore) are.
func TestCollectorResetRules(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse("https://vc.example.com/sdk")
	base := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	ev := func(key int, at int) types.BaseEvent {
		return &types.EventEx{Event: types.Event{Key: int32(key), CreatedTime: base.Add(time.Duration(at) * time.Second)}, EventTypeId: "com.example.test"}
	}
	newTestCollector := func(keys ...int) (*collector, *journal) {
		cfg := config{vcenterURL: u, maxRecordSize: defaultMaxRecordSize, maxSegmentSize: defaultMaxSegmentSize}
		j := newJournal(cfg.maxSegmentSize)
		c := newCollector(cfg, defaultCollectorOptions(), j, newCollectorStatus(0), nil, apiLogger())
		for _, k := range keys {
			if !c.ingest(ev(k, k)) {
				t.Fatalf("event %d not appended", k)
			}
		}
		return c, j
	}
	held := func(j *journal) []int64 { return offsetsOf(j.readLast(100, nil)) }

	c, j := newTestCollector(1, 2, 3, 5, 6)
	if c.ingest(ev(3, 3)) || c.ingest(ev(4, 1)) || j.currentTimeline().epoch != 0 {
		t.Fatalf("an event read again, or a late one with an older time, was appended or taken for a reset: %v, epoch %d", held(j), j.currentTimeline().epoch)
	}
	if !c.ingest(ev(3, 100)) || j.currentTimeline().epoch != 1 || !slices.Equal(held(j), []int64{1, 2, 3}) {
		t.Fatalf("key 3 read as another event: held %v, epoch %d; want [1 2 3] in epoch 1", held(j), j.currentTimeline().epoch)
	}
	if rec, _ := j.read(3); !bytes.Contains(rec.data, []byte(`"source":"https://vc.example.com/sdk?epoch=1"`)) {
		t.Errorf("the new timeline's event: %s, want the epoch in its source", rec.data)
	}
	if rec, _ := j.read(1); !bytes.Contains(rec.data, []byte(`"source":"https://vc.example.com/sdk"`)) {
		t.Errorf("an event kept: %s, want its own source", rec.data)
	}

	c, j = newTestCollector(100, 101, 102)
	if !c.ingest(ev(1, 200)) || j.currentTimeline().epoch != 1 || !slices.Equal(held(j), []int64{1}) {
		t.Fatalf("a wrap: held %v, epoch %d; want [1] in epoch 1", held(j), j.currentTimeline().epoch)
	}

	c, j = newTestCollector(1, 2, 3, 4)
	c.checkNewest(2, nil)
	if j.currentTimeline().epoch != 1 || !slices.Equal(held(j), []int64{1, 2}) {
		t.Fatalf("vCenter's newest key below the newest held: held %v, epoch %d; want [1 2] in epoch 1", held(j), j.currentTimeline().epoch)
	}
	c.checkNewest(2, ev(2, 2))
	c.checkNewest(3, nil)
	if j.currentTimeline().epoch != 1 {
		t.Fatal("vCenter's newest key at or above the newest held was taken for a reset")
	}
	// vCenter's newest is below, but another event than the one held: the
	// reads that follow tell where the timelines parted.
	c, j = newTestCollector(1, 2, 3, 4)
	c.checkNewest(2, ev(2, 50))
	if j.currentTimeline().epoch != 0 {
		t.Fatal("a latest page whose event differs from the one held started an epoch before the reads tell where")
	}
}
