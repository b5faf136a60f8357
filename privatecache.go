package main

import (
	"bufio"
	"net"
	"net/http"
	"strings"
)

// With tokens on, an answer admitted by a token is for its client only: a
// shared cache (a proxy) must neither store it for others nor answer a
// request with other credentials from it. RFC 9111 keeps shared caches
// from storing answers to requests with Authorization, but not to those
// with a Cookie, and a page or event answer carries no Cache-Control of
// its own.

// privateWriter marks the answer private (markPrivate) when its head is
// written, whichever way that happens: after the handler has set its own
// Cache-Control, which the mark keeps if it is strict enough. It marks
// once: a watch's later writes (each event) cost a test of a flag.
type privateWriter struct {
	http.ResponseWriter
	marked bool
}

func (p *privateWriter) mark() {
	if !p.marked {
		p.marked = true
		markPrivate(p.Header())
	}
}

func (p *privateWriter) WriteHeader(code int) {
	p.mark()
	p.ResponseWriter.WriteHeader(code)
}

func (p *privateWriter) Write(b []byte) (int, error) {
	p.mark()
	return p.ResponseWriter.Write(b)
}

// FlushError is what http.ResponseController's Flush calls.
func (p *privateWriter) FlushError() error {
	p.mark()
	return http.NewResponseController(p.ResponseWriter).Flush()
}

// Hijack is what http.ResponseController's Hijack calls: a watch that takes
// the connection (watch_conn.go) writes the head itself.
func (p *privateWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	p.mark()
	return http.NewResponseController(p.ResponseWriter).Hijack()
}

func (p *privateWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// markPrivate makes h the head of an answer for one client: Cache-Control
// private unless it is no-store already, and Vary naming Authorization and
// Cookie, added to what Vary names. Marking twice changes nothing.
func markPrivate(h http.Header) {
	cc := h.Values("Cache-Control")
	if !hasListToken(cc, "no-store") && !hasListToken(cc, "private") {
		h.Set("Cache-Control", strings.Join(append([]string{"private"}, withoutListToken(cc, "public")...), ", "))
	}
	vary := h.Values("Vary")
	if hasListToken(vary, "*") {
		return
	}
	var missing []string
	for _, name := range [...]string{"Authorization", "Cookie"} {
		if !hasListToken(vary, name) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		h.Add("Vary", strings.Join(missing, ", "))
	}
}

// hasListToken reports whether the comma-separated header values name
// token (a directive with or without an argument), case-insensitively.
func hasListToken(values []string, token string) bool {
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			name, _, _ := strings.Cut(item, "=")
			if strings.EqualFold(strings.TrimSpace(name), token) {
				return true
			}
		}
	}
	return false
}

// withoutListToken returns the items of the comma-separated values but
// token, each trimmed.
func withoutListToken(values []string, token string) []string {
	var out []string
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			item = strings.TrimSpace(item)
			name, _, _ := strings.Cut(item, "=")
			if item != "" && !strings.EqualFold(strings.TrimSpace(name), token) {
				out = append(out, item)
			}
		}
	}
	return out
}
