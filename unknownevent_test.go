package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// decodeEventsXML decodes returnval elements as the collector's SOAP client
// decodes a ReadNextEvents answer.
func decodeEventsXML(t *testing.T, inner string) []types.BaseEvent {
	t.Helper()
	doc := `<ReadNextEventsResponse xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">` + inner + `</ReadNextEventsResponse>`
	var res struct {
		Returnval []types.BaseEvent `xml:"returnval"`
	}
	dec := xml.NewDecoder(strings.NewReader(doc))
	dec.TypeFunc = withUnknownEvents(types.TypeFunc())
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return res.Returnval
}

// baseFieldsXML are an event's base fields, with every kind of argument.
const baseFieldsXML = `<key>42</key><chainId>41</chainId><createdTime>2026-11-24T14:02:32.963186628Z</createdTime>` +
	`<userName>VSPHERE.LOCAL\Administrator</userName>` +
	`<datacenter><name>DC0</name><datacenter type="Datacenter">datacenter-2</datacenter></datacenter>` +
	`<computeResource><name>C0</name><computeResource type="ClusterComputeResource">domain-c1</computeResource></computeResource>` +
	`<host><name>H0</name><host type="HostSystem">host-9</host></host>` +
	`<vm><name>VM0 &amp; co</name><vm type="VirtualMachine">vm-57</vm></vm>` +
	`<ds><name>LocalDS_0</name><datastore type="Datastore">datastore-1</datastore></ds>` +
	`<net><name>VM Network</name><network type="Network">network-7</network></net>` +
	`<fullFormattedMessage>Task: "power on" &lt;done&gt;</fullFormattedMessage><changeTag>t1</changeTag>`

// TestUnknownEventDecoding: an event type govmomi does not know is decoded
// with its base fields exactly as a known type's, its other elements kept
// in document order, nested as objects, repeated as arrays.
func TestUnknownEventDecoding(t *testing.T) {
	t.Parallel()
	extra := `<template>false</template>` +
		`<configSpec xsi:type="VirtualMachineConfigSpec"><numCPUs>4</numCPUs>` +
		`<deviceChange><operation>add</operation></deviceChange><deviceChange><operation>remove</operation></deviceChange>` +
		`<pool type="ResourcePool">resgroup-8</pool><annotation xsi:nil="true"/><name></name></configSpec>` +
		`<tag>a</tag><tag>b</tag>`
	events := decodeEventsXML(t,
		`<returnval xsi:type="VmPoweredOnEvent">`+baseFieldsXML+`<template>false</template></returnval>`+
			`<returnval xsi:type="vim25:VmFutureReconfiguredEvent">`+baseFieldsXML+extra+`</returnval>`)
	if len(events) != 2 {
		t.Fatalf("decoded %d events, want 2", len(events))
	}
	known, ok := events[0].(*types.VmPoweredOnEvent)
	if !ok {
		t.Fatalf("first event is %T", events[0])
	}
	unknown, ok := events[1].(*unknownEvent)
	if !ok {
		t.Fatalf("second event is %T, want *unknownEvent", events[1])
	}
	if unknown.typeName != "VmFutureReconfiguredEvent" || unknown.decodeErr != nil || !unknown.keyRead {
		t.Fatalf("unknown event: type %q, error %v, key read %v", unknown.typeName, unknown.decodeErr, unknown.keyRead)
	}

	conv := &eventConverter{source: goldenSource, maxRecordSize: defaultMaxRecordSize}
	knownRec, err := conv.convert(known)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := conv.convert(unknown)
	if err != nil || rec.dropped != "" {
		t.Fatalf("convert: %v, dropped %q", err, rec.dropped)
	}
	if rec.offset != 42 || rec.eventType != "vmware.vsphere.VmFutureReconfiguredEvent.v0" || rec.class != classEvent {
		t.Errorf("record offset %d type %q class %v", rec.offset, rec.eventType, rec.class)
	}
	knownData, data := cloudEventData(t, knownRec.data), cloudEventData(t, rec.data)
	// The base fields are byte for byte the known type's: everything up to
	// the first field of its own (Template).
	base, _, found := bytes.Cut(knownData, []byte(`,"Template"`))
	if !found || !bytes.HasPrefix(data, append(base, ',')) {
		t.Errorf("base fields differ:\nknown   %s\nunknown %s", knownData, data)
	}
	want := `,"Template":"false","ConfigSpec":{"NumCPUs":"4","DeviceChange":[{"Operation":"add"},{"Operation":"remove"}],` +
		`"Pool":{"Type":"ResourcePool","Value":"resgroup-8"},"Annotation":null,"Name":""},"Tag":["a","b"]}`
	if got := string(data[len(base):]); got != want {
		t.Errorf("other fields\n got %s\nwant %s", got, want)
	}
	if !json.Valid(rec.data) {
		t.Errorf("record is not JSON: %s", rec.data)
	}
}

// TestUnknownEventUnreadable: an unknown event whose base fields do not
// decode keeps its key and is recorded without data; one without a key,
// or of an unknown type that is not an event's, cannot be recorded.
func TestUnknownEventUnreadable(t *testing.T) {
	t.Parallel()
	events := decodeEventsXML(t,
		`<returnval xsi:type="FutureEvent"><key>7</key><createdTime>yesterday</createdTime></returnval>`+
			`<returnval xsi:type="FutureEvent"><createdTime>yesterday</createdTime></returnval>`+
			`<returnval xsi:type="FutureThing"><key>9</key></returnval>`+
			`<returnval xsi:type="GeneralUserEvent"><key>10</key><createdTime>2026-11-24T14:02:32Z</createdTime><userName>u</userName></returnval>`+
			`<returnval xsi:type="FutureEvent"><key>11</key><chainId>x</chainId><createdTime>2026-11-24T14:02:33Z</createdTime></returnval>`)
	if len(events) != 5 {
		t.Fatalf("decoded %d events, want 5", len(events))
	}
	// A bad field before the time: the key and the time are still read,
	// so the event keeps its place in time (reconnects and the sink's
	// checkpoint resume from it).
	badChain := events[4].(*unknownEvent)
	if want := time.Date(2026, 11, 24, 14, 2, 33, 0, time.UTC); badChain.decodeErr == nil || !badChain.keyRead || badChain.Key != 11 || !badChain.CreatedTime.Equal(want) {
		t.Errorf("bad chainId: error %v, key read %v, key %d, created %v", badChain.decodeErr, badChain.keyRead, badChain.Key, badChain.CreatedTime)
	}
	if rec, err := (&eventConverter{source: goldenSource, maxRecordSize: defaultMaxRecordSize}).convert(badChain); err != nil || recordTime(rec.record).IsZero() {
		t.Errorf("bad chainId: record without a time (%v): %s", err, rec.data)
	}
	bad := events[0].(*unknownEvent)
	if bad.decodeErr == nil || !bad.keyRead || bad.Key != 7 {
		t.Errorf("bad time: error %v, key read %v, key %d", bad.decodeErr, bad.keyRead, bad.Key)
	}
	conv := &eventConverter{source: goldenSource, maxRecordSize: defaultMaxRecordSize}
	rec, err := conv.convert(bad)
	if err != nil || rec.dropped != dropError || rec.offset != 7 {
		t.Fatalf("convert: %v, dropped %q, offset %d", err, rec.dropped, rec.offset)
	}
	var ce map[string]any
	if err := json.Unmarshal(rec.data, &ce); err != nil {
		t.Fatal(err)
	}
	if ce["datadropped"] != "error" || ce["data"] != nil || ce["id"] != "7" || ce["type"] != "vmware.vsphere.FutureEvent.v0" {
		t.Errorf("record %s", rec.data)
	}
	if noKey := events[1].(*unknownEvent); noKey.keyRead {
		t.Error("an event without a key counts as having one")
	}
	if events[2] != nil {
		t.Errorf("unknown non-event type decoded as %T", events[2])
	}
	if _, ok := events[3].(*types.GeneralUserEvent); !ok {
		t.Errorf("the event after them is %T", events[3])
	}
}

// servedEvent is a CloudEvent as served, with its data and line kept whole.
type servedEvent struct {
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	EventClass  string          `json:"eventclass"`
	DataDropped string          `json:"datadropped"`
	Data        json.RawMessage `json:"data"`
	Raw         []byte          `json:"-"`
}

func decodeServedEvent(t *testing.T, line []byte) servedEvent {
	t.Helper()
	e := servedEvent{Raw: line}
	if err := json.Unmarshal(line, &e); err != nil {
		t.Fatalf("decode %s: %v", line, err)
	}
	return e
}

// cloudEventData returns the data member of a CloudEvent record as written.
func cloudEventData(t *testing.T, record []byte) []byte {
	t.Helper()
	var ce struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(record, &ce); err != nil {
		t.Fatal(err)
	}
	return ce.Data
}

// rewritingProxy serves vCenter at target over plain HTTP, replacing each
// old string by its new one in vCenter's answers: a vCenter that speaks of
// types govmomi does not know.
func rewritingProxy(t *testing.T, target *url.URL, replacements ...string) *url.URL {
	t.Helper()
	replacer := strings.NewReplacer(replacements...)
	u, _ := vcenterProxy(t, target, func(body []byte) []byte { return []byte(replacer.Replace(string(body))) })
	return u
}

// vcenterProxy serves vCenter at target over plain HTTP, with each of
// vCenter's answers passed through modify. It returns the proxy's SDK URL
// and the count of requests it forwarded.
func vcenterProxy(t *testing.T, target *url.URL, modify func(body []byte) []byte) (*url.URL, *atomic.Int64) {
	t.Helper()
	requests := new(atomic.Int64)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			requests.Add(1)
			r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host})
		},
		ModifyResponse: func(res *http.Response) error {
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil {
				return err
			}
			body = modify(body)
			res.Body = io.NopCloser(bytes.NewReader(body))
			res.ContentLength = int64(len(body))
			res.Header.Set("Content-Length", strconv.Itoa(len(body)))
			return nil
		},
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL + "/sdk")
	return u, requests
}

// postReconfigured logs a VmReconfiguredEvent with a configuration on vc's VM.
func (v *vcenter) postReconfigured(t *testing.T, cpus int32) {
	t.Helper()
	ev := &types.VmReconfiguredEvent{
		VmEvent: types.VmEvent{Event: types.Event{
			Vm: &types.VmEventArgument{EntityEventArgument: types.EntityEventArgument{Name: "DC0_H0_VM0"}, Vm: v.vm},
		}},
		ConfigSpec: types.VirtualMachineConfigSpec{NumCPUs: cpus, Annotation: "more CPUs"},
	}
	if err := postEvent(context.Background(), v.client, ev); err != nil {
		t.Fatal(err)
	}
}

// TestUnknownEventTypeEndToEnd: vCenter sends events under type names
// govmomi does not know. The server stays up, serves each at its key under
// its own type with the base fields of the known type, logs one warning per
// type name, and keeps streaming; an event whose decoding panics is counted
// and only it is lost.
func TestUnknownEventTypeEndToEnd(t *testing.T) {
	t.Parallel()
	sim := startTestSimulationTLS(t, nil)
	vc := connectVCenter(t, sim)
	proxied := rewritingProxy(t, sim.url,
		// The simulator writes xsi:type with a prefix of its own making.
		`:type="VmReconfiguredEvent"`, `:type="VmReconfiguredFutureEvent"`,
		// A known type that is not an event's: govmomi's decoder panics.
		`:type="GeneralUserEvent"`, `:type="ManagedObjectReference"`)
	s := startServer(t, sim, map[string]string{envVCenterURL: proxied.String()})

	before, w := watchFromNow(t, vc, s)
	vc.postReconfigured(t, 2)
	vc.postEvents(t, 1)
	if err := postEvent(context.Background(), vc.client, &types.GeneralUserEvent{GeneralEvent: types.GeneralEvent{Message: "someone"}}); err != nil {
		t.Fatal(err)
	}
	// The server reads around that event, with a new session if a page
	// read panicked. The simulator races when a session ends while another
	// posts events, so the test posts again only after that.
	s.logs.wait(t, "event could not be decoded, so its key is unknown: not appended", s.stopped)
	vc.postReconfigured(t, 4)
	vc.postEvents(t, 2)

	// The server's own session may end and log in again (after the read
	// that panicked) between the test's events: those are not the test's.
	isSession := func(typ string) bool { return strings.Contains(typ, "UserLog") }
	var history []types.BaseEvent
	for _, ev := range vc.events(t, before) {
		if name, _ := eventTypeAndClass(ev); !isSession(name) {
			history = append(history, ev)
		}
	}
	if len(history) != 6 {
		for _, ev := range history {
			t.Logf("%T %d", ev, ev.GetEvent().Key)
		}
		t.Fatalf("vCenter logged %d events, want 6", len(history))
	}
	conv := &eventConverter{source: proxied.String(), maxRecordSize: defaultMaxRecordSize}
	for i, ev := range history {
		if i == 2 {
			continue // the event whose decoding panics
		}
		got := decodeServedEvent(t, w.next(t))
		for isSession(got.Type) {
			got = decodeServedEvent(t, w.next(t))
		}
		if got.ID != strconv.Itoa(int(ev.GetEvent().Key)) {
			t.Fatalf("event %d: id %s, want %d", i, got.ID, ev.GetEvent().Key)
		}
		known, err := conv.convert(ev)
		if err != nil {
			t.Fatal(err)
		}
		knownData := cloudEventData(t, known.data)
		if _, ok := ev.(*types.VmReconfiguredEvent); !ok {
			if !bytes.Equal(got.Data, knownData) {
				t.Errorf("event %d: data %s, want %s", i, got.Data, knownData)
			}
			continue
		}
		if got.Type != "vmware.vsphere.VmReconfiguredFutureEvent.v0" || got.EventClass != "event" {
			t.Errorf("event %d: type %s, eventclass %s", i, got.Type, got.EventClass)
		}
		base, _, _ := bytes.Cut(knownData, []byte(`,"Template"`))
		if !bytes.HasPrefix(got.Data, append(base, ',')) {
			t.Errorf("event %d: base fields differ:\nknown   %s\nunknown %s", i, knownData, got.Data)
		}
		var data struct {
			Template   string
			ConfigSpec map[string]any
		}
		if err := json.Unmarshal(got.Data, &data); err != nil {
			t.Fatal(err)
		}
		cpus := ev.(*types.VmReconfiguredEvent).ConfigSpec.NumCPUs
		if data.Template != "false" || data.ConfigSpec["NumCPUs"] != fmt.Sprint(cpus) || data.ConfigSpec["Annotation"] != "more CPUs" {
			t.Errorf("event %d: other fields %s", i, got.Data)
		}
		// The same bytes by offset.
		if code, body := get(t, fmt.Sprintf("%s/api/v1/events/%s", s.url, got.ID)); code != http.StatusOK || !bytes.Equal(bytes.TrimSpace(body), got.Raw) {
			t.Errorf("event %s by offset: %d %s", got.ID, code, body)
		}
	}
	if n := s.logs.count("event type unknown to this server's vSphere SDK: served with its own name and generic data"); n != 1 {
		t.Errorf("%d warnings for one unknown type name, want 1", n)
	}
	metrics := serverMetrics(t, s)
	for name, want := range map[string]float64{"events_unknown_type_total": 2, "events_unreadable_total": 1, "events_failed_total": 0} {
		if got := metrics[metricPrefix+name]; got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// The panicked event is gone from GET too: 404, a gap.
	if code, _ := get(t, fmt.Sprintf("%s/api/v1/events/%d", s.url, history[2].GetEvent().Key)); code != http.StatusNotFound {
		t.Errorf("the unreadable event answers %d, want 404", code)
	}
}

// TestEventPanicRecorded: a panic while encoding one event records it
// without data (datadropped=error), logs and counts it, and the stream goes
// on.
func TestEventPanicRecorded(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	logs := newLogRecorder()
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	journal, status, done := runCollector(t, sim, log, func(c *collector) {
		c.converter.beforeEncode = func(ev types.BaseEvent) {
			if e, ok := ev.(*types.EventEx); ok && e.Message == "test event 1" {
				panic("injected")
			}
		}
	})
	srv := httptest.NewServer(newHandler(handlerDeps{journal: journal, status: status, log: log}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	s := &testServer{url: srv.URL, logs: logs, stopped: done, running: running{journal: journal, status: status}}
	s.waitReady(t)

	before, w := watchFromNow(t, vc, s)
	first := before + 1
	vc.postEvents(t, 3)
	for i := range 3 {
		got := decodeServedEvent(t, w.next(t))
		if got.ID != strconv.FormatInt(first+int64(i), 10) {
			t.Fatalf("event %d: id %s, want %d", i, got.ID, first+int64(i))
		}
		if wantDropped := i == 1; wantDropped != (got.DataDropped == "error") || wantDropped != (got.Data == nil) {
			t.Errorf("event %d: %s", i, got.Raw)
		}
	}
	rec := logs.wait(t, "event could not be decoded or encoded: recorded without data", done)
	if rec["offset"] != float64(first+1) || !strings.Contains(fmt.Sprint(rec["error"]), "injected") {
		t.Errorf("log line %v", rec)
	}
	if got := serverMetrics(t, s)[metricPrefix+"events_failed_total"]; got != 1 {
		t.Errorf("events_failed_total = %v, want 1", got)
	}
}
