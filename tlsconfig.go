package main

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// HTTPS (TLS_CERT_FILE, TLS_KEY_FILE).
//
// cert-manager (or any renewal) rewrites the certificate and key files in
// place; the server picks the new pair up for new connections, without a
// restart. GetCertificate checks the files at every handshake with a stat
// of each: a handshake costs far more than two stats, no goroutine is
// needed, and a renewal takes effect at the very next connection. Open
// connections keep the certificate they were made with.

// racyWindow is how long after a file's modification time its stat is
// not trusted to tell a later change: file systems stamp times with a
// coarse clock (a few milliseconds), so two writes of the same size within
// one tick leave identical stats. Until then the content is compared.
const racyWindow = 2 * time.Second

// certReloader serves the certificate and key in two files, re-reading them
// when they change. It is safe for concurrent use.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu   sync.Mutex
	cert *tls.Certificate
	// The stats of the files the current pair was read from, when they
	// were taken, and the digest of their content.
	certInfo, keyInfo os.FileInfo
	statTime          time.Time
	sum               [sha256.Size]byte
	// The pair last refused: its digest, its files' stats and when they
	// were taken, and the error last logged, not to read, parse and log
	// them again at every handshake while it stays on disk.
	badSum                  [sha256.Size]byte
	badCertInfo, badKeyInfo os.FileInfo
	badStatTime             time.Time
	lastErr                 string
}

// newCertReloader reads the certificate and key; its errors are
// configuration errors naming TLS_CERT_FILE or TLS_KEY_FILE.
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	p, err := readKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cert, err := p.parse()
	if err != nil {
		return nil, err
	}
	c.cert, c.certInfo, c.keyInfo, c.statTime, c.sum = cert, p.certInfo, p.keyInfo, p.statTime, p.sum()
	c.logLoaded("loaded TLS certificate")
	return c, nil
}

// keyPairFiles is what the certificate and key files held when read.
type keyPairFiles struct {
	certFile, keyFile string
	certInfo, keyInfo os.FileInfo // taken before reading: a change after them shows later
	statTime          time.Time
	certPEM, keyPEM   []byte
}

// readKeyPair reads both files; its errors name the variable of the file.
func readKeyPair(certFile, keyFile string) (*keyPairFiles, error) {
	p := &keyPairFiles{certFile: certFile, keyFile: keyFile, statTime: time.Now()}
	var err error
	if p.certInfo, p.certPEM, err = statAndRead(certFile); err != nil {
		return nil, &configError{envTLSCertFile, fmt.Sprintf("%q: %s", certFile, fileProblem(err))}
	}
	if p.keyInfo, p.keyPEM, err = statAndRead(keyFile); err != nil {
		return nil, &configError{envTLSKeyFile, fmt.Sprintf("%q: %s", keyFile, fileProblem(err))}
	}
	return p, nil
}

func (p *keyPairFiles) sum() [sha256.Size]byte {
	h := sha256.New()
	h.Write(p.certPEM)
	h.Write([]byte{0})
	h.Write(p.keyPEM)
	return [sha256.Size]byte(h.Sum(nil))
}

// parse checks the pair; its errors name the variable of the file at fault.
func (p *keyPairFiles) parse() (*tls.Certificate, error) {
	if !holdsCertificate(p.certPEM) {
		return nil, &configError{envTLSCertFile, fmt.Sprintf("%q holds no PEM certificate", p.certFile)}
	}
	cert, err := tls.X509KeyPair(p.certPEM, p.keyPEM)
	if err != nil {
		// The certificate parsed above, so the key is at fault: not a PEM
		// private key, or not the certificate's.
		return nil, &configError{envTLSKeyFile, fmt.Sprintf("%q is not the private key of the certificate in %s: %v", p.keyFile, envTLSCertFile, err)}
	}
	return &cert, nil
}

func statAndRead(path string) (os.FileInfo, []byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(path)
	return info, b, err
}

// holdsCertificate reports whether the first PEM certificate in b parses.
func holdsCertificate(b []byte) bool {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return false
		}
		if block.Type == "CERTIFICATE" {
			_, err := x509.ParseCertificate(block.Bytes)
			return err == nil
		}
	}
}

// settled reports whether a file is, as far as stat tells, the one whose
// stat was taken at statTime: the same inode (a Kubernetes Secret update
// swaps a "..data" symlink to a new directory, so the path then leads to
// another inode), size and modification time, and that time old enough
// then for a later write to show in it (racyWindow).
func settled(was, now os.FileInfo, statTime time.Time) bool {
	return was != nil && now != nil && os.SameFile(was, now) && was.Size() == now.Size() &&
		was.ModTime().Equal(now.ModTime()) && now.ModTime().Before(statTime.Add(-racyWindow))
}

// GetCertificate returns the current pair, first re-reading the files if
// they may have changed. A pair that cannot be read or does not match
// (cert-manager writing one file before the other, say) leaves the previous
// one in use; the error is logged once.
func (c *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	certInfo, certErr := os.Stat(c.certFile)
	keyInfo, keyErr := os.Stat(c.keyFile)
	c.mu.Lock()
	current := c.cert
	unchanged := certErr == nil && keyErr == nil &&
		(settled(c.certInfo, certInfo, c.statTime) && settled(c.keyInfo, keyInfo, c.statTime) ||
			settled(c.badCertInfo, certInfo, c.badStatTime) && settled(c.badKeyInfo, keyInfo, c.badStatTime))
	c.mu.Unlock()
	if unchanged {
		return current, nil
	}
	// Read without the lock: other handshakes go on meanwhile.
	p, err := readKeyPair(c.certFile, c.keyFile)
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum [sha256.Size]byte
	if err == nil {
		sum = p.sum()
		switch sum {
		case c.sum: // the same content: only the stats changed, or time passed
			c.certInfo, c.keyInfo, c.statTime = p.certInfo, p.keyInfo, p.statTime
			return c.cert, nil
		case c.badSum:
			c.badCertInfo, c.badKeyInfo, c.badStatTime = p.certInfo, p.keyInfo, p.statTime
			return c.cert, nil
		}
	}
	var cert *tls.Certificate
	if err == nil {
		cert, err = p.parse()
	}
	if err != nil {
		c.badSum = sum
		if p != nil {
			c.badCertInfo, c.badKeyInfo, c.badStatTime = p.certInfo, p.keyInfo, p.statTime
		}
		if msg := err.Error(); msg != c.lastErr {
			c.lastErr = msg
			c.log.Error("cannot reload TLS certificate; the previous one stays in use", "error", msg)
		}
		return c.cert, nil
	}
	c.cert, c.certInfo, c.keyInfo, c.statTime, c.sum = cert, p.certInfo, p.keyInfo, p.statTime, sum
	c.badSum, c.lastErr = [sha256.Size]byte{}, ""
	c.logLoaded("reloaded TLS certificate")
	return c.cert, nil
}

// logLoaded logs the current certificate's identity and validity; c.mu is
// held or c not yet shared.
func (c *certReloader) logLoaded(msg string) {
	leaf := c.cert.Leaf
	if leaf == nil {
		return
	}
	c.log.Info(msg, "subject", leaf.Subject.String(), "dnsNames", leaf.DNSNames,
		"notAfter", leaf.NotAfter.UTC().Format(time.RFC3339), "serial", leaf.SerialNumber.String())
	if time.Now().After(leaf.NotAfter) {
		c.log.Warn("the TLS certificate has expired", "notAfter", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
}

// tlsConfig is the server's TLS configuration: TLS 1.2 or later (Go's
// default cipher suites, all with forward secrecy and AEAD for TLS 1.2),
// the reloading certificate. http.Server.ServeTLS adds HTTP/2 (h2) to the
// protocols it offers.
func (c *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.GetCertificate,
	}
}
