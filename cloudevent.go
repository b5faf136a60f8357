package main

import (
	"fmt"
	"reflect"
	"strconv"

	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	"github.com/vmware/govmomi/vim25/types"
)

// Values of the eventclass extension.
const (
	classEvent         = "event"
	classEventEx       = "eventex"
	classExtendedEvent = "extendedevent"
)

// Names of the CloudEvent extensions this server sets.
const (
	extEventClass  = "eventclass"
	extDataDropped = "datadropped"
)

// eventConverter turns vSphere events into the CloudEvent records the
// journal holds. Each event is encoded once, at ingest; every reader then
// shares the same bytes.
type eventConverter struct {
	source        string // the vCenter SDK URL, without credentials
	maxRecordSize int
	wire          wireEncoder
}

// convertedEvent is one vSphere event as a journal record.
type convertedEvent struct {
	Offset int64
	Type   string
	// Data is the compact CloudEvent JSON.
	Data []byte
	// DataDropped is set when the event's JSON exceeded the record size
	// limit and was recorded without its data.
	DataDropped bool
}

// eventTypeAndClass returns the name used in the CloudEvent type and the
// eventclass extension: the Go type name of the vSphere event, or for
// EventEx and ExtendedEvent their EventTypeId.
func eventTypeAndClass(ev types.BaseEvent) (name, class string) {
	switch e := ev.(type) {
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

// cloudEventType is the CloudEvent type of a vSphere event name.
func cloudEventType(name string) string {
	return "vmware.vsphere." + name + ".v0"
}

// Convert encodes ev as a CloudEvent whose id is the vCenter event key.
func (c *eventConverter) Convert(ev types.BaseEvent) (convertedEvent, error) {
	base := ev.GetEvent()
	name, class := eventTypeAndClass(ev)
	out := convertedEvent{Offset: int64(base.Key), Type: cloudEventType(name)}

	ce := cloudevents.New()
	ce.SetID(strconv.FormatInt(out.Offset, 10))
	ce.SetSource(c.source)
	ce.SetType(out.Type)
	ce.SetTime(base.CreatedTime)
	ce.SetExtension(extEventClass, class)
	ce.SetDataContentType(cloudevents.ApplicationJSON)
	// Set the encoded data directly: SetData would base64 a []byte.
	ce.DataEncoded = c.wire.Append(nil, ev)

	data, err := ce.MarshalJSON()
	if err != nil {
		return out, fmt.Errorf("encode cloudevent %d: %w", out.Offset, err)
	}
	if len(data) > c.maxRecordSize {
		// Keep the event, under its own key, without the data that made it
		// too large, so that no offset silently goes missing.
		ce.DataEncoded = nil
		ce.SetExtension(extDataDropped, "size")
		if data, err = ce.MarshalJSON(); err != nil {
			return out, fmt.Errorf("encode cloudevent %d without data: %w", out.Offset, err)
		}
		out.DataDropped = true
	}
	out.Data = data
	return out, nil
}
