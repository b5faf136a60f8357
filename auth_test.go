package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Distinctive tokens, so that a test can tell none of them leaks into a log.
const (
	tokenAlice = "tok-alice-7b1f2c9e5d"
	tokenBob   = "tok-bob-4a8e6d0c3f"
	tokenCarol = "tok-carol-9c2d7e1a6b"
)

// wantChallenge is the WWW-Authenticate of every 401.
const wantChallenge = `Bearer realm="vsphere-event-streaming"`

// testCA issues server certificates for 127.0.0.1.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a PEM certificate for 127.0.0.1 with the given serial
// number, and its PEM private key.
func (ca *testCA) issue(t testing.TB, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: fmt.Sprintf("server %d", serial)},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// replaceFile writes content to path as cert-manager and most tools do: a
// new file renamed over the old one.
func replaceFile(t testing.TB, path string, content []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// secretVolume lays out files as kubelet does in a Secret volume: each
// file is a symlink through "..data" to a timestamped directory, and an
// update swaps "..data" to a new directory.
type secretVolume struct {
	dir     string
	version int
}

func newSecretVolume(t testing.TB, files map[string]string) *secretVolume {
	t.Helper()
	v := &secretVolume{dir: t.TempDir()}
	v.update(t, files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func (v *secretVolume) path(name string) string { return filepath.Join(v.dir, name) }

// update writes a new version of the files and swaps "..data" to it.
func (v *secretVolume) update(t testing.TB, files map[string]string) {
	t.Helper()
	v.version++
	version := fmt.Sprintf("..2026_11_25_01_00_%02d.%d", v.version, v.version)
	if err := os.Mkdir(filepath.Join(v.dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(v.dir, version, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// httpsClient trusts ca and speaks HTTP/2 when the server offers it.
func httpsClient(ca *testCA) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ca.pool},
		ForceAttemptHTTP2: true,
	}}
}

// http1Client trusts ca and speaks HTTP/1.1 only.
func http1Client(ca *testCA) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.pool},
		// A non-nil empty map turns HTTP/2 off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
}

// authGet sends GET url with token as bearer token ("" for none) and
// returns the answer with its body read.
func authGet(t testing.TB, client *http.Client, url, token string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return fetch(t, client, req)
}

// checkUnauthorized fails unless the answer is the 401 of API.md.
func checkUnauthorized(t testing.TB, what string, resp *http.Response, body []byte) {
	t.Helper()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("%s: status %d, want 401 (%s)", what, resp.StatusCode, body)
		return
	}
	if got := resp.Header.Get("WWW-Authenticate"); got != wantChallenge {
		t.Errorf("%s: WWW-Authenticate %q, want %q", what, got, wantChallenge)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type %q, want application/problem+json", what, ct)
	}
	var p problem
	if err := json.Unmarshal(body, &p); err != nil || p.Status != 401 || p.Detail == "" {
		t.Errorf("%s: body %s is not a 401 problem (%v)", what, body, err)
	}
}

// startSecureServer runs the program with the token file tokensPath and,
// with ca set, HTTPS with a certificate of ca in certFile and keyFile.
func startSecureServer(t *testing.T, sim *simulation, env map[string]string) *testServer {
	t.Helper()
	s := startServer(t, sim, env)
	if env[envTLSCertFile] != "" {
		s.url = strings.Replace(s.url, "http://", "https://", 1)
	}
	t.Cleanup(func() {
		for _, token := range []string{tokenAlice, tokenBob, tokenCarol} {
			if strings.Contains(s.logs.String(), token) {
				t.Errorf("the server's log holds token %s", token)
			}
		}
	})
	return s
}

// startHTTPSServer runs the program over HTTPS, with a certificate of a CA
// of its own and the token file holding tokens, both in the directory it
// returns (tls.crt, tls.key, tokens).
func startHTTPSServer(t *testing.T, sim *simulation, tokens string) (*testServer, *testCA, string) {
	t.Helper()
	return startHTTPSServerEnv(t, sim, tokens, map[string]string{})
}

// startHTTPSServerEnv is startHTTPSServer with env added to its
// configuration.
func startHTTPSServerEnv(t *testing.T, sim *simulation, tokens string, env map[string]string) (*testServer, *testCA, string) {
	t.Helper()
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := writeKeyPair(t, ca, dir, 10)
	writeFile(t, filepath.Join(dir, "tokens"), tokens)
	env[envTokensPath], env[envTLSCertFile], env[envTLSKeyFile] = filepath.Join(dir, "tokens"), certFile, keyFile
	s := startSecureServer(t, sim, env)
	return s, ca, dir
}

// writeKeyPair writes a new pair of ca into dir and returns the paths.
func writeKeyPair(t testing.TB, ca *testCA, dir string, serial int64) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, serial)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	replaceFile(t, certFile, certPEM)
	replaceFile(t, keyFile, keyPEM)
	return certFile, keyFile
}

func TestAuthTokensOverHTTPS(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	s, ca, _ := startHTTPSServer(t, sim, "# API clients\n"+tokenAlice+"\n\n  "+tokenBob+"  \n# "+tokenCarol+" is not yet admitted\n")
	client := httpsClient(ca)

	protected := []string{
		"/api/v1/range", "/api/v1/events", "/api/v1/events?watch=true&timeoutSeconds=1", "/api/v1/events/1",
		"/api/v1/openapi.yaml", "/metrics", "/no/such/path", "/",
	}
	for _, path := range protected {
		resp, body := authGet(t, client, s.url+path, "")
		checkUnauthorized(t, path+" without a token", resp, body)
		for _, wrong := range []string{tokenCarol, tokenAlice + "x", tokenAlice[:len(tokenAlice)-1], "#"} {
			resp, body = authGet(t, client, s.url+path, wrong)
			checkUnauthorized(t, path+" with a wrong token", resp, body)
		}
		resp, body = authGet(t, client, s.url+path, "", "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("u:"+tokenAlice)))
		checkUnauthorized(t, path+" with Basic", resp, body)
	}
	for _, token := range []string{tokenAlice, tokenBob} {
		for _, path := range []string{"/api/v1/range", "/api/v1/events", "/api/v1/events?watch=true&timeoutSeconds=1", "/api/v1/openapi.yaml", "/metrics"} {
			resp, body := authGet(t, client, s.url+path, token)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s with a listed token: %d %s", path, resp.StatusCode, body)
			}
			if resp.ProtoMajor != 2 {
				t.Errorf("%s: %s, want HTTP/2", path, resp.Proto)
			}
		}
	}
	// The scheme is case-insensitive (RFC 9110).
	if resp, body := authGet(t, client, s.url+"/api/v1/range", "", "Authorization", "bearer "+tokenBob); resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case bearer: %d %s", resp.StatusCode, body)
	}
	for _, probe := range []string{"/livez", "/readyz"} {
		resp, body := authGet(t, client, s.url+probe, "")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s without a token: %d %s, want 200", probe, resp.StatusCode, body)
		}
		// The viewer's curl line learns from it that a token is needed.
		if probe == "/readyz" && !bytes.Contains(body, []byte(`"tokens":true`)) {
			t.Errorf("/readyz with tokens on: %s, want \"tokens\":true", body)
		}
	}

	// 401s are counted by route.
	_, metrics := authGet(t, client, s.url+"/metrics", tokenAlice)
	if want := `vsphere_event_streaming_http_requests_total{route="GET /api/v1/range",code="401"}`; !bytes.Contains(metrics, []byte(want)) {
		t.Errorf("metrics lack %s:\n%s", want, metrics)
	}

	// HTTPS only, TLS 1.2 at least.
	addr := strings.TrimPrefix(s.url, "https://")
	if resp, err := http.Get("http://" + addr + "/livez"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP is served")
		}
	}
	if conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool, MaxVersion: tls.VersionTLS11}); err == nil {
		conn.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
}

// authWatch opens a watch with a bearer token; it is closed when the test ends.
func authWatch(t *testing.T, client *http.Client, url, token string) *watchStream {
	t.Helper()
	return openWatchWith(t, client, url, http.Header{"Authorization": {"Bearer " + token}})
}

// browserLogin signs in through the login form and returns the client,
// whose cookie jar holds the session.
func browserLogin(t *testing.T, base string, client *http.Client, token string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	browser := &http.Client{Transport: client.Transport, Jar: jar}
	resp, err := browser.PostForm(base+loginPath, url.Values{"token": {token}, "next": {"/api/v1/range"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// The redirect was followed to next, with the cookie.
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/api/v1/range" {
		t.Fatalf("login: ended at %s with %d %s", resp.Request.URL, resp.StatusCode, body)
	}
	return browser
}

func TestAuthTokenRotation(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	ca := newTestCA(t)
	certFile, keyFile := writeKeyPair(t, ca, t.TempDir(), 10)
	vol := newSecretVolume(t, map[string]string{"tokens": tokenAlice + "\n" + tokenBob + "\n"})
	s := startSecureServer(t, sim, map[string]string{envTokensPath: vol.path("tokens"), envTLSCertFile: certFile, envTLSKeyFile: keyFile})
	client := httpsClient(ca)
	vc := connectVCenter(t, sim)
	// The watches below get exactly the events after before, once the
	// server holds it (as watchFromNow does).
	before := vc.latestKey(t)
	if got := decodeEvent(t, authWatch(t, client, fmt.Sprintf("%s/api/v1/events?watch=true&offset=%d", s.url, before), tokenBob).next(t)); got.Data.Key != before {
		t.Fatalf("watch from %d began with %d", before, got.Data.Key)
	}

	watchAlice := authWatch(t, client, s.url+"/api/v1/events?watch=true", tokenAlice)
	watchBob := authWatch(t, client, s.url+"/api/v1/events?watch=true", tokenBob)
	// Over HTTP/1.1 a watch takes its connection from net/http
	// (watch_conn.go): revocation must reach it there too, NDJSON and SSE.
	client1 := http1Client(ca)
	watchAlice1 := authWatch(t, client1, s.url+"/api/v1/events?watch=true", tokenAlice)
	sseAlice1 := openWatchWith(t, client1, s.url+"/api/v1/events", http.Header{"Authorization": {"Bearer " + tokenAlice}, "Accept": {"text/event-stream"}})
	watchBob1 := authWatch(t, client1, s.url+"/api/v1/events?watch=true", tokenBob)
	for name, w := range map[string]*watchStream{"NDJSON": watchAlice1, "SSE": sseAlice1, "Bob's NDJSON": watchBob1} {
		if w.resp.ProtoMajor != 1 || !w.resp.Close {
			t.Fatalf("%s watch over %s (Connection: close %v), want HTTP/1.1 on a taken connection", name, w.resp.Proto, w.resp.Close)
		}
	}
	aliceBrowser := browserLogin(t, s.url, client, tokenAlice)
	bobBrowser := browserLogin(t, s.url, client, tokenBob)
	if resp, body := authGet(t, client, s.url+"/api/v1/range", tokenCarol); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("carol before rotation: %d %s", resp.StatusCode, body)
	}
	// What the viewer does: an EventSource with Alice's session cookie.
	sseReq, err := http.NewRequestWithContext(t.Context(), http.MethodGet, s.url+"/api/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	sseReq.Header.Set("Accept", "text/event-stream")
	sse, err := aliceBrowser.Do(sseReq)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sse.Body.Close() })
	if sse.StatusCode != http.StatusOK {
		t.Fatalf("SSE watch with a session: %d", sse.StatusCode)
	}
	sseEnded := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, sse.Body)
		sseEnded <- err
	}()

	// Rotation: Alice's token removed, Carol's added.
	vol.update(t, map[string]string{"tokens": tokenBob + "\n" + tokenCarol + "\n"})
	waitUntil(t, &s.tokens.loaded, s.stopped, "Bob's and Carol's tokens in force", func() bool {
		set := s.tokens.tokens.Load()
		return len(set.digests) == 2 && set.match(sha256.Sum256([]byte(tokenCarol))) >= 0
	})

	for _, token := range []string{tokenBob, tokenCarol} {
		if resp, body := authGet(t, client, s.url+"/api/v1/range", token); resp.StatusCode != http.StatusOK {
			t.Errorf("listed token after rotation: %d %s", resp.StatusCode, body)
		}
	}
	resp, body := authGet(t, client, s.url+"/api/v1/range", tokenAlice)
	checkUnauthorized(t, "removed token", resp, body)
	resp, body = authGet(t, aliceBrowser, s.url+"/api/v1/range", "")
	checkUnauthorized(t, "session of a removed token", resp, body)
	if resp, body := authGet(t, bobBrowser, s.url+"/api/v1/range", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("session of a listed token after rotation: %d %s", resp.StatusCode, body)
	}

	// The watches of the removed token ended cleanly; the other one goes on.
	if err := watchAlice.end(t); err != nil {
		t.Errorf("watch of the removed token ended with %v, want a clean end", err)
	}
	if err := watchAlice1.end(t); err != nil {
		t.Errorf("HTTP/1.1 watch of the removed token ended with %v, want a clean end", err)
	}
	if err := sseAlice1.end(t); err != nil {
		t.Errorf("HTTP/1.1 SSE watch of the removed token ended with %v, want a clean end", err)
	}
	select {
	case err := <-sseEnded:
		if err != nil {
			t.Errorf("SSE watch of the removed token's session ended with %v, want a clean end", err)
		}
	case <-time.After(waitTimeout):
		t.Error("SSE watch of the removed token's session is still open")
	}
	vc.postEvents(t, 1)
	if got := decodeEvent(t, watchBob.next(t)); got.Data.Key <= before {
		t.Errorf("watch of a listed token got key %d, not a new event after %d", got.Data.Key, before)
	}
	if got := decodeEvent(t, watchBob1.next(t)); got.Data.Key <= before {
		t.Errorf("HTTP/1.1 watch of a listed token got key %d, not a new event after %d", got.Data.Key, before)
	}

	// A token file that cannot be read keeps the tokens in force.
	if err := os.Remove(vol.path("tokens")); err != nil {
		t.Fatal(err)
	}
	s.logs.wait(t, "cannot reload API tokens; the previous ones stay in force", s.stopped)
	if resp, body := authGet(t, client, s.url+"/api/v1/range", tokenCarol); resp.StatusCode != http.StatusOK {
		t.Errorf("listed token while the file is missing: %d %s", resp.StatusCode, body)
	}
}

// waitServing waits until the server's certificate in use has serial.
func waitServing(t *testing.T, s *testServer, serial int64) {
	t.Helper()
	waitUntil(t, &s.certs.loaded, s.stopped, fmt.Sprintf("certificate %d in use", serial), func() bool {
		return s.certs.cert.Load().Leaf.SerialNumber.Int64() == serial
	})
}

func TestAuthCertificateRenewal(t *testing.T) {
	t.Parallel()
	sim := startTestSimulation(t)
	s, ca, dir := startHTTPSServer(t, sim, tokenAlice+"\n")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	addr := strings.TrimPrefix(s.url, "https://")

	// served returns the serial number of the certificate a new connection gets.
	served := func() int64 {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := served(); got != 10 {
		t.Fatalf("serial %d, want 10", got)
	}
	// An open connection keeps working across a renewal.
	client := httpsClient(ca)
	if resp, body := authGet(t, client, s.url+"/api/v1/range", tokenAlice); resp.StatusCode != http.StatusOK {
		t.Fatalf("range: %d %s", resp.StatusCode, body)
	}

	// Renewal by renaming new files over the old ones; the server reads
	// them again within a second.
	writeKeyPair(t, ca, dir, 11)
	waitServing(t, s, 11)
	if got := served(); got != 11 {
		t.Errorf("after renewal: serial %d, want 11", got)
	}
	if resp, body := authGet(t, client, s.url+"/api/v1/range", tokenAlice); resp.StatusCode != http.StatusOK {
		t.Errorf("range after renewal: %d %s", resp.StatusCode, body)
	}

	// A certificate whose key is not yet written: the previous pair stays.
	certPEM, keyPEM := ca.issue(t, 12)
	replaceFile(t, certFile, certPEM)
	s.logs.wait(t, "cannot reload TLS certificate; the previous one stays in use", s.stopped)
	if got := served(); got != 11 {
		t.Errorf("with a mismatched key: serial %d, want 11 still", got)
	}
	// Rewritten in place, not renamed.
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	waitServing(t, s, 12)
	if got := served(); got != 12 {
		t.Errorf("once the key is written: serial %d, want 12", got)
	}

	// Kubernetes Secret volume: a "..data" symlink swap.
	c13, k13 := ca.issue(t, 13)
	vol := newSecretVolume(t, map[string]string{"tls.crt": string(c13), "tls.key": string(k13)})
	c14, k14 := ca.issue(t, 14)
	ss, err := newCertReloader(vol.path("tls.crt"), vol.path("tls.key"), apiLogger())
	if err != nil {
		t.Fatal(err)
	}
	vol.update(t, map[string]string{"tls.crt": string(c14), "tls.key": string(k14)})
	ss.reload()
	got, err := ss.certificate(nil)
	if err != nil || got.Leaf.SerialNumber.Int64() != 14 {
		t.Errorf("after a Secret volume update: %v, %v; want serial 14", got.Leaf.SerialNumber, err)
	}
}

func TestAuthConfigErrors(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	dir := t.TempDir()
	certFile, keyFile := writeKeyPair(t, ca, dir, 10)
	otherCert, _ := ca.issue(t, 11)
	mismatched := filepath.Join(dir, "other.crt")
	writeFile(t, mismatched, string(otherCert))
	tokens := filepath.Join(dir, "tokens")
	writeFile(t, tokens, tokenAlice+"\n")
	onlyComments := filepath.Join(dir, "comments")
	writeFile(t, onlyComments, "# no token yet\n\n   \n")
	spaced := filepath.Join(dir, "spaced")
	writeFile(t, spaced, "alice "+tokenAlice+"\n")
	garbage := filepath.Join(dir, "garbage")
	writeFile(t, garbage, "not PEM\n")
	missing := filepath.Join(dir, "missing")
	// Unreadable for anyone but root (root reads it anyway: the directory
	// case below covers unreadable then).
	unreadable := filepath.Join(dir, "unreadable")
	writeFile(t, unreadable, tokenAlice+"\n")
	if err := os.Chmod(unreadable, 0); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		unreadable = dir
	}

	for _, tc := range []struct {
		name     string
		env      map[string]string
		variable string
	}{
		{"missing token file", map[string]string{envTokensPath: missing}, envTokensPath},
		{"token path is a directory", map[string]string{envTokensPath: dir}, envTokensPath},
		{"unreadable token file", map[string]string{envTokensPath: unreadable}, envTokensPath},
		{"unreadable key", map[string]string{envTLSCertFile: certFile, envTLSKeyFile: unreadable}, envTLSKeyFile},
		{"empty token list", map[string]string{envTokensPath: onlyComments}, envTokensPath},
		{"token with whitespace inside", map[string]string{envTokensPath: spaced}, envTokensPath},
		{"certificate without key", map[string]string{envTLSCertFile: certFile}, envTLSKeyFile},
		{"key without certificate", map[string]string{envTLSKeyFile: keyFile}, envTLSCertFile},
		{"missing certificate", map[string]string{envTLSCertFile: missing, envTLSKeyFile: keyFile}, envTLSCertFile},
		{"missing key", map[string]string{envTLSCertFile: certFile, envTLSKeyFile: missing}, envTLSKeyFile},
		{"certificate is no PEM", map[string]string{envTLSCertFile: garbage, envTLSKeyFile: keyFile}, envTLSCertFile},
		{"key is no PEM", map[string]string{envTLSCertFile: certFile, envTLSKeyFile: garbage}, envTLSKeyFile},
		{"key of another certificate", map[string]string{envTLSCertFile: mismatched, envTLSKeyFile: keyFile}, envTLSKeyFile},
		{"key file is the certificate", map[string]string{envTLSCertFile: certFile, envTLSKeyFile: certFile}, envTLSKeyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A done context: should the configuration be accepted, run
			// shuts down at once instead of serving.
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			var stderr bytes.Buffer
			err := run(ctx, []string{"vsphere-event-streaming", "--simulate"}, configEnv(tc.env), io.Discard, &stderr, nil)
			checkConfigError(t, err, tc.variable)
			if strings.Contains(err.Error()+stderr.String(), tokenAlice) {
				t.Errorf("a token leaks: %v %s", err, &stderr)
			}
		})
	}
}

func TestParseTokens(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"# comment\r\n a \r\n\n#b\n\tc\t\nd", "\ufeffa\nc\nd\n"} {
		got, err := parseTokens([]byte(file))
		if err != nil || strings.Join(got, ",") != "a,c,d" {
			t.Errorf("%q: tokens %q, %v; want a,c,d", file, got, err)
		}
	}
	for _, bad := range []string{"", "\n\n", "# only\n", "a b\n", "ok\nx\x00y\n"} {
		if _, err := parseTokens([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	if _, err := parseTokens([]byte("ok\nsecret value\n")); err == nil || strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("error %v: want one naming line 2 without its content", err)
	}
}

// slogJSON logs JSON lines to w, at debug level.
func slogJSON(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newTestAuth returns a tokenAuth over a new token file with content.
func newTestAuth(t *testing.T, content string) (*tokenAuth, string, *logRecorder) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, path, content)
	logs := newLogRecorder()
	a, err := newTokenAuth(path, slogJSON(logs))
	if err != nil {
		t.Fatal(err)
	}
	return a, path, logs
}

func TestAuthReload(t *testing.T) {
	t.Parallel()
	a, path, logs := newTestAuth(t, tokenAlice+"\n")
	admitted := func(token string) bool {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/range", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		_, _, ok := a.authenticate(r)
		return ok
	}
	// In place, same size: the content tells.
	replacement := strings.Repeat("b", len(tokenAlice))
	if err := os.WriteFile(path, []byte(replacement+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.reload()
	if admitted(tokenAlice) || !admitted(replacement) {
		t.Errorf("after an in-place rewrite: alice %v, replacement %v", admitted(tokenAlice), admitted(replacement))
	}
	// A file emptied by mistake or half written keeps the tokens.
	writeFile(t, path, "# nothing\n")
	a.reload()
	a.reload()
	if !admitted(replacement) {
		t.Error("an empty token file dropped the tokens")
	}
	if n := strings.Count(logs.String(), "cannot reload API tokens"); n != 1 {
		t.Errorf("reload error logged %d times, want once", n)
	}
	// Each new failure is logged: the file gone, then the refused one back.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	a.reload()
	writeFile(t, path, "# nothing\n")
	a.reload()
	if n := strings.Count(logs.String(), "cannot reload API tokens"); n != 3 {
		t.Errorf("reload errors logged %d times, want 3 (empty, missing, empty again)", n)
	}
	writeFile(t, path, "# comments and the same token\n"+replacement+"\n")
	a.reload()
	if !admitted(replacement) {
		t.Error("token dropped")
	}
	if strings.Contains(logs.String(), tokenAlice) || strings.Contains(logs.String(), replacement) {
		t.Errorf("log holds a token:\n%s", logs)
	}
}

func TestAuthRunStops(t *testing.T) {
	t.Parallel()
	a, _, _ := newTestAuth(t, tokenAlice+"\n")
	a.interval = time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.run(ctx)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return once its context was done")
	}
}

// authTestServer serves the handler with tokens over HTTPS (or plain HTTP).
func authTestServer(t *testing.T, tls bool) (*httptest.Server, *tokenAuth) {
	t.Helper()
	a, _, _ := newTestAuth(t, tokenAlice+"\n"+tokenBob+"\n")
	h := newHandler(handlerDeps{journal: openAPIGoldenJournal(t), log: apiLogger(), auth: a})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewUnstartedServer(h)
		srv.EnableHTTP2 = true
		srv.StartTLS()
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv, a
}

// noRedirect is a client that shows redirects instead of following them.
func noRedirect(c *http.Client) *http.Client {
	return &http.Client{Transport: c.Transport, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

func TestAuthLoginPage(t *testing.T) {
	t.Parallel()
	srv, _ := authTestServer(t, true)
	client := noRedirect(srv.Client())
	resp, body := authGet(t, client, srv.URL+loginPath+"?next=%2Fapi%2Fv1%2Fevents%3Foffset%3D44", "")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("login page: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") || strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q allows scripts or unsafe sources", csp)
	}
	// The page's style is the one the CSP allows by hash.
	_, rest, _ := strings.Cut(string(body), "<style>")
	style, _, _ := strings.Cut(rest, "</style>")
	sum := sha256.Sum256([]byte(style))
	if want := "style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, want) {
		t.Errorf("CSP %q does not allow the page's style (%s)", csp, want)
	}
	for name, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s %q, want %q", name, got, want)
		}
	}
	if bytes.Contains(bytes.ToLower(body), []byte("<script")) || bytes.Contains(body, []byte(" on")) && bytes.Contains(body, []byte("onclick")) {
		t.Error("the login page has a script")
	}
	if !bytes.Contains(body, []byte(`name="next" value="/api/v1/events?offset=44"`)) {
		t.Errorf("the form does not carry next:\n%s", body)
	}
	// An outside next is not carried; markup in it is escaped.
	_, body = authGet(t, client, srv.URL+loginPath+"?next="+url.QueryEscape(`/"><script>x</script>`), "")
	if bytes.Contains(body, []byte("<script>x")) {
		t.Error("next is not escaped")
	}
	resp, _ = authGet(t, client, srv.URL+loginPath+"?token="+tokenAlice, "")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("login page with a token in the URL: %d, want 400", resp.StatusCode)
	}
}

func TestAuthBrowserLogin(t *testing.T) {
	t.Parallel()
	srv, a := authTestServer(t, true)
	client := noRedirect(srv.Client())
	post := func(form url.Values, header ...string) *http.Response {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+loginPath, strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	// A wrong token: the form again, 401, no cookie.
	resp := post(url.Values{"token": {tokenCarol}, "next": {"/"}})
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 0 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("wrong token: %d %v %s", resp.StatusCode, resp.Cookies(), resp.Header.Get("Content-Type"))
	}

	// A listed token: the cookie, and on to next if it is a local path.
	for next, want := range map[string]string{
		"/api/v1/events?offset=44&type=VmPoweredOnEvent": "/api/v1/events?offset=44&type=VmPoweredOnEvent",
		"/":                    "/",
		"":                     "/",
		"//evil.example/x":     "/",
		"https://evil.example": "/",
		`/\evil.example`:       "/",
		"javascript:alert(1)":  "/",
		"/ui/login":            "/",
		"api/v1/range":         "/",
	} {
		resp := post(url.Values{"token": {tokenBob}, "next": {next}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != want {
			t.Errorf("next %q: %d to %q, want 303 to %q", next, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
	resp = post(url.Values{"token": {tokenAlice}})
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies %v, want 1", cookies)
	}
	c := cookies[0]
	if c.Name != "__Host-vsphere-event-streaming-session" || !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Domain != "" || c.MaxAge <= 0 {
		t.Errorf("cookie %+v: want __Host-, HttpOnly, Secure, SameSite=Lax, Path=/", c)
	}
	if strings.Contains(c.Value, tokenAlice) {
		t.Error("the cookie holds the token")
	}

	withCookie := func(path string, cookie *http.Cookie, header ...string) (*http.Response, []byte) {
		t.Helper()
		return authGet(t, client, srv.URL+path, "", append([]string{"Cookie", cookie.String()}, header...)...)
	}
	if resp, body := withCookie("/api/v1/range", c); resp.StatusCode != http.StatusOK {
		t.Errorf("range with the cookie: %d %s", resp.StatusCode, body)
	}
	// What the viewer does: EventSource with the cookie.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/v1/events?offset=44", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.AddCookie(c)
	sse, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if sse.StatusCode != http.StatusOK || sse.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("SSE with the cookie: %d %s", sse.StatusCode, sse.Header.Get("Content-Type"))
	}
	sse.Body.Close()

	// Tampered, forged and expired sessions.
	parts := strings.Split(c.Value, ".")
	if len(parts) != 3 {
		t.Fatalf("session %q is not expiry.id.mac", c.Value)
	}
	n, _ := new(big.Int).SetString(parts[0], 10)
	bobID := base64.RawURLEncoding.EncodeToString(a.tokens.Load().sessionIDs[1])
	for name, value := range map[string]string{
		"later expiry":          new(big.Int).Add(n, big.NewInt(1)).String() + "." + parts[1] + "." + parts[2],
		"another token's id":    parts[0] + "." + bobID + "." + parts[2],
		"no MAC":                parts[0] + "." + parts[1] + ".",
		"MAC of another key":    parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sessionMAC([]byte(tokenAlice), n.Int64(), a.tokens.Load().sessionIDs[0])),
		"the token itself":      tokenAlice,
		"empty":                 "",
		"extra part":            c.Value + ".x",
		"MAC spelled otherwise": parts[0] + "." + parts[1] + "." + nonCanonical(parts[2]),
		"signed expiry prefix":  "+" + c.Value,
	} {
		resp, body := withCookie("/api/v1/range", &http.Cookie{Name: c.Name, Value: value})
		checkUnauthorized(t, name, resp, body)
	}
	resp2, body := withCookie("/api/v1/range", &http.Cookie{Name: "vsphere-event-streaming-session", Value: c.Value})
	checkUnauthorized(t, "the cookie under its plain-HTTP name over TLS", resp2, body)
	// A session made with a listed token but expired.
	past := time.Now().Add(-time.Second).Unix()
	expired := sessionValue(a.tokens.Load(), 0, past)
	resp2, body = withCookie("/api/v1/range", &http.Cookie{Name: c.Name, Value: expired})
	checkUnauthorized(t, "expired session", resp2, body)
	// The same, unexpired, is accepted: the MAC above is right.
	future := time.Now().Add(time.Hour).Unix()
	valid := sessionValue(a.tokens.Load(), 0, future)
	if resp, body := withCookie("/api/v1/range", &http.Cookie{Name: c.Name, Value: valid}); resp.StatusCode != http.StatusOK {
		t.Errorf("a session made with a listed token: %d %s", resp.StatusCode, body)
	}

	// Login CSRF: a cross-site form post is refused.
	if resp := post(url.Values{"token": {tokenAlice}}, "Sec-Fetch-Site", "cross-site"); resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("cross-site login: %d %v, want 403 without a cookie", resp.StatusCode, resp.Cookies())
	}
	if resp := post(url.Values{"token": {tokenAlice}}, "Origin", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin login: %d, want 403", resp.StatusCode)
	}

	// A browser opening a page is sent to the login form; the API answers 401.
	resp3, _ := authGet(t, client, srv.URL+"/?x=1", "", "Accept", "text/html,application/xhtml+xml")
	if resp3.StatusCode != http.StatusSeeOther || resp3.Header.Get("Location") != loginPath+"?next="+url.QueryEscape("/?x=1") {
		t.Errorf("browser at /: %d to %q", resp3.StatusCode, resp3.Header.Get("Location"))
	}
	for _, path := range []string{"/api/v1/events", "/metrics", "/api/v2/nothing"} {
		resp, body := authGet(t, client, srv.URL+path, "", "Accept", "text/html")
		checkUnauthorized(t, "browser at "+path, resp, body)
	}

	// Only the login routes take POST.
	for path, allow := range map[string]string{"/api/v1/range": "GET, HEAD", loginPath: "GET, HEAD, POST", logoutPath: "POST"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, srv.URL+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != allow {
			t.Errorf("PUT %s: %d Allow %q, want 405 Allow %q", path, resp.StatusCode, resp.Header.Get("Allow"), allow)
		}
	}
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+tokenAlice)
	if resp, err := client.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /api/v1/events: %v %v, want 405", resp, err)
	} else {
		resp.Body.Close()
	}

	// Logout clears the cookie.
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+logoutPath, nil)
	out, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out.Body.Close()
	if cs := out.Cookies(); out.StatusCode != http.StatusSeeOther || len(cs) != 1 || cs[0].Name != c.Name || cs[0].MaxAge >= 0 {
		t.Errorf("logout: %d %v", out.StatusCode, cs)
	}
}

func TestAuthBrowserLoginPlainHTTP(t *testing.T) {
	t.Parallel()
	srv, _ := authTestServer(t, false)
	browser := browserLogin(t, srv.URL, srv.Client(), tokenAlice)
	u, _ := url.Parse(srv.URL)
	cookies := browser.Jar.Cookies(u)
	if len(cookies) != 1 || cookies[0].Name != "vsphere-event-streaming-session" {
		t.Errorf("cookies %v, want the plain-HTTP session cookie", cookies)
	}
}

func TestAuthRevokedRequestEnds(t *testing.T) {
	t.Parallel()
	a, path, _ := newTestAuth(t, tokenAlice+"\n"+tokenBob+"\n")
	started := make(chan struct{}, 2)
	ended := make(chan error, 2)
	mux := http.NewServeMux()
	mux.Handle("GET /wait", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
		ended <- context.Cause(r.Context())
	}))
	h := a.require(mux, false)
	serve := func(token string) {
		r := httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/wait", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	go serve(tokenAlice)
	go serve(tokenBob)
	<-started
	<-started
	writeFile(t, path, tokenBob+"\n"+tokenCarol+"\n")
	a.reload()
	select {
	case err := <-ended:
		if !errors.Is(err, errTokenRevoked) {
			t.Errorf("request ended with %v, want ErrTokenRevoked", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the request of the removed token did not end")
	}
	a.mu.Lock()
	open := len(a.inflight)
	a.mu.Unlock()
	if open != 1 {
		t.Errorf("%d requests in flight, want Bob's", open)
	}
}

// TestAuthSessionExpiryEndsWatch: a watch a browser session admitted ends,
// cleanly, when the session expires (the page then signs in again); one a
// bearer token admitted goes on.
func TestAuthSessionExpiryEndsWatch(t *testing.T) {
	t.Parallel()
	a := testTokenAuth(tokenAlice)
	j := openAPIGoldenJournal(t)
	srv := httptest.NewServer(newHandler(handlerDeps{journal: j, log: apiLogger(), auth: a}))
	t.Cleanup(srv.Close)
	for _, sse := range []bool{false, true} {
		// A short session: its expiry is in whole seconds.
		expires := time.Now().Add(2 * time.Second)
		h := http.Header{"Cookie": {sessionCookie + "=" + sessionValue(a.tokens.Load(), 0, expires.Unix())}}
		if sse {
			h.Set("Accept", "text/event-stream")
		}
		w := openWatchWith(t, srv.Client(), srv.URL+"/api/v1/events?watch=true", h)
		bearer := openWatchWith(t, srv.Client(), srv.URL+"/api/v1/events?watch=true", http.Header{"Authorization": {"Bearer " + tokenAlice}})
		if err := w.end(t); err != nil {
			t.Errorf("watch of the session (SSE %v) ended with %v, want a clean end", sse, err)
		}
		if time.Now().Before(expires.Truncate(time.Second)) {
			t.Errorf("watch of the session (SSE %v) ended before the session expired", sse)
		}
		next := appendNextEvent(t, j)
		if got := decodeEvent(t, bearer.next(t)); got.ID != strconv.FormatInt(next, 10) {
			t.Errorf("watch of the bearer token got event %q, want %d", got.ID, next)
		}
	}
}

// TestAuthLoginBadInput: a login post the server cannot use says why, with
// a 4xx: not a form, too large, too slow (the route is open: a client must
// not hold a connection by promising more body), no token or two, another
// site.
func TestAuthLoginBadInput(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(newHandler(handlerDeps{journal: openAPIGoldenJournal(t), log: apiLogger(), auth: testTokenAuth(tokenAlice)}))
	t.Cleanup(srv.Close)
	form := "application/x-www-form-urlencoded"
	for _, tc := range []struct {
		name, contentType, body string
		header                  []string
		status                  int
		problem                 bool // problem+json, else the login page
	}{
		{"JSON", "application/json", `{"token":"` + tokenAlice + `"}`, nil, http.StatusUnsupportedMediaType, true},
		{"multipart", "multipart/form-data; boundary=x", "--x--", nil, http.StatusUnsupportedMediaType, true},
		{"no content type", "", "token=" + tokenAlice, nil, http.StatusUnsupportedMediaType, true},
		{"too large", form, "token=" + strings.Repeat("a", maxLoginForm), nil, http.StatusRequestEntityTooLarge, true},
		{"malformed", form, "token=%zz", nil, http.StatusBadRequest, true},
		{"no token", form, "next=/", nil, http.StatusBadRequest, false},
		{"empty token", form, "token=+", nil, http.StatusBadRequest, false},
		{"two tokens", form, "token=x&token=" + tokenAlice, nil, http.StatusBadRequest, false},
		{"another site", form, "token=" + tokenAlice, []string{"Sec-Fetch-Site", "cross-site"}, http.StatusForbidden, true},
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+loginPath, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if tc.contentType != "" {
			req.Header.Set("Content-Type", tc.contentType)
		}
		for i := 0; i+1 < len(tc.header); i += 2 {
			req.Header.Set(tc.header[i], tc.header[i+1])
		}
		resp, body := fetch(t, srv.Client(), req)
		want := "text/html; charset=utf-8"
		if tc.problem {
			want = "application/problem+json"
		}
		if resp.StatusCode != tc.status || resp.Header.Get("Content-Type") != want || len(resp.Cookies()) != 0 {
			t.Errorf("%s: %d %s %v, want %d %s without a cookie: %s", tc.name, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Cookies(), tc.status, want, body)
		}
	}

	// A body shorter than promised is given up after loginReadTimeout.
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(loginReadTimeout + waitTimeout))
	if _, err := io.WriteString(conn, "POST "+loginPath+" HTTP/1.1\r\nHost: x\r\nContent-Type: "+form+"\r\nContent-Length: 100\r\n\r\ntoken=x"); err != nil {
		t.Fatal(err)
	}
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 408 ") {
		t.Errorf("a body shorter than its length: %q %v, want 408", status, err)
	}
}

// TestAuthLoginRoutesOnlyWithTokens: without tokens there is no login
// form: its paths take what every other path takes.
func TestAuthLoginRoutesOnlyWithTokens(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(newHandler(handlerDeps{journal: openAPIGoldenJournal(t), log: apiLogger()}))
	t.Cleanup(srv.Close)
	for _, path := range []string{loginPath, logoutPath} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+path, strings.NewReader("token=x"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, body := fetch(t, srv.Client(), req)
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST %s without tokens: %d Allow %q: %s, want 405 Allow \"GET, HEAD\"", path, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}
}

// TestAuthMalformedHeader: a 401 for an Authorization header the server
// cannot read says so, rather than that the token is not accepted.
func TestAuthMalformedHeader(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(newHandler(handlerDeps{journal: openAPIGoldenJournal(t), log: apiLogger(), auth: testTokenAuth(tokenAlice)}))
	t.Cleanup(srv.Close)
	for name, values := range map[string][]string{
		"no token":    {"Bearer"},
		"a tab":       {"Bearer\t" + tokenAlice},
		"two headers": {"Bearer " + tokenAlice, "Bearer " + tokenAlice},
		"Basic":       {"Basic " + tokenAlice},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/v1/range", nil)
		req.Header["Authorization"] = values
		resp, body := fetch(t, srv.Client(), req)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "Authorization header is malformed") {
			t.Errorf("%s: %d %s, want 401 saying the header is malformed", name, resp.StatusCode, body)
		}
	}
}

// appendNextEvent appends an event at the key after j's latest and returns
// the key.
func appendNextEvent(t *testing.T, j *journal) int64 {
	t.Helper()
	_, latest, _ := j.bounds()
	next := latest + 1
	if err := j.append(record{offset: next, data: []byte(fmt.Sprintf(`{"specversion":"1.0","id":"%d","data":{"Key":%d}}`, next, next))}); err != nil {
		t.Fatal(err)
	}
	return next
}

// testTokenAuth admits the given tokens; it reads no file.
func testTokenAuth(tokens ...string) *tokenAuth {
	a := &tokenAuth{fileReloader: fileReloader{log: apiLogger(), interval: reloadInterval}, inflight: make(map[*authedRequest]struct{})}
	a.tokens.Store(newTokenSet(tokens))
	return a
}

// FuzzAuthRequest sends arbitrary requests with arbitrary credentials to
// the handler with tokens on: nothing but the probes and the login form
// answers without the listed token or a session made with it, every 401
// carries the Bearer challenge, and nothing yields a server error.
func FuzzAuthRequest(f *testing.F) {
	a := testTokenAuth(tokenAlice)
	session := newSession(a.tokens.Load(), 0)
	for _, seed := range [][4]string{
		{http.MethodGet, "/api/v1/range", "Bearer " + tokenAlice, ""},
		{http.MethodGet, "/api/v1/events?offset=1", "", sessionCookie + "=" + session},
		{http.MethodGet, "/api/v1/events/3", "Bearer " + tokenAlice + "x", ""},
		{http.MethodGet, "/metrics", "bearer  " + tokenAlice, ""},
		{http.MethodGet, "/metrics", "Basic " + tokenAlice, ""},
		{http.MethodGet, "/api/v1/range", "", sessionCookie + "=" + session + "x"},
		{http.MethodGet, "/api/v1/range", "", sessionCookieSecure + "=" + session},
		{http.MethodGet, "/livez", "", ""},
		{http.MethodGet, "/readyz?x=1", "Bearer nope", ""},
		{http.MethodGet, "/ui/login?next=//evil.example", "", ""},
		{http.MethodPost, "/ui/login", "", ""},
		{http.MethodPost, "/ui/logout", "", ""},
		{http.MethodPost, "/api/v1/range", "Bearer " + tokenAlice, ""},
		{http.MethodGet, "/livez/../api/v1/range", "", ""},
		{http.MethodGet, "//livez", "", ""},
		{http.MethodGet, "/", "", ""},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	j := newJournal(4)
	for _, k := range []int64{1, 2, 3} {
		if err := j.append(record{offset: k, data: apiRecord(k)}); err != nil {
			f.Fatal(err)
		}
	}
	h := newHandler(handlerDeps{journal: j, log: apiLogger(), auth: a})
	// The request context has ended: a watch answers and ends at once.
	ended, cancel := context.WithCancel(context.Background())
	cancel()

	f.Fuzz(func(t *testing.T, method, target, authorization, cookie string) {
		raw := method + " " + target + " HTTP/1.1\r\nHost: example.com\r\n"
		if authorization != "" {
			raw += "Authorization: " + authorization + "\r\n"
		}
		if cookie != "" {
			raw += "Cookie: " + cookie + "\r\n"
		}
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw + "\r\n")))
		if err != nil {
			return // the server would not get this far
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r.WithContext(ended))
		what := fmt.Sprintf("%s %.100q (Authorization %.60q, Cookie %.60q)", method, target, authorization, cookie)
		readyz := w.Code == http.StatusServiceUnavailable && r.URL.Path == "/readyz"
		if w.Code >= 500 && !readyz {
			t.Fatalf("%s: status %d: %s", what, w.Code, w.Body)
		}
		if w.Code == http.StatusUnauthorized && w.Header().Get("WWW-Authenticate") != wantChallenge {
			t.Fatalf("%s: 401 without the challenge", what)
		}
		open := map[string]bool{"/livez": true, "/readyz": true, loginPath: true, logoutPath: true}[r.URL.Path]
		credentials := strings.Contains(r.Header.Get("Authorization"), tokenAlice) || carriesSession(a.tokens.Load(), r)
		// Redirects (to the login form, or ServeMux's to a clean path)
		// show nothing.
		if w.Code < 300 && !open && !credentials {
			t.Fatalf("%s: status %d without credentials", what, w.Code)
		}
	})
}

// carriesSession reports whether r carries a session cookie whose value is
// exactly one minted for the first token of set, with any expiry. Sessions
// are not compared with the one made in setup: each fuzz worker makes its
// own, a second apart, and the cached corpus keeps sessions from earlier
// runs that are still valid; none of them is a forgery.
func carriesSession(set *tokenSet, r *http.Request) bool {
	for _, c := range r.Cookies() {
		if c.Name != sessionCookie && c.Name != sessionCookieSecure {
			continue
		}
		expiry, _, _ := strings.Cut(c.Value, ".")
		e, err := strconv.ParseInt(expiry, 10, 64)
		if err == nil && c.Value == sessionValue(set, 0, e) {
			return true
		}
	}
	return false
}

// nonCanonical spells the same bytes as the unpadded base64url s, with the
// unused low bits of its last character set: lenient decoders accept it.
func nonCanonical(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[last^1])
}

// TestAuthUncleanPaths: a path ServeMux redirects to its clean form is
// checked as its route is first (method, token), and labelled as it; a
// browser at an unknown path under /api gets the API's 401, not the login
// page.
func TestAuthUncleanPaths(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(newHandler(handlerDeps{journal: openAPIGoldenJournal(t), log: apiLogger(), auth: testTokenAuth(tokenAlice)}))
	t.Cleanup(srv.Close)
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	send := func(method, target, token string, header ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, srv.URL+target, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		return fetch(t, client, req)
	}
	if resp, body := send(http.MethodPut, "//api/v1/range", tokenAlice); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("PUT //api/v1/range: %d Allow %q %s, want 405", resp.StatusCode, resp.Header.Get("Allow"), body)
	}
	resp, body := send(http.MethodGet, "//api/v1/range", "")
	checkUnauthorized(t, "unclean path without a token", resp, body)
	resp, _ = send(http.MethodGet, "//api/v1/range", tokenAlice)
	if resp.StatusCode/100 != 3 || resp.Header.Get("Location") != "/api/v1/range" || !strings.Contains(resp.Header.Get("Cache-Control"), "private") {
		t.Errorf("unclean path with a token: %d to %q, Cache-Control %q; want a redirect to the clean path, private", resp.StatusCode, resp.Header.Get("Location"), resp.Header.Get("Cache-Control"))
	}
	// An escaped slash leaves the path clean: served, not redirected.
	if resp, body := send(http.MethodGet, "/api/v1/events/%2F5", tokenAlice); resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `\"/5\"`) {
		t.Errorf("/api/v1/events/%%2F5: %d %s, want 400 naming the id /5", resp.StatusCode, body)
	}
	for _, target := range []string{"/api", "/api/", "/api/v2/nothing"} {
		resp, body := send(http.MethodGet, target, "", "Accept", "text/html")
		checkUnauthorized(t, "browser at "+target, resp, body)
		if resp, _ := send(http.MethodGet, target, tokenAlice); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s with a token: %d, want 404", target, resp.StatusCode)
		}
	}
	_, metrics := send(http.MethodGet, "/metrics", tokenAlice)
	if want := `vsphere_event_streaming_http_requests_total{route="GET /api/v1/range",code="401"} 1`; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics lack %s:\n%s", want, metrics)
	}
}
