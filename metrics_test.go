package main

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// parseMetrics reads the text exposition format: sample -> value. Every
// line must be a HELP or TYPE comment or a well-formed sample.
func parseMetrics(t *testing.T, body string) map[string]float64 {
	t.Helper()
	sample := regexp.MustCompile(`^([a-z_]+(?:\{[a-z_]+="(?:[^"\\]|\\.)*"(?:,[a-z_]+="(?:[^"\\]|\\.)*")*\})?) (\S+)$`)
	out := make(map[string]float64)
	for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if strings.HasPrefix(line, "# HELP ") || strings.HasPrefix(line, "# TYPE ") {
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("malformed metrics line %q", line)
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[m[1]] = v
	}
	return out
}

// TestMetrics: every metric the API promises is exposed, with values that
// agree with the rest of the API.
func TestMetrics(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)
	vc.powerCycleVMs(t, 1)
	latest := vc.latestKey(t)
	waitForKey(t, srv, latest)
	openWatch(t, srv, "") // one open watch besides waitForKey's
	get(t, srv.url+"/api/v1/range")
	get(t, srv.url+"/api/v1/nothing")
	get(t, srv.url+"/api/v1/events?limit=abc")

	earliest, _ := serverRange(t, srv)
	m := parseMetrics(t, string(mustGet(t, srv.url+"/metrics")))
	p := metricPrefix
	about := vc.client.ServiceContent.About
	if about.InstanceUuid == "" || about.ApiVersion == "" {
		t.Fatalf("the simulator tells no identity: %+v", about)
	}
	for name, want := range map[string]float64{
		p + `vcenter_info{instance_uuid="` + about.InstanceUuid + `",api_version="` + about.ApiVersion + `"}`: 1,
		p + "journal_earliest_offset":  float64(earliest),
		p + "journal_latest_offset":    float64(latest),
		p + "journal_records":          float64(latest - earliest + 1), // the simulator's keys have no gaps
		p + "events_ingested_total":    float64(latest - earliest + 1),
		p + "events_skipped_total":     0,
		p + "vcenter_connected":        1,
		p + "vcenter_reconnects_total": 0,
		p + "watchers":                 2,
		p + `http_requests_total{route="GET /api/v1/range",code="200"}`:  2, // serverRange's and ours
		p + `http_requests_total{route="other",code="404"}`:              1,
		p + `http_requests_total{route="GET /api/v1/events",code="400"}`: 1,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, want)
		}
	}
	// /readyz names the same vCenter.
	var ready readyResponse
	if err := json.Unmarshal(mustGet(t, srv.url+"/readyz"), &ready); err != nil {
		t.Fatal(err)
	}
	if id := ready.VCenter; id == nil || id.InstanceUUID != about.InstanceUuid || id.APIVersion != about.ApiVersion {
		t.Errorf("/readyz vcenter = %+v, want %s, %s", id, about.InstanceUuid, about.ApiVersion)
	}
	for _, name := range []string{"journal_bytes", "last_event_timestamp_seconds", "collector_lag_seconds"} {
		if v, ok := m[p+name]; !ok || v <= 0 {
			t.Errorf("%s = %v (present %v), want a positive value", p+name, v, ok)
		}
	}
}
