package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/vim25/types"
)

// goldenSource is the CloudEvent source of the golden events, as in the
// original's example.
const goldenSource = "https://localhost:8989/sdk"

func goldenTime(t *testing.T) time.Time {
	t.Helper()
	created, err := time.Parse(time.RFC3339Nano, "2022-01-14T13:26:22.0854137Z")
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// goldenEvents are vSphere events of every class, with the arguments a
// real vCenter fills in.
func goldenEvents(t *testing.T) map[string]types.BaseEvent {
	created := goldenTime(t)
	base := func(key int32, user, msg string) types.Event {
		return types.Event{Key: key, ChainId: key, CreatedTime: created, UserName: user, FullFormattedMessage: msg}
	}
	dc := &types.DatacenterEventArgument{
		EntityEventArgument: types.EntityEventArgument{Name: "DC0"},
		Datacenter:          types.ManagedObjectReference{Type: "Datacenter", Value: "datacenter-2"},
	}
	vmArg := &types.VmEventArgument{
		EntityEventArgument: types.EntityEventArgument{Name: "DC0_H0_VM0"},
		Vm:                  types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-57"},
	}

	power := base(46, "VSPHERE.LOCAL\\Administrator", "DC0_H0_VM0 on host DC0_H0 in DC0 is powered on")
	power.Datacenter = dc
	power.ComputeResource = &types.ComputeResourceEventArgument{
		EntityEventArgument: types.EntityEventArgument{Name: "DC0_H0"},
		ComputeResource:     types.ManagedObjectReference{Type: "ComputeResource", Value: "computeresource-23"},
	}
	power.Host = &types.HostEventArgument{
		EntityEventArgument: types.EntityEventArgument{Name: "DC0_H0"},
		Host:                types.ManagedObjectReference{Type: "HostSystem", Value: "host-21"},
	}
	power.Vm = vmArg

	ex := base(47, "VSPHERE.LOCAL\\Administrator", "Alarm 'Host memory usage' on DC0_H0 changed from Gray to Green")
	ex.Datacenter = dc
	extended := base(48, "", "Backup of DC0_H0_VM0 completed")
	extended.Vm = vmArg

	return map[string]types.BaseEvent{
		"login": &types.UserLoginSessionEvent{
			SessionEvent: types.SessionEvent{Event: base(44, "user", "User user@172.17.0.1 logged in as Go-http-client/1.1")},
			IpAddress:    "172.17.0.1",
			UserAgent:    "Go-http-client/1.1",
			Locale:       "en_US",
			SessionId:    "56c95aca-aed7-471d-b69f-be73468a89aa",
		},
		"vm-powered-on": &types.VmPoweredOnEvent{VmEvent: types.VmEvent{Event: power}},
		"eventex": &types.EventEx{
			Event:       ex,
			EventTypeId: "com.vmware.vc.alarm.AlarmStatusChangedEvent",
			Severity:    "info",
			Message:     "",
			Arguments: []types.KeyAnyValue{
				{Key: "alarm", Value: "Host memory usage"},
				{Key: "newStatus", Value: "green"},
				{Key: "count", Value: int32(3)},
			},
			ObjectId:   "host-21",
			ObjectType: "HostSystem",
			ObjectName: "DC0_H0",
		},
		"extendedevent": &types.ExtendedEvent{
			GeneralEvent:  types.GeneralEvent{Event: extended, Message: "Backup of DC0_H0_VM0 completed"},
			EventTypeId:   "com.example.backup.completed",
			ManagedObject: types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-57"},
			Data:          []types.ExtendedEventPair{{Key: "result", Value: "success"}, {Key: "bytes", Value: "1073741824"}},
		},
	}
}

// TestCloudEventGolden pins the wire format of every event class. Run with
// UPDATE_GOLDEN=1 to rewrite testdata/golden after a deliberate change.
func TestCloudEventGolden(t *testing.T) {
	t.Parallel()
	conv := &eventConverter{source: goldenSource, maxRecordSize: defaultMaxRecordSize}
	for name, ev := range goldenEvents(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec, err := conv.convert(ev)
			if err != nil {
				t.Fatal(err)
			}
			if rec.offset != int64(ev.GetEvent().Key) {
				t.Errorf("offset %d, want the event key %d", rec.offset, ev.GetEvent().Key)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, rec.data, "", "  "); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, rec.data)
			}
			pretty.WriteByte('\n')
			path := filepath.Join("testdata", "golden", name+".json")
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("%s differs from %s:\n%s", name, path, pretty.Bytes())
			}
		})
	}
}

// TestCloudEventMatchesSeed: the login event is byte for byte the
// original's example (seed/README.md), less the newline the original left
// in the user name.
func TestCloudEventMatchesSeed(t *testing.T) {
	t.Parallel()
	conv := &eventConverter{source: goldenSource, maxRecordSize: defaultMaxRecordSize}
	rec, err := conv.convert(goldenEvents(t)["login"])
	if err != nil {
		t.Fatal(err)
	}
	seed, err := os.ReadFile(filepath.Join("testdata", "seed-login-event.json"))
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := json.Compact(&want, seed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.data, want.Bytes()) {
		t.Errorf("got\n%s\nwant (seed)\n%s", rec.data, want.Bytes())
	}
}

func TestCloudEventTypeAndClass(t *testing.T) {
	t.Parallel()
	events := goldenEvents(t)
	type typeAndClass struct {
		typ   string
		class eventClass
	}
	for name, want := range map[string]typeAndClass{
		"login":         {"vmware.vsphere.UserLoginSessionEvent.v0", classEvent},
		"vm-powered-on": {"vmware.vsphere.VmPoweredOnEvent.v0", classEvent},
		"eventex":       {"vmware.vsphere.com.vmware.vc.alarm.AlarmStatusChangedEvent.v0", classEventEx},
		"extendedevent": {"vmware.vsphere.com.example.backup.completed.v0", classExtendedEvent},
	} {
		typ, class := eventTypeAndClass(events[name])
		if cloudEventType(typ) != want.typ || class != want.class {
			t.Errorf("%s: type %s class %s, want %v", name, cloudEventType(typ), class, want)
		}
		// The converter records the same type and class with the event.
		conv := &eventConverter{source: goldenSource, maxRecordSize: defaultMaxRecordSize}
		rec, err := conv.convert(events[name])
		if err != nil || rec.eventType != want.typ || rec.class != want.class {
			t.Errorf("%s: record type %s class %s (%v), want %v", name, rec.eventType, rec.class, err, want)
		}
	}
}

// TestCloudEventTooLarge: an event over the record size limit is kept
// under its key, without data, marked datadropped=size.
func TestCloudEventTooLarge(t *testing.T) {
	t.Parallel()
	ev := goldenEvents(t)["vm-powered-on"]
	conv := &eventConverter{source: goldenSource, maxRecordSize: 300}
	rec, err := conv.convert(ev)
	if err != nil {
		t.Fatal(err)
	}
	if rec.dropped != dropSize {
		t.Fatalf("Dropped = %q, want %q", rec.dropped, dropSize)
	}
	var got map[string]any
	if err := json.Unmarshal(rec.data, &got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got["data"]; ok {
		t.Errorf("data kept: %s", rec.data)
	}
	if got["id"] != "46" || got["datadropped"] != "size" || got["type"] != "vmware.vsphere.VmPoweredOnEvent.v0" || got["eventclass"] != "event" {
		t.Errorf("attributes: %s", rec.data)
	}
}

// TestWireEncoderMatchesEncodingJSON: where encoding/json has an answer
// (no tags, no HTML escaping), the wire encoder gives the same bytes.
func TestWireEncoderMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	type inner struct {
		A string
		B *int
	}
	type Embedded struct {
		X int
		Y string
	}
	type conflict struct{ Y string }
	type outer struct {
		Embedded
		*conflict // Y at the same depth as Embedded.Y: neither is written
		inner     inner
		Inner     inner
		Ptr       *inner
		List      []inner
		Nil       []int
		Bytes     []byte
		Map       map[string]int
		Any       any
		F32       float32
		F64       float64
		Small     float64
		Big       float64
		U         uint16
		Text      string
		When      time.Time
	}
	seven := 7
	v := outer{
		Embedded: Embedded{X: 1, Y: "y"},
		Inner:    inner{A: "a", B: &seven},
		List:     []inner{{A: "1"}, {A: "2"}},
		Bytes:    []byte("hello"),
		Map:      map[string]int{"b": 2, "a": 1},
		Any:      inner{A: "any"},
		F32:      1.5,
		F64:      -0.1,
		Small:    1e-9,
		Big:      1e22,
		U:        65535,
		Text:     "quote\" back\\ nl\n tab\t ctl\x01 <tag> & é \u2028 bad\xff",
		When:     time.Date(2022, 1, 14, 13, 26, 22, 85413700, time.UTC),
	}
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	var w wireEncoder
	got := w.append(nil, v)
	if !bytes.Equal(got, bytes.TrimSuffix(want.Bytes(), []byte("\n"))) {
		t.Errorf("got\n%s\nwant\n%s", got, want.Bytes())
	}
}

func TestWireEncoderSpecialValues(t *testing.T) {
	t.Parallel()
	var w wireEncoder
	for _, c := range []struct {
		v    any
		want string
	}{
		{nil, `null`},
		{math.NaN(), `null`},
		{math.Inf(1), `null`},
		{types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-1"}, `{"Type":"VirtualMachine","Value":"vm-1"}`},
		{types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-1", ServerGUID: "g"}, `{"Type":"VirtualMachine","Value":"vm-1","ServerGUID":"g"}`},
		{(*types.Event)(nil), `null`},
		// A fault whose cause is a fault: a recursive type.
		{types.LocalizedMethodFault{LocalizedMessage: "outer", Fault: &types.SystemError{
			RuntimeFault: types.RuntimeFault{MethodFault: types.MethodFault{FaultCause: &types.LocalizedMethodFault{LocalizedMessage: "inner"}}},
			Reason:       "r",
		}}, ``},
	} {
		got := string(w.append(nil, c.v))
		if c.want == "" {
			if !json.Valid([]byte(got)) || !strings.Contains(got, `"LocalizedMessage":"inner"`) {
				t.Errorf("%T: %s", c.v, got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%T: got %s, want %s", c.v, got, c.want)
		}
	}
}

// TestWireEncoderSimulatorEvents encodes every event the simulator's
// inventory produces: all valid JSON with the original's field names.
func TestWireEncoderSimulatorEvents(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	vc.powerCycleVMs(t, 1)
	conv := &eventConverter{source: sim.url.String(), maxRecordSize: defaultMaxRecordSize}
	for _, ev := range vc.events(t, 0) {
		rec, err := conv.convert(ev)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Data map[string]json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(rec.data, &got); err != nil {
			t.Fatalf("%d: %v\n%s", rec.offset, err, rec.data)
		}
		for _, field := range []string{"Key", "ChainId", "CreatedTime", "UserName", "Datacenter", "ComputeResource", "Host", "Vm", "Ds", "Net", "Dvs", "FullFormattedMessage", "ChangeTag"} {
			if _, ok := got.Data[field]; !ok {
				t.Errorf("%d %s: no %s in data", rec.offset, rec.eventType, field)
			}
		}
	}
}
