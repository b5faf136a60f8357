package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
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

// errTokenRevoked ends the open requests (watches) of a token that was
// removed from the token file.
var errTokenRevoked = errors.New("API token removed from the token file")

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

// tokenAuth admits requests that carry a listed token. It is safe for
// concurrent use; Run (fileReloader) keeps its token list in step with the
// file.
type tokenAuth struct {
	fileReloader
	tokens atomic.Pointer[tokenSet]

	// mu guards the requests in flight, so that a reload ends exactly
	// those whose token it removed.
	mu       sync.Mutex
	inflight map[*authedRequest]struct{}
}

// authedRequest is a request admitted with a token, until it ends.
type authedRequest struct {
	digest [sha256.Size]byte
	cancel context.CancelCauseFunc
}

// newTokenAuth reads the token file; its errors are configuration errors
// naming API_TOKENS_PATH.
func newTokenAuth(path string, log *slog.Logger) (*tokenAuth, error) {
	a := &tokenAuth{inflight: make(map[*authedRequest]struct{})}
	a.fileReloader = fileReloader{
		read: func() ([][]byte, error) {
			b, err := os.ReadFile(path)
			return [][]byte{b}, fileError(err)
		},
		load:     a.takeTokens,
		log:      log,
		failure:  "cannot reload API tokens; the previous ones stay in force",
		attrs:    []any{"variable", envTokensPath, "path", path},
		interval: reloadInterval,
	}
	if err := a.start(); err != nil {
		return nil, &configError{envTokensPath, fmt.Sprintf("%q: %v", path, err)}
	}
	log.Info("loaded API tokens", "tokens", len(a.tokens.Load().digests), "path", path)
	return a, nil
}

// takeTokens puts a version of the token file in force, and ends the
// requests in flight whose token it removed.
func (a *tokenAuth) takeTokens(file [][]byte) error {
	tokens, err := parseTokens(file[0])
	if err != nil {
		return err
	}
	set := newTokenSet(tokens)
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.tokens.Load()
	if old != nil && set.equal(old) {
		return nil // comments or blank lines changed
	}
	a.tokens.Store(set)
	if old == nil {
		return nil // the first version: newTokenAuth logs it
	}
	ended := 0
	for req := range a.inflight {
		if set.match(req.digest) < 0 {
			req.cancel(errTokenRevoked)
			delete(a.inflight, req)
			ended++
		}
	}
	a.log.Info("reloaded API tokens", "tokens", len(set.digests), "endedRequests", ended)
	return nil
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

// require admits to next only the requests that carry a listed token (a
// bearer token, or a browser session made with one); where a route is a
// page, a browser navigating to it without one is sent to the login form
// instead of answered 401. An admitted request's context ends with
// errTokenRevoked when its token is removed, and one a browser session
// admitted with errSessionExpired when the session expires, which ends a
// watch cleanly. An admitted request's answer is marked for its client
// only (privatecache.go).
func (a *tokenAuth) require(next http.Handler, page bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if digest, expires, ok := a.authenticate(r); ok {
			base := r.Context()
			if !expires.IsZero() {
				var stop context.CancelFunc
				base, stop = context.WithDeadlineCause(base, expires, errSessionExpired)
				defer stop()
			}
			ctx, cancel := context.WithCancelCause(base)
			req := &authedRequest{digest: digest, cancel: cancel}
			if a.track(req) {
				defer a.untrack(req)
				defer cancel(nil)
				next.ServeHTTP(&privateWriter{ResponseWriter: w}, r.WithContext(ctx))
				return
			}
			cancel(nil) // the token was removed in the meantime
		}
		if page && accepts(r, "text/html") {
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

// bearerChallenge is the WWW-Authenticate of every 401 (RFC 6750).
const bearerChallenge = `Bearer realm="` + authRealm + `"`

// writeUnauthorized answers 401 with the Bearer challenge.
func writeUnauthorized(w http.ResponseWriter, detail string) {
	w.Header().Set("WWW-Authenticate", bearerChallenge)
	writeProblem(w, newProblem(http.StatusUnauthorized, "%s", detail))
}
