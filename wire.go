package main

import (
	"encoding/base64"
	"fmt"
	"math"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vmware/govmomi/vim25/types"
)

// wireEncoder writes vSphere values as JSON in the original's wire format:
// Go field names (Key, ChainId, CreatedTime, ...) rather than govmomi's
// lowerCamelCase json tags, every field present (null where unset), embedded
// structs flattened as encoding/json flattens them, times in RFC 3339 with
// nanoseconds, interfaces as their concrete value. Encoders are compiled once
// per type and cached in the value, so a wireEncoder is meant to live as long
// as the collector that uses it. It is safe for concurrent use.
type wireEncoder struct {
	cache sync.Map // reflect.Type -> encodeFunc
}

// encodeFunc appends the JSON of v to b.
type encodeFunc func(b []byte, v reflect.Value) []byte

var (
	timeType = reflect.TypeFor[time.Time]()
	morType  = reflect.TypeFor[types.ManagedObjectReference]()
)

// append appends the JSON of v to b.
func (e *wireEncoder) append(b []byte, v any) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	rv := reflect.ValueOf(v)
	return e.encoderFor(rv.Type())(b, rv)
}

func (e *wireEncoder) encoderFor(t reflect.Type) encodeFunc {
	if f, ok := e.cache.Load(t); ok {
		return f.(encodeFunc)
	}
	// A recursive type (a fault whose cause is a fault) reaches itself while
	// its encoder is being built: hand out an indirection that waits for it,
	// as encoding/json does.
	var (
		wg sync.WaitGroup
		f  encodeFunc
	)
	wg.Add(1)
	indirect, loaded := e.cache.LoadOrStore(t, encodeFunc(func(b []byte, v reflect.Value) []byte {
		wg.Wait()
		return f(b, v)
	}))
	if loaded {
		return indirect.(encodeFunc)
	}
	f = e.newEncoder(t)
	wg.Done()
	e.cache.Store(t, f)
	return f
}

func (e *wireEncoder) newEncoder(t reflect.Type) encodeFunc {
	switch t {
	case timeType:
		return encodeTime
	case morType:
		return encodeMoRef
	}
	switch t.Kind() {
	case reflect.Bool:
		return func(b []byte, v reflect.Value) []byte { return strconv.AppendBool(b, v.Bool()) }
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return func(b []byte, v reflect.Value) []byte { return strconv.AppendInt(b, v.Int(), 10) }
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return func(b []byte, v reflect.Value) []byte { return strconv.AppendUint(b, v.Uint(), 10) }
	case reflect.Float32, reflect.Float64:
		return encodeFloat
	case reflect.String:
		return func(b []byte, v reflect.Value) []byte { return appendString(b, v.String()) }
	case reflect.Interface:
		return e.encodeInterface
	case reflect.Pointer:
		return e.newPointerEncoder(t)
	case reflect.Struct:
		return e.newStructEncoder(t)
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return encodeBytes
		}
		return e.newArrayEncoder(t, true)
	case reflect.Array:
		return e.newArrayEncoder(t, false)
	case reflect.Map:
		return e.newMapEncoder(t)
	default:
		// Channels and functions have no JSON form; vSphere types have none.
		return encodeNull
	}
}

func encodeNull(b []byte, _ reflect.Value) []byte { return append(b, "null"...) }

func encodeTime(b []byte, v reflect.Value) []byte {
	t := v.Interface().(time.Time)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// encodeMoRef writes a managed object reference as the original did. The
// ServerGUID that newer govmomi added (linked vCenters) is written only when
// set, so events of a single vCenter keep the original's shape.
func encodeMoRef(b []byte, v reflect.Value) []byte {
	ref := v.Interface().(types.ManagedObjectReference)
	b = append(b, `{"Type":`...)
	b = appendString(b, ref.Type)
	b = append(b, `,"Value":`...)
	b = appendString(b, ref.Value)
	if ref.ServerGUID != "" {
		b = append(b, `,"ServerGUID":`...)
		b = appendString(b, ref.ServerGUID)
	}
	return append(b, '}')
}

// encodeFloat formats as encoding/json does; NaN and infinities, which JSON
// cannot carry, become null.
func encodeFloat(b []byte, v reflect.Value) []byte {
	f := v.Float()
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	bits := 64
	if v.Kind() == reflect.Float32 {
		bits = 32
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, bits)
	if format == 'e' {
		// Shorten e-09 to e-9, as encoding/json does.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

func encodeBytes(b []byte, v reflect.Value) []byte {
	if v.IsNil() {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = base64.StdEncoding.AppendEncode(b, v.Bytes())
	return append(b, '"')
}

func (e *wireEncoder) encodeInterface(b []byte, v reflect.Value) []byte {
	if v.IsNil() {
		return append(b, "null"...)
	}
	elem := v.Elem()
	return e.encoderFor(elem.Type())(b, elem)
}

func (e *wireEncoder) newPointerEncoder(t reflect.Type) encodeFunc {
	elem := e.encoderFor(t.Elem())
	return func(b []byte, v reflect.Value) []byte {
		if v.IsNil() {
			return append(b, "null"...)
		}
		return elem(b, v.Elem())
	}
}

func (e *wireEncoder) newArrayEncoder(t reflect.Type, nullable bool) encodeFunc {
	elem := e.encoderFor(t.Elem())
	return func(b []byte, v reflect.Value) []byte {
		if nullable && v.IsNil() {
			return append(b, "null"...)
		}
		b = append(b, '[')
		for i := range v.Len() {
			if i > 0 {
				b = append(b, ',')
			}
			b = elem(b, v.Index(i))
		}
		return append(b, ']')
	}
}

// newMapEncoder writes maps with keys sorted, as encoding/json does. vSphere
// types use slices of key/value pairs instead; this is for completeness.
func (e *wireEncoder) newMapEncoder(t reflect.Type) encodeFunc {
	elem := e.encoderFor(t.Elem())
	return func(b []byte, v reflect.Value) []byte {
		if v.IsNil() {
			return append(b, "null"...)
		}
		keys := v.MapKeys()
		names := make([]string, len(keys))
		for i, k := range keys {
			names[i] = fmt.Sprint(k.Interface())
		}
		order := make([]int, len(keys))
		for i := range order {
			order[i] = i
		}
		sort.Slice(order, func(x, y int) bool { return names[order[x]] < names[order[y]] })
		b = append(b, '{')
		for n, i := range order {
			if n > 0 {
				b = append(b, ',')
			}
			b = appendString(b, names[i])
			b = append(b, ':')
			b = elem(b, v.MapIndex(keys[i]))
		}
		return append(b, '}')
	}
}

// wireField is one JSON member of a struct: its name, the path of field
// indexes to it through embedded structs, and its encoder.
type wireField struct {
	name   string
	index  []int
	encode encodeFunc
}

func (e *wireEncoder) newStructEncoder(t reflect.Type) encodeFunc {
	fields := visibleFields(t)
	for i := range fields {
		fields[i].encode = e.encoderFor(t.FieldByIndex(fields[i].index).Type)
	}
	return func(b []byte, v reflect.Value) []byte {
		b = append(b, '{')
		first := true
		for _, f := range fields {
			fv, ok := fieldByIndex(v, f.index)
			if !ok {
				continue // inside a nil embedded pointer, as encoding/json skips it
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendString(b, f.name)
			b = append(b, ':')
			b = f.encode(b, fv)
		}
		return append(b, '}')
	}
}

// visibleFields returns the fields encoding/json would write for t if it had
// no tags: exported fields, embedded structs flattened, and where several
// fields share a name the shallowest wins (none if it is ambiguous), in the
// order of declaration.
func visibleFields(t reflect.Type) []wireField {
	var all []wireField
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			index := append(slices.Clone(prefix), i)
			ft := sf.Type
			if sf.Anonymous {
				if ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct && len(index) < 16 {
					walk(ft, index)
					continue
				}
			}
			if !sf.IsExported() {
				continue
			}
			all = append(all, wireField{name: sf.Name, index: index})
		}
	}
	walk(t, nil)

	depth := make(map[string]int)   // shallowest depth of each name
	atDepth := make(map[string]int) // how many fields have it there
	for _, f := range all {
		d, seen := depth[f.name]
		switch {
		case !seen || len(f.index) < d:
			depth[f.name], atDepth[f.name] = len(f.index), 1
		case len(f.index) == d:
			atDepth[f.name]++
		}
	}
	visible := all[:0]
	for _, f := range all {
		if len(f.index) == depth[f.name] && atDepth[f.name] == 1 {
			visible = append(visible, f)
		}
	}
	return visible
}

// fieldByIndex follows index through embedded pointers; ok is false where
// one of them is nil.
func fieldByIndex(v reflect.Value, index []int) (reflect.Value, bool) {
	for i, x := range index {
		if i > 0 && v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
		v = v.Field(x)
	}
	return v, true
}

// appendString writes s as a JSON string. Unlike encoding/json it leaves
// <, > and & alone: these records are read by people and jq, not embedded
// in HTML. Invalid UTF-8 becomes U+FFFD, as in encoding/json.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but end lines in JavaScript.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
