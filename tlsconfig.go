package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// HTTPS (TLS_CERT_FILE, TLS_KEY_FILE).
//
// cert-manager (or any renewal) rewrites the certificate and key files in
// place; the server reads them again every second (reload.go) and serves
// a new pair to new connections, without a restart. Open connections keep
// the certificate they were made with.

// certReloader serves the certificate and key in two files, re-reading them
// when they change (Run, of fileReloader). It is safe for concurrent use.
type certReloader struct {
	fileReloader
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

// newCertReloader reads the certificate and key; its errors are
// configuration errors naming TLS_CERT_FILE or TLS_KEY_FILE.
func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile}
	c.fileReloader = fileReloader{
		read:     c.readKeyPair,
		load:     c.takeKeyPair,
		log:      log,
		failure:  "cannot reload TLS certificate; the previous one stays in use",
		interval: reloadInterval,
	}
	if err := c.start(); err != nil {
		return nil, err
	}
	c.logCertificate("loaded TLS certificate", c.cert.Load())
	return c, nil
}

// readKeyPair reads both files; its errors name the variable of the file.
func (c *certReloader) readKeyPair() ([][]byte, error) {
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return nil, &configError{envTLSCertFile, fmt.Sprintf("%q: %v", c.certFile, fileError(err))}
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return nil, &configError{envTLSKeyFile, fmt.Sprintf("%q: %v", c.keyFile, fileError(err))}
	}
	return [][]byte{certPEM, keyPEM}, nil
}

// takeKeyPair puts a pair in use if it is one: a certificate and its key
// (cert-manager writing one file before the other, say, is not yet). Its
// errors name the variable of the file at fault.
func (c *certReloader) takeKeyPair(pair [][]byte) error {
	certPEM, keyPEM := pair[0], pair[1]
	if !holdsCertificate(certPEM) {
		return &configError{envTLSCertFile, fmt.Sprintf("%q holds no PEM certificate", c.certFile)}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The certificate parsed above, so the key is at fault: not a PEM
		// private key, or not the certificate's.
		return &configError{envTLSKeyFile, fmt.Sprintf("%q is not the private key of the certificate in %s: %v", c.keyFile, envTLSCertFile, err)}
	}
	if c.cert.Swap(&cert) != nil {
		c.logCertificate("reloaded TLS certificate", &cert)
	}
	return nil
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

// certificate returns the pair in use: tls.Config.GetCertificate.
func (c *certReloader) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cert.Load(), nil
}

// logCertificate logs a certificate's identity and validity.
func (c *certReloader) logCertificate(msg string, cert *tls.Certificate) {
	leaf := cert.Leaf
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
		GetCertificate: c.certificate,
	}
}
