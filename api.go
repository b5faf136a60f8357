package main

import (
	"encoding/json"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// API limits.
const (
	defaultPageSize = 50
	maxPageSize     = 1000
	// maxRequestTarget bounds the request target (path and query).
	maxRequestTarget = 8 << 10
	// maxTimeoutSeconds bounds timeoutSeconds (that of Kubernetes is an
	// int64, but a Duration cannot hold more than about 292 years).
	maxTimeoutSeconds = 1<<31 - 1
)

// Defaults of the handler.
const (
	defaultMaxWatches   = 10000 // of --max-watches
	defaultSSEHeartbeat = 15 * time.Second
	// watchRetryAfter is the Retry-After of a watch refused for the cap.
	watchRetryAfter = 5 * time.Second
)

// handlerDeps is what the HTTP handler serves from. Only journal is
// required: every other field's zero value is a working default.
type handlerDeps struct {
	journal      *journal
	status       *collectorStatus // nil: a collector that has not read yet (not ready)
	log          *slog.Logger     // nil: nothing is logged
	sink         *sinkStatus      // delivery to a sink, in /readyz and /metrics; nil: none
	auth         *tokenAuth       // nil: no token needed
	taken        *takenWatches    // counts the watches on connections taken from net/http; nil: not counted
	maxWatches   int              // open watches at most; 0: no limit
	sseHeartbeat time.Duration    // interval of the SSE ": ping" comment; 0: defaultSSEHeartbeat
}

// newHandler builds the server's HTTP handler.
func newHandler(d handlerDeps) http.Handler {
	if d.status == nil {
		d.status = &collectorStatus{}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.sseHeartbeat <= 0 {
		d.sseHeartbeat = defaultSSEHeartbeat
	}
	metrics := newHTTPMetrics()
	watches := &watchLimit{max: int64(d.maxWatches)}
	return instrument(newRouter(d.routes(metrics, watches), d.auth), metrics, d.log)
}

// handleNotFound answers a path no route takes.
func handleNotFound() routeHandler {
	return func(w http.ResponseWriter, r *http.Request, _ url.Values) {
		writeProblem(w, newProblem(http.StatusNotFound, "no such resource: %s (see /api/v1/events, /api/v1/range)", r.URL.Path))
	}
}

// rangeResponse is the body of /api/v1/range.
type rangeResponse struct {
	Earliest int64 `json:"earliest"`
	Latest   int64 `json:"latest"`
}

// handleRange answers the range of offsets held.
func handleRange(j *journal) routeHandler {
	return func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		earliest, latest, ok := j.bounds()
		if !ok {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, rangeResponse{Earliest: earliest, Latest: latest})
	}
}

// handleEvent answers the event at an offset.
func handleEvent(j *journal) routeHandler {
	return func(w http.ResponseWriter, r *http.Request, _ url.Values) {
		id, p := parseOffset("id", r.PathValue("id"))
		if p != nil {
			writeProblem(w, p.withRange(j))
			return
		}
		rec, err := j.read(id)
		if err != nil {
			writeProblem(w, offsetProblem(j, id, err))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(rec.data)))
		writeBody(w, rec.data)
	}
}

// eventsQuery is the validated request of /api/v1/events.
type eventsQuery struct {
	offset    int64
	hasOffset bool
	limit     int
	watch     bool
	sse       bool          // a watch as Server-Sent Events
	resume    bool          // offset follows a Last-Event-ID the client has seen
	timeout   time.Duration // watch only; 0 is none
	filter    eventFilter
}

// Parameters of /api/v1/events.
const (
	paramOffset  = "offset"
	paramLimit   = "limit"
	paramWatch   = "watch"
	paramTimeout = "timeoutSeconds"
)

// eventsParams are the query parameters of /api/v1/events, the API's only
// ones.
func eventsParams() []string {
	return []string{paramOffset, paramLimit, paramWatch, paramTimeout, paramType, paramEventClass}
}

// parseEventsQuery validates the request of /api/v1/events, whose query
// parameters (values) the route table checked; an offset error carries
// j's range, as every offset error does. A client that accepts
// text/event-stream (a browser's EventSource) watches as Server-Sent
// Events, and its Last-Event-ID resumes after that key.
func parseEventsQuery(r *http.Request, values url.Values, j *journal) (eventsQuery, *problem) {
	q := eventsQuery{limit: defaultPageSize}
	var (
		p   *problem
		err error
	)
	if q.filter, err = parseEventFilter(values); err != nil {
		return q, newProblem(http.StatusBadRequest, "%s", err)
	}
	q.sse = acceptsEventStream(r)
	q.watch = q.sse
	if v, ok := values[paramWatch]; ok {
		b, err := strconv.ParseBool(v[0])
		if err != nil {
			return q, newProblem(http.StatusBadRequest, "parameter watch: %q is not a boolean (true or false)", v[0])
		}
		if q.sse && !b {
			return q, newProblem(http.StatusBadRequest, "text/event-stream is a watch: watch=%s contradicts it", v[0])
		}
		q.watch = b
	}
	if v, ok := values[paramOffset]; ok {
		if q.offset, p = parseOffset(paramOffset, v[0]); p != nil {
			return q, p.withRange(j)
		}
		q.hasOffset = true
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" && q.watch {
		// EventSource resends the id of the last event it received: resume
		// after it. It takes precedence over the offset in the URL, which
		// is where the stream began.
		last, p := parseOffset("Last-Event-ID", id)
		if p == nil && last == math.MaxInt64 {
			p = newProblem(http.StatusBadRequest, "invalid offset: Last-Event-ID %q is malformed (no event can follow it)", id)
		}
		if p != nil {
			return q, p.withRange(j)
		}
		q.offset, q.hasOffset, q.resume = last+1, true, true
	}
	if v, ok := values[paramLimit]; ok {
		if q.watch {
			why := ""
			if q.sse {
				why = " (Accept: text/event-stream makes the request a watch)"
			}
			return q, newProblem(http.StatusBadRequest, "parameter limit does not apply to a watch%s", why)
		}
		n, err := strconv.Atoi(v[0])
		if err != nil || n < 1 || n > maxPageSize || !isDigits(v[0]) {
			return q, newProblem(http.StatusBadRequest, "parameter limit: %q is not an integer from 1 to %d", v[0], maxPageSize)
		}
		q.limit = n
	}
	if v, ok := values[paramTimeout]; ok {
		if !q.watch {
			return q, newProblem(http.StatusBadRequest, "parameter timeoutSeconds applies only to a watch (watch=true)")
		}
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || n < 1 || n > maxTimeoutSeconds || !isDigits(v[0]) {
			return q, newProblem(http.StatusBadRequest, "parameter timeoutSeconds: %q is not an integer from 1 to %d", v[0], maxTimeoutSeconds)
		}
		q.timeout = time.Duration(n) * time.Second
	}
	return q, nil
}

// acceptsEventStream reports whether the client asks for Server-Sent Events.
func acceptsEventStream(r *http.Request) bool { return accepts(r, "text/event-stream") }

// accepts reports whether the request's Accept headers name mediaType,
// with a weight above zero ("q=0" means not acceptable, RFC 9110 12.4.2).
func accepts(r *http.Request, mediaType string) bool {
	for _, accept := range r.Header.Values("Accept") {
		for _, media := range strings.Split(accept, ",") {
			media, params, _ := strings.Cut(media, ";")
			if strings.EqualFold(strings.TrimSpace(media), mediaType) {
				return !weighsZero(params)
			}
		}
	}
	return false
}

// weighsZero reports whether the parameters of a media range in Accept give
// it the weight q=0.
func weighsZero(params string) bool {
	for param := range strings.SplitSeq(params, ";") {
		name, value, _ := strings.Cut(param, "=")
		if strings.EqualFold(strings.TrimSpace(name), "q") {
			q, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			return err == nil && q == 0
		}
	}
	return false
}

// handleEvents answers a list or a watch.
func handleEvents(j *journal, watches *watchLimit, taken *takenWatches, sseHeartbeat time.Duration, log *slog.Logger) routeHandler {
	buffers := newWatchBuffers()
	waker := newWatchWaker(j, log)
	return func(w http.ResponseWriter, r *http.Request, params url.Values) {
		q, p := parseEventsQuery(r, params, j)
		if p != nil {
			writeProblem(w, p)
			return
		}
		if !q.watch {
			servePage(w, r, j, q)
			return
		}
		release, ok := watches.acquire()
		if !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(watchRetryAfter.Seconds())))
			writeProblem(w, newProblem(http.StatusServiceUnavailable, "too many watches: %d are open, the limit is %d; retry later", watches.open.Load(), watches.max))
			return
		}
		defer release()
		s := watchSettings{format: ndjson{}, buffers: buffers, log: log, taken: taken, waker: waker, release: release}
		if q.sse {
			s.format, s.heartbeat = serverSentEvents{}, sseHeartbeat
		}
		serveWatch(w, r, j, q, s)
	}
}

// servePage answers a list: the newest page, or the page from an offset
// with a Link to the next one while more events exist.
func servePage(w http.ResponseWriter, r *http.Request, j *journal, q eventsQuery) {
	if _, _, ok := j.bounds(); !ok {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	var records []record
	if q.hasOffset {
		var scanned int64
		var err error
		if records, scanned, err = q.filter.readPage(j, q.offset, q.limit); err != nil {
			writeProblem(w, offsetProblem(j, q.offset, err))
			return
		}
		// The next page continues after the last record scanned, whether
		// it matched the filter or not: pages stay true to offsets.
		if _, latest, _ := j.bounds(); scanned >= 0 && latest > scanned {
			w.Header().Set("Link", "<"+nextPageURL(r, scanned+1)+`>; rel="next"`)
		}
	} else {
		records = q.filter.readNewest(j, q.limit)
	}
	size := 2 + len(records)
	for _, rec := range records {
		size += len(rec.data)
	}
	body := make([]byte, 0, size)
	body = append(body, '[')
	for i, rec := range records {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, rec.data...)
	}
	body = append(body, ']')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	writeBody(w, body)
}

// writeBody writes a whole answer within watchWriteTimeout: a client that
// stops reading a large page does not hold its goroutine for ever.
func writeBody(w http.ResponseWriter, body []byte) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	_, _ = w.Write(body)
}

// nextPageURL is the request's URL with the offset moved to next.
func nextPageURL(r *http.Request, next int64) string {
	values := r.URL.Query()
	values.Set(paramOffset, strconv.FormatInt(next, 10))
	u := url.URL{Path: r.URL.Path, RawQuery: values.Encode()}
	return u.String()
}

// handleLivez fails only when the process is wedged (the collector's loop
// stopped turning), so that Kubernetes restarts it; vCenter outages are
// not the process's fault and a restart would not cure them.
func handleLivez(status *collectorStatus) routeHandler {
	return func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		if !status.alive() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "collector loop stuck"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

// readyResponse is the body of /readyz.
type readyResponse struct {
	Ready            bool           `json:"ready"`
	VCenterConnected bool           `json:"vcenterConnected"`
	Range            *rangeResponse `json:"range"`
	LastEventTime    *time.Time     `json:"lastEventTime"`
	// Tokens says whether the API needs a bearer token (API_TOKENS_PATH),
	// so that the viewer's curl line shows where one goes; /readyz needs
	// none, and a 401 would tell as much anyway.
	Tokens bool `json:"tokens"`
	// VCenter is the vCenter the collector last logged in to; there once
	// it has.
	VCenter *vcenterIdentity `json:"vcenter,omitempty"`
	// Epoch is the epoch of the offsets held: how many times vCenter's
	// keys were seen to start over (README, "When vCenter's keys start
	// over").
	Epoch int `json:"epoch"`
	// Sink is there only with K_SINK set.
	Sink *sinkReady `json:"sink,omitempty"`
}

// handleReadyz is ready once the collector has read from vCenter, and stays
// ready through later vCenter outages: the cached events are still served.
func handleReadyz(j *journal, status *collectorStatus, sink *sinkStatus, tokens bool) routeHandler {
	return func(w http.ResponseWriter, _ *http.Request, _ url.Values) {
		body := readyResponse{Ready: status.isReady(), VCenterConnected: status.isConnected(), Tokens: tokens, VCenter: status.lastVCenter(), Epoch: j.currentTimeline().epoch}
		if earliest, latest, ok := j.bounds(); ok {
			body.Range = &rangeResponse{Earliest: earliest, Latest: latest}
		}
		if t := status.lastEventTime(); !t.IsZero() {
			body.LastEventTime = &t
		}
		if sink != nil {
			body.Sink = sink.ready()
		}
		code := http.StatusOK
		if !body.Ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, body)
	}
}

// parseOffset parses an offset: a non-negative decimal integer.
func parseOffset(name, s string) (int64, *problem) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || !isDigits(s) {
		return 0, newProblem(http.StatusBadRequest, "invalid offset: %s %q is malformed (not a non-negative integer)", name, s)
	}
	return n, nil
}

// isDigits reports whether s is all ASCII digits; strconv accepts a sign.
func isDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
