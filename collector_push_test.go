package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/vim25/types"
)

// TestNextMode: the one place where a session changes how it learns of
// new events.
func TestNextMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode         collectMode
		read, failed int
		want         collectMode
	}{
		{modePush, 0, 0, modePush},
		{modePush, floodEvents - 1, 0, modePush},
		{modePush, floodEvents, 0, modeFlood},
		{modePush, 0, updateWaitFailures - 1, modePush},
		{modePush, 0, updateWaitFailures, modePoll},
		{modePush, floodEvents, updateWaitFailures, modePoll},
		{modeFlood, floodEvents, 0, modeFlood},
		{modeFlood, floodEvents/10 - 1, 0, modePush},
		{modeFlood, floodEvents / 10, 0, modeFlood},
		{modePoll, 0, 0, modePoll},
		{modePoll, floodEvents, 0, modePoll},
	} {
		if got := nextMode(tc.mode, tc.read, tc.failed); got != tc.want {
			t.Errorf("nextMode(%v, read %d, failed %d) = %v, want %v", tc.mode, tc.read, tc.failed, got, tc.want)
		}
	}
}

// TestAnnouncedKey: with a latest page of one event, each announcement
// carries the newest key, which is what lets the collector skip the read
// that would only confirm there is nothing more.
func TestAnnouncedKey(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	client := vc.client.Client
	hc, err := event.NewManager(client).CreateCollectorForEvents(ctx, types.EventFilterSpec{
		Entity: &types.EventFilterSpecByEntity{Entity: client.ServiceContent.RootFolder, Recursion: types.EventFilterSpecRecursionOptionAll},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := hc.SetPageSize(ctx, announcedPageSize); err != nil {
		t.Fatal(err)
	}
	updates, err := watchLatestPage(ctx, client, hc, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The first wait answers the current page at once.
	if got, err := updates.wait(ctx); err != nil || got != vc.latestKey(t) {
		t.Fatalf("first announcement: %d %v, want the newest key %d", got, err, vc.latestKey(t))
	}
	// Every later event is announced; events close together may share
	// an announcement, which carries the newest.
	for _, burst := range []int{1, 1, 5} {
		vc.postEvents(t, burst)
		want := vc.latestKey(t)
		for {
			got, err := updates.wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got == want {
				break
			}
			if got < 0 || got > want {
				t.Fatalf("announced %d, want up to %d", got, want)
			}
		}
	}
	// The page holds the newest event only.
	page, err := hc.LatestPage(ctx)
	if err != nil || len(page) != 1 {
		t.Fatalf("latest page: %d events, %v", len(page), err)
	}
	// Reads still return every event, after resizing the page.
	read, err := hc.ReadNextEvents(ctx, readPageSize)
	if err != nil || len(read) < 7 || int64(read[len(read)-1].GetEvent().Key) != vc.latestKey(t) {
		t.Fatalf("read %d events up to %d, %v", len(read), read[len(read)-1].GetEvent().Key, err)
	}
}

// TestCollectorPushModes: in push mode nothing is lost or repeated across
// its modes: a backlog at start (a flood, read without announcements),
// then single events (each read up to its announced key, without an empty
// read after), a burst, and concurrent posters.
func TestCollectorPushModes(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	before := vc.latestKey(t)
	vc.postEvents(t, 2*floodEvents)

	srv := startServer(t, sim, nil)
	flood := srv.logs.waitN(t, "collector mode changes", 1, srv.stopped)
	calm := srv.logs.waitN(t, "collector mode changes", 2, srv.stopped)
	if flood["from"] != "push" || flood["to"] != "flood" || calm["from"] != "flood" || calm["to"] != "push" {
		t.Fatalf("mode changes: %v, then %v; want push to flood, then flood to push", flood, calm)
	}
	w := openWatch(t, srv, fmt.Sprintf("&offset=%d", before+1))

	for range 5 {
		vc.postEvents(t, 1)
		waitForKey(t, srv, vc.latestKey(t))
	}
	vc.postEvents(t, 30)
	var wg sync.WaitGroup
	for range 4 {
		poster := connectVCenter(t, sim)
		wg.Go(func() {
			for i := range 50 {
				if err := poster.postEvent(context.Background(), fmt.Sprint("concurrent ", i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	vc.postEvents(t, 1)
	expectEvents(t, w, vc.events(t, before))
}

// TestCollectorPageSizeRefused: a vCenter that refuses to resize the
// latest page costs larger announcements, not events.
func TestCollectorPageSizeRefused(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	sim.failMethod("SetCollectorPageSize")
	vc := connectVCenter(t, sim)
	srv := startServer(t, sim, nil)
	srv.logs.wait(t, "cannot set the event collector's page size; announcements carry vCenter's default page", srv.stopped)
	before, w := watchFromNow(t, vc, srv)
	for range 3 {
		vc.postEvents(t, 1)
	}
	vc.postEvents(t, 10)
	expectEvents(t, w, vc.events(t, before))
}
