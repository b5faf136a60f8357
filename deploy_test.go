package main

// These tests keep deploy/, the Dockerfile and config.go in step: a renamed
// variable, a moved mount or a changed port would otherwise only show up as a
// pod that silently uses a default or never becomes ready.
//
// The manifests are read by scanning lines and indentation rather than with a
// YAML library, as the module depends on nothing else. That covers the block
// style the files are written in (mappings, "- " sequences, comments).

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	deployNamespace  = "vcenter-stream"
	deployName       = "vsphere-event-stream"
	deploySecretName = "vsphere-credentials"
)

// manifest is one YAML document of a file in deploy/.
type manifest struct {
	file  string
	lines []string
}

// loadManifests returns every document of deploy/*.yaml and of the
// optional manifests one directory down (deploy/knative/ needs Knative
// Eventing installed, deploy/tls/ cert-manager, so each is applied on its
// own), which follow the same rules.
func loadManifests(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("deploy", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/*.yaml manifests (err %v)", err)
	}
	optional, err := filepath.Glob(filepath.Join("deploy", "*", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, optional...)
	var docs []manifest
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		flush := func() {
			if slices.ContainsFunc(lines, isYAMLContent) {
				docs = append(docs, manifest{file, lines})
			}
			lines = nil
		}
		for line := range strings.Lines(string(b)) {
			line = strings.TrimRight(line, "\r\n")
			if strings.HasPrefix(line, "---") {
				flush()
				continue
			}
			lines = append(lines, line)
		}
		flush()
	}
	return docs
}

// findManifest returns the one document of the given kind and name.
func findManifest(t *testing.T, kind, name string) manifest {
	t.Helper()
	var found []manifest
	for _, doc := range loadManifests(t) {
		if yamlScalar(doc.lines, "kind") == kind && yamlScalar(yamlChild(doc.lines, "metadata"), "name") == name {
			found = append(found, doc)
		}
	}
	if len(found) != 1 {
		t.Fatalf("found %d %s %q in deploy/, want 1", len(found), kind, name)
	}
	return found[0]
}

// serverContainer returns the server's container of its Deployment.
func serverContainer(t *testing.T) []string {
	t.Helper()
	doc := findManifest(t, "Deployment", deployName)
	containers := yamlItems(yamlPath(doc.lines, "spec", "template", "spec", "containers"))
	if len(containers) != 1 {
		t.Fatalf("%s: Deployment %s has %d containers, want 1", doc.file, deployName, len(containers))
	}
	return containers[0]
}

// containerEnv returns the container's env entries by name; a name listed
// twice fails the test, since Kubernetes would quietly keep only one.
func containerEnv(t *testing.T, container []string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, item := range yamlItems(yamlChild(container, "env")) {
		name := yamlScalar(item, "name")
		if _, dup := env[name]; dup {
			t.Errorf("env %s is set twice", name)
		}
		env[name] = yamlScalar(item, "value")
	}
	return env
}

func TestDeployEnvMatchesConfig(t *testing.T) {
	t.Parallel()
	env := containerEnv(t, serverContainer(t))
	for name := range env {
		if !slices.Contains(configVariables(), name) {
			t.Errorf("Deployment sets %s, which the server does not read", name)
		}
	}
	for _, name := range configVariables() {
		// The serving Deployment may have many replicas: it must not
		// deliver to a sink (deploy/knative/sink.yaml does, with one).
		if slices.Contains(sinkVariables(), name) {
			if _, ok := env[name]; ok {
				t.Errorf("Deployment sets %s: only the single-replica sink Deployment should", name)
			}
			continue
		}
		if _, ok := env[name]; !ok {
			t.Errorf("Deployment does not set %s", name)
		}
	}
	// The example values must also be ones the server accepts at start.
	if _, err := parseConfig(func(name string) string { return env[name] }, false); err != nil {
		t.Errorf("Deployment's env is refused: %v", err)
	}
	if _, err := parseVCenterURL(env[envVCenterURL]); err != nil {
		t.Errorf("Deployment's %s is refused: %v", envVCenterURL, err)
	}
}

func TestDeploySecretMount(t *testing.T) {
	t.Parallel()
	doc := findManifest(t, "Deployment", deployName)
	container := serverContainer(t)
	secretPath := containerEnv(t, container)[envSecretPath]
	if secretPath == "" {
		secretPath = defaultSecretPath
	}

	checkSecretMount(t, doc, container, deploySecretName, secretPath)

	// The example Secret must carry the file names readSecret reads.
	stringData := yamlChild(findManifest(t, "Secret", deploySecretName).lines, "stringData")
	for _, key := range []string{"username", "password"} {
		if yamlScalar(stringData, key) == "" {
			t.Errorf("example Secret has no stringData %s", key)
		}
	}
	// It shows where a private CA goes, under the name readRootCAs reads.
	secret, err := os.ReadFile(filepath.Join("deploy", "secret.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(secret), "# "+caFile+": |") {
		t.Errorf("example Secret does not show the optional key %s", caFile)
	}
}

// checkSecretMount checks that the Deployment's container mounts the
// Secret secretName read-only at path, and returns the mount.
func checkSecretMount(t *testing.T, doc manifest, container []string, secretName, path string) []string {
	t.Helper()
	var volume string
	for _, item := range yamlItems(yamlPath(doc.lines, "spec", "template", "spec", "volumes")) {
		if yamlScalar(yamlChild(item, "secret"), "secretName") == secretName {
			volume = yamlScalar(item, "name")
		}
	}
	if volume == "" {
		t.Fatalf("no volume of Secret %s", secretName)
	}
	for _, item := range yamlItems(yamlChild(container, "volumeMounts")) {
		if yamlScalar(item, "name") != volume {
			continue
		}
		if got := yamlScalar(item, "mountPath"); got != path {
			t.Errorf("Secret %s mounted at %q, want %q", secretName, got, path)
		}
		if got := yamlScalar(item, "readOnly"); got != "true" {
			t.Errorf("Secret %s mount has readOnly: %q, want true", secretName, got)
		}
		return item
	}
	t.Errorf("volume %s is not mounted", volume)
	return nil
}

// deployTokensSecretName is the Secret of the API tokens.
const deployTokensSecretName = "api-tokens"

func TestDeployTokenSecretMount(t *testing.T) {
	t.Parallel()
	doc := findManifest(t, "Deployment", deployName)
	container := serverContainer(t)
	tokensPath := containerEnv(t, container)[envTokensPath]
	if tokensPath == "" {
		t.Fatalf("the Deployment leaves %s unset: the API would be open to anyone reaching the pod", envTokensPath)
	}
	dir, file := filepath.Dir(tokensPath), filepath.Base(tokensPath)

	mount := checkSecretMount(t, doc, container, deployTokensSecretName, dir)
	// A subPath mount never sees the Secret's updates: no rotation.
	if got := yamlScalar(mount, "subPath"); got != "" {
		t.Errorf("tokens Secret mounted with subPath %q: kubelet does not update it", got)
	}

	// The example Secret carries the file API_TOKENS_PATH names, with
	// tokens the server accepts.
	stringData := findManifest(t, "Secret", deployTokensSecretName).lines
	block := yamlChild(yamlChild(stringData, "stringData"), file)
	if len(block) == 0 {
		t.Fatalf("example Secret %s has no stringData %s", deployTokensSecretName, file)
	}
	var content strings.Builder
	for _, line := range block {
		content.WriteString(strings.TrimSpace(line) + "\n")
	}
	if tokens, err := parseTokens([]byte(content.String())); err != nil || len(tokens) == 0 {
		t.Errorf("example Secret's tokens are refused: %v", err)
	}
}

func TestDeployNetworkPolicy(t *testing.T) {
	t.Parallel()
	policy := findManifest(t, "NetworkPolicy", deployName)
	spec := yamlChild(policy.lines, "spec")
	labels := yamlMapping(yamlPath(findManifest(t, "Deployment", deployName).lines, "spec", "template", "metadata", "labels"))
	selector := yamlMapping(yamlPath(spec, "podSelector", "matchLabels"))
	if len(selector) == 0 {
		t.Error("NetworkPolicy selects no pods by label")
	}
	for key, value := range selector {
		if labels[key] != value {
			t.Errorf("NetworkPolicy selects %s=%s, which the Deployment's pods do not carry", key, value)
		}
	}
	var types []string
	for _, item := range yamlItems(yamlChild(spec, "policyTypes")) {
		types = append(types, strings.TrimSpace(item[0]))
	}
	if !slices.Contains(types, "Ingress") {
		t.Errorf("policyTypes %v lacks Ingress", types)
	}

	container := serverContainer(t)
	ports := yamlItems(yamlChild(container, "ports"))
	portName, portNumber := yamlScalar(ports[0], "name"), yamlScalar(ports[0], "containerPort")
	rules := yamlItems(yamlChild(spec, "ingress"))
	if len(rules) == 0 {
		t.Fatal("NetworkPolicy has no ingress rule: it would drop every client")
	}
	for i, rule := range rules {
		// Every rule admits only labelled pods, and only to the API port.
		peers := yamlItems(yamlChild(rule, "from"))
		if len(peers) == 0 {
			t.Errorf("ingress rule %d has no from: it admits everyone", i)
		}
		for j, peer := range peers {
			if len(yamlMapping(yamlPath(peer, "podSelector", "matchLabels"))) == 0 || yamlChild(peer, "ipBlock") != nil {
				t.Errorf("ingress rule %d, peer %d admits more than pods carrying a label", i, j)
			}
		}
		rulePorts := yamlItems(yamlChild(rule, "ports"))
		if len(rulePorts) == 0 {
			t.Errorf("ingress rule %d admits every port", i)
		}
		for _, p := range rulePorts {
			if got := yamlScalar(p, "port"); got != portName && got != portNumber {
				t.Errorf("ingress rule %d admits port %q, not the container's (%s/%s)", i, got, portName, portNumber)
			}
		}
	}
}

func TestDeployCertificateExample(t *testing.T) {
	t.Parallel()
	cert := findManifest(t, "Certificate", deployName)
	spec := yamlChild(cert.lines, "spec")
	if yamlScalar(spec, "secretName") == "" {
		t.Error("Certificate has no secretName")
	}
	var names []string
	for _, item := range yamlItems(yamlChild(spec, "dnsNames")) {
		names = append(names, strings.TrimSpace(item[0]))
	}
	// The name clients in the cluster use for the Service.
	if want := deployName + "." + deployNamespace + ".svc"; !slices.Contains(names, want) {
		t.Errorf("Certificate dnsNames %v lack %s", names, want)
	}
	issuer := yamlScalar(yamlChild(spec, "issuerRef"), "name")
	if kind := yamlScalar(yamlChild(spec, "issuerRef"), "kind"); kind == "Issuer" {
		findManifest(t, "Issuer", issuer)
	}
	// The Deployment's TLS variables are both set or both empty.
	env := containerEnv(t, serverContainer(t))
	if (env[envTLSCertFile] == "") != (env[envTLSKeyFile] == "") {
		t.Errorf("the Deployment sets only one of %s and %s", envTLSCertFile, envTLSKeyFile)
	}
}

func TestDeployProbesAndSecurityContext(t *testing.T) {
	t.Parallel()
	doc := findManifest(t, "Deployment", deployName)
	container := serverContainer(t)
	for probe, want := range map[string]string{"livenessProbe": "/livez", "readinessProbe": "/readyz"} {
		if got := yamlScalar(yamlPath(container, probe, "httpGet"), "path"); got != want {
			t.Errorf("%s path %q, want %q", probe, got, want)
		}
	}
	security := yamlMapping(yamlChild(container, "securityContext"))
	if got := security["readOnlyRootFilesystem"]; got != "true" {
		t.Errorf("container securityContext readOnlyRootFilesystem: %q, want true", got)
	}
	// runAsNonRoot may also be set for the whole pod; the container's wins.
	nonRoot, ok := security["runAsNonRoot"]
	if !ok {
		nonRoot = yamlScalar(yamlPath(doc.lines, "spec", "template", "spec", "securityContext"), "runAsNonRoot")
	}
	if nonRoot != "true" {
		t.Errorf("securityContext runAsNonRoot: %q, want true", nonRoot)
	}
}

func TestDeployServiceTargetsContainerPort(t *testing.T) {
	t.Parallel()
	container := serverContainer(t)
	ports := yamlItems(yamlChild(container, "ports"))
	if len(ports) != 1 {
		t.Fatalf("server container has %d ports, want 1", len(ports))
	}
	portName, portNumber := yamlScalar(ports[0], "name"), yamlScalar(ports[0], "containerPort")
	listen := containerEnv(t, container)[envPort]
	if listen == "" {
		listen = strconv.Itoa(defaultPort)
	}
	if portNumber != listen {
		t.Errorf("containerPort %s, but the server listens on %s", portNumber, listen)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if got := yamlScalar(yamlPath(container, probe, "httpGet"), "port"); got != portName && got != portNumber {
			t.Errorf("%s port %q is not the container's port (%s/%s)", probe, got, portName, portNumber)
		}
	}

	svc := findManifest(t, "Service", deployName)
	var served bool
	for _, item := range yamlItems(yamlPath(svc.lines, "spec", "ports")) {
		if yamlScalar(item, "port") != "80" {
			continue
		}
		served = true
		if got := yamlScalar(item, "targetPort"); got != portName && got != portNumber {
			t.Errorf("Service targetPort %q is not the container's port (%s/%s)", got, portName, portNumber)
		}
	}
	if !served {
		t.Error("Service has no port 80")
	}

	labels := yamlMapping(yamlPath(findManifest(t, "Deployment", deployName).lines, "spec", "template", "metadata", "labels"))
	selector := yamlMapping(yamlPath(svc.lines, "spec", "selector"))
	if len(selector) == 0 {
		t.Error("Service has no selector")
	}
	for key, value := range selector {
		if labels[key] != value {
			t.Errorf("Service selects %s=%s, which the Deployment's pods do not carry", key, value)
		}
	}
}

func TestDockerfileNonRootAndPort(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Only the final stage ends up in the image.
	var user, expose string
	for line := range strings.Lines(string(b)) {
		instruction, args, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch strings.ToUpper(instruction) {
		case "FROM":
			user, expose = "", ""
		case "USER":
			user = strings.TrimSpace(args)
		case "EXPOSE":
			expose += " " + args
		}
	}
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("final stage runs as %q, want a non-root USER", user)
	}
	if !slices.Contains(strings.Fields(expose), strconv.Itoa(defaultPort)) {
		t.Errorf("final stage exposes %q, want the default port %d", strings.TrimSpace(expose), defaultPort)
	}
}

func TestManifestDocumentsWellFormed(t *testing.T) {
	t.Parallel()
	findManifest(t, "Namespace", deployNamespace)
	for _, doc := range loadManifests(t) {
		kind, metadata := yamlScalar(doc.lines, "kind"), yamlChild(doc.lines, "metadata")
		name := yamlScalar(metadata, "name")
		if yamlScalar(doc.lines, "apiVersion") == "" || kind == "" || name == "" {
			t.Errorf("%s: document %q %q lacks apiVersion, kind or metadata.name", doc.file, kind, name)
		}
		// An object without the namespace would land in whatever namespace
		// kubectl's context has, away from the Secret and Services.
		if ns := yamlScalar(metadata, "namespace"); kind != "Namespace" && ns != deployNamespace {
			t.Errorf("%s: %s %s is in namespace %q, want %q", doc.file, kind, name, ns, deployNamespace)
		}
	}
}

// The helpers below read block-style YAML. Each takes the lines of one
// mapping (or sequence) and looks only at its direct children, which sit at
// the indentation of its first content line.

// isYAMLContent reports whether a line is neither blank nor a comment.
func isYAMLContent(line string) bool {
	trimmed := strings.TrimSpace(line)
	return trimmed != "" && !strings.HasPrefix(trimmed, "#")
}

func yamlIndent(line string) int {
	return len(line) - len(strings.TrimLeft(line, " "))
}

// yamlBaseIndent is the indentation of the direct children of lines.
func yamlBaseIndent(lines []string) int {
	if i := slices.IndexFunc(lines, isYAMLContent); i >= 0 {
		return yamlIndent(lines[i])
	}
	return 0
}

// yamlKeyValue splits a "key: value" line; the value is unquoted and loses
// a trailing comment.
func yamlKeyValue(line string) (key, value string, ok bool) {
	key, value, ok = strings.Cut(strings.TrimSpace(line), ":")
	if !ok || strings.HasPrefix(key, "- ") || strings.ContainsAny(key, `"' `) {
		return "", "", false
	}
	value = strings.TrimSpace(value)
	if value != "" && (value[0] == '"' || value[0] == '\'') {
		if end := strings.IndexByte(value[1:], value[0]); end >= 0 {
			return key, value[1 : end+1], true
		}
	}
	value, _, _ = strings.Cut(value, " #")
	return key, strings.TrimSpace(value), true
}

// yamlChild returns the lines nested under key, a direct child of the
// mapping lines; nil if there is none. A sequence may start at the key's own
// indentation ("env:\n- name: X"), as YAML allows.
func yamlChild(lines []string, key string) []string {
	base := yamlBaseIndent(lines)
	for i, line := range lines {
		if !isYAMLContent(line) || yamlIndent(line) != base {
			continue
		}
		if k, _, ok := yamlKeyValue(line); !ok || k != key {
			continue
		}
		end := i + 1
		for ; end < len(lines); end++ {
			next := lines[end]
			nested := yamlIndent(next) > base ||
				yamlIndent(next) == base && strings.HasPrefix(strings.TrimSpace(next), "- ")
			if isYAMLContent(next) && !nested {
				break
			}
		}
		return lines[i+1 : end]
	}
	return nil
}

// yamlPath follows keys down through nested mappings.
func yamlPath(lines []string, keys ...string) []string {
	for _, key := range keys {
		lines = yamlChild(lines, key)
	}
	return lines
}

// yamlScalar returns the value of key, a direct child of the mapping lines.
func yamlScalar(lines []string, key string) string {
	return yamlMapping(lines)[key]
}

// yamlMapping returns the direct children of the mapping lines with their
// values (empty for nested blocks).
func yamlMapping(lines []string) map[string]string {
	base := yamlBaseIndent(lines)
	m := map[string]string{}
	for _, line := range lines {
		if isYAMLContent(line) && yamlIndent(line) == base {
			if k, v, ok := yamlKeyValue(line); ok {
				m[k] = v
			}
		}
	}
	return m
}

// yamlItems splits the sequence lines into its items. The "- " of each item
// becomes indentation, so that every item reads as a mapping of its own.
func yamlItems(lines []string) [][]string {
	base := yamlBaseIndent(lines)
	var items [][]string
	for _, line := range lines {
		trimmed := strings.TrimSpace(line)
		if isYAMLContent(line) && yamlIndent(line) == base && strings.HasPrefix(trimmed, "- ") {
			items = append(items, []string{strings.Repeat(" ", base+2) + trimmed[2:]})
			continue
		}
		if len(items) > 0 {
			items[len(items)-1] = append(items[len(items)-1], line)
		}
	}
	return items
}

// TestDeploySink: deploy/knative/sink.yaml delivers from exactly one pod,
// keeps its checkpoint on a volume, and is bound to a Broker by a
// SinkBinding that injects K_SINK and K_CE_OVERRIDES.
func TestDeploySink(t *testing.T) {
	t.Parallel()
	const name = "vsphere-event-sink"
	doc := findManifest(t, "Deployment", name)
	if got := yamlScalar(yamlChild(doc.lines, "spec"), "replicas"); got != "1" {
		t.Errorf("sink Deployment has replicas: %q, want 1: every replica would deliver every event", got)
	}
	if got := yamlScalar(yamlPath(doc.lines, "spec", "strategy"), "type"); got != "Recreate" {
		t.Errorf("sink Deployment has strategy %q, want Recreate: a rolling update runs two deliverers at once", got)
	}
	containers := yamlItems(yamlPath(doc.lines, "spec", "template", "spec", "containers"))
	if len(containers) != 1 {
		t.Fatalf("sink Deployment has %d containers, want 1", len(containers))
	}
	env := containerEnv(t, containers[0])
	for _, v := range configVariables() {
		_, set := env[v]
		injected := v == envSink || v == envCEOverrides
		if set == injected {
			t.Errorf("sink Deployment sets %s: %v, want %v (K_SINK and K_CE_OVERRIDES come from the SinkBinding)", v, set, !injected)
		}
	}
	for v := range env {
		if !slices.Contains(configVariables(), v) {
			t.Errorf("sink Deployment sets %s, which the server does not read", v)
		}
	}
	// The values must be accepted, with the checkpoint where the test can
	// write and the sink the SinkBinding would inject.
	checkpointFile := env[envSinkCheckpointFile]
	env[envSinkCheckpointFile] = filepath.Join(t.TempDir(), "checkpoint")
	env[envSink] = "http://broker-ingress.knative-eventing.svc.cluster.local/vcenter-stream/default"
	if _, err := parseConfig(func(name string) string { return env[name] }, false); err != nil {
		t.Errorf("sink Deployment's env is refused: %v", err)
	}

	// The checkpoint's directory is a mounted PersistentVolumeClaim.
	var claimVolume, claim string
	for _, item := range yamlItems(yamlPath(doc.lines, "spec", "template", "spec", "volumes")) {
		if c := yamlScalar(yamlChild(item, "persistentVolumeClaim"), "claimName"); c != "" {
			claimVolume, claim = yamlScalar(item, "name"), c
		}
	}
	if claim == "" {
		t.Fatal("sink Deployment has no PersistentVolumeClaim volume for the checkpoint")
	}
	findManifest(t, "PersistentVolumeClaim", claim)
	var mounted bool
	for _, item := range yamlItems(yamlChild(containers[0], "volumeMounts")) {
		if yamlScalar(item, "name") == claimVolume && filepath.Dir(checkpointFile) == yamlScalar(item, "mountPath") {
			mounted = yamlScalar(item, "readOnly") != "true"
		}
	}
	if !mounted {
		t.Errorf("%s %q is not in the writable mount of volume %s", envSinkCheckpointFile, checkpointFile, claimVolume)
	}

	binding := findManifest(t, "SinkBinding", name)
	subject := yamlPath(binding.lines, "spec", "subject")
	if yamlScalar(subject, "kind") != "Deployment" || yamlScalar(subject, "name") != name {
		t.Errorf("SinkBinding's subject is %s %s, want Deployment %s", yamlScalar(subject, "kind"), yamlScalar(subject, "name"), name)
	}
	if got := yamlScalar(yamlPath(binding.lines, "spec", "sink", "ref"), "kind"); got != "Broker" {
		t.Errorf("SinkBinding's sink is a %q, want a Broker", got)
	}
	// ceOverrides' extensions must be ones K_CE_OVERRIDES accepts.
	ext := yamlMapping(yamlPath(binding.lines, "spec", "ceOverrides", "extensions"))
	b, err := json.Marshal(map[string]map[string]string{"extensions": ext})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseCEOverrides(string(b)); err != nil || len(ext) == 0 {
		t.Errorf("SinkBinding's ceOverrides %v: %v", ext, err)
	}
}
