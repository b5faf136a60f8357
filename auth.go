package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Bearer-token authentication of the API (API_TOKENS_PATH).
//
// Every request but the probes and the login page needs one of the listed
// tokens, either as "Authorization: Bearer <token>" or, for a browser, in
// the session cookie that the login form sets (EventSource and same-origin
// fetch cannot set headers, and a token never goes into a URL, where logs
// and browser histories would keep it). The cookie is checked against the
// current token list on every request, so a removed token stops working for
// browsers too.

// authRealm is the realm of every WWW-Authenticate challenge.
const authRealm = "vsphere-event-streaming"

// Defaults of the token authentication.
const (
	// defaultTokenReloadInterval is how often the token file is checked for
	// a change. Go's standard library has no file notification (inotify is
	// reachable only through raw, Linux-only syscalls), and kubelet itself
	// refreshes Secret volumes only about once a minute, so reading one
	// small file per second costs nothing and adds nothing noticeable to a
	// rotation. The content is compared, not the modification time: a
	// Secret update swaps a "..data" symlink (another inode, any mtime), and
	// two writes within the file system's timestamp granularity share one
	// mtime. A watcher (rather than a check per request) is what lets a
	// removed token end the watches it opened even when no new request
	// arrives.
	defaultTokenReloadInterval = time.Second
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

// ErrTokenRevoked ends the open requests (watches) of a token that was
// removed from the token file.
var ErrTokenRevoked = errors.New("API token removed from the token file")

// ErrSessionExpired ends the open requests (watches) a browser session
// admitted when the session expires: the page then signs in again.
var ErrSessionExpired = errors.New("browser session expired")

// errNoTokens is a token file that lists no token.
var errNoTokens = errors.New("lists no token (one per line; blank lines and # comments are ignored)")

// tokenSet is one version of the token file. It keeps no token itself:
// digests for the bearer check (fixed length, so that comparing them in
// constant time reveals no token's length), and per token a key for the
// session cookie's MAC and a public id that names the key in the cookie.
type tokenSet struct {
	digests     [][sha256.Size]byte
	sessionKeys [][]byte
	sessionIDs  [][]byte
}

// sessionIDSize is the length of a session's token id: enough that two
// tokens never share one.
const sessionIDSize = 12

func newTokenSet(tokens []string) *tokenSet {
	s := &tokenSet{}
	derive := func(token, purpose string) []byte {
		mac := hmac.New(sha256.New, []byte(token))
		mac.Write([]byte("vsphere-event-streaming session " + purpose + " v1"))
		return mac.Sum(nil)
	}
	for _, t := range tokens {
		s.digests = append(s.digests, sha256.Sum256([]byte(t)))
		s.sessionKeys = append(s.sessionKeys, derive(t, "key"))
		s.sessionIDs = append(s.sessionIDs, derive(t, "id")[:sessionIDSize])
	}
	return s
}

// match returns the index of the token with digest d, comparing with every
// token in constant time; -1 if none.
func (s *tokenSet) match(d [sha256.Size]byte) int {
	found := -1
	for i := range s.digests {
		if subtle.ConstantTimeCompare(d[:], s.digests[i][:]) == 1 && found < 0 {
			found = i
		}
	}
	return found
}

// equal reports whether both sets list the same tokens in the same order.
func (s *tokenSet) equal(o *tokenSet) bool {
	if len(s.digests) != len(o.digests) {
		return false
	}
	for i := range s.digests {
		if s.digests[i] != o.digests[i] {
			return false
		}
	}
	return true
}

// parseTokens reads a token file: one token per line, surrounding
// whitespace trimmed, blank lines and lines starting with # ignored. A line
// with whitespace inside is refused: it is no valid bearer token and most
// likely a "name token" slip. Errors name the line, never its content.
func parseTokens(b []byte) ([]string, error) {
	// A byte order mark (some editors write one) is no whitespace to
	// TrimSpace; kept, it would make the first token one no client sends.
	b = bytes.TrimPrefix(b, []byte("\ufeff"))
	var tokens []string
	n := 0
	for line := range strings.Lines(string(b)) {
		n++
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsFunc(line, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return nil, fmt.Errorf("line %d holds whitespace or a control character inside the token", n)
		}
		tokens = append(tokens, line)
	}
	if len(tokens) == 0 {
		return nil, errNoTokens
	}
	return tokens, nil
}

// readTokenFile reads and parses the token file, unless its content's
// digest is unchanged (then set is nil): parsing derives keys per token,
// work a reload every second need not repeat.
func readTokenFile(path string, unchanged [sha256.Size]byte) (set *tokenSet, sum [sha256.Size]byte, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, sum, err
	}
	if sum = sha256.Sum256(b); sum == unchanged {
		return nil, sum, nil
	}
	tokens, err := parseTokens(b)
	if err != nil {
		return nil, sum, err
	}
	return newTokenSet(tokens), sum, nil
}

// tokenAuth admits requests that carry a listed token. It is safe for
// concurrent use; Run keeps its token list in step with the file.
type tokenAuth struct {
	path     string
	log      *slog.Logger
	interval time.Duration

	tokens atomic.Pointer[tokenSet]

	// mu guards the requests in flight, so that a reload ends exactly
	// those whose token it removed, and the reload state below.
	mu       sync.Mutex
	inflight map[*authedRequest]struct{}
	sum      [sha256.Size]byte // of the file the current tokens were read from
	lastErr  string            // the reload error last logged, not to repeat it
}

// authedRequest is a request admitted with a token, until it ends.
type authedRequest struct {
	digest [sha256.Size]byte
	cancel context.CancelCauseFunc
}

// newTokenAuth reads the token file; its errors are configuration errors
// naming API_TOKENS_PATH.
func newTokenAuth(path string, log *slog.Logger) (*tokenAuth, error) {
	set, sum, err := readTokenFile(path, [sha256.Size]byte{})
	if err != nil {
		return nil, &configError{envTokensPath, fmt.Sprintf("%q: %s", path, fileProblem(err))}
	}
	a := &tokenAuth{
		path:     path,
		log:      log,
		interval: defaultTokenReloadInterval,
		inflight: make(map[*authedRequest]struct{}),
		sum:      sum,
	}
	a.tokens.Store(set)
	log.Info("loaded API tokens", "tokens", len(set.digests), "path", path)
	return a, nil
}

// fileProblem describes a file error on one line, without repeating the
// path (the caller quotes it, whatever characters it holds).
func fileProblem(err error) string {
	if unwrapped := withoutPath(err); unwrapped != err {
		return "cannot read: " + unwrapped.Error()
	}
	return err.Error()
}

// Run re-reads the token file whenever it changes, until ctx is done.
func (a *tokenAuth) Run(ctx context.Context) {
	tick := time.NewTicker(a.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			a.reload()
		}
	}
}

// reload takes a changed token file. A file that cannot be read or lists
// no valid token (a half-written file, a mistake) leaves the current
// tokens in force: failing closed would lock every client out over a typo,
// failing open is out of the question. The error is logged once, and the
// file is tried again at every check.
func (a *tokenAuth) reload() {
	a.mu.Lock()
	known := a.sum
	a.mu.Unlock()
	set, sum, err := readTokenFile(a.path, known)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		if msg := fileProblem(err); msg != a.lastErr {
			a.lastErr = msg
			a.log.Error("cannot reload API tokens; the previous ones stay in force", "variable", envTokensPath, "path", a.path, "error", msg)
		}
		return
	}
	a.lastErr = ""
	if set == nil || sum == a.sum {
		return
	}
	a.sum = sum
	if set.equal(a.tokens.Load()) {
		return // comments or blank lines changed
	}
	a.tokens.Store(set)
	ended := 0
	for req := range a.inflight {
		if set.match(req.digest) < 0 {
			req.cancel(ErrTokenRevoked)
			delete(a.inflight, req)
			ended++
		}
	}
	a.log.Info("reloaded API tokens", "tokens", len(set.digests), "endedRequests", ended)
}

// track registers an admitted request, unless its token was removed since
// it was checked: a reload then either sees the request or the request
// sees the reload.
func (a *tokenAuth) track(req *authedRequest) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tokens.Load().match(req.digest) < 0 {
		return false
	}
	a.inflight[req] = struct{}{}
	return true
}

func (a *tokenAuth) untrack(req *authedRequest) {
	a.mu.Lock()
	delete(a.inflight, req)
	a.mu.Unlock()
}

// authenticate returns the digest of the listed token the request carries:
// a bearer token, or else a valid session cookie.
func (a *tokenAuth) authenticate(r *http.Request) (digest [sha256.Size]byte, expires time.Time, ok bool) {
	set := a.tokens.Load()
	if token, ok := bearerToken(r); ok {
		d := sha256.Sum256([]byte(token))
		return d, time.Time{}, set.match(d) >= 0
	}
	if c, err := r.Cookie(sessionCookieName(r)); err == nil {
		if i, expires := verifySession(set, c.Value); i >= 0 {
			return set.digests[i], expires, true
		}
	}
	return [sha256.Size]byte{}, time.Time{}, false
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Values("Authorization")
	if len(h) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(h[0]), " ")
	token = strings.TrimSpace(token)
	return token, ok && strings.EqualFold(scheme, "Bearer") && token != ""
}

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

// isAuthOpen reports whether a route pattern is served without a token:
// the probes (kubelet carries no token) and the login form.
func isAuthOpen(pattern string) bool {
	switch pattern {
	case "GET /livez", "GET /readyz", "GET " + loginPath, "POST " + loginPath, "POST " + logoutPath:
		return true
	}
	return false
}

// protect admits to mux only the requests that carry a listed token, except
// those of the open routes. An admitted request's context ends with
// ErrTokenRevoked when its token is removed, and one a browser session
// admitted with ErrSessionExpired when the session expires, which ends a
// watch cleanly.
// An admitted request's answer is marked for its client only
// (privatecache.go).
func (a *tokenAuth) protect(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pattern := mux.Handler(r)
		if isAuthOpen(pattern) {
			mux.ServeHTTP(w, r)
			return
		}
		if digest, expires, ok := a.authenticate(r); ok {
			base := r.Context()
			if !expires.IsZero() {
				var stop context.CancelFunc
				base, stop = context.WithDeadlineCause(base, expires, ErrSessionExpired)
				defer stop()
			}
			ctx, cancel := context.WithCancelCause(base)
			req := &authedRequest{digest: digest, cancel: cancel}
			if a.track(req) {
				defer a.untrack(req)
				defer cancel(nil)
				r2 := r.WithContext(ctx)
				mux.ServeHTTP(&privateWriter{ResponseWriter: w}, r2)
				// instrument labels the request with the route the mux
				// matched, on its own copy of the request.
				r.Pattern = r2.Pattern
				return
			}
			cancel(nil) // the token was removed in the meantime
		}
		r.Pattern = pattern
		if wantsLoginPage(r) {
			http.Redirect(w, r, loginPath+"?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		detail := "a token is required: send \"Authorization: Bearer <token>\" with one of the tokens in " + envTokensPath
		if _, presented := bearerToken(r); presented {
			detail = "the token is not (or no longer) accepted: use one of the tokens in " + envTokensPath
		} else if len(r.Header.Values("Authorization")) > 0 {
			detail = "the Authorization header is malformed: send one, as \"Bearer <token>\" (a space, then the token)"
		} else if _, err := r.Cookie(sessionCookieName(r)); err == nil {
			detail = "the session is not (or no longer) valid: sign in again at " + loginPath
		}
		writeUnauthorized(w, detail)
	})
}

// wantsLoginPage reports whether an unauthenticated request is a browser
// navigating to a page (not to the API or metrics, which answer 401).
func wantsLoginPage(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	p := r.URL.Path
	if p == "/api" || strings.HasPrefix(p, "/api/") || p == "/metrics" {
		return false
	}
	return accepts(r, "text/html")
}

// bearerChallenge is the WWW-Authenticate of every 401 (RFC 6750).
const bearerChallenge = `Bearer realm="` + authRealm + `"`

// writeUnauthorized answers 401 with the Bearer challenge.
func writeUnauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", bearerChallenge)
	writeProblem(w, newProblem(http.StatusUnauthorized, "%s", detail))
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
func handleLoginForm(page *loginPage) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		values, p := parseQuery(r.URL.RawQuery, paramNext)
		if p != nil {
			writeProblem(w, p)
			return
		}
		page.write(w, r, http.StatusOK, loginPageData{Next: localPath(values.Get(paramNext))})
	})
}

// handleLogin takes the login form (POST /ui/login, field token): a listed
// token sets the session cookie and leads on to next; any other answers
// the form again with 401. Cross-origin posts are refused (login CSRF).
func handleLogin(a *tokenAuth, page *loginPage) http.Handler {
	return sameOrigin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	}))
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
func sameOrigin(h http.Handler) http.Handler {
	c := http.NewCrossOriginProtection()
	c.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, newProblem(http.StatusForbidden, "a cross-origin post to %s is refused: sign in from this server's own page", r.URL.Path))
	}))
	return c.Handler(h)
}

// handleLogout ends the browser's session (POST /ui/logout).
func handleLogout() http.Handler {
	return sameOrigin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{
			Name: sessionCookieName(r), Value: "", Path: "/", MaxAge: -1,
			Secure: r.TLS != nil, HttpOnly: true, SameSite: http.SameSiteLaxMode,
		})
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, loginPath, http.StatusSeeOther)
	}))
}

// addLoginRoutes registers the browser's login routes.
func addLoginRoutes(mux routeRegistry, a *tokenAuth) {
	page := newLoginPage()
	mux.Handle("GET "+loginPath, handleLoginForm(page))
	mux.Handle("POST "+loginPath, handleLogin(a, page))
	mux.Handle("POST "+logoutPath, handleLogout())
}
