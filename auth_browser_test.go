package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestAuthBrowserLoginChromium signs in to the live viewer as a person
// would, in a real browser, over HTTPS with tokens on: the page leads to
// the login form, whose style the CSP admits; a wrong token is refused; a
// listed one leads back to the viewer, which then shows the events and
// goes live with the session cookie alone (fetch and its SSE watch carry
// it; no script can read it), and no token is ever in a URL.
func TestAuthBrowserLoginChromium(t *testing.T) {
	t.Parallel()
	browser(t)
	sim := startTestSimulation(t)
	vc := connectVCenter(t, sim)
	s, _, _ := startHTTPSServer(t, sim, tokenAlice+"\n"+tokenBob+"\n")

	p := openViewer(t, s.url+"/?type=VmPoweredOnEvent")
	var visited []string
	collect := func() {
		for {
			select {
			case u := <-p.navigated:
				visited = append(visited, u)
			default:
				return
			}
		}
	}
	p.waitFor("the login form", `location.pathname === "/ui/login"`)
	if search := eval[string](p, `location.search`); search != "?next=%2F%3Ftype%3DVmPoweredOnEvent" {
		t.Errorf("login page at %q, want next=/?type=VmPoweredOnEvent", search)
	}
	// The login page's style applies: the CSP's hash is right.
	if !eval[bool](p, `getComputedStyle(document.body).display === "flex"`) {
		t.Error("the login page's style is blocked")
	}

	// submit sends the form with token and waits for the page it leads to.
	submit := func(token string) {
		t.Helper()
		p.do(chromedp.SendKeys(chromedp.CSS("#token"), token))
		p.navigate(chromedp.Click(chromedp.CSS("button")))
	}
	submit(tokenCarol)
	if alert := eval[string](p, `document.querySelector('[role="alert"]')?.textContent ?? ""`); !strings.Contains(alert, "not accepted") {
		t.Errorf("wrong token: alert %q", alert)
	}

	submit(tokenBob)
	p.waitFor("the viewer, live", `location.pathname === "/" && document.getElementById('state')?.dataset.state === 'live'`)
	if href := eval[string](p, `location.pathname + location.search`); href != "/?type=VmPoweredOnEvent" {
		t.Errorf("after login at %v, want /?type=VmPoweredOnEvent", href)
	}
	vc.powerCycleVMs(t, 1)
	var powerOn int64
	for _, ev := range vc.events(t, 0) {
		if name, _ := eventTypeAndClass(ev); name == "VmPoweredOnEvent" {
			powerOn = int64(ev.GetEvent().Key)
		}
	}
	p.waitFor("the power-on logged after sign-in", topKeyIs(powerOn))
	for _, row := range p.rows() {
		if row.Type != "VmPoweredOnEvent" {
			t.Errorf("row %d of type %s under a VmPoweredOnEvent filter", row.Key, row.Type)
		}
	}
	// The detail's curl line says where a token goes, and holds none.
	p.waitFor("/readyz read", `document.getElementById('vcenter').textContent === 'vCenter connected'`)
	p.do(chromedp.Click("#rows tr:first-child .c-msg"))
	p.waitFor("the detail", `document.getElementById('detail').open`)
	if curl, want := eval[string](p, `document.getElementById('d-curl').textContent`),
		fmt.Sprintf(`curl -s -H "Authorization: Bearer $TOKEN" '%s/api/v1/events/%d'`, s.url, powerOn); curl != want {
		t.Errorf("curl line %q, want %q", curl, want)
	}
	// HttpOnly: no script sees the session.
	if eval[bool](p, `document.cookie.includes("session")`) {
		t.Error("the session cookie is visible to scripts")
	}
	collect()
	for _, u := range visited {
		for _, token := range []string{tokenAlice, tokenBob, tokenCarol} {
			if strings.Contains(u, token) {
				t.Errorf("the browser went to %s, which holds a token", u)
			}
		}
	}
}
