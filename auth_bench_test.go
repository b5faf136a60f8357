package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"
)

// BenchmarkAuthenticate measures the cost the token check adds to a
// request: a bearer token and a session cookie, against 1, 10 and 100
// listed tokens (the match is the last one: every token is compared anyway).
func BenchmarkAuthenticate(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		tokens := make([]string, n)
		for i := range tokens {
			tokens[i] = fmt.Sprintf("bench-token-%03d-0123456789abcdef0123456789abcdef", i)
		}
		a := testTokenAuth(tokens...)
		set := a.tokens.Load()

		bearer := httptest.NewRequest(http.MethodGet, "/api/v1/range", nil)
		bearer.Header.Set("Authorization", "Bearer "+tokens[n-1])
		b.Run(fmt.Sprintf("bearer/tokens=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, _, ok := a.authenticate(bearer); !ok {
					b.Fatal("refused")
				}
			}
		})

		cookie := httptest.NewRequest(http.MethodGet, "/api/v1/range", nil)
		cookie.AddCookie(&http.Cookie{Name: sessionCookie, Value: newSession(set, n-1)})
		b.Run(fmt.Sprintf("cookie/tokens=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, _, ok := a.authenticate(cookie); !ok {
					b.Fatal("refused")
				}
			}
		})
	}
}

// BenchmarkGetCertificate measures what serving the certificate adds to a
// TLS handshake: a load of the pair in use (the files are read once a
// second, not at handshakes); also while a pair that does not match stays
// on disk (a renewal half written, or broken).
func BenchmarkGetCertificate(b *testing.B) {
	for _, mismatched := range []bool{false, true} {
		b.Run(fmt.Sprintf("mismatched=%v", mismatched), func(b *testing.B) {
			ca := newTestCA(b)
			dir := b.TempDir()
			certFile, keyFile := writeKeyPair(b, ca, dir, 10)
			c, err := newCertReloader(certFile, keyFile, apiLogger())
			if err != nil {
				b.Fatal(err)
			}
			if mismatched {
				otherCert, _ := ca.issue(b, 11)
				writeFile(b, certFile, string(otherCert))
			}
			old := time.Now().Add(-time.Hour)
			for _, f := range []string{certFile, keyFile} {
				if err := os.Chtimes(f, old, old); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if _, err := c.certificate(nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
