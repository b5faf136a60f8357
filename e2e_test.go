package main

import (
	"bytes"
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/vmware/govmomi/vim25/types"
)

// TestE2EWatchFromNow: a watch opened without an offset receives exactly
// the events vCenter creates after it, in key order, and each line is
// byte for byte what /events/{id} answers.
func TestE2EWatchFromNow(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)

	before, w := watchFromNow(t, vc, srv)

	vc.powerCycleVMs(t, 2)
	want := vc.events(t, before)
	if len(want) < 8 {
		t.Fatalf("expected power events from vCenter, got %s", keysOf(want))
	}
	lines := expectEvents(t, w, want)

	for _, line := range lines {
		id := decodeEvent(t, line).ID
		code, body := get(t, srv.url+"/api/v1/events/"+id)
		if code != http.StatusOK || !bytes.Equal(body, line) {
			t.Fatalf("/events/%s = %d %s\nwatched: %s", id, code, body, line)
		}
	}
}

// TestE2EWatchFromOffset: a watch from an offset replays the history from
// that key, then goes live, with no gap and no duplicate.
func TestE2EWatchFromOffset(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)

	vc.powerCycleVMs(t, 1)
	history := vc.events(t, 0)
	from := int64(history[len(history)/2].GetEvent().Key)
	waitForKey(t, srv, int64(history[len(history)-1].GetEvent().Key))

	w := openWatch(t, srv, fmt.Sprintf("&offset=%d", from))
	expectEvents(t, w, vc.events(t, from-1)) // the replay

	last := vc.latestKey(t)
	vc.powerCycleVMs(t, 1)
	expectEvents(t, w, vc.events(t, last)) // live
}

// TestE2EReplicasAgree: a second server against the same vCenter serves
// the same offsets with the same bytes, so clients can move between them.
func TestE2EReplicasAgree(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	first := startServer(t, sim, nil)
	vc.powerCycleVMs(t, 1)
	second := startServer(t, sim, nil)
	vc.powerCycleVMs(t, 1)

	latest := vc.latestKey(t)
	waitForKey(t, first, latest)
	waitForKey(t, second, latest)

	earliest, _ := serverRange(t, first)
	if e2, _ := serverRange(t, second); e2 != earliest {
		t.Fatalf("earliest: first %d, second %d", earliest, e2)
	}
	for key := earliest; key <= latest; key++ {
		url := "/api/v1/events/" + strconv.FormatInt(key, 10)
		code1, body1 := get(t, first.url+url)
		code2, body2 := get(t, second.url+url)
		if code1 != http.StatusOK || code1 != code2 || !bytes.Equal(body1, body2) {
			t.Fatalf("%s: first %d %s\nsecond %d %s", url, code1, body1, code2, body2)
		}
	}
	page1 := fmt.Sprintf("%s/api/v1/events?offset=%d&limit=1000", first.url, earliest)
	page2 := fmt.Sprintf("%s/api/v1/events?offset=%d&limit=1000", second.url, earliest)
	if _, b1 := get(t, page1); !bytes.Equal(b1, mustGet(t, page2)) {
		t.Fatal("pages differ between replicas")
	}
}

// TestE2EStreamBegin: VCENTER_STREAM_BEGIN selects how far back from
// vCenter's current time the server replays.
func TestE2EStreamBegin(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	vc.powerCycleVMs(t, 1)
	before := vc.latestKey(t)

	all := startServer(t, sim, map[string]string{envStreamBegin: "1h"})
	if earliest, _ := serverRange(t, all); earliest != 1 {
		t.Fatalf("with 1h the server should replay vCenter's whole history, earliest is %d", earliest)
	}

	fromNow := startServer(t, sim, map[string]string{envStreamBegin: "0s"})
	if code, body := get(t, fromNow.url+"/api/v1/range"); code != http.StatusNoContent {
		t.Fatalf("with 0s nothing before the start is replayed: range %d %s", code, body)
	}
	vc.powerCycleVMs(t, 1)
	latest := vc.latestKey(t)
	waitForKey(t, fromNow, latest)
	earliest, _ := serverRange(t, fromNow)
	if earliest <= before {
		t.Fatalf("with 0s earliest %d should be after the events before the start (up to %d)", earliest, before)
	}
	if code, _ := get(t, fmt.Sprintf("%s/api/v1/events/%d", fromNow.url, before)); code != http.StatusGone {
		t.Fatalf("an event before the stream began: %d, want 410", code)
	}
}

// TestE2EPurge: with LOG_MAX_SEGMENT_SIZE=5 the server holds 2 segments of
// at most 5 events; older offsets answer 410 and earliest moves as the
// active segment is sealed.
func TestE2EPurge(t *testing.T) {
	t.Parallel()
	const segment = 5
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, map[string]string{envMaxSegmentSize: strconv.Itoa(segment)})

	for range 3 {
		vc.powerCycleVMs(t, 1)
		latest := vc.latestKey(t)
		waitForKey(t, srv, latest)

		// vCenter's keys are contiguous here, so the journal's layout
		// follows from the count: a full history segment and an active
		// segment holding the rest.
		earliest, got := serverRange(t, srv)
		inActive := (latest-1)%segment + 1
		if want := latest - inActive - segment + 1; earliest != want || got != latest {
			t.Fatalf("range %d-%d, want %d-%d", earliest, got, want, latest)
		}
		code, body := get(t, fmt.Sprintf("%s/api/v1/events/%d", srv.url, earliest-1))
		if code != http.StatusGone || !bytes.Contains(body, []byte("invalid offset")) {
			t.Fatalf("purged offset: %d %s", code, body)
		}
		code, body = get(t, fmt.Sprintf("%s/api/v1/events?offset=%d", srv.url, earliest-1))
		if code != http.StatusGone {
			t.Fatalf("page from a purged offset: %d %s", code, body)
		}
		if code, _ := get(t, fmt.Sprintf("%s/api/v1/events/%d", srv.url, earliest)); code != http.StatusOK {
			t.Fatalf("earliest offset: %d", code)
		}
	}
}

// TestE2EShutdown: on shutdown the server ends open watches cleanly, logs
// out of vCenter and destroys its event collector, within 5 s.
func TestE2EShutdown(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	// With room for one collector, a second server can only start if the
	// first destroyed its own.
	sim.model.Service.Context.Map.EventManager().MaxCollector = 1
	vc := connectVCenter(t, sim)

	first := startServer(t, sim, nil)
	w := openWatch(t, first, "")
	first.shutdown(t) // fails the test unless run returns nil within 5 s
	if err := w.end(t); err != nil {
		t.Errorf("watch did not end cleanly: %v", err)
	}

	loggedOut := false
	for _, ev := range vc.events(t, 0) {
		if e, ok := ev.(*types.UserLogoutSessionEvent); ok && e.UserAgent == userAgent {
			loggedOut = true
		}
	}
	if !loggedOut {
		t.Error("the server did not log out of vCenter")
	}
	startServer(t, sim, nil) // fails if the first collector still exists
}

func mustGet(t *testing.T, url string) []byte {
	t.Helper()
	code, body := get(t, url)
	if code != http.StatusOK {
		t.Fatalf("%s: %d %s", url, code, body)
	}
	return body
}
