package main

import (
	"fmt"
	"net/url"
	"reflect"
	"strconv"
	"sync"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/vim25/types"
)

// eventClass is the kind of a vSphere event: the eventclass extension.
type eventClass uint8

// The event classes; the zero value is no class (a record appended without).
const (
	classEvent eventClass = iota + 1
	classEventEx
	classExtendedEvent
)

// String is the value of the eventclass extension.
func (c eventClass) String() string {
	switch c {
	case classEvent:
		return "event"
	case classEventEx:
		return "eventex"
	case classExtendedEvent:
		return "extendedevent"
	}
	return ""
}

// parseEventClass is the inverse of String.
func parseEventClass(s string) (eventClass, bool) {
	for c := classEvent; c <= classExtendedEvent; c++ {
		if c.String() == s {
			return c, true
		}
	}
	return 0, false
}

// Names of the CloudEvent extensions this server sets.
const (
	extEventClass  = "eventclass"
	extDataDropped = "datadropped"
)

// epochSource is the CloudEvent source of the events of epoch: vCenter's
// SDK URL, and after its keys started over (epoch 1 on) the same with the
// query parameter epoch=N, so that no (source, id) pair names two events.
func epochSource(sdk *url.URL, epoch int) string {
	if epoch == 0 {
		return sdk.String()
	}
	u := *sdk
	q := u.Query()
	q.Set("epoch", strconv.Itoa(epoch))
	u.RawQuery = q.Encode()
	return u.String()
}

// eventConverter turns vSphere events into the CloudEvent records the
// journal holds. Each event is encoded once, at ingest; every reader then
// shares the same bytes. It is safe for concurrent use.
type eventConverter struct {
	source        string // epochSource: the vCenter SDK URL, without credentials, of the epoch
	maxRecordSize int
	wire          wireEncoder
	// types maps event names to their CloudEvent types, made once.
	types sync.Map
	// beforeEncode, if set, is called with each event before its data is
	// encoded: tests inject faults with it.
	beforeEncode func(types.BaseEvent)
}

// convertedEvent is one vSphere event as a journal record.
type convertedEvent struct {
	record
	// Dropped is why the event was recorded without its data: "" (it was
	// not), dropSize or dropError; it is the datadropped extension.
	dropped string
	// Err is why the data could not be encoded, with Dropped dropError.
	err error
}

// Values of the datadropped extension.
const (
	// dropSize: the event's JSON exceeded the record size limit.
	dropSize = "size"
	// dropError: the event could not be decoded or encoded.
	dropError = "error"
)

// eventTypeAndClass returns the name used in the CloudEvent type and the
// eventclass extension: the Go type name of the vSphere event, or for
// EventEx and ExtendedEvent their EventTypeId.
func eventTypeAndClass(ev types.BaseEvent) (name string, class eventClass) {
	switch e := ev.(type) {
	case *unknownEvent:
		return e.typeName, classEvent
	case *types.EventEx:
		return e.EventTypeId, classEventEx
	case *types.ExtendedEvent:
		return e.EventTypeId, classExtendedEvent
	}
	t := reflect.TypeOf(ev)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Name(), classEvent
}

// The CloudEvent type of a vSphere event is its name between these.
const (
	cloudEventTypePrefix = "vmware.vsphere."
	cloudEventTypeSuffix = ".v0"
)

// cloudEventType is the CloudEvent type of a vSphere event name.
func cloudEventType(name string) string {
	return cloudEventTypePrefix + name + cloudEventTypeSuffix
}

// convert encodes ev as a CloudEvent whose id is the vCenter event key. An
// event whose data cannot be decoded or encoded, or is too large, is still
// converted, without data and with the datadropped extension saying why, so
// that no offset silently goes missing: this is the one way an event that
// failed is recorded. Convert fails only if even that cannot be encoded.
func (c *eventConverter) convert(ev types.BaseEvent) (convertedEvent, error) {
	base := ev.GetEvent()
	name, class := eventTypeAndClass(ev)
	out := convertedEvent{record: record{offset: int64(base.Key), eventType: c.cloudEventType(name), class: class}}
	if !base.CreatedTime.IsZero() {
		out.created = base.CreatedTime.UnixNano()
	}

	ce := cloudevents.New()
	ce.SetID(strconv.FormatInt(out.offset, 10))
	ce.SetSource(c.source)
	ce.SetType(out.eventType)
	ce.SetTime(base.CreatedTime)
	ce.SetExtension(extEventClass, class.String())
	ce.SetDataContentType(cloudevents.ApplicationJSON)

	data, err := c.encode(&ce, ev)
	switch {
	case err != nil:
		out.dropped, out.err = dropError, err
	case len(data) > c.maxRecordSize:
		out.dropped = dropSize
	default:
		out.data = data
		return out, nil
	}
	ce.DataEncoded = nil
	ce.SetExtension(extDataDropped, out.dropped)
	if out.data, err = ce.MarshalJSON(); err != nil {
		return out, fmt.Errorf("encode cloudevent %d without data: %w", out.offset, err)
	}
	return out, nil
}

// encode returns ce with the data of ev in the wire format, encoded whole.
// A panic while encoding (a bug, or a value no vSphere type should hold) is
// returned as an error: one event must not stop the stream.
func (c *eventConverter) encode(ce *cloudevents.Event, ev types.BaseEvent) (record []byte, err error) {
	defer recoverAsError(&err)
	if c.beforeEncode != nil {
		c.beforeEncode(ev)
	}
	// Set the encoded data directly: SetData would base64 a []byte.
	if u, ok := ev.(*unknownEvent); ok {
		if u.decodeErr != nil {
			return nil, u.decodeErr
		}
		ce.DataEncoded = appendUnknownEventData(nil, &c.wire, u)
	} else {
		ce.DataEncoded = c.wire.append(nil, ev)
	}
	if record, err = ce.MarshalJSON(); err != nil {
		return nil, fmt.Errorf("encode cloudevent %s: %w", ce.ID(), err)
	}
	return record, nil
}

// cloudEventType is cloudEventType(name), made once per name: the records
// of a type share the string.
func (c *eventConverter) cloudEventType(name string) string {
	if t, ok := c.types.Load(name); ok {
		return t.(string)
	}
	t, _ := c.types.LoadOrStore(name, cloudEventType(name))
	return t.(string)
}
