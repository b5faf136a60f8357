package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// The browser's login (with tokens on): a form that takes a listed token
// and sets a session cookie, which admits the browser as the token would.

// Limits of the browser's session and login.
const (
	// sessionLifetime bounds a browser session: the cookie expires even if
	// its token stays listed.
	sessionLifetime = 12 * time.Hour
	// maxLoginForm bounds the body of POST /ui/login, and loginReadTimeout
	// the time to send it: the route is open, so a client must not hold a
	// connection by promising more body than it sends.
	maxLoginForm     = 16 << 10
	loginReadTimeout = 10 * time.Second
)

// Browser login routes: open to everyone, and the only routes that take POST.
const (
	loginPath  = "/ui/login"
	logoutPath = "/ui/logout"
)

// Names of the session cookie. Over TLS it carries the __Host- prefix, which
// browsers accept only from a secure origin for Path=/ without Domain: no
// other site or subdomain can set or shadow it.
const (
	sessionCookie       = "vsphere-event-streaming-session"
	sessionCookieSecure = "__Host-" + sessionCookie
)

// errSessionExpired ends the open requests (watches) a browser session
// admitted when the session expires: the page then signs in again.
var errSessionExpired = errors.New("browser session expired")

// sessionCookieName is the cookie's name for the request's connection.
func sessionCookieName(r *http.Request) string {
	if r.TLS != nil {
		return sessionCookieSecure
	}
	return sessionCookie
}

// sessionMAC authenticates a session's expiry and token id with the
// token's session key.
func sessionMAC(key []byte, expiry int64, id []byte) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("v1|" + strconv.FormatInt(expiry, 10) + "|"))
	mac.Write(id)
	return mac.Sum(nil)
}

// sessionValue is a session cookie's value for token i of set, valid until
// expiry (Unix seconds): "expiry.id.mac". It holds no token and needs no
// state on the server, so that every replica accepts it, and removing its
// token from the file invalidates it at once. The id names the token, so
// that checking a cookie costs one MAC however many tokens are listed (and
// a forged cookie none).
func sessionValue(set *tokenSet, i int, expiry int64) string {
	id := set.sessionIDs[i]
	return strconv.FormatInt(expiry, 10) + "." + base64.RawURLEncoding.EncodeToString(id) + "." +
		base64.RawURLEncoding.EncodeToString(sessionMAC(set.sessionKeys[i], expiry, id))
}

// newSession returns the value of a new session cookie for token i of set.
func newSession(set *tokenSet, i int) string {
	return sessionValue(set, i, time.Now().Add(sessionLifetime).Unix())
}

// verifySession returns the index of the token a session value was made
// with, comparing its id with every token's in constant time, and when the
// session expires; -1 if none, forged or expired.
func verifySession(set *tokenSet, value string) (int, time.Time) {
	parts := strings.Split(value, ".")
	if len(parts) != 3 || !isDigits(parts[0]) {
		return -1, time.Time{}
	}
	expiry, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil || time.Now().Unix() >= expiry {
		return -1, time.Time{}
	}
	// Strict: only the one canonical encoding of a value is accepted, so a
	// session has exactly one spelling.
	id, err := base64.RawURLEncoding.Strict().DecodeString(parts[1])
	if err != nil || len(id) != sessionIDSize {
		return -1, time.Time{}
	}
	mac, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil || len(mac) != sha256.Size {
		return -1, time.Time{}
	}
	found := -1
	for i := range set.sessionIDs {
		if subtle.ConstantTimeCompare(id, set.sessionIDs[i]) == 1 && found < 0 {
			found = i
		}
	}
	if found < 0 || !hmac.Equal(mac, sessionMAC(set.sessionKeys[found], expiry, id)) {
		return -1, time.Time{}
	}
	return found, time.Unix(expiry, 0)
}

// loginPageHTML is the browser's login form. It has no script, and its
// one style block is allowed by hash in the page's CSP.
//
//go:embed login.html
var loginPageHTML string

// loginPage renders the login form.
type loginPage struct {
	tmpl *template.Template
	csp  string
}

// loginPageData fills the login form.
type loginPageData struct {
	Next  string // where to go once signed in: a local path
	Error string
}

func newLoginPage() *loginPage {
	tmpl := template.Must(template.New("login").Parse(loginPageHTML))
	style := ""
	if _, rest, ok := strings.Cut(loginPageHTML, "<style>"); ok {
		style, _, _ = strings.Cut(rest, "</style>")
	}
	sum := sha256.Sum256([]byte(style))
	csp := "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'; " +
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
	return &loginPage{tmpl: tmpl, csp: csp}
}

// write answers the form with status code.
func (p *loginPage) write(w http.ResponseWriter, r *http.Request, code int, data loginPageData) {
	var body bytes.Buffer
	if err := p.tmpl.Execute(&body, data); err != nil {
		writeProblem(w, newProblem(http.StatusInternalServerError, "render the login page: %v", err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	setPageSecurityHeaders(h, p.csp)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(body.Len()))
	w.WriteHeader(code)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body.Bytes())
	}
}

// paramNext is where the login form leads once signed in.
const paramNext = "next"

// localPath returns next if it is a path on this server, else "/": the
// login form must not redirect anywhere else (an open redirect).
func localPath(next string) string {
	if len(next) > maxRequestTarget || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") ||
		strings.ContainsFunc(next, func(r rune) bool { return r == '\\' || r < ' ' || r == 0x7f }) {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || !strings.HasPrefix(u.Path, "/") || u.Path == loginPath {
		return "/"
	}
	return next
}

// handleLoginForm serves the login form (GET /ui/login?next=...).
func handleLoginForm(page *loginPage) routeHandler {
	return func(w http.ResponseWriter, r *http.Request, params url.Values) {
		page.write(w, r, http.StatusOK, loginPageData{Next: localPath(params.Get(paramNext))})
	}
}

// handleLogin takes the login form (POST /ui/login, field token): a listed
// token sets the session cookie and leads on to next; any other answers
// the form again with 401. Cross-origin posts are refused (login CSRF).
func handleLogin(a *tokenAuth, page *loginPage) routeHandler {
	return sameOrigin(func(w http.ResponseWriter, r *http.Request, _ url.Values) {
		if p := readLoginForm(w, r); p != nil {
			writeProblem(w, p)
			return
		}
		next := localPath(r.PostForm.Get(paramNext))
		tokens := r.PostForm["token"]
		if len(tokens) != 1 || strings.TrimSpace(tokens[0]) == "" {
			page.write(w, r, http.StatusBadRequest, loginPageData{Next: next, Error: "Enter one token."})
			return
		}
		set := a.tokens.Load()
		i := set.match(sha256.Sum256([]byte(strings.TrimSpace(tokens[0]))))
		if i < 0 {
			a.log.Info("browser login refused: unknown token", "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", bearerChallenge)
			page.write(w, r, http.StatusUnauthorized, loginPageData{Next: next, Error: "This token is not accepted."})
			return
		}
		http.SetCookie(w, &http.Cookie{
			Name:     sessionCookieName(r),
			Value:    newSession(set, i),
			Path:     "/",
			MaxAge:   int(sessionLifetime.Seconds()),
			Secure:   r.TLS != nil,
			HttpOnly: true,
			// Lax, not Strict: a link to the viewer from a chat or an alert
			// opens it signed in. Nothing the cookie admits changes state
			// (the API is read-only, the login and logout posts refuse
			// other origins), and other sites cannot read the answers.
			SameSite: http.SameSiteLaxMode,
		})
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, next, http.StatusSeeOther)
	})
}

// readLoginForm reads the login form into r.PostForm, or returns the
// problem with it: not a form (415), too large (413), too slow (408) or
// malformed (400).
func readLoginForm(w http.ResponseWriter, r *http.Request) *problem {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/x-www-form-urlencoded" {
		return newProblem(http.StatusUnsupportedMediaType, "the login form is sent as application/x-www-form-urlencoded (a field token), not %q", r.Header.Get("Content-Type"))
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(loginReadTimeout))
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginForm)
	err := r.ParseForm()
	var tooLarge *http.MaxBytesError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tooLarge):
		return newProblem(http.StatusRequestEntityTooLarge, "the login form is larger than %d bytes", maxLoginForm)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return newProblem(http.StatusRequestTimeout, "the login form did not arrive within %v", loginReadTimeout)
	}
	return newProblem(http.StatusBadRequest, "malformed login form: %v", err)
}

// sameOrigin refuses, with a 403 problem, a post from another site (login
// CSRF).
func sameOrigin(h routeHandler) routeHandler {
	c := http.NewCrossOriginProtection()
	return func(w http.ResponseWriter, r *http.Request, params url.Values) {
		if c.Check(r) != nil {
			writeProblem(w, newProblem(http.StatusForbidden, "a cross-origin post to %s is refused: sign in from this server's own page", r.URL.Path))
			return
		}
		h(w, r, params)
	}
}

// handleLogout ends the browser's session (POST /ui/logout).
func handleLogout() routeHandler {
	return sameOrigin(func(w http.ResponseWriter, r *http.Request, _ url.Values) {
		http.SetCookie(w, &http.Cookie{
			Name: sessionCookieName(r), Value: "", Path: "/", MaxAge: -1,
			Secure: r.TLS != nil, HttpOnly: true, SameSite: http.SameSiteLaxMode,
		})
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, loginPath, http.StatusSeeOther)
	})
}
