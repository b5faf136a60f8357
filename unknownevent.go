package main

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// Every vSphere release adds event types that an older govmomi does not
// know. Its XML decoder leaves nil for an xsi:type it cannot map, so such an
// event would vanish (or crash a caller that expects an event). The
// collector's SOAP client maps every unknown name that ends in "Event" to
// unknownEvent instead, which keeps the base Event fields decoded as govmomi
// decodes them and the rest of the element as generic XML.

// xsiNamespace is the namespace of the xsi:type and xsi:nil attributes.
const xsiNamespace = "http://www.w3.org/2001/XMLSchema-instance"

// unknownEventType is what withUnknownEvents maps unknown event names to.
var unknownEventType = reflect.TypeFor[unknownEvent]()

// withUnknownEvents returns known extended with unknownEvent for every type
// name known does not map that ends in "Event". Other unknown names stay
// unknown: mapping them into a field of another interface type would make
// the decoder panic.
func withUnknownEvents(known types.Func) types.Func {
	return func(name string) (reflect.Type, bool) {
		if t, ok := known(name); ok {
			return t, ok
		}
		if strings.HasSuffix(name, "Event") {
			return unknownEventType, true
		}
		return nil, false
	}
}

// unknownEvent is a vSphere event whose type govmomi does not know.
type unknownEvent struct {
	types.Event
	// typeName is the event's xsi:type, without a namespace prefix.
	typeName string
	// Extra are the element's children other than the base Event fields,
	// in document order.
	extra []*xmlNode
	// decodeErr is why the base fields could not be decoded, if they could
	// not; the event is then recorded without data.
	decodeErr error
	// keyRead tells whether the element had a readable key.
	keyRead bool
}

// xmlNode is one element of an unknown event, kept generically.
type xmlNode struct {
	name     string // local name
	xsiType  string // xsi:type, if any
	typeAttr string // the plain type attribute of a managed object reference
	isNil    bool   // xsi:nil="true"
	text     string // character data of a leaf
	children []*xmlNode
}

// baseEventElements are the XML names of types.Event's fields.
var baseEventElements = map[string]bool{
	"key": true, "chainId": true, "createdTime": true, "userName": true,
	"datacenter": true, "computeResource": true, "host": true, "vm": true,
	"ds": true, "net": true, "dvs": true, "fullFormattedMessage": true,
	"changeTag": true,
}

// UnmarshalXML keeps the element generically and decodes its base Event
// fields as govmomi would for a known type. It never fails the whole read:
// a problem with this one event is kept in decodeErr.
func (u *unknownEvent) UnmarshalXML(d *xml.Decoder, start xml.StartElement) error {
	root, err := readXMLNode(d, start)
	if err != nil {
		// The document itself is broken: nothing after it can be read.
		return err
	}
	u.typeName = root.xsiType
	if i := strings.LastIndexByte(u.typeName, ':'); i >= 0 {
		u.typeName = u.typeName[i+1:]
	}
	var base []*xmlNode
	for _, c := range root.children {
		if baseEventElements[c.name] {
			base = append(base, c)
		} else {
			u.extra = append(u.extra, c)
		}
	}
	u.decodeErr = decodeBaseEvent(base, &u.Event)
	u.keyRead = u.decodeErr == nil
	if u.decodeErr != nil {
		// The key alone may still be readable, so the event keeps its
		// offset; and its time, each on its own, so that the event keeps its
		// place in time (where a reconnect or a sink's checkpoint resumes).
		var key struct {
			Key int32 `xml:"key"`
		}
		u.keyRead = decodeBaseEvent(base, &key) == nil && hasElement(base, "key")
		u.Key = key.Key
		var created struct {
			CreatedTime time.Time `xml:"createdTime"`
		}
		if decodeBaseEvent(base, &created) == nil && hasElement(base, "createdTime") {
			u.CreatedTime = created.CreatedTime
		}
	}
	return nil
}

// hasElement reports whether nodes include an element named name.
func hasElement(nodes []*xmlNode, name string) bool {
	return slices.ContainsFunc(nodes, func(n *xmlNode) bool { return n.name == name })
}

// decodeBaseEvent decodes nodes, written back as XML, into v with govmomi's
// decoder and types; a panic in the decoder is returned as an error.
func decodeBaseEvent(nodes []*xmlNode, v any) (err error) {
	defer recoverAsError(&err)
	var buf bytes.Buffer
	buf.WriteString(`<event xmlns:xsi="` + xsiNamespace + `">`)
	for _, n := range nodes {
		n.writeXML(&buf)
	}
	buf.WriteString(`</event>`)
	dec := xml.NewDecoder(&buf)
	dec.TypeFunc = types.TypeFunc()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	return nil
}

// readXMLNode reads the element that start opens, up to its end.
func readXMLNode(d *xml.Decoder, start xml.StartElement) (*xmlNode, error) {
	n := &xmlNode{name: start.Name.Local}
	for _, a := range start.Attr {
		switch {
		case a.Name.Local == "type" && (a.Name.Space == xsiNamespace || a.Name.Space == "xsi"):
			n.xsiType = a.Value
		case a.Name.Local == "nil" && (a.Name.Space == xsiNamespace || a.Name.Space == "xsi"):
			n.isNil = a.Value == "true" || a.Value == "1"
		case a.Name.Local == "type" && a.Name.Space == "":
			n.typeAttr = a.Value
		}
	}
	var text strings.Builder
	for {
		tok, err := d.Token()
		if err != nil {
			return nil, fmt.Errorf("read <%s>: %w", n.name, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			child, err := readXMLNode(d, t)
			if err != nil {
				return nil, err
			}
			n.children = append(n.children, child)
		case xml.CharData:
			text.Write(t)
		case xml.EndElement:
			if len(n.children) == 0 {
				n.text = text.String()
			}
			return n, nil
		}
	}
}

// writeXML writes n back as XML, with the attributes govmomi's decoder reads.
func (n *xmlNode) writeXML(buf *bytes.Buffer) {
	buf.WriteString("<" + n.name)
	writeAttr := func(name, value string) {
		buf.WriteString(" " + name + `="`)
		_ = xml.EscapeText(buf, []byte(value))
		buf.WriteByte('"')
	}
	if n.xsiType != "" {
		writeAttr("xsi:type", n.xsiType)
	}
	if n.typeAttr != "" {
		writeAttr("type", n.typeAttr)
	}
	if n.isNil {
		writeAttr("xsi:nil", "true")
	}
	buf.WriteByte('>')
	_ = xml.EscapeText(buf, []byte(n.text))
	for _, c := range n.children {
		c.writeXML(buf)
	}
	buf.WriteString("</" + n.name + ">")
}

// appendUnknownEventData appends the data of u: its base fields exactly as
// the wire encoder writes them for a known type (they come first there too,
// Event being embedded first), then its other elements in document order.
func appendUnknownEventData(b []byte, wire *wireEncoder, u *unknownEvent) []byte {
	b = wire.append(b, &u.Event)
	if len(u.extra) == 0 {
		return b
	}
	// Continue the object the wire encoder closed.
	b = b[:len(b)-1]
	b = appendXMLFields(b, u.extra, true)
	return append(b, '}')
}

// appendXMLFields appends the JSON members for nodes: PascalCase names in
// document order of first appearance, repeated names as arrays. With
// continued, a comma precedes the first member.
func appendXMLFields(b []byte, nodes []*xmlNode, continued bool) []byte {
	done := make(map[string]bool, len(nodes))
	for i, n := range nodes {
		if done[n.name] {
			continue
		}
		done[n.name] = true
		if continued {
			b = append(b, ',')
		}
		continued = true
		b = appendString(b, pascalCase(n.name))
		b = append(b, ':')
		var same []*xmlNode
		for _, m := range nodes[i:] {
			if m.name == n.name {
				same = append(same, m)
			}
		}
		if len(same) == 1 {
			b = appendXMLValue(b, n)
			continue
		}
		b = append(b, '[')
		for k, m := range same {
			if k > 0 {
				b = append(b, ',')
			}
			b = appendXMLValue(b, m)
		}
		b = append(b, ']')
	}
	return b
}

// appendXMLValue appends n as JSON: an object for an element with children,
// {"Type","Value"} for a managed object reference, null for xsi:nil, else
// its text as a string.
func appendXMLValue(b []byte, n *xmlNode) []byte {
	switch {
	case len(n.children) > 0:
		b = append(b, '{')
		b = appendXMLFields(b, n.children, false)
		return append(b, '}')
	case n.isNil:
		return append(b, "null"...)
	case n.typeAttr != "":
		b = append(b, `{"Type":`...)
		b = appendString(b, n.typeAttr)
		b = append(b, `,"Value":`...)
		b = appendString(b, n.text)
		return append(b, '}')
	}
	return appendString(b, n.text)
}

// pascalCase upper-cases the first letter of an XML name, as govmomi names
// its Go fields (chainId: ChainId).
func pascalCase(name string) string {
	if name == "" || name[0] < 'a' || name[0] > 'z' {
		return name
	}
	return string(name[0]-'a'+'A') + name[1:]
}
