package main

import (
	"log/slog"
	"slices"
	"testing"
	"time"
)

// TestVCSessionHistoryRange: a session opens a history collector over a
// time range besides the live one, reads exactly vCenter's events of that
// range from it, and closes it; the session tells which vCenter it is on.
func TestVCSessionHistoryRange(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	vc.postEvents(t, 12)
	all := vc.events(t, 0)
	if len(all) < 10 {
		t.Fatalf("%d events in the simulator", len(all))
	}
	begin, end := all[3].GetEvent().CreatedTime, all[len(all)-4].GetEvent().CreatedTime
	var want []int64
	for _, ev := range all {
		if at := ev.GetEvent().CreatedTime; !at.Before(begin) && !at.After(end) {
			want = append(want, int64(ev.GetEvent().Key))
		}
	}

	login := newVCLogin(config{vcenterURL: sim.url, insecure: true, username: sim.username, password: sim.password})
	opts := defaultCollectorOptions().sessionOptions
	s, ctx, err := login.open(t.Context(), opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close(ctx)
	if about := s.client.ServiceContent.About; about.InstanceUuid == "" || about.ApiVersion == "" {
		t.Errorf("the session does not tell which vCenter it is on: %+v", about)
	}
	live, err := s.openHistory(ctx, begin, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := s.openHistory(ctx, begin, end)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for {
		events, err := h.readNext(ctx, 4) // pages smaller than the range
		if err != nil {
			t.Fatal(err)
		}
		if len(events) == 0 {
			break
		}
		for _, ev := range events {
			got = append(got, int64(ev.GetEvent().Key))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("range read %v, want %v", got, want)
	}
	h.close(ctx)
	if len(s.histories) != 1 {
		t.Errorf("after closing the range's collector the session holds %d, want the live one", len(s.histories))
	}
	// The live collector goes on past the range's end (to the session's
	// own login, logged after the events above).
	events, err := live.readNext(ctx, readPageSize)
	if err != nil || len(events) == 0 || events[len(events)-1].GetEvent().Key <= all[len(all)-1].GetEvent().Key {
		t.Errorf("live collector read %d events (%v), want through the newest", len(events), err)
	}
}
