package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// The viewer's tests drive a real headless Chromium (Debian's chromium
// package) through the DevTools protocol, and assert on what a person sees.
// One browser serves every test; each test has its own tab.

// browserSkip says how to run the browser tests where Chromium is missing.
const browserSkip = "Chromium not found: the viewer's browser tests need it. " +
	"Install it (Debian: apt-get install -y chromium) or set CHROMIUM to its path, then run go test ./..."

// sharedBrowser is the one headless Chromium of the test binary, started
// by the first test that needs it and stopped by TestMain.
var sharedBrowser struct {
	once   sync.Once
	ctx    context.Context // a chromedp context whose browser runs
	stop   func()
	err    error
	absent bool
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedBrowser.stop != nil {
		sharedBrowser.stop()
	}
	os.Exit(code)
}

// chromiumPath finds Chromium: $CHROMIUM, or chromium on the PATH.
func chromiumPath() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser returns the shared browser's context, starting it if needed; it
// skips the test where there is no Chromium.
func browser(t testing.TB) context.Context {
	t.Helper()
	sharedBrowser.once.Do(func() {
		path := chromiumPath()
		if path == "" {
			sharedBrowser.absent = true
			return
		}
		dir, err := os.MkdirTemp("", "viewer-chromium-")
		if err != nil {
			sharedBrowser.err = err
			return
		}
		// A closed network: nothing in the background may reach out, and
		// tabs in the background must not be throttled (tests run many).
		allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
			chromedp.ExecPath(path),
			chromedp.Headless,
			chromedp.NoSandbox,
			chromedp.DisableGPU,
			chromedp.NoFirstRun,
			chromedp.UserDataDir(dir),
			chromedp.WindowSize(1280, 800),
			chromedp.Flag("disable-quic", true),
			chromedp.Flag("disable-background-networking", true),
			chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true),
			chromedp.Flag("no-default-browser-check", true),
			chromedp.Flag("disable-extensions", true),
			chromedp.Flag("disable-default-apps", true),
			chromedp.Flag("disable-background-timer-throttling", true),
			chromedp.Flag("disable-renderer-backgrounding", true),
			chromedp.Flag("disable-backgrounding-occluded-windows", true),
			chromedp.Flag("metrics-recording-only", true),
			chromedp.Flag("password-store", "basic"),
			// HTTPS tests use certificates of their own making: the origin
			// is still https, so Secure and __Host- cookies behave as in
			// production.
			chromedp.IgnoreCertErrors,
		)
		ctx, cancel := chromedp.NewContext(allocCtx)
		sharedBrowser.stop = func() {
			cancel()
			cancelAlloc()
			os.RemoveAll(dir)
		}
		if err := chromedp.Do(ctx); err != nil {
			sharedBrowser.err = fmt.Errorf("start %s: %w", path, err)
			return
		}
		sharedBrowser.ctx = ctx
	})
	if sharedBrowser.absent {
		t.Skip(browserSkip)
	}
	if sharedBrowser.err != nil {
		t.Fatal(sharedBrowser.err)
	}
	return sharedBrowser.ctx
}

// viewerPage is one tab showing the viewer.
type viewerPage struct {
	t   testing.TB
	ctx context.Context

	mu       sync.Mutex
	problems []string // uncaught exceptions and CSP violations

	navigated chan string // the URLs the tab's top frame went to
}

// openViewer opens url in a new tab of the shared browser, in a browser
// context of its own (as a fresh profile: no cookies or storage from other
// tests, and cookies ignore the port); the tab closes when the test ends,
// which fails if the page threw an exception or broke its
// Content-Security-Policy.
func openViewer(t testing.TB, url string) *viewerPage {
	t.Helper()
	p := &viewerPage{t: t, navigated: make(chan string, 16)}
	ctx, cancel := chromedp.NewContext(browser(t), chromedp.WithNewBrowserContext(), chromedp.WithListener(p.listen))
	t.Cleanup(func() {
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, problem := range p.problems {
			t.Errorf("page: %s", problem)
		}
	})
	p.ctx = ctx
	// The tab lives as long as the context of its first run: no timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	p.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Call(ctx, cdplog.Enable, struct{}{})
		return err
	}), chromedp.Navigate(url))
	return p
}

func (p *viewerPage) listen(ev any) {
	var problem string
	switch ev := ev.(type) {
	case *page.EventFrameNavigated:
		if ev.Frame.ParentID == "" {
			select {
			case p.navigated <- ev.Frame.URL:
			default:
			}
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		problem = "uncaught exception: " + d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			problem += " " + d.Exception.Description
		}
	case *cdplog.EventEntryAdded:
		// The network's errors are expected (the restart test stops the
		// server); the page's security policy is not to be broken.
		if ev.Entry.Source == cdplog.EntrySourceSecurity || strings.Contains(ev.Entry.Text, "Content Security Policy") {
			problem = "security: " + ev.Entry.Text
		}
	}
	if problem != "" {
		p.mu.Lock()
		p.problems = append(p.problems, problem)
		p.mu.Unlock()
	}
}

// do runs actions in the tab, within waitTimeout.
func (p *viewerPage) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("browser: %v\n%s", err, p.describe())
	}
}

// navigate runs an action that leaves the page (a form's submission) and
// waits for the next page to load.
func (p *viewerPage) navigate(action chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if _, err := chromedp.RunResponse(ctx, action); err != nil {
		p.t.Fatalf("browser: %v\n%s", err, p.describe())
	}
}

// eval evaluates a JavaScript expression in the page and decodes its value.
func eval[T any](p *viewerPage, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor waits until the JavaScript condition cond holds in the page: it
// is checked on every change of the DOM (a MutationObserver), not polled.
// It returns how long that took.
func (p *viewerPage) waitFor(what, cond string) time.Duration {
	p.t.Helper()
	start := time.Now()
	js := `new Promise((resolve) => {
		const ok = () => { try { return !!(` + cond + `); } catch (e) { return false; } };
		if (ok()) { resolve(true); return; }
		const mo = new MutationObserver(() => { if (ok()) { mo.disconnect(); resolve(true); } });
		mo.observe(document.documentElement, {subtree: true, childList: true, attributes: true, characterData: true});
	})`
	ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js, chromedp.EvalAwaitPromise)); err != nil {
		p.t.Fatalf("waiting for %s: %v\n%s", what, err, p.describe())
	}
	return time.Since(start)
}

// describe is what the page shows, for a failure's message.
func (p *viewerPage) describe() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[
		'state: ' + document.getElementById('state').textContent,
		'banner: ' + document.getElementById('banner-text').textContent,
		'older: ' + document.getElementById('older-note').textContent,
		'count: ' + document.getElementById('count').textContent,
		...[...document.querySelectorAll('#rows tr')].slice(0, 8).map(tr => tr.innerText.replace(/\s+/g, ' ')),
	].join('\n')`))
	if err != nil {
		return "(page unreadable: " + err.Error() + ")"
	}
	return "page shows:\n" + s
}

// shownRow is a row of the page as a person reads it.
type shownRow struct {
	Key     int64  `json:"key"`
	Time    string `json:"time"`
	UTC     string `json:"utc"`
	Type    string `json:"type"`
	Full    string `json:"full"`
	Class   string `json:"class"`
	Entity  string `json:"entity"`
	User    string `json:"user"`
	Message string `json:"message"`
	Hidden  bool   `json:"hidden"`
}

// rows returns the page's rows, top (newest) first.
func (p *viewerPage) rows() []shownRow {
	p.t.Helper()
	return eval[[]shownRow](p, `[...document.querySelectorAll('#rows tr')].map(tr => ({
		key: Number(tr.dataset.key),
		time: tr.querySelector('.c-time').innerText,
		utc: tr.querySelector('.c-time time').title,
		type: tr.querySelector('.c-type').innerText,
		full: tr.querySelector('.c-type').title,
		class: tr.querySelector('.c-class').innerText,
		entity: tr.querySelector('.c-entity').textContent,
		user: tr.querySelector('.c-user').innerText,
		message: tr.querySelector('.c-msg').innerText,
		hidden: tr.hidden,
	}))`)
}

// topKeyIs is a condition: the newest row has key.
func topKeyIs(key int64) string {
	return fmt.Sprintf(`document.querySelector('#rows tr')?.dataset.key === '%d'`, key)
}

// pageEvent is the part of a CloudEvent the viewer shows.
type pageEvent struct {
	ID         string `json:"id"`
	Type       string `json:"type"`
	Time       string `json:"time"`
	EventClass string `json:"eventclass"`
	Data       struct {
		UserName             string
		FullFormattedMessage string
		Message              string
		Vm                   *entityArgument
		Host                 *entityArgument
		Ds                   *entityArgument
		Net                  *entityArgument
		Dvs                  *entityArgument
		ComputeResource      *entityArgument
		Datacenter           *entityArgument
		ObjectName           string // EventEx
		ObjectType           string
		ObjectId             string
		ManagedObject        *struct{ Type, Value string } // ExtendedEvent
	} `json:"data"`
}

// entityArgument is an event's argument naming an inventory object
// (VmEventArgument and its kin).
type entityArgument struct {
	Name            string
	ComputeResource *struct{ Type string } // in a ComputeResourceEventArgument
}

// entity is what the viewer's entity column should show for e: the kind
// and the name of the most specific object the event names.
func (e pageEvent) entity() (kind, name string) {
	d := e.Data
	for _, arg := range []struct {
		kind string
		arg  *entityArgument
	}{{"VM", d.Vm}, {"Host", d.Host}, {"Datastore", d.Ds}, {"Network", d.Net}, {"Switch", d.Dvs}, {"Cluster", d.ComputeResource}, {"Datacenter", d.Datacenter}} {
		if arg.arg == nil || arg.arg.Name == "" {
			continue
		}
		if cr := arg.arg.ComputeResource; arg.kind == "Cluster" && cr != nil && cr.Type != "ClusterComputeResource" {
			return "Compute", arg.arg.Name
		}
		return arg.kind, arg.arg.Name
	}
	kinds := map[string]string{"VirtualMachine": "VM", "HostSystem": "Host", "ClusterComputeResource": "Cluster"}
	kindOf := func(objectType string) string { return cmp.Or(kinds[objectType], objectType) }
	switch {
	case d.ObjectName != "":
		return kindOf(d.ObjectType), d.ObjectName
	case d.ManagedObject != nil && d.ManagedObject.Value != "":
		return kindOf(d.ManagedObject.Type), d.ManagedObject.Value
	case d.ObjectId != "":
		return kindOf(d.ObjectType), d.ObjectId
	}
	return "", ""
}

// serverPage returns the server's newest events (oldest first), as the
// viewer reads them.
func serverPage(t testing.TB, base, query string) []pageEvent {
	t.Helper()
	code, body := get(t, base+"/api/v1/events?limit=100"+query)
	if code != http.StatusOK {
		t.Fatalf("page: %d %s", code, body)
	}
	var events []pageEvent
	if err := json.Unmarshal(body, &events); err != nil {
		t.Fatal(err)
	}
	return events
}

// startViewerServer starts a simulator, has it log powerCycles VM power
// cycles and posts events, and starts the server with env, holding them.
func startViewerServer(t *testing.T, powerCycles, posts int, env map[string]string) (*simulation, *vcenter, *testServer) {
	t.Helper()
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	if powerCycles > 0 {
		vc.powerCycleVMs(t, powerCycles)
	}
	if posts > 0 {
		vc.postEvents(t, posts)
	}
	s := startServer(t, sim, env)
	waitForKey(t, s, vc.latestKey(t))
	return sim, vc, s
}

func TestViewerShowsRecentAndLiveEvents(t *testing.T) {
	t.Parallel()
	browser(t)
	sim, vc, s := startViewerServer(t, 1, 2, nil)
	want := serverPage(t, s.url, "")

	p := openViewer(t, s.url+"/")
	p.waitFor("the newest page", fmt.Sprintf(`document.querySelectorAll('#rows tr').length === %d`, len(want)))
	p.waitFor("live", `document.getElementById('state').dataset.state === 'live'`)

	t.Run("recent events", func(t *testing.T) {
		got := p.rows()
		if len(got) != len(want) {
			t.Fatalf("%d rows, want %d", len(got), len(want))
		}
		kinds := map[string]int{} // rows per entity kind
		for i, r := range got {
			ev := want[len(want)-1-i] // newest at the top
			if strconv.FormatInt(r.Key, 10) != ev.ID {
				t.Fatalf("row %d: key %d, want %s", i, r.Key, ev.ID)
			}
			short := strings.TrimSuffix(strings.TrimPrefix(ev.Type, "vmware.vsphere."), ".v0")
			if r.Type != short || r.Full != ev.Type || r.Class != ev.EventClass {
				t.Errorf("row %d: type %q (%q) class %q, want %q (%q) %q", i, r.Type, r.Full, r.Class, short, ev.Type, ev.EventClass)
			}
			// EventEx often has only its Message.
			msg := cmp.Or(ev.Data.FullFormattedMessage, ev.Data.Message)
			if r.Message != msg || r.User != ev.Data.UserName {
				t.Errorf("row %d: message %q user %q, want %q %q", i, r.Message, r.User, msg, ev.Data.UserName)
			}
			kind, name := ev.entity()
			if r.Entity != kind+name {
				t.Errorf("row %d (%s): entity %q, want %s %s", i, r.Type, r.Entity, kind, name)
			}
			kinds[kind]++
			utc, err := time.Parse(time.RFC3339Nano, ev.Time)
			if err != nil {
				t.Fatal(err)
			}
			if wantUTC := utc.UTC().Truncate(time.Millisecond).Format("2006-01-02T15:04:05.000Z") + " (UTC)"; r.UTC != wantUTC &&
				r.UTC != utc.UTC().Truncate(time.Second).Format(time.RFC3339)+" (UTC)" {
				t.Errorf("row %d: UTC %q, want %q", i, r.UTC, wantUTC)
			}
			if r.Time == "" {
				t.Errorf("row %d: no local time", i)
			}
		}
		// The simulator's inventory and what the test logged.
		for _, kind := range []string{"VM", "Network", "Switch", "Datacenter"} {
			if kinds[kind] == 0 {
				t.Errorf("no row names a %s; rows per entity kind: %v", kind, kinds)
			}
		}
	})

	t.Run("an event logged after the page opened appears", func(t *testing.T) {
		var took []time.Duration
		for i := range 5 {
			msg := fmt.Sprintf("viewer latency probe %d", i)
			start := time.Now()
			if err := vc.postEvent(context.Background(), msg); err != nil {
				t.Fatal(err)
			}
			p.waitFor(msg, fmt.Sprintf(`document.querySelector('#rows tr .c-msg')?.textContent === %q`, msg))
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		// A figure, not an assertion: timed assertions fail on a busy machine
		// (BenchmarkViewerLatency measures it).
		t.Logf("vCenter event to row in the page: median %v, max %v (5 events)", took[2].Round(time.Millisecond), took[4].Round(time.Millisecond))
	})

	t.Run("pause counts and resume shows", func(t *testing.T) {
		top := p.rows()[0].Key
		p.do(chromedp.Click("#pause"))
		p.waitFor("paused", `document.getElementById('pause').getAttribute('aria-pressed') === 'true'`)
		vc.postEvents(t, 3)
		latest := vc.latestKey(t)
		p.waitFor("3 counted", `document.getElementById('pause').textContent === 'Resume (3 new)' &&
			document.getElementById('state').textContent.startsWith('paused · 3 new')`)
		if got := p.rows()[0].Key; got != top {
			t.Fatalf("paused page shows %d at the top, want %d still", got, top)
		}
		p.do(chromedp.Click("#pause"))
		p.waitFor("resumed", topKeyIs(latest))
		got := p.rows()
		for i, key := range []int64{latest, latest - 1, latest - 2, top} {
			if got[i].Key != key {
				t.Fatalf("after resume row %d is %d, want %d (rows %v)", i, got[i].Key, key, keysOfRows(got[:5]))
			}
		}
		if s := eval[string](p, `document.getElementById('state').dataset.state`); s != "live" {
			t.Errorf("state %q after resume, want live", s)
		}
	})

	t.Run("detail with JSON, copy and curl, by keyboard", func(t *testing.T) {
		row := p.rows()[0]
		p.do(chromedp.Focus("#rows tr:first-child .c-key button"), chromedp.KeyEvent(kb.Enter))
		p.waitFor("the detail", `document.getElementById('detail').open`)
		var shown map[string]any
		if err := json.Unmarshal([]byte(eval[string](p, `document.getElementById('d-json').textContent`)), &shown); err != nil {
			t.Fatalf("detail is not JSON: %v", err)
		}
		code, body := get(t, fmt.Sprintf("%s/api/v1/events/%d", s.url, row.Key))
		var served map[string]any
		if err := json.Unmarshal(body, &served); code != http.StatusOK || err != nil {
			t.Fatalf("event %d: %d %v", row.Key, code, err)
		}
		if fmt.Sprint(shown) != fmt.Sprint(served) {
			t.Errorf("detail shows\n%v\nthe API serves\n%v", shown, served)
		}
		if indented := eval[string](p, `document.getElementById('d-json').textContent`); !strings.Contains(indented, "\n  \"id\": ") {
			t.Errorf("JSON not formatted: %.80q", indented)
		}
		// Tokens off: no Authorization header.
		curl := eval[string](p, `document.getElementById('d-curl').textContent`)
		if want := fmt.Sprintf("curl -s '%s/api/v1/events/%d'", s.url, row.Key); curl != want {
			t.Errorf("curl line %q, want %q", curl, want)
		}
		p.do(chromedp.Click("#d-copy"))
		p.waitFor("copied", `document.getElementById('d-copied').textContent === 'JSON copied.'`)
		p.do(chromedp.KeyEvent(kb.Escape))
		p.waitFor("the detail closed", `!document.getElementById('detail').open`)
		// A click anywhere on a row opens it too.
		second := p.rows()[1]
		p.do(chromedp.Click("#rows tr:nth-child(2) .c-msg"))
		p.waitFor("the second row's detail", fmt.Sprintf(`document.getElementById('detail').open &&
			document.getElementById('d-title').textContent.startsWith('Event #%d ')`, second.Key))
		p.do(chromedp.Click("#d-close"))
		p.waitFor("the detail closed", `!document.getElementById('detail').open`)
		// Every control is reachable with Tab.
		reached := eval[[]string](p, `(() => {
			const ids = [];
			for (const el of document.querySelectorAll('a[href], button, input, select, [tabindex]')) {
				if (el.tabIndex >= 0 && !el.disabled && !el.closest('dialog')) ids.push(el.id || el.tagName);
			}
			return ids;
		})()`)
		for _, id := range []string{"f-type", "f-class", "f-apply", "f-clear", "f-text", "pause", "older"} {
			if !slices.Contains(reached, id) {
				t.Errorf("%s is not reachable by keyboard", id)
			}
		}
	})

	t.Run("status line", func(t *testing.T) {
		earliest, latest := serverRange(t, s)
		p.waitFor("range and vCenter state", fmt.Sprintf(`document.getElementById('vcenter').textContent === 'vCenter connected' &&
			document.getElementById('range').textContent === 'journal #%d–#%d'`, earliest, latest))
		p.waitFor("a sparkline", `document.querySelectorAll('#spark rect:not(.base)').length > 0 &&
			/^[\d,]+\/min$/.test(document.getElementById('rate').textContent)`)
	})

	t.Run("simulated operations, and screenshots", func(t *testing.T) {
		// The simulator's own mix (tasks, logins, EventEx, ExtendedEvent)
		// for a while: at least 40 events.
		before := vc.latestKey(t)
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sim.generate(ctx, 100, slog.New(slog.DiscardHandler)) }()
		p.waitFor("40 simulated events", fmt.Sprintf(`Number(document.querySelector('#rows tr')?.dataset.key) >= %d`, before+40))
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		p.waitFor("every simulated event", topKeyIs(vc.latestKey(t)))
		got := p.rows()
		want := vc.events(t, got[len(got)-1].Key-1)
		if len(got) != len(want) {
			t.Fatalf("page shows %d events, vCenter logged %d", len(got), len(want))
		}
		for i, r := range got {
			ev := want[len(want)-1-i]
			if name, _ := eventTypeAndClass(ev); r.Key != int64(ev.GetEvent().Key) || r.Type != name {
				t.Fatalf("row %d: %d %s, vCenter logged %d %s", i, r.Key, r.Type, ev.GetEvent().Key, name)
			}
			if r.Entity == "" && ev.GetEvent().Vm != nil {
				t.Errorf("row %d (%s) names no entity", i, r.Type)
			}
		}
		viewerScreenshots(t, p)
	})
}

func keysOfRows(rows []shownRow) []int64 {
	keys := make([]int64, len(rows))
	for i, r := range rows {
		keys[i] = r.Key
	}
	return keys
}

// viewerScreenshots checks the page fits a phone's width and saves its
// pictures to docs/ when UPDATE_SCREENSHOT is set (so CI leaves the tree
// clean).
func viewerScreenshots(t *testing.T, p *viewerPage) {
	shot := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		p.do(actions...)
		// Wait for the page to draw in its new scheme: the sparkline's
		// bars and the status have their final styles once laid out.
		p.waitFor("layout", `document.readyState === 'complete'`)
		ctx, cancel := context.WithTimeout(p.ctx, waitTimeout)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		if os.Getenv("UPDATE_SCREENSHOT") != "" {
			dir = "docs"
		}
		if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	media := func(scheme string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
				Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
			})
			return err
		})
	}
	// No focus ring, no hover, no fading highlight of new rows.
	p.do(chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, 1, 1))
	_ = eval[bool](p, `document.activeElement.blur(), Promise.all(document.getAnimations().map(a => a.finished)).then(() => true)`)
	shot("viewer.png", chromedp.EmulateViewport(1280, 760), media("light"))
	if bg := eval[string](p, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(255, 255, 255)" {
		t.Errorf("light background %s", bg)
	}
	shot("viewer-dark.png", media("dark"))
	if bg := eval[string](p, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(15, 20, 25)" {
		t.Errorf("dark background %s, want the dark scheme's", bg)
	}
	shot("viewer-phone.png", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile), media("light"))
	if overflow := eval[int](p, `document.documentElement.scrollWidth - window.innerWidth`); overflow > 0 {
		t.Errorf("on a phone the page is %d px wider than the screen", overflow)
	}
	p.do(chromedp.EmulateViewport(1280, 760), media(""))
}

func TestViewerFilters(t *testing.T) {
	t.Parallel()
	browser(t)
	_, vc, s := startViewerServer(t, 2, 2, nil)

	p := openViewer(t, s.url+"/")
	p.waitFor("rows", `document.querySelectorAll('#rows tr').length > 10`)

	t.Run("type, server-side and in the URL", func(t *testing.T) {
		p.do(chromedp.SendKeys("#f-type", "VmPoweredOnEvent"))
		p.navigate(chromedp.Click("#f-apply"))
		p.waitFor("the filtered page", `location.search === '?type=VmPoweredOnEvent' &&
			document.getElementById('state').dataset.state === 'live'`)
		want := serverPage(t, s.url, "&type=VmPoweredOnEvent")
		p.waitFor("the filtered rows", fmt.Sprintf(`document.querySelectorAll('#rows tr').length === %d`, len(want)))
		if len(want) == 0 {
			t.Fatal("no VmPoweredOnEvent to show")
		}
		for _, r := range p.rows() {
			if r.Type != "VmPoweredOnEvent" {
				t.Fatalf("filtered page shows %d %s", r.Key, r.Type)
			}
		}
		// Live: the power cycle logs VmPoweredOffEvent too; only the
		// powered-on events come.
		vc.powerCycleVMs(t, 2)
		events := vc.events(t, 0)
		var on []int64
		for _, ev := range events {
			if name, _ := eventTypeAndClass(ev); name == "VmPoweredOnEvent" {
				on = append(on, int64(ev.GetEvent().Key))
			}
		}
		newest := on[len(on)-1]
		p.waitFor("the new VmPoweredOnEvent", topKeyIs(newest))
		got := p.rows()
		for _, r := range got {
			if r.Type != "VmPoweredOnEvent" {
				t.Fatalf("filtered page shows %d %s", r.Key, r.Type)
			}
		}
		if fmt.Sprint(keysOfRows(got)[:3]) != fmt.Sprint([]int64{on[len(on)-1], on[len(on)-2], on[len(on)-3]}) {
			t.Errorf("top rows %v, want the newest VmPoweredOnEvent keys %v", keysOfRows(got)[:3], on[len(on)-3:])
		}
		if v := eval[string](p, `document.getElementById('f-type').value`); v != "VmPoweredOnEvent" {
			t.Errorf("type field shows %q", v)
		}
	})

	t.Run("eventclass", func(t *testing.T) {
		p.do(chromedp.Navigate(s.url + "/?eventclass=eventex"))
		want := serverPage(t, s.url, "&eventclass=eventex")
		p.waitFor("eventex rows", fmt.Sprintf(`document.querySelectorAll('#rows tr').length === %d &&
			document.getElementById('f-class').value === 'eventex'`, len(want)))
		for _, r := range p.rows() {
			if r.Class != "eventex" {
				t.Fatalf("eventclass=eventex shows %d %s %s", r.Key, r.Class, r.Type)
			}
		}
	})

	t.Run("free text, client-side", func(t *testing.T) {
		p.do(chromedp.Navigate(s.url + "/"))
		p.waitFor("rows", `document.querySelectorAll('#rows tr').length > 10`)
		all := p.rows()
		p.do(chromedp.SendKeys("#f-text", "test event 1"))
		p.waitFor("the search", `location.search === '?q=test+event+1'`)
		shown := 0
		for _, r := range p.rows() {
			match := strings.Contains(strings.ToLower(r.Entity+"\n"+r.User+"\n"+r.Message), "test event 1")
			if r.Hidden == match {
				t.Errorf("row %d %q hidden=%v", r.Key, r.Message, r.Hidden)
			}
			if !r.Hidden {
				shown++
			}
		}
		if shown != 1 || len(p.rows()) != len(all) {
			t.Errorf("%d of %d rows shown, want 1 of %d", shown, len(p.rows()), len(all))
		}
		// The URL shares the view: opened afresh, it searches the same.
		p.do(chromedp.Navigate(s.url + "/?q=test+event+1"))
		p.waitFor("the shared search", `document.getElementById('f-text').value === 'test event 1' &&
			[...document.querySelectorAll('#rows tr')].filter(tr => !tr.hidden).length === 1 &&
			document.querySelectorAll('#rows tr').length > 10`)
	})

	t.Run("a bad filter shows the API's answer", func(t *testing.T) {
		p.do(chromedp.Navigate(s.url + "/?eventclass=vmevent"))
		p.waitFor("the problem", `document.getElementById('state').dataset.state === 'stopped' &&
			document.getElementById('banner-text').textContent.startsWith('The filter is not valid: ')`)
	})
}

func TestViewerResumesAcrossServerRestart(t *testing.T) {
	t.Parallel()
	browser(t)
	sim, vc, s1 := startViewerServer(t, 0, 3, nil)
	_, port, err := net.SplitHostPort(strings.TrimPrefix(s1.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}

	p := openViewer(t, s1.url+"/")
	p.waitFor("live", `document.getElementById('state').dataset.state === 'live'`)
	p.waitFor("the newest event", topKeyIs(vc.latestKey(t)))
	oldest := p.rows()[len(p.rows())-1].Key

	s1.shutdown(t)
	p.waitFor("reconnecting", `document.getElementById('state').dataset.state === 'reconnecting'`)
	vc.postEvents(t, 3) // while no server runs
	startServer(t, sim, map[string]string{envPort: port})
	vc.postEvents(t, 2)
	latest := vc.latestKey(t)
	took := p.waitFor("the events logged during and after the restart", topKeyIs(latest))
	t.Logf("page caught up %v after the new server was up (reconnect delay: the server's retry hint, 3 s)", took.Round(time.Millisecond))

	var want []int64
	for _, ev := range vc.events(t, oldest-1) {
		want = append(want, int64(ev.GetEvent().Key))
	}
	slices.Reverse(want)
	got := keysOfRows(p.rows())
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the restart the page shows\n%v\nvCenter logged\n%v", got, want)
	}
	if s := eval[string](p, `document.getElementById('state').dataset.state`); s != "live" {
		t.Errorf("state %q, want live", s)
	}
}

// TestViewerFellBehindAcrossRestart: with a tiny journal, a restarted
// server no longer holds the events after the page's last one; the page's
// resume gets a 410, and the page says what was missed.
func TestViewerFellBehindAcrossRestart(t *testing.T) {
	t.Parallel()
	browser(t)
	env := map[string]string{envMaxSegmentSize: "5"}
	sim, vc, s1 := startViewerServer(t, 0, 0, env)
	_, port, err := net.SplitHostPort(strings.TrimPrefix(s1.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	p := openViewer(t, s1.url+"/")
	p.waitFor("live", `document.getElementById('state').dataset.state === 'live'`)
	last := vc.latestKey(t)
	p.waitFor("the newest event", topKeyIs(last))

	s1.shutdown(t)
	vc.postEvents(t, 20) // more than the 10 the next server holds
	env[envPort] = port
	s2 := startServer(t, sim, env)
	if earliest, _ := serverRange(t, s2); earliest <= last+1 {
		t.Fatalf("the new server holds %d, after the page's last event %d: nothing to miss", earliest, last)
	}
	p.waitFor("fell behind", `document.getElementById('state').dataset.state === 'behind'`)
	// The range missed ends where the journal began when the page came
	// back, which the replay may still have been moving.
	msg := eval[string](p, `document.getElementById('banner-text').textContent`)
	if want := fmt.Sprintf("Events #%d–#", last+1); !strings.HasPrefix(msg, want) || !strings.Contains(msg, " were purged before this page could read them") {
		t.Errorf("banner %q, want it to begin %q", msg, want)
	}
	p.do(chromedp.Click("#banner-action"))
	p.waitFor("the events held", topKeyIs(vc.latestKey(t)))
}

// journalServer serves the real handler over a journal the test fills, so
// that a test controls exactly what the page receives. Its handler can be
// swapped, with every connection cut, as a restart would.
type journalServer struct {
	srv     *httptest.Server
	handler atomic.Pointer[http.Handler]
	// before, if set, sees each request before the handler does (and may
	// hold it): a test's way into the moment between two requests.
	before atomic.Pointer[func(*http.Request)]

	mu    sync.Mutex
	taken map[net.Conn]struct{} // the connections watches took over
}

func startJournalServer(t testing.TB, j *journal) *journalServer {
	t.Helper()
	js := &journalServer{taken: make(map[net.Conn]struct{})}
	js.swap(j)
	js.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if before := js.before.Load(); before != nil {
			(*before)(r)
		}
		(*js.handler.Load()).ServeHTTP(w, r)
	}))
	// httptest forgets the connections that watches take over from
	// net/http (watch_conn.go): remember them, to cut them too.
	js.srv.Config.ConnState = func(c net.Conn, state http.ConnState) {
		if state == http.StateHijacked {
			js.mu.Lock()
			js.taken[c] = struct{}{}
			js.mu.Unlock()
		}
	}
	js.srv.Start()
	t.Cleanup(func() {
		js.srv.Close()
		js.closeTaken()
	})
	return js
}

// closeTaken closes the connections watches took over.
func (js *journalServer) closeTaken() {
	js.mu.Lock()
	defer js.mu.Unlock()
	for c := range js.taken {
		_ = c.Close()
		delete(js.taken, c)
	}
}

// swap serves j from now on and cuts every open connection, as a restart
// of the server on another journal would.
func (js *journalServer) swap(j *journal) {
	status := &collectorStatus{}
	status.ready.Store(true)
	status.connected.Store(true)
	h := newHandler(handlerDeps{journal: j, status: status, log: slog.New(slog.DiscardHandler)})
	js.handler.Store(&h)
	if js.srv != nil {
		js.srv.CloseClientConnections()
		js.closeTaken()
	}
}

// viewerRecord is a VmPoweredOnEvent with the given key, as the collector
// records it.
func viewerRecord(t testing.TB, key int64, created time.Time) record {
	t.Helper()
	return viewerRecordOf(t, key, created, "VmPoweredOnEvent")
}

// viewerRecordOf is a VM event of the type name with the given key.
func viewerRecordOf(t testing.TB, key int64, created time.Time, name string) record {
	t.Helper()
	data, err := json.Marshal(map[string]any{
		"specversion": "1.0", "id": strconv.FormatInt(key, 10), "source": "https://vc.example.com/sdk",
		"type": cloudEventType(name), "datacontenttype": "application/json",
		"time": created.UTC().Format(time.RFC3339Nano),
		"data": map[string]any{
			"Key": key, "UserName": "VSPHERE.LOCAL\\Administrator",
			"Vm":                   map[string]any{"Name": "vm-" + strconv.FormatInt(key%7, 10)},
			"FullFormattedMessage": fmt.Sprintf("event %d: %s", key, name),
		},
		"eventclass": "event",
	})
	if err != nil {
		t.Fatal(err)
	}
	return record{offset: key, data: data, eventType: cloudEventType(name), class: classEvent}
}

func appendRecords(t testing.TB, j *journal, from, to int64) {
	t.Helper()
	now := time.Now()
	for key := from; key <= to; key++ {
		if err := j.append(viewerRecord(t, key, now)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestViewerPurgedEvents(t *testing.T) {
	t.Parallel()
	browser(t)
	j := newJournal(5)
	appendRecords(t, j, 1, 10)
	srv := startJournalServer(t, j)
	p := openViewer(t, srv.srv.URL+"/")
	p.waitFor("the 10 events held", `document.querySelectorAll('#rows tr').length === 10`)
	p.waitFor("live", `document.getElementById('state').dataset.state === 'live'`)

	t.Run("Older: the 410 says older events were purged", func(t *testing.T) {
		// One at a time, as the page shows them, so that the watch keeps up
		// while the journal purges what the page showed first.
		for key := int64(11); key <= 25; key++ {
			appendRecords(t, j, key, key)
			p.waitFor(fmt.Sprint(key), topKeyIs(key))
		}
		if earliest, _, _ := j.bounds(); earliest != 16 {
			t.Fatalf("journal begins at %d, want 16", earliest)
		}
		p.do(chromedp.Click("#older"))
		p.waitFor("the message", `document.getElementById('older-note').textContent ===
			'Older events were purged: the journal now begins at #16, and nothing before it is held any more.'`)
	})

	t.Run("Older pages down to earliest through Link", func(t *testing.T) {
		j := newJournal(200)
		appendRecords(t, j, 1, 250) // holds 1-250
		srv := startJournalServer(t, j)
		p := openViewer(t, srv.srv.URL+"/")
		p.waitFor("the newest 100", `document.querySelectorAll('#rows tr').length === 100`)
		p.do(chromedp.Click("#older"))
		p.waitFor("100 more", `document.querySelectorAll('#rows tr').length === 200`)
		p.do(chromedp.Click("#older"))
		p.waitFor("down to 1", `document.querySelectorAll('#rows tr').length === 250`)
		got := keysOfRows(p.rows())
		for i, k := range got {
			if k != int64(250-i) {
				t.Fatalf("row %d is %d, want %d", i, k, 250-i)
			}
		}
		p.do(chromedp.Click("#older"))
		p.waitFor("the end", `document.getElementById('older-note').textContent.startsWith('Older events were purged: the journal now begins at #1,')`)
	})

	t.Run("Older with a type filter", func(t *testing.T) {
		// Odd keys powered on, even keys powered off: 125 of each.
		j := newJournal(200)
		now := time.Now()
		for key := int64(1); key <= 250; key++ {
			if err := j.append(viewerRecordOf(t, key, now, map[bool]string{true: "VmPoweredOnEvent", false: "VmPoweredOffEvent"}[key%2 == 1])); err != nil {
				t.Fatal(err)
			}
		}
		srv := startJournalServer(t, j)
		p := openViewer(t, srv.srv.URL+"/?type=VmPoweredOnEvent")
		p.waitFor("the newest 100 powered on", `document.querySelectorAll('#rows tr').length === 100`)
		for clicks := 0; p.rows()[len(p.rows())-1].Key > 1; clicks++ {
			if clicks == 10 {
				t.Fatalf("10 clicks on Older and the page shows %d rows down to %d", len(p.rows()), p.rows()[len(p.rows())-1].Key)
			}
			n := len(p.rows())
			p.do(chromedp.Click("#older"))
			p.waitFor("older powered-on events", fmt.Sprintf(`document.querySelectorAll('#rows tr').length > %d ||
				document.getElementById('older-note').textContent.startsWith('No matching')`, n))
		}
		got := keysOfRows(p.rows())
		if len(got) != 125 {
			t.Fatalf("%d rows, want the 125 powered-on events", len(got))
		}
		for i, k := range got {
			if k != int64(249-2*i) {
				t.Fatalf("row %d is %d, want %d", i, k, 249-2*i)
			}
		}
	})

	t.Run("the watch's error event: fell behind", func(t *testing.T) {
		// A restart onto a journal that begins after the page's last event
		// (as with a short VCENTER_STREAM_BEGIN): the resumed watch opens,
		// then its first record shows 26-29 are gone.
		j2 := newJournal(5)
		srv.swap(j2)
		p.waitFor("reconnecting", `document.getElementById('state').dataset.state === 'reconnecting'`)
		p.waitFor("live again", `document.getElementById('state').dataset.state === 'live'`)
		appendRecords(t, j2, 30, 30)
		p.waitFor("fell behind", `document.getElementById('state').dataset.state === 'behind'`)
		msg := eval[string](p, `document.getElementById('banner-text').textContent`)
		if !strings.HasPrefix(msg, "Events #26–#29 were purged before this page could read them (invalid offset 26") ||
			!strings.HasSuffix(msg, "The journal now holds #30–#30.") {
			t.Errorf("banner %q", msg)
		}
		p.do(chromedp.Click("#banner-action")) // Continue from #30
		p.waitFor("30", topKeyIs(30))
		if msg := eval[string](p, `document.getElementById('banner-text').textContent`); msg != "Events #26–#29 were purged before this page could read them; the page went on from #30." {
			t.Errorf("after continuing, banner %q", msg)
		}
		appendRecords(t, j2, 31, 32)
		p.waitFor("live on", topKeyIs(32))
		if got := keysOfRows(p.rows())[:4]; fmt.Sprint(got) != "[32 31 30 25]" {
			t.Errorf("rows %v", got)
		}
	})

	t.Run("a resume refused with 410", func(t *testing.T) {
		j3 := newJournal(5)
		appendRecords(t, j3, 40, 44)
		srv.swap(j3)
		p.waitFor("fell behind", `document.getElementById('state').dataset.state === 'behind'`)
		if msg := eval[string](p, `document.getElementById('banner-text').textContent`); !strings.HasPrefix(msg, "Events #33–#39 were purged before this page could read them") {
			t.Errorf("banner %q", msg)
		}
		if b := eval[string](p, `document.getElementById('banner-action').textContent`); b != "Continue from #40" {
			t.Errorf("banner button %q", b)
		}
	})
}

// TestViewerBurst streams 1,000 events/s for 5 s into a page and checks it
// keeps up: at the end it shows the newest event at the top, with the
// 2,000 newest rows and no more.
func TestViewerBurst(t *testing.T) {
	t.Parallel()
	browser(t)
	const rate, seconds = 1000, 5
	j := newJournal(maxPageSize * 3)
	appendRecords(t, j, 1, 10)
	srv := startJournalServer(t, j)
	p := openViewer(t, srv.srv.URL+"/")
	p.waitFor("live", `document.getElementById('state').dataset.state === 'live' && document.querySelectorAll('#rows tr').length === 10`)

	// The page's main thread: tasks over 50 ms, as the browser reports them.
	_ = eval[bool](p, `(window.longTasks = [], new PerformanceObserver((l) => {
		for (const e of l.getEntries()) window.longTasks.push(e.duration);
	}).observe({type: 'longtask'}), true)`)

	// 10 events every 10 ms, paced by a ticker.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	next := int64(11)
	start := time.Now()
	for range rate * seconds / 10 {
		<-tick.C
		appendRecords(t, j, next, next+9)
		next += 10
	}
	last := next - 1
	sent := time.Since(start)
	lag := p.waitFor("the last event of the burst", topKeyIs(last))
	rows := p.rows()
	if len(rows) != 2000 {
		t.Fatalf("%d rows, want 2000", len(rows))
	}
	for i, r := range rows {
		if r.Key != last-int64(i) {
			t.Fatalf("row %d is %d, want %d", i, r.Key, last-int64(i))
		}
	}
	long := eval[[]float64](p, `window.longTasks`)
	var longest, busy float64
	for _, d := range long {
		longest = max(longest, d)
		busy += d
	}
	t.Logf("burst: %d events in %v (%.0f/s); the page showed the last one %v after it was appended; %d rows kept; "+
		"%d main-thread tasks over 50 ms (longest %.0f ms, %.0f ms in all)",
		last-10, sent.Round(time.Millisecond), float64(last-10)/sent.Seconds(), lag.Round(time.Millisecond), len(rows),
		len(long), longest, busy)
}

func TestViewerSecurityHeaders(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(newHandler(handlerDeps{journal: newJournal(10), log: slog.New(slog.DiscardHandler)}))
	defer srv.Close()
	for _, path := range []string{"/", "/?type=VmPoweredOnEvent", "/ui/viewer.js", "/ui/viewer.css", "/ui/icon.svg"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d", path, resp.StatusCode)
		}
		csp := h.Get("Content-Security-Policy")
		for _, directive := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, directive) {
				t.Errorf("%s: CSP %q lacks %s", path, csp, directive)
			}
		}
		if strings.Contains(csp, "unsafe") || strings.Contains(csp, "http") {
			t.Errorf("%s: CSP %q allows more than the page's origin", path, csp)
		}
		if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Referrer-Policy") != "no-referrer" || h.Get("ETag") == "" {
			t.Errorf("%s: headers %v", path, h)
		}
	}
	// The page has no inline script or style: the CSP would block them.
	code, body := get(t, srv.URL+"/")
	if code != http.StatusOK || strings.Contains(string(body), "<script>") || strings.Contains(string(body), "<style") || strings.Contains(string(body), " style=") ||
		strings.Contains(string(body), " on") && strings.Contains(string(body), "onclick") {
		t.Errorf("page has inline script or style")
	}
	for _, path := range []string{"/ui/", "/ui/nothing.js", "/index.html", "/ui/../api.go"} {
		if code, _ := get(t, srv.URL+path); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, code)
		}
	}
	// Revalidation by ETag.
	resp, err := http.Get(srv.URL + "/ui/viewer.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/ui/viewer.js", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", resp.StatusCode)
	}
	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/", nil)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d", resp.StatusCode)
	}
}

// TestViewerSignsInOn401 checks the page's part of bearer-token auth: an
// API call answered 401 sends the browser to the login page, with the
// page's own path and query to come back to (and no token in any URL).
func TestViewerSignsInOn401(t *testing.T) {
	t.Parallel()
	browser(t)
	viewer := newHandler(handlerDeps{journal: newJournal(10), log: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") || r.URL.Path == "/readyz" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vsphere-event-streaming"`)
			writeProblem(w, newProblem(http.StatusUnauthorized, "a bearer token is needed"))
			return
		}
		viewer.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p := openViewer(t, srv.URL+"/?type=VmPoweredOnEvent&q=vm")
	want := srv.URL + "/ui/login?next=%2F%3Ftype%3DVmPoweredOnEvent%26q%3Dvm"
	deadline := time.After(waitTimeout)
	for {
		select {
		case u := <-p.navigated:
			if u == want {
				return
			}
		case <-deadline:
			t.Fatalf("the page did not go to %s", want)
		}
	}
}

func TestSimulatePrintsViewerURL(t *testing.T) {
	t.Parallel()
	out := &lineWaiter{lines: make(chan string, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	// run creates a simulator: one at a time (see simulatorCreation).
	simulatorCreation.Lock()
	locked := true
	defer func() {
		if locked {
			simulatorCreation.Unlock()
		}
	}()
	done := make(chan error, 1)
	env := map[string]string{envPort: "0"}
	go func() {
		done <- run(ctx, []string{"vsphere-event-streaming", "--simulate"}, func(k string) string { return env[k] }, out, newLogRecorder(), nil)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	select {
	case line := <-out.lines:
		simulatorCreation.Unlock()
		locked = false
		if !strings.HasPrefix(line, "Live event viewer: http://localhost:") || !strings.HasSuffix(line, "/") {
			t.Fatalf("stdout %q", line)
		}
		url := strings.TrimPrefix(line, "Live event viewer: ")
		if code, body := get(t, url); code != http.StatusOK || !strings.Contains(string(body), "<title>vSphere events") {
			t.Errorf("%s: %d", url, code)
		}
	case <-time.After(waitTimeout):
		t.Fatal("--simulate printed no URL")
	}
}

// lineWaiter passes on the lines written to it.
type lineWaiter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := slices.Index(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default:
		}
		w.buf = w.buf[i+1:]
	}
}

// BenchmarkViewerLatency measures the time from an event's append to the
// journal until the page shows it (ns/op is one event's trip).
func BenchmarkViewerLatency(b *testing.B) {
	browser(b)
	j := newJournal(1000)
	appendRecords(b, j, 1, 1)
	srv := startJournalServer(b, j)
	p := openViewer(b, srv.srv.URL+"/")
	p.waitFor("live", `document.getElementById('state').dataset.state === 'live'`)
	var took []time.Duration
	key := int64(2)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		appendRecords(b, j, key, key)
		p.waitFor("the event", topKeyIs(key))
		took = append(took, time.Since(start))
		key++
	}
	sort.Slice(took, func(a, c int) bool { return took[a] < took[c] })
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "ms-p99")
}
