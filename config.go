package main

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Names of the environment variables the server reads. They are the
// original's names; deploy/ must use exactly these (config_test.go checks).
const (
	envVCenterURL        = "VCENTER_URL"
	envVCenterInsecure   = "VCENTER_INSECURE"
	envSecretPath        = "VCENTER_SECRET_PATH"
	envStreamBegin       = "VCENTER_STREAM_BEGIN"
	envMaxRecordSize     = "LOG_MAX_RECORD_SIZE_BYTES"
	envMaxSegmentSize    = "LOG_MAX_SEGMENT_SIZE"
	envPort              = "PORT"
	envDebug             = "DEBUG"
	envVCenterThumbprint = "VCENTER_THUMBPRINT"

	// Delivery to a sink (sink.go). K_SINK and K_CE_OVERRIDES are the
	// names Knative's SinkBinding and ContainerSource inject.
	envSink               = "K_SINK"
	envCEOverrides        = "K_CE_OVERRIDES"
	envSinkMode           = "SINK_MODE"
	envSinkFilter         = "SINK_FILTER"
	envSinkCheckpointFile = "SINK_CHECKPOINT_FILE"
	envSinkTimeout        = "SINK_TIMEOUT"

	// Securing the API (tokens.go, login.go, tlsconfig.go).
	envTokensPath  = "API_TOKENS_PATH"
	envTLSCertFile = "TLS_CERT_FILE"
	envTLSKeyFile  = "TLS_KEY_FILE"
)

// caFile is the name of the file of trusted roots in the credentials
// directory (a Kubernetes Secret's key becomes a file of that name).
const caFile = "ca.crt"

// Defaults of the optional variables.
const (
	defaultSecretPath     = "/var/bindings/vsphere"
	defaultStreamBegin    = 5 * time.Minute
	defaultMaxRecordSize  = 512 * 1024
	defaultMaxSegmentSize = 1000
	defaultPort           = 8080
)

// errConfig is wrapped by every configuration error, so callers can tell a
// bad setting from a failure at run time.
var errConfig = errors.New("invalid configuration")

// configError names the variable at fault, so the one line the program
// prints before exiting tells the operator what to fix.
type configError struct {
	variable string
	problem  string
}

func (e *configError) Error() string {
	return fmt.Sprintf("%s: %s: %s", errConfig, e.variable, e.problem)
}

func (e *configError) Unwrap() error { return errConfig }

// config is the server's validated configuration.
type config struct {
	// vcenterURL is the vCenter SDK endpoint (path /sdk), without credentials.
	vcenterURL *url.URL
	// Insecure skips verification of vCenter's TLS certificate.
	insecure bool
	// Trust is what vCenter's certificate is verified against besides the
	// system's roots.
	trust vcenterTrust
	// Username and Password are read from the files under VCENTER_SECRET_PATH.
	username string
	password string
	// streamBegin is how far back from vCenter's current time to replay on start.
	streamBegin time.Duration
	// maxRecordSize is the largest CloudEvent (bytes of JSON) kept with its data.
	maxRecordSize int
	// maxSegmentSize is the number of records per journal segment.
	maxSegmentSize int
	// Port is the HTTP port; 0 picks a free one (tests use this).
	port int
	// Debug enables debug logging.
	debug bool
	// Sink is where every event is delivered; its URL is nil without K_SINK.
	sink sinkConfig
	// tokensPath is the file of bearer tokens; "" leaves the API open.
	// Its content is read by newTokenAuth (tokens.go), which keeps re-reading it.
	tokensPath string
	// TLSCertFile and TLSKeyFile, both set or both empty, switch the server
	// to HTTPS; they are read by newCertReloader (tlsconfig.go), which
	// picks up renewed files.
	tlsCertFile, tlsKeyFile string
}

// parseConfig reads and validates the environment. With needVCenter false
// (the --simulate mode) the vCenter address and credentials are not read,
// since the simulator provides them.
func parseConfig(getenv func(string) string, needVCenter bool) (config, error) {
	cfg := config{
		streamBegin:    defaultStreamBegin,
		maxRecordSize:  defaultMaxRecordSize,
		maxSegmentSize: defaultMaxSegmentSize,
		port:           defaultPort,
	}
	var err error
	if cfg.debug, err = parseBool(getenv, envDebug); err != nil {
		return cfg, err
	}
	if cfg.streamBegin, err = parseDuration(getenv, envStreamBegin, defaultStreamBegin, true); err != nil {
		return cfg, err
	}
	if cfg.maxRecordSize, err = parsePositive(getenv, envMaxRecordSize, defaultMaxRecordSize); err != nil {
		return cfg, err
	}
	if cfg.maxSegmentSize, err = parsePositive(getenv, envMaxSegmentSize, defaultMaxSegmentSize); err != nil {
		return cfg, err
	}
	if v := strings.TrimSpace(getenv(envPort)); v != "" {
		p, perr := strconv.Atoi(v)
		if perr != nil || p < 0 || p > 65535 {
			return cfg, &configError{envPort, fmt.Sprintf("%q is not a port number (0-65535)", v)}
		}
		cfg.port = p
	}
	if cfg.insecure, err = parseBool(getenv, envVCenterInsecure); err != nil {
		return cfg, err
	}
	if cfg.sink, err = parseSinkConfig(getenv); err != nil {
		return cfg, err
	}
	if err = parseAPISecurity(getenv, &cfg); err != nil {
		return cfg, err
	}
	if !needVCenter {
		return cfg, nil
	}

	raw := strings.TrimSpace(getenv(envVCenterURL))
	if raw == "" {
		return cfg, &configError{envVCenterURL, "required, e.g. https://vcenter.example.com"}
	}
	if cfg.vcenterURL, err = parseVCenterURL(raw); err != nil {
		return cfg, err
	}

	dir := strings.TrimSpace(getenv(envSecretPath))
	if dir == "" {
		dir = defaultSecretPath
	}
	if cfg.username, err = readSecret(dir, "username"); err != nil {
		return cfg, err
	}
	if cfg.password, err = readSecret(dir, "password"); err != nil {
		return cfg, err
	}
	if cfg.trust.rootCAs, err = readRootCAs(dir); err != nil {
		return cfg, err
	}
	if cfg.trust.thumbprint, err = parseThumbprint(getenv(envVCenterThumbprint)); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// vcenterTrust is how vCenter's certificate is trusted when it is verified.
type vcenterTrust struct {
	// rootCAs, if set, replace the system's roots (from ca.crt).
	rootCAs *x509.CertPool
	// thumbprint, if set, is a fingerprint of a certificate accepted even
	// if no root vouches for it, in govmomi's form (AA:BB:...).
	thumbprint string
}

// readRootCAs reads ca.crt from the credentials directory: nil if there is
// none, an error if it holds anything but PEM certificates.
func readRootCAs(dir string) (*x509.CertPool, error) {
	path := filepath.Join(dir, caFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &configError{envSecretPath, fmt.Sprintf("cannot read %q: %v", path, withoutPath(err))}
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				return nil, &configError{envSecretPath, fmt.Sprintf("%q holds something other than PEM certificates", path)}
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, &configError{envSecretPath, fmt.Sprintf("%q holds a PEM %q block, not only certificates", path, block.Type)}
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, &configError{envSecretPath, fmt.Sprintf("%q: certificate %d cannot be parsed: %v", path, n+1, oneLine(err))}
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, &configError{envSecretPath, fmt.Sprintf("%q holds no PEM certificate", path)}
	}
	return pool, nil
}

// parseThumbprint accepts a SHA-256 or SHA-1 fingerprint in hex, with or
// without colons, in any case, and returns it in govmomi's form.
func parseThumbprint(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", nil
	}
	raw, err := hex.DecodeString(strings.ReplaceAll(v, ":", ""))
	if err != nil || (len(raw) != sha256.Size && len(raw) != sha1.Size) {
		return "", &configError{envVCenterThumbprint, fmt.Sprintf("%q is not a SHA-256 or SHA-1 fingerprint in hex (64 or 40 digits, colons optional)", v)}
	}
	parts := make([]string, len(raw))
	for i, b := range raw {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":"), nil
}

// withoutPath drops an *os.PathError's own copy of its path: callers quote
// the path themselves, so that the message stays on one line whatever the
// variable holds.
func withoutPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// oneLine keeps an error message on one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// parseAPISecurity reads the paths of the token file and of the TLS
// certificate and key. Their content is checked at start by their loaders
// (tokens.go, tlsconfig.go), which own them because they re-read them while
// the server runs; parseConfig only sees that the settings fit together.
func parseAPISecurity(getenv func(string) string, cfg *config) error {
	cfg.tokensPath = strings.TrimSpace(getenv(envTokensPath))
	cfg.tlsCertFile = strings.TrimSpace(getenv(envTLSCertFile))
	cfg.tlsKeyFile = strings.TrimSpace(getenv(envTLSKeyFile))
	switch {
	case cfg.tlsCertFile != "" && cfg.tlsKeyFile == "":
		return &configError{envTLSKeyFile, "required when " + envTLSCertFile + " is set (the certificate's private key)"}
	case cfg.tlsCertFile == "" && cfg.tlsKeyFile != "":
		return &configError{envTLSCertFile, "required when " + envTLSKeyFile + " is set (the key's certificate)"}
	}
	return nil
}

// parseVCenterURL accepts the vCenter address with or without /sdk and
// returns the SDK endpoint. Credentials in the URL are refused: they would
// end up in logs and in every CloudEvent's source.
func parseVCenterURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, &configError{envVCenterURL, "not an http(s) URL with a host, e.g. https://vcenter.example.com"}
	}
	if u.User != nil {
		return nil, &configError{envVCenterURL, "must not contain credentials; put them in the files under " + envSecretPath}
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, &configError{envVCenterURL, "must not have a query or fragment"}
	}
	path := strings.TrimSuffix(u.Path, "/")
	if !strings.HasSuffix(path, "/sdk") {
		path += "/sdk"
	}
	u.Path, u.RawPath = path, ""
	return u, nil
}

// readSecret reads one credentials file. Surrounding whitespace is trimmed:
// a file written by `echo user > username` ends in a newline, which the
// original sent to vCenter as part of the name.
func readSecret(dir, name string) (string, error) {
	path := filepath.Join(dir, name)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", &configError{envSecretPath, fmt.Sprintf("cannot read %q: %v", path, withoutPath(err))}
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", &configError{envSecretPath, fmt.Sprintf("%q is empty", path)}
	}
	return v, nil
}

func parseBool(getenv func(string) string, name string) (bool, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, &configError{name, fmt.Sprintf("%q is not a boolean (true or false)", v)}
	}
	return b, nil
}

// parseDuration reads a duration, def where unset; never negative, and zero
// only with allowZero.
func parseDuration(getenv func(string) string, name string, def time.Duration, allowZero bool) (time.Duration, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, &configError{name, fmt.Sprintf("%q is not a duration (use e.g. 30s, 5m, 2h)", v)}
	case d < 0:
		return 0, &configError{name, fmt.Sprintf("%q is negative", v)}
	case d == 0 && !allowZero:
		return 0, &configError{name, fmt.Sprintf("%q is zero: give a positive duration (e.g. 10s)", v)}
	}
	return d, nil
}

func parsePositive(getenv func(string) string, name string, def int) (int, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, &configError{name, fmt.Sprintf("%q is not a positive integer", v)}
	}
	return n, nil
}

// defaultSinkTimeout bounds one delivery request to the sink.
const defaultSinkTimeout = 10 * time.Second

// Names of the modes of SINK_MODE.
const (
	sinkModeBinary     = "binary"
	sinkModeStructured = "structured"
)

// sinkConfig is where and how events are delivered (sink.go).
type sinkConfig struct {
	// URL is the sink (K_SINK); nil: no delivery.
	url *url.URL
	// Extensions are K_CE_OVERRIDES' extensions, added to every delivered event.
	extensions map[string]string
	// Structured sends whole events as application/cloudevents+json
	// instead of binary mode's ce-* headers and data body.
	structured bool
	// Filter selects the events delivered (SINK_FILTER, the API's syntax).
	filter eventFilter
	// checkpointFile keeps the offset of the last event delivered; empty: none.
	checkpointFile string
	// Timeout bounds each delivery request.
	timeout time.Duration
}

// parseSinkConfig reads the sink's variables. They are checked even
// without K_SINK, so that a typo is found before delivery is switched on.
func parseSinkConfig(getenv func(string) string) (sinkConfig, error) {
	sc := sinkConfig{timeout: defaultSinkTimeout}
	if v := strings.TrimSpace(getenv(envSink)); v != "" {
		// The URL may carry a key (in its query or user): an error names
		// only what may be shown (redactedURL).
		u, err := url.Parse(v)
		if err != nil {
			return sc, &configError{envSink, "is not a URL"}
		}
		if u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
			return sc, &configError{envSink, fmt.Sprintf("%q is not an http(s) URL with a host", redactedURL(u))}
		}
		if u.Fragment != "" {
			return sc, &configError{envSink, "must not have a fragment"}
		}
		sc.url = u
	}
	if v := strings.TrimSpace(getenv(envCEOverrides)); v != "" {
		ext, err := parseCEOverrides(v)
		if err != nil {
			return sc, &configError{envCEOverrides, err.Error()}
		}
		sc.extensions = ext
	}
	switch v := strings.TrimSpace(getenv(envSinkMode)); v {
	case "", sinkModeBinary:
	case sinkModeStructured:
		sc.structured = true
	default:
		return sc, &configError{envSinkMode, fmt.Sprintf("%q is not %s or %s", v, sinkModeBinary, sinkModeStructured)}
	}
	if v := strings.TrimSpace(getenv(envSinkFilter)); v != "" {
		// The API's own parser, so that the filter means what it means in
		// a watch.
		f, err := parseFilter(v)
		if err != nil {
			return sc, &configError{envSinkFilter, fmt.Sprintf("%q: %s (e.g. type=VmPoweredOnEvent&eventclass=event)", v, err)}
		}
		sc.filter = f
	}
	if v := strings.TrimSpace(getenv(envSinkCheckpointFile)); v != "" {
		if err := checkCheckpointDir(v); err != nil {
			return sc, &configError{envSinkCheckpointFile, err.Error()}
		}
		sc.checkpointFile = v
	}
	var err error
	sc.timeout, err = parseDuration(getenv, envSinkTimeout, sc.timeout, false)
	return sc, err
}

// reservedAttributes are the CloudEvent attributes K_CE_OVERRIDES must not
// set: the event's own, which say what the event is.
var reservedAttributes = []string{
	"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64",
	extEventClass, extDataDropped,
}

// parseCEOverrides reads Knative's {"extensions":{"name":"value",...}}.
func parseCEOverrides(v string) (map[string]string, error) {
	var o struct {
		Extensions map[string]string `json:"extensions"`
	}
	dec := json.NewDecoder(strings.NewReader(v))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&o); err != nil {
		return nil, fmt.Errorf("not JSON of the form {\"extensions\":{\"name\":\"value\"}}: %s", oneLine(err))
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	for name := range o.Extensions {
		if name == "" || len(name) > 20 || strings.IndexFunc(name, func(r rune) bool { return (r < 'a' || r > 'z') && (r < '0' || r > '9') }) >= 0 {
			return nil, fmt.Errorf("extension name %q is not 1-20 lower-case letters or digits", name)
		}
		if slices.Contains(reservedAttributes, name) {
			return nil, fmt.Errorf("extension name %q is an attribute of the event itself", name)
		}
	}
	return o.Extensions, nil
}

// checkCheckpointDir fails unless a file can be created beside path, as
// the checkpoint's temporary file is, and path itself, if present, is a
// regular file.
func checkCheckpointDir(path string) error {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%q is not a regular file", path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".checkpoint-probe-*")
	if err != nil {
		return fmt.Errorf("cannot create files in %q: %v", filepath.Dir(path), withoutPath(err))
	}
	name := f.Name()
	_ = f.Close()
	return os.Remove(name)
}
