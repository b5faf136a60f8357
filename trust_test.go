package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"hash"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pem returns the CA's certificate in PEM, as a ca.crt file holds it.
func (ca *testCA) pem() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// privateCAVCenter is a simulated vCenter whose certificate a private CA signed.
type privateCAVCenter struct {
	sim  *simulation
	ca   *testCA
	leaf *x509.Certificate
}

func startPrivateCAVCenter(t *testing.T) *privateCAVCenter {
	t.Helper()
	ca := newTestCA(t)
	cert, err := tls.X509KeyPair(ca.issue(t, 2))
	if err != nil {
		t.Fatal(err)
	}
	sim := startTestSimulationTLS(t, &tls.Config{Certificates: []tls.Certificate{cert}})
	return &privateCAVCenter{sim: sim, ca: ca, leaf: cert.Leaf}
}

// secrets writes the credentials directory, with ca.crt if caPEM is set.
func (v *privateCAVCenter) secrets(t *testing.T, caPEM []byte) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "username"), v.sim.username)
	writeFile(t, filepath.Join(dir, "password"), v.sim.password)
	if caPEM != nil {
		writeFile(t, filepath.Join(dir, caFile), string(caPEM))
	}
	return dir
}

// fingerprint formats a hash the way people paste it: lower case, with or
// without colons.
func fingerprint(sum []byte, colons bool) string {
	h := hex.EncodeToString(sum)
	if !colons {
		return h
	}
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// pinned returns the settings that pin vCenter's certificate by its
// fingerprint of the given hash, written in the given case, with or
// without colons.
func pinned(h func() hash.Hash, letterCase func(string) string, colons bool) func(t *testing.T, vc *privateCAVCenter) map[string]string {
	return func(t *testing.T, vc *privateCAVCenter) map[string]string {
		sum := h()
		sum.Write(vc.leaf.Raw)
		return map[string]string{
			envSecretPath:        vc.secrets(t, nil),
			envVCenterThumbprint: letterCase(fingerprint(sum.Sum(nil), colons)),
		}
	}
}

// TestTrustPrivateCA: with verification on, vCenter's certificate is
// trusted through ca.crt, or through its SHA-256 or SHA-1 fingerprint.
func TestTrustPrivateCA(t *testing.T) {
	t.Parallel()
	for name, trust := range map[string]func(t *testing.T, vc *privateCAVCenter) map[string]string{
		"ca.crt": func(t *testing.T, vc *privateCAVCenter) map[string]string {
			// An unrelated certificate too: ca.crt may hold several.
			return map[string]string{envSecretPath: vc.secrets(t, append(newTestCA(t).pem(), vc.ca.pem()...))}
		},
		"sha256":         pinned(sha256.New, strings.ToUpper, true),
		"sha256 bare":    pinned(sha256.New, strings.ToLower, false),
		"sha1 as govc":   pinned(sha1.New, strings.ToUpper, true),
		"sha1 lowercase": pinned(sha1.New, strings.ToLower, false),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// A simulator each: servers that create and destroy history
			// collectors at once race inside the simulator.
			vc := startPrivateCAVCenter(t)
			env := trust(t, vc)
			env[envVCenterInsecure] = "false"
			s := startServer(t, vc.sim, env)
			if code, _ := get(t, s.url+"/readyz"); code != http.StatusOK {
				t.Errorf("/readyz = %d, want 200", code)
			}
		})
	}
}

// TestTrustUntrusted: without ca.crt or a fingerprint, an untrusted
// certificate keeps the server up and not ready, retrying, and the log says
// how to fix it, with the fingerprint vCenter presented.
func TestTrustUntrusted(t *testing.T) {
	t.Parallel()
	wrongSum := sha256.Sum256([]byte("another certificate"))
	for name, trust := range map[string]func(t *testing.T, vc *privateCAVCenter) map[string]string{
		"nothing": func(t *testing.T, vc *privateCAVCenter) map[string]string {
			return map[string]string{envSecretPath: vc.secrets(t, nil)}
		},
		"another CA": func(t *testing.T, vc *privateCAVCenter) map[string]string {
			return map[string]string{envSecretPath: vc.secrets(t, newTestCA(t).pem())}
		},
		"fingerprint": func(t *testing.T, vc *privateCAVCenter) map[string]string {
			return map[string]string{envSecretPath: vc.secrets(t, nil), envVCenterThumbprint: fingerprint(wrongSum[:], true)}
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			vc := startPrivateCAVCenter(t)
			env := trust(t, vc)
			env[envVCenterInsecure] = "false"
			s := launchServer(t, vc.sim, env)
			msg := "vCenter's certificate is not trusted; reconnecting. Fix one of three ways: put the CA that signed it (PEM) in the file ca.crt in VCENTER_SECRET_PATH, set VCENTER_THUMBPRINT to the certificate's fingerprint, or set VCENTER_INSECURE=true to skip verification"
			rec := s.logs.waitN(t, msg, 2, s.stopped)
			sum := sha256.Sum256(vc.leaf.Raw)
			if want := strings.ToUpper(fingerprint(sum[:], true)); rec["sha256_fingerprint"] != want {
				t.Errorf("logged fingerprint %v, want %s", rec["sha256_fingerprint"], want)
			}
			if code, _ := get(t, s.url+"/readyz"); code != http.StatusServiceUnavailable {
				t.Errorf("/readyz = %d, want 503", code)
			}
			if code, _ := get(t, s.url+"/livez"); code != http.StatusOK {
				t.Errorf("/livez = %d, want 200", code)
			}
		})
	}
}

// TestTrustConfigErrors: a malformed ca.crt or VCENTER_THUMBPRINT stops the
// program at start with one line naming it.
func TestTrustConfigErrors(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	for name, caPEM := range map[string]string{
		"empty":        "",
		"not PEM":      "this is not a certificate\n",
		"trailing":     string(ca.pem()) + "garbage",
		"private key":  string(keyPEM),
		"bad DER":      string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")})),
		"key and cert": string(ca.pem()) + string(keyPEM),
	} {
		t.Run("ca.crt "+name, func(t *testing.T) {
			t.Parallel()
			env := validVCenterEnv(t)
			if err := os.WriteFile(filepath.Join(env[envSecretPath], caFile), []byte(caPEM), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := parseConfig(configEnv(env), true)
			checkConfigError(t, err, envSecretPath)
			if err != nil && !strings.Contains(err.Error(), caFile) {
				t.Errorf("error %q does not name %s", err, caFile)
			}
		})
	}
	for _, v := range []string{"abc", "zz:" + strings.Repeat("00:", 31), strings.Repeat("a", 63), strings.Repeat("ab", 33), strings.Repeat("ab:", 19) + "a", "-"} {
		t.Run("thumbprint "+v, func(t *testing.T) {
			t.Parallel()
			env := validVCenterEnv(t)
			env[envVCenterThumbprint] = v
			_, err := parseConfig(configEnv(env), true)
			checkConfigError(t, err, envVCenterThumbprint)
		})
	}
	// A readable ca.crt and a good fingerprint are taken.
	env := validVCenterEnv(t)
	writeFile(t, filepath.Join(env[envSecretPath], caFile), string(ca.pem()))
	env[envVCenterThumbprint] = " " + strings.Repeat("aB:", 31) + "aB\n"
	cfg, err := parseConfig(configEnv(env), true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.trust.rootCAs == nil || cfg.trust.thumbprint != strings.Repeat("AB:", 31)+"AB" {
		t.Errorf("trust %+v", cfg.trust)
	}
	// Through run, the program stops with the error.
	env[envVCenterThumbprint] = "nope"
	if err := run(t.Context(), []string{"vsphere-event-streaming"}, configEnv(env), nil, nil, nil); err == nil || !strings.Contains(err.Error(), envVCenterThumbprint) {
		t.Errorf("run: %v", err)
	}
}

// TestCertificateUntrustedNil: a session that ends without an error is not
// a trust failure (the check once dereferenced the nil error).
func TestCertificateUntrustedNil(t *testing.T) {
	t.Parallel()
	if certificateUntrusted(nil) {
		t.Error("certificateUntrusted(nil) = true")
	}
}
