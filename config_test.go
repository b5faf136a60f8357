package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	testUsername = "administrator@vsphere.local"
	// testPassword is distinctive so that a test can tell it never leaks.
	testPassword = "Pa55-w0rd-n3v3r-l0gg3d"
)

// writeSecretFiles writes the username and password files into a new
// temporary directory and returns it. A nil content leaves that file out.
func writeSecretFiles(t *testing.T, username, password *string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]*string{"username": username, "password": password} {
		if content == nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(*content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func ptr(s string) *string { return &s }

// configEnv returns a getenv over vars, as os.Getenv would answer with
// exactly these variables set.
func configEnv(vars map[string]string) func(string) string {
	return func(name string) string { return vars[name] }
}

// validVCenterEnv returns a complete, valid environment for the vCenter mode,
// with credentials files (username and password with the usual trailing
// newline) in a temporary directory.
func validVCenterEnv(t *testing.T) map[string]string {
	t.Helper()
	return map[string]string{
		envVCenterURL: "https://vc.example.com",
		envSecretPath: writeSecretFiles(t, ptr(testUsername+"\n"), ptr(testPassword+"\n")),
	}
}

// checkConfigError fails unless err is a configuration error, on one line,
// naming variable and not revealing the password.
func checkConfigError(t *testing.T, err error, variable string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %s", variable)
	}
	msg := err.Error()
	if !errors.Is(err, errConfig) {
		t.Errorf("error %q does not wrap ErrConfig", msg)
	}
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("error is not one line: %q", msg)
	}
	if !strings.Contains(msg, variable) {
		t.Errorf("error %q does not name %s", msg, variable)
	}
	if strings.Contains(msg, testPassword) || strings.Contains(msg, "s3cr3t") {
		t.Errorf("error reveals the password: %q", msg)
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	if defaultSecretPath != "/var/bindings/vsphere" {
		t.Errorf("default %s = %q, want /var/bindings/vsphere", envSecretPath, defaultSecretPath)
	}
	check := func(t *testing.T, cfg config) {
		t.Helper()
		if cfg.streamBegin != 5*time.Minute {
			t.Errorf("StreamBegin = %v, want 5m", cfg.streamBegin)
		}
		if cfg.maxRecordSize != 524288 {
			t.Errorf("MaxRecordSize = %d, want 524288", cfg.maxRecordSize)
		}
		if cfg.maxSegmentSize != 1000 {
			t.Errorf("MaxSegmentSize = %d, want 1000", cfg.maxSegmentSize)
		}
		if cfg.port != 8080 {
			t.Errorf("Port = %d, want 8080", cfg.port)
		}
		if cfg.debug {
			t.Error("Debug = true, want false")
		}
		if cfg.insecure {
			t.Error("Insecure = true, want false")
		}
	}

	t.Run("simulate", func(t *testing.T) {
		t.Parallel()
		cfg, err := parseConfig(configEnv(nil), false)
		if err != nil {
			t.Fatalf("parseConfig with an empty environment: %v", err)
		}
		check(t, cfg)
	})
	t.Run("vcenter", func(t *testing.T) {
		t.Parallel()
		cfg, err := parseConfig(configEnv(validVCenterEnv(t)), true)
		if err != nil {
			t.Fatal(err)
		}
		check(t, cfg)
		if cfg.username != testUsername || cfg.password != testPassword {
			t.Errorf("credentials %q, %q", cfg.username, cfg.password)
		}
	})
	t.Run("empty values mean the default", func(t *testing.T) {
		t.Parallel()
		env := validVCenterEnv(t)
		for _, name := range []string{envVCenterInsecure, envStreamBegin, envMaxRecordSize, envMaxSegmentSize, envPort, envDebug} {
			env[name] = ""
		}
		cfg, err := parseConfig(configEnv(env), true)
		if err != nil {
			t.Fatal(err)
		}
		check(t, cfg)
	})
	t.Run("secret path", func(t *testing.T) {
		t.Parallel()
		// Without VCENTER_SECRET_PATH the files are looked for under the
		// default directory (which a test machine does not have).
		if _, err := os.Stat(filepath.Join(defaultSecretPath, "username")); err == nil {
			t.Skipf("%s exists on this machine", defaultSecretPath)
		}
		_, err := parseConfig(configEnv(map[string]string{envVCenterURL: "https://vc.example.com"}), true)
		checkConfigError(t, err, envSecretPath)
		if err != nil && !strings.Contains(err.Error(), filepath.Join(defaultSecretPath, "username")) {
			t.Errorf("error %q does not name the default path", err)
		}
	})
}

func TestConfigValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		env   map[string]string
		check func(config) bool
	}{
		{"duration", map[string]string{envStreamBegin: "1h30m"}, func(c config) bool { return c.streamBegin == 90*time.Minute }},
		{"zero duration", map[string]string{envStreamBegin: "0s"}, func(c config) bool { return c.streamBegin == 0 }},
		{"duration with spaces", map[string]string{envStreamBegin: " 30s\n"}, func(c config) bool { return c.streamBegin == 30*time.Second }},
		{"record size", map[string]string{envMaxRecordSize: "1"}, func(c config) bool { return c.maxRecordSize == 1 }},
		{"segment size", map[string]string{envMaxSegmentSize: "25000"}, func(c config) bool { return c.maxSegmentSize == 25000 }},
		{"port", map[string]string{envPort: "9090"}, func(c config) bool { return c.port == 9090 }},
		{"port 0", map[string]string{envPort: "0"}, func(c config) bool { return c.port == 0 }},
		{"port 65535", map[string]string{envPort: "65535"}, func(c config) bool { return c.port == 65535 }},
		{"debug true", map[string]string{envDebug: "true"}, func(c config) bool { return c.debug }},
		{"debug 1", map[string]string{envDebug: "1"}, func(c config) bool { return c.debug }},
		{"debug TRUE", map[string]string{envDebug: "TRUE"}, func(c config) bool { return c.debug }},
		{"debug false", map[string]string{envDebug: "false"}, func(c config) bool { return !c.debug }},
		{"debug 0", map[string]string{envDebug: "0"}, func(c config) bool { return !c.debug }},
		{"insecure true", map[string]string{envVCenterInsecure: "true"}, func(c config) bool { return c.insecure }},
		{"insecure f", map[string]string{envVCenterInsecure: "f"}, func(c config) bool { return !c.insecure }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, needVCenter := range []bool{false, true} {
				env := map[string]string{}
				if needVCenter {
					env = validVCenterEnv(t)
				}
				for k, v := range tc.env {
					env[k] = v
				}
				cfg, err := parseConfig(configEnv(env), needVCenter)
				if err != nil {
					t.Fatalf("needVCenter=%v: %v", needVCenter, err)
				}
				if !tc.check(cfg) {
					t.Errorf("needVCenter=%v: %v gave %+v", needVCenter, tc.env, cfg)
				}
			}
		})
	}
}

func TestConfigBadValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		variable string
		value    string
	}{
		{"unparsable duration", envStreamBegin, "5"},
		{"words for a duration", envStreamBegin, "five minutes"},
		{"duration with a unit only", envStreamBegin, "m"},
		{"negative duration", envStreamBegin, "-5m"},
		{"duration with a newline inside", envStreamBegin, "5m\nx"},
		{"zero record size", envMaxRecordSize, "0"},
		{"negative record size", envMaxRecordSize, "-1"},
		{"non-numeric record size", envMaxRecordSize, "512KiB"},
		{"fractional record size", envMaxRecordSize, "1.5"},
		{"exponent record size", envMaxRecordSize, "1e6"},
		{"record size above int", envMaxRecordSize, "99999999999999999999999"},
		{"zero segment size", envMaxSegmentSize, "0"},
		{"negative segment size", envMaxSegmentSize, "-1000"},
		{"non-numeric segment size", envMaxSegmentSize, "ten"},
		{"non-numeric port", envPort, "http"},
		{"negative port", envPort, "-1"},
		{"port above 65535", envPort, "65536"},
		{"fractional port", envPort, "80.0"},
		{"host:port as port", envPort, ":8080"},
		{"debug yes", envDebug, "yes"},
		{"debug on", envDebug, "on"},
		{"debug 2", envDebug, "2"},
		{"insecure yes", envVCenterInsecure, "yes"},
		{"insecure maybe", envVCenterInsecure, "maybe"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// These settings are checked in both modes.
			for _, needVCenter := range []bool{false, true} {
				env := map[string]string{}
				if needVCenter {
					env = validVCenterEnv(t)
				}
				env[tc.variable] = tc.value
				_, err := parseConfig(configEnv(env), needVCenter)
				checkConfigError(t, err, tc.variable)
			}
		})
	}
}

func TestConfigBadVCenter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// url is VCENTER_URL; "-" leaves it unset.
		url string
		// username and password are the files' contents; nil: no file.
		username, password *string
		// secretPath, if set, replaces the directory with the files.
		secretPath string
		variable   string
	}{
		{name: "missing URL", url: "-", variable: envVCenterURL},
		{name: "empty URL", url: "", variable: envVCenterURL},
		{name: "blank URL", url: " \n", variable: envVCenterURL},
		{name: "URL without scheme", url: "vc.example.com", variable: envVCenterURL},
		{name: "URL without scheme, with port", url: "vc.example.com:443", variable: envVCenterURL},
		{name: "URL without host", url: "https://", variable: envVCenterURL},
		{name: "URL with a path only", url: "https:///sdk", variable: envVCenterURL},
		{name: "URL with wrong scheme", url: "ftp://vc.example.com", variable: envVCenterURL},
		{name: "URL with wss scheme", url: "wss://vc.example.com/sdk", variable: envVCenterURL},
		{name: "unparsable URL", url: "https://vc example com/%zz", variable: envVCenterURL},
		{name: "URL with credentials", url: "https://admin:" + testPassword + "@vc.example.com/sdk", variable: envVCenterURL},
		{name: "URL with escaped credentials", url: "https://admin:s3cr3t%40x@vc.example.com", variable: envVCenterURL},
		{name: "URL with user only", url: "https://admin@vc.example.com", variable: envVCenterURL},
		{name: "URL with query", url: "https://vc.example.com/sdk?x=1", variable: envVCenterURL},
		{name: "URL with fragment", url: "https://vc.example.com/sdk#x", variable: envVCenterURL},
		{name: "missing secret directory", secretPath: "/nonexistent/vsphere-event-streaming/secret", variable: envSecretPath},
		{name: "secret directory with a newline", secretPath: "/nonexistent/vsphere\nsecret\n", variable: envSecretPath},
		{name: "missing username file", password: ptr(testPassword), variable: envSecretPath},
		{name: "missing password file", username: ptr(testUsername), variable: envSecretPath},
		{name: "missing both files", variable: envSecretPath},
		{name: "empty username file", username: ptr(""), password: ptr(testPassword), variable: envSecretPath},
		{name: "blank username file", username: ptr(" \n"), password: ptr(testPassword), variable: envSecretPath},
		{name: "empty password file", username: ptr(testUsername), password: ptr(""), variable: envSecretPath},
		{name: "blank password file", username: ptr(testUsername), password: ptr("\r\n\t \n"), variable: envSecretPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			username, password := tc.username, tc.password
			if tc.variable == envVCenterURL {
				username, password = ptr(testUsername), ptr(testPassword)
			}
			env := map[string]string{envSecretPath: writeSecretFiles(t, username, password)}
			if tc.secretPath != "" {
				env[envSecretPath] = tc.secretPath
			}
			switch tc.url {
			case "-":
			case "":
				if tc.variable == envSecretPath {
					env[envVCenterURL] = "https://vc.example.com"
				} else {
					env[envVCenterURL] = ""
				}
			default:
				env[envVCenterURL] = tc.url
			}
			_, err := parseConfig(configEnv(env), true)
			checkConfigError(t, err, tc.variable)
			if err != nil && tc.variable == envVCenterURL && strings.Contains(tc.url, "@") && strings.Contains(err.Error(), "admin") {
				t.Errorf("error reveals the URL's user: %q", err)
			}
		})
	}
}

func TestConfigSecretDirectoryIsAFile(t *testing.T) {
	t.Parallel()
	// VCENTER_SECRET_PATH set to the password file instead of its directory.
	dir := writeSecretFiles(t, ptr(testUsername), ptr(testPassword))
	_, err := parseConfig(configEnv(map[string]string{
		envVCenterURL: "https://vc.example.com",
		envSecretPath: filepath.Join(dir, "password"),
	}), true)
	checkConfigError(t, err, envSecretPath)
}

func TestConfigCredentialsTrimmed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name               string
		username, password string
		wantUser, wantPass string
	}{
		{"no newline", testUsername, testPassword, testUsername, testPassword},
		{"trailing newline", testUsername + "\n", testPassword + "\n", testUsername, testPassword},
		{"CRLF", testUsername + "\r\n", testPassword + "\r\n", testUsername, testPassword},
		{"surrounding whitespace", "  " + testUsername + "\t \n", "\n " + testPassword + " \n\n", testUsername, testPassword},
		{"inner spaces kept", "vsphere user\n", "pass phrase with spaces\n", "vsphere user", "pass phrase with spaces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseConfig(configEnv(map[string]string{
				envVCenterURL: "https://vc.example.com",
				envSecretPath: writeSecretFiles(t, &tc.username, &tc.password),
			}), true)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.username != tc.wantUser || cfg.password != tc.wantPass {
				t.Errorf("credentials %q, %q; want %q, %q", cfg.username, cfg.password, tc.wantUser, tc.wantPass)
			}
		})
	}
}

func TestConfigVCenterURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url, want string
	}{
		{"https://vc.example.com", "https://vc.example.com/sdk"},
		{"https://vc.example.com/", "https://vc.example.com/sdk"},
		{"https://vc.example.com/sdk", "https://vc.example.com/sdk"},
		{"https://vc.example.com/sdk/", "https://vc.example.com/sdk"},
		{"https://vc.example.com:8443", "https://vc.example.com:8443/sdk"},
		{"https://vc.example.com:8443/sdk", "https://vc.example.com:8443/sdk"},
		{"http://10.0.0.1", "http://10.0.0.1/sdk"},
		{"https://[2001:db8::1]:443/", "https://[2001:db8::1]:443/sdk"},
		{"  https://vc.example.com/sdk\n", "https://vc.example.com/sdk"},
		{"https://proxy.example.com/vcenter", "https://proxy.example.com/vcenter/sdk"},
		{"https://proxy.example.com/vcenter/sdk/", "https://proxy.example.com/vcenter/sdk"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			t.Parallel()
			env := validVCenterEnv(t)
			env[envVCenterURL] = tc.url
			cfg, err := parseConfig(configEnv(env), true)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.vcenterURL == nil {
				t.Fatal("VCenterURL is nil")
			}
			if got := cfg.vcenterURL.String(); got != tc.want {
				t.Errorf("VCENTER_URL %q gives %q, want %q", tc.url, got, tc.want)
			}
			if cfg.vcenterURL.User != nil {
				t.Errorf("VCenterURL has user info %v", cfg.vcenterURL.User)
			}
			if !strings.HasSuffix(cfg.vcenterURL.Path, "/sdk") {
				t.Errorf("path %q does not end in /sdk", cfg.vcenterURL.Path)
			}
		})
	}
}

func TestConfigSimulateNeedsNoVCenter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"nothing set", nil},
		{"missing secret directory", map[string]string{envSecretPath: "/nonexistent/vsphere-event-streaming/secret"}},
		{"empty secret directory", map[string]string{envSecretPath: t.TempDir()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseConfig(configEnv(tc.env), false)
			if err != nil {
				t.Fatalf("simulate mode: %v", err)
			}
			if cfg.vcenterURL != nil || cfg.username != "" || cfg.password != "" {
				t.Errorf("simulate mode read vCenter settings: %+v", cfg)
			}
		})
	}
	// The same environment is refused when vCenter is needed.
	_, err := parseConfig(configEnv(nil), true)
	checkConfigError(t, err, envVCenterURL)
}

// configVariables lists every variable parseConfig reads, in the order of
// the README's table: what the tests hold the README, the manifests and
// parseConfig to.
func configVariables() []string {
	vars := []string{
		envVCenterURL, envVCenterInsecure, envSecretPath, envStreamBegin,
		envMaxRecordSize, envMaxSegmentSize, envPort, envDebug,
		envVCenterThumbprint,
	}
	vars = append(vars, sinkVariables()...)
	return append(vars, envTokensPath, envTLSCertFile, envTLSKeyFile)
}

// sinkVariables lists the variables of delivery to a sink, a part of
// configVariables.
func sinkVariables() []string {
	return []string{envSink, envCEOverrides, envSinkMode, envSinkFilter, envSinkCheckpointFile, envSinkTimeout}
}

func TestConfigVariables(t *testing.T) {
	t.Parallel()
	// The contract's table, in its order.
	want := []string{
		"VCENTER_URL", "VCENTER_INSECURE", "VCENTER_SECRET_PATH", "VCENTER_STREAM_BEGIN",
		"LOG_MAX_RECORD_SIZE_BYTES", "LOG_MAX_SEGMENT_SIZE", "PORT", "DEBUG",
		"VCENTER_THUMBPRINT",
		"K_SINK", "K_CE_OVERRIDES", "SINK_MODE", "SINK_FILTER", "SINK_CHECKPOINT_FILE", "SINK_TIMEOUT",
		"API_TOKENS_PATH", "TLS_CERT_FILE", "TLS_KEY_FILE",
	}
	if got := configVariables(); !slices.Equal(got, want) {
		t.Errorf("configVariables() = %v, want %v", got, want)
	}
	// parseConfig reads exactly these, no others.
	env := validVCenterEnv(t)
	read := map[string]bool{}
	if _, err := parseConfig(func(name string) string {
		read[name] = true
		return env[name]
	}, true); err != nil {
		t.Fatal(err)
	}
	var got []string
	for name := range read {
		got = append(got, name)
	}
	slices.Sort(got)
	sorted := slices.Sorted(slices.Values(want))
	if !slices.Equal(got, sorted) {
		t.Errorf("parseConfig read %v, want %v", got, sorted)
	}
}

func TestConfigErrorNeverRevealsPassword(t *testing.T) {
	t.Parallel()
	// Every way the vCenter settings can be wrong while a password is
	// around: in the file, in the URL, or where the username should be.
	dir := writeSecretFiles(t, ptr(testPassword+"\n"), ptr(""))
	for _, env := range []map[string]string{
		{envVCenterURL: "https://u:" + testPassword + "@vc.example.com", envSecretPath: dir},
		{envVCenterURL: "https://u:" + testPassword + "@", envSecretPath: dir},
		{envVCenterURL: "ftp://u:" + testPassword + "@vc.example.com", envSecretPath: dir},
		{envVCenterURL: "https://vc.example.com/sdk?password=" + testPassword, envSecretPath: dir},
		{envVCenterURL: "https://vc.example.com", envSecretPath: dir},
		{envVCenterURL: "https://vc.example.com", envSecretPath: filepath.Join(dir, "username")},
	} {
		_, err := parseConfig(configEnv(env), true)
		if err == nil {
			t.Errorf("%v: no error", env)
			continue
		}
		if strings.Contains(err.Error(), testPassword) {
			t.Errorf("error reveals the password: %q", err)
		}
	}
}

// TestFlagDefaults: the flags' defaults are the ones the README and the
// OpenAPI document state, 10,000 watches among them (issue 11's figures).
func TestFlagDefaults(t *testing.T) {
	t.Parallel()
	opts, err := parseFlags([]string{"vsphere-event-streaming"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts.maxWatches != 10000 || !opts.collector.push || opts.collector.pollInterval != time.Second || opts.collector.watchdog != 2*time.Minute {
		t.Errorf("defaults %+v", opts)
	}
	for _, doc := range []string{"README.md", "openapi.yaml"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "default 10000") {
			t.Errorf("%s does not state --max-watches' default, 10000", doc)
		}
	}
}
