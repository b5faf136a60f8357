package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// metricPrefix starts the name of every metric the server exposes.
const metricPrefix = "vsphere_event_streaming_"

// httpMetrics counts what the HTTP API does. It is safe for concurrent use.
type httpMetrics struct {
	mu       sync.Mutex
	requests map[requestKey]int64
}

// requestKey labels a request count: the route pattern and the status.
type requestKey struct {
	route string
	code  int
}

func newHTTPMetrics() *httpMetrics {
	return &httpMetrics{requests: make(map[requestKey]int64)}
}

func (m *httpMetrics) countRequest(route string, code int) {
	m.mu.Lock()
	m.requests[requestKey{route, code}]++
	m.mu.Unlock()
}

// statusRecorder remembers the status a handler answered. Unwrap lets
// http.ResponseController reach the connection (flushes, deadlines).
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack is what http.ResponseController's Hijack calls. Only a watch takes
// its connection over (watch_conn.go), to write 200 and its stream itself:
// that is the status recorded.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil && r.code == 0 {
		r.code = http.StatusOK
	}
	return conn, rw, err
}

// instrument counts every request by route and status, and logs it at
// debug level once it is answered (a watch when it ends); a handler's panic
// is answered with 500. Every answer forbids content sniffing: a browser
// must not take a body for another type than it says (an event's JSON
// holds strings vCenter's users chose, HTML included).
func instrument(next http.Handler, m *httpMetrics, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w.Header().Set("X-Content-Type-Options", "nosniff")
		rec := &statusRecorder{ResponseWriter: w}
		func() {
			defer answerPanic(rec, r, log)
			next.ServeHTTP(rec, r)
		}()
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		// The route that answered names itself in the pattern ("GET
		// /api/v1/range"). A request none did (refused before one: 405,
		// 414; redirected to its clean path by ServeMux, whose patterns
		// name no method) or that took the catch-all has none worth a
		// label.
		route := r.Pattern
		if _, path, ok := strings.Cut(route, " "); !ok || path == "/" {
			route = "other"
		}
		m.countRequest(route, rec.code)
		// Redacting the target parses the query: only for a log that is on.
		if log.Enabled(r.Context(), slog.LevelDebug) {
			log.Debug("http request", "method", r.Method, "target", logTarget(r), "route", route,
				"status", rec.code, "duration", time.Since(start).String(), "remote", r.RemoteAddr)
		}
	})
}

// handleMetrics serves the metrics in the Prometheus text exposition format.
func handleMetrics(j *journal, status *collectorStatus, m *httpMetrics, watches *watchLimit, sink *sinkStatus) routeHandler {
	return func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		out := bufio.NewWriter(w)
		writeMetrics(out, j, status, m, watches)
		if sink != nil {
			sink.writeMetrics(out, j)
		}
		_ = out.Flush()
	}
}

func writeMetrics(w *bufio.Writer, j *journal, status *collectorStatus, m *httpMetrics, watches *watchLimit) {
	metric := func(name, kind, help string, value float64) { writeMetric(w, name, kind, help, value) }
	records, bytes := j.stats()
	metric("events_ingested_total", "counter", "Events read from vCenter and appended to the journal.", float64(status.ingested.Load()))
	metric("events_skipped_total", "counter", "Events read from vCenter again after a reconnect and skipped as already held.", float64(status.skipped.Load()))
	metric("events_unknown_type_total", "counter", "Events of a type this server's vSphere SDK does not know, served with their own type name.", float64(status.unknownTypes.Load()))
	metric("events_failed_total", "counter", "Events that could not be decoded, encoded or appended whole: recorded without data (datadropped=error).", float64(status.failed.Load()))
	metric("events_unreadable_total", "counter", "Events read from vCenter whose key could not be read: not appended, logged.", float64(status.unreadable.Load()))
	metric("events_unreachable_total", "counter", "Event keys vCenter announced that no read returned (events the user may have no rights to); the stream goes on.", float64(status.unreachable.Load()))
	metric("journal_records", "gauge", "Records held in the journal.", float64(records))
	metric("journal_bytes", "gauge", "Bytes of CloudEvent JSON held in the journal.", float64(bytes))
	if earliest, latest, ok := j.bounds(); ok {
		metric("journal_earliest_offset", "gauge", "Smallest offset (vCenter event key) held.", float64(earliest))
		metric("journal_latest_offset", "gauge", "Largest offset (vCenter event key) held.", float64(latest))
	}
	metric("watchers", "gauge", "Open watches.", float64(watches.open.Load()))
	metric("vcenter_connected", "gauge", "1 while the collector has a working vCenter session.", boolValue(status.isConnected()))
	metric("vcenter_reconnects_total", "counter", "vCenter sessions opened again after a failure.", float64(status.reconnects.Load()))
	metric("vcenter_key_resets_total", "counter", "Times vCenter's event keys were found to start over (a restore, a wrap, another vCenter), each starting a new epoch.", float64(status.resets.Load()))
	metric("vcenter_epoch", "gauge", "The epoch of the offsets held: how many times vCenter's keys started over, counted by this server and its sink checkpoint.", float64(j.currentTimeline().epoch))
	if id := status.lastVCenter(); id != nil {
		name := metricPrefix + "vcenter_info"
		fmt.Fprintf(w, "# HELP %s The vCenter the collector last logged in to.\n# TYPE %s gauge\n%s{instance_uuid=\"%s\",api_version=\"%s\"} 1\n",
			name, name, name, escapeLabel(id.InstanceUUID), escapeLabel(id.APIVersion))
	}
	if t := status.lastEventTime(); !t.IsZero() {
		metric("last_event_timestamp_seconds", "gauge", "Creation time in vCenter of the newest event held (Unix seconds).", float64(t.UnixNano())/1e9)
		metric("collector_lag_seconds", "gauge", "Time from the newest event's creation in vCenter to its append, on vCenter's clock.", time.Duration(status.lag.Load()).Seconds())
	}

	name := metricPrefix + "http_requests_total"
	fmt.Fprintf(w, "# HELP %s HTTP requests answered, by route and status.\n# TYPE %s counter\n", name, name)
	m.mu.Lock()
	keys := make([]requestKey, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	counts := make([]int64, len(keys))
	slices.SortFunc(keys, func(a, b requestKey) int {
		if c := strings.Compare(a.route, b.route); c != 0 {
			return c
		}
		return a.code - b.code
	})
	for i, k := range keys {
		counts[i] = m.requests[k]
	}
	m.mu.Unlock()
	for i, k := range keys {
		fmt.Fprintf(w, "%s{route=\"%s\",code=\"%d\"} %d\n", name, escapeLabel(k.route), k.code, counts[i])
	}
}

// writeMetric writes one sample of the metric metricPrefix+name with its
// HELP and TYPE lines.
func writeMetric(w io.Writer, name, kind, help string, value float64) {
	fmt.Fprintf(w, "# HELP %s%s %s\n# TYPE %s%s %s\n%s%s %s\n",
		metricPrefix, name, help, metricPrefix, name, kind, metricPrefix, name, formatValue(value))
}

func formatValue(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// escapeLabel escapes a label value for the text exposition format.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
