package main

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserTimeout bounds a whole browser test: Chromium starts slowly on a
// busy machine.
const browserTimeout = 60 * time.Second

// chromium starts a headless Chromium for one test, or skips the test if
// none is installed.
func chromium(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Skip("no Chromium installed")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // containers run tests as root
		// The test server's certificate is httptest's own: the origin is
		// still https, so Secure and __Host- cookies behave as in production.
		chromedp.IgnoreCertErrors,
	)
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	t.Cleanup(cancel)
	ctx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancelBrowser := chromedp.NewContext(ctx)
	t.Cleanup(cancelBrowser)
	return ctx
}

// TestAuthBrowserLoginChromium signs in as a user would, in a real browser:
// a page needing a session leads to the login form, whose style the CSP
// admits; a wrong token is refused; a listed one leads back with a cookie
// that same-origin fetch and EventSource (which cannot set headers) carry,
// and that no script can read.
func TestAuthBrowserLoginChromium(t *testing.T) {
	t.Parallel()
	ctx := chromium(t)
	srv, _ := authTestServer(t, true)
	poll := func(expr string) chromedp.Action[chromedp.Void] {
		return func(ctx context.Context, target *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(browserTimeout))(ctx, target)
			return chromedp.Void{}, err
		}
	}
	eval := func(expr string, opts ...chromedp.EvaluateOption) any {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr, opts...))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	do := func(steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatal(err)
		}
	}

	do(chromedp.Navigate(srv.URL+"/?from=test"), poll(`location.pathname === "/ui/login"`))
	if search := eval(`location.search`); search != "?next=%2F%3Ffrom%3Dtest" {
		t.Errorf("login page at %q, want next=/?from=test", search)
	}
	// The login page's style applies: the CSP's hash is right.
	if styled := eval(`getComputedStyle(document.body).display === "flex"`); styled != true {
		t.Error("the login page's style is blocked")
	}

	// submit sends the form with token and waits for the page it leads to.
	submit := func(token string) int64 {
		t.Helper()
		do(chromedp.SendKeys(chromedp.CSS("#token"), token))
		resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS("button")))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Status
	}
	if status := submit(tokenCarol); status != 401 {
		t.Errorf("wrong token: status %d, want 401", status)
	}
	if alert, _ := eval(`document.querySelector('[role="alert"]').textContent`).(string); !strings.Contains(alert, "not accepted") {
		t.Errorf("wrong token: alert %q", alert)
	}

	// Signed in, the browser is back at the page it asked for (404 here:
	// the viewer is not part of this test's server).
	submit(tokenBob)
	if href := eval(`location.pathname + location.search`); href != "/?from=test" {
		t.Errorf("after login at %v, want /?from=test", href)
	}
	if status := eval(`fetch("/api/v1/range").then(r => r.status)`, chromedp.EvalAwaitPromise); status != float64(200) {
		t.Errorf("fetch of /api/v1/range after login: %v, want 200", status)
	}
	event := eval(`new Promise((resolve, reject) => {
		const es = new EventSource("/api/v1/events?offset=44");
		// Each event is named by its CloudEvent type; 44 is a login.
		es.addEventListener("vmware.vsphere.UserLoginSessionEvent.v0", e => { es.close(); resolve(e.lastEventId); });
		es.onerror = () => { es.close(); reject(new Error("EventSource failed")); };
	})`, chromedp.EvalAwaitPromise)
	if event != "44" {
		t.Errorf("EventSource's first event %v, want 44", event)
	}
	// HttpOnly: no script sees the session.
	if visible := eval(`document.cookie.includes("session")`); visible != false {
		t.Error("the session cookie is visible to scripts")
	}
}
