package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Names of the environment variables the server reads. They are the
// original's names; deploy/ must use exactly these (config_test.go checks).
const (
	envVCenterURL      = "VCENTER_URL"
	envVCenterInsecure = "VCENTER_INSECURE"
	envSecretPath      = "VCENTER_SECRET_PATH"
	envStreamBegin     = "VCENTER_STREAM_BEGIN"
	envMaxRecordSize   = "LOG_MAX_RECORD_SIZE_BYTES"
	envMaxSegmentSize  = "LOG_MAX_SEGMENT_SIZE"
	envPort            = "PORT"
	envDebug           = "DEBUG"
	envTokensPath      = "API_TOKENS_PATH"
	envTLSCertFile     = "TLS_CERT_FILE"
	envTLSKeyFile      = "TLS_KEY_FILE"
)

// configVariables lists every variable parseConfig reads, in the order of
// the README's table.
func configVariables() []string {
	return []string{
		envVCenterURL, envVCenterInsecure, envSecretPath, envStreamBegin,
		envMaxRecordSize, envMaxSegmentSize, envPort, envDebug,
		envTokensPath, envTLSCertFile, envTLSKeyFile,
	}
}

// Defaults of the optional variables.
const (
	defaultSecretPath     = "/var/bindings/vsphere"
	defaultStreamBegin    = 5 * time.Minute
	defaultMaxRecordSize  = 512 * 1024
	defaultMaxSegmentSize = 1000
	defaultPort           = 8080
)

// ErrConfig is wrapped by every configuration error, so callers can tell a
// bad setting from a failure at run time.
var ErrConfig = errors.New("invalid configuration")

// configError names the variable at fault, so the one line the program
// prints before exiting tells the operator what to fix.
type configError struct {
	variable string
	problem  string
}

func (e *configError) Error() string {
	return fmt.Sprintf("%s: %s: %s", ErrConfig, e.variable, e.problem)
}

func (e *configError) Unwrap() error { return ErrConfig }

// Config is the server's validated configuration.
type Config struct {
	// VCenterURL is the vCenter SDK endpoint (path /sdk), without credentials.
	VCenterURL *url.URL
	// Insecure skips verification of vCenter's TLS certificate.
	Insecure bool
	// Username and Password are read from the files under VCENTER_SECRET_PATH.
	Username string
	Password string
	// StreamBegin is how far back from vCenter's current time to replay on start.
	StreamBegin time.Duration
	// MaxRecordSize is the largest CloudEvent (bytes of JSON) kept with its data.
	MaxRecordSize int
	// MaxSegmentSize is the number of records per journal segment.
	MaxSegmentSize int
	// Port is the HTTP port; 0 picks a free one (tests use this).
	Port int
	// Debug enables debug logging.
	Debug bool
	// TokensPath is the file of bearer tokens; "" leaves the API open.
	// Its content is read by newTokenAuth (auth.go), which keeps re-reading it.
	TokensPath string
	// TLSCertFile and TLSKeyFile, both set or both empty, switch the server
	// to HTTPS; they are read by newCertReloader (tlsconfig.go), which
	// picks up renewed files.
	TLSCertFile, TLSKeyFile string
}

// parseConfig reads and validates the environment. With needVCenter false
// (the --simulate mode) the vCenter address and credentials are not read,
// since the simulator provides them.
func parseConfig(getenv func(string) string, needVCenter bool) (Config, error) {
	cfg := Config{
		StreamBegin:    defaultStreamBegin,
		MaxRecordSize:  defaultMaxRecordSize,
		MaxSegmentSize: defaultMaxSegmentSize,
		Port:           defaultPort,
	}
	var err error
	if cfg.Debug, err = parseBool(getenv, envDebug); err != nil {
		return cfg, err
	}
	if v := strings.TrimSpace(getenv(envStreamBegin)); v != "" {
		d, perr := time.ParseDuration(v)
		if perr != nil {
			return cfg, &configError{envStreamBegin, fmt.Sprintf("%q is not a duration (use e.g. 30s, 5m, 2h)", v)}
		}
		if d < 0 {
			return cfg, &configError{envStreamBegin, fmt.Sprintf("%q is negative", v)}
		}
		cfg.StreamBegin = d
	}
	if cfg.MaxRecordSize, err = parsePositive(getenv, envMaxRecordSize, defaultMaxRecordSize); err != nil {
		return cfg, err
	}
	if cfg.MaxSegmentSize, err = parsePositive(getenv, envMaxSegmentSize, defaultMaxSegmentSize); err != nil {
		return cfg, err
	}
	if v := strings.TrimSpace(getenv(envPort)); v != "" {
		p, perr := strconv.Atoi(v)
		if perr != nil || p < 0 || p > 65535 {
			return cfg, &configError{envPort, fmt.Sprintf("%q is not a port number (0-65535)", v)}
		}
		cfg.Port = p
	}
	if cfg.Insecure, err = parseBool(getenv, envVCenterInsecure); err != nil {
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
	if cfg.VCenterURL, err = parseVCenterURL(raw); err != nil {
		return cfg, err
	}

	dir := strings.TrimSpace(getenv(envSecretPath))
	if dir == "" {
		dir = defaultSecretPath
	}
	if cfg.Username, err = readSecret(dir, "username"); err != nil {
		return cfg, err
	}
	if cfg.Password, err = readSecret(dir, "password"); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// parseAPISecurity reads the paths of the token file and of the TLS
// certificate and key. Their content is checked at start by their loaders
// (auth.go, tlsconfig.go), which own them because they re-read them while
// the server runs; parseConfig only sees that the settings fit together.
func parseAPISecurity(getenv func(string) string, cfg *Config) error {
	cfg.TokensPath = strings.TrimSpace(getenv(envTokensPath))
	cfg.TLSCertFile = strings.TrimSpace(getenv(envTLSCertFile))
	cfg.TLSKeyFile = strings.TrimSpace(getenv(envTLSKeyFile))
	switch {
	case cfg.TLSCertFile != "" && cfg.TLSKeyFile == "":
		return &configError{envTLSKeyFile, "required when " + envTLSCertFile + " is set (the certificate's private key)"}
	case cfg.TLSCertFile == "" && cfg.TLSKeyFile != "":
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
		// The path is quoted (and the PathError's own copy of it dropped) so
		// that the message stays on one line whatever the variable holds.
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", &configError{envSecretPath, fmt.Sprintf("cannot read %q: %v", path, err)}
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
