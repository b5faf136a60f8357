package main

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// wantKeys fails the test unless the page's rows are keys from..to, newest
// first: every event once, none repeated.
func wantKeys(t *testing.T, p *viewerPage, from, to int64) {
	t.Helper()
	var want []int64
	for k := to; k >= from; k-- {
		want = append(want, k)
	}
	if got := keysOfRows(p.rows()); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows %v, want %v", got, want)
	}
}

// TestViewerEmptyStart: a page that found the journal empty shows every
// event that follows, once, also those appended between its empty first
// page and the arrival of its watch (which, with no offset, the server
// starts after its latest event).
func TestViewerEmptyStart(t *testing.T) {
	t.Parallel()
	browser(t)
	live := `document.getElementById('state').dataset.state === 'live'`

	t.Run("events after the watch began", func(t *testing.T) {
		t.Parallel()
		j := newJournal(100)
		srv := startJournalServer(t, j)
		p := openViewer(t, srv.srv.URL+"/")
		p.waitFor("live", live)
		appendRecords(t, j, 5, 7)
		p.waitFor("7", topKeyIs(7))
		wantKeys(t, p, 5, 7)
	})

	t.Run("events before the watch arrived", func(t *testing.T) {
		t.Parallel()
		j := newJournal(100)
		srv := startJournalServer(t, j)
		// Made here: the handler's goroutine must not fail the test.
		now := time.Now()
		early := []record{viewerRecord(t, 5, now), viewerRecord(t, 6, now), viewerRecord(t, 7, now)}
		var watches sync.Map // Last-Event-ID of each watch -> true
		var first atomic.Bool
		before := func(r *http.Request) {
			if r.URL.Query().Get("watch") != "true" {
				return
			}
			watches.Store(r.Header.Get("Last-Event-ID"), true)
			// The moment of the race, made certain: the page read an
			// empty journal, and events arrive before its watch does.
			if first.CompareAndSwap(false, true) {
				for _, rec := range early {
					if err := j.append(rec); err != nil {
						t.Errorf("append %d: %v", rec.offset, err)
					}
				}
			}
		}
		srv.before.Store(&before)
		p := openViewer(t, srv.srv.URL+"/")
		p.waitFor("the events appended before the watch", topKeyIs(7))
		p.waitFor("live", live)
		appendRecords(t, j, 8, 9)
		p.waitFor("9", topKeyIs(9))
		wantKeys(t, p, 5, 9)
		if _, ok := watches.Load("7"); !ok {
			t.Error("the page did not watch again after the events it read (Last-Event-ID: 7)")
		}
	})

	t.Run("a filtered watch that first skips events", func(t *testing.T) {
		// The watch begins on the empty journal; its first message is the
		// position after an event that does not match: the page starts
		// again, and neither loses nor repeats anything.
		t.Parallel()
		j := newJournal(100)
		srv := startJournalServer(t, j)
		var resumed atomic.Bool
		before := func(r *http.Request) {
			if r.URL.Query().Get("watch") == "true" && r.Header.Get("Last-Event-ID") == "5" {
				resumed.Store(true)
			}
		}
		srv.before.Store(&before)
		p := openViewer(t, srv.srv.URL+"/?type=VmPoweredOffEvent")
		p.waitFor("live", live)
		now := time.Now()
		if err := j.append(viewerRecordOf(t, 5, now, "VmPoweredOnEvent")); err != nil {
			t.Fatal(err)
		}
		// The page starts again on its position (5): live again once its
		// new watch resumes after 5.
		p.waitFor("live after 5", live+` && document.getElementById('range').textContent === 'journal #5–#5'`)
		for key := int64(6); key <= 7; key++ {
			if err := j.append(viewerRecordOf(t, key, now, "VmPoweredOffEvent")); err != nil {
				t.Fatal(err)
			}
		}
		p.waitFor("7", topKeyIs(7))
		wantKeys(t, p, 6, 7)
		if !resumed.Load() {
			t.Error("the page did not watch again after the position 5 (Last-Event-ID: 5)")
		}
	})
}

// TestViewerOlderWhileLiveFillsThePage: live events fill the page to its
// 2,000 rows while an "Older" request is out; the older events it brings
// have no room, which the page says, without an error.
func TestViewerOlderWhileLiveFillsThePage(t *testing.T) {
	t.Parallel()
	browser(t)
	j := newJournal(5000)
	appendRecords(t, j, 1, 200)
	srv := startJournalServer(t, j)
	held := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	var holding atomic.Bool
	before := func(r *http.Request) {
		q := r.URL.Query()
		if !q.Has("offset") || q.Has("watch") || !holding.CompareAndSwap(false, true) {
			return
		}
		close(held)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}
	srv.before.Store(&before)

	p := openViewer(t, srv.srv.URL+"/")
	p.waitFor("the newest 100, live", `document.querySelectorAll('#rows tr').length === 100 &&
		document.getElementById('state').dataset.state === 'live'`)
	appendRecords(t, j, 201, 2089)
	p.waitFor("1,989 rows", topKeyIs(2089)+` && document.querySelectorAll('#rows tr').length === 1989`)
	p.do(chromedp.Click("#older"))
	select {
	case <-held:
	case <-time.After(waitTimeout):
		t.Fatalf("no Older request within %v\n%s", waitTimeout, p.describe())
	}
	appendRecords(t, j, 2090, 2100)
	p.waitFor("2,000 rows", topKeyIs(2100)+` && document.querySelectorAll('#rows tr').length === 2000`)
	release <- struct{}{}
	p.waitFor("the Older request's end", `document.getElementById('older-note').textContent !== ''`)
	if note := eval[string](p, `document.getElementById('older-note').textContent`); note != "The page is full (2,000 rows): no room for older events." {
		t.Errorf("note %q", note)
	}
	if !eval[bool](p, `document.getElementById('older').disabled`) {
		t.Error("Older is enabled on a full page")
	}
	wantKeys(t, p, 101, 2100)
}
