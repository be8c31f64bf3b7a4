package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The Node-RED example flow shipped in deploy/, and how the tests find
// Node-RED.
const (
	flowsPath         = "../../deploy/node-red/flows.json"
	nodeREDHomeEnv    = "NODE_RED_HOME"
	nodeREDRequireEnv = envPrefix + "_REQUIRE_NODERED"
)

// flowNode is a node of a Node-RED flow export, with the properties the
// tests look at kept raw.
type flowNode map[string]any

func (n flowNode) str(key string) string { s, _ := n[key].(string); return s }

// loadFlows reads and parses the shipped flow.
func loadFlows(t testing.TB) ([]byte, []flowNode) {
	t.Helper()
	b, err := os.ReadFile(flowsPath)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []flowNode
	if err := json.Unmarshal(b, &nodes); err != nil {
		t.Fatalf("%s is not a Node-RED flow export (a JSON array of nodes): %v", flowsPath, err)
	}
	return b, nodes
}

// findNode returns the one node of the given type and name.
func findNode(t testing.TB, nodes []flowNode, typ, name string) flowNode {
	t.Helper()
	var found []flowNode
	for _, n := range nodes {
		if n.str("type") == typ && n.str("name") == name {
			found = append(found, n)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s: got %d %q nodes named %q, want 1", flowsPath, len(found), typ, name)
	}
	return found[0]
}

// TestNodeREDFlowFile checks the shipped flow without running Node-RED: its
// structure, and the settings a user relies on (the broker and the topics
// from environment variables, commands never retained).
func TestNodeREDFlowFile(t *testing.T) {
	_, nodes := loadFlows(t)
	ids := map[string]flowNode{}
	var tabs []flowNode
	for _, n := range nodes {
		id := n.str("id")
		if id == "" || n.str("type") == "" {
			t.Fatalf("node without id or type: %v", n)
		}
		if ids[id] != nil {
			t.Fatalf("duplicate node id %s", id)
		}
		ids[id] = n
		if n.str("type") == "tab" {
			tabs = append(tabs, n)
		}
	}
	if len(tabs) != 1 {
		t.Fatalf("got %d tabs, want 1", len(tabs))
	}
	tab := tabs[0]
	for _, n := range nodes {
		if n.str("type") == "tab" {
			continue
		}
		if n.str("z") != tab.str("id") {
			t.Errorf("node %s (%s %q) is not on the tab (z = %q)", n.str("id"), n.str("type"), n.str("name"), n.str("z"))
		}
		wires, _ := n["wires"].([]any)
		for _, out := range wires {
			targets, _ := out.([]any)
			for _, to := range targets {
				if id, _ := to.(string); ids[id] == nil {
					t.Errorf("node %s wired to a missing node %v", n.str("id"), to)
				}
			}
		}
	}

	// Every setting is one of the tab's environment variables.
	env := map[string]flowNode{}
	list, _ := tab["env"].([]any)
	for _, e := range list {
		m, _ := e.(map[string]any)
		env[flowNode(m).str("name")] = m
	}
	for _, name := range []string{"MQTT_HOST", "MQTT_PORT", "SPARK_DEVICE", "SPARK_BASE_TOPIC", "HEATER_MAX_TEMP",
		"HEATER_TOPIC", "RESULT_TOPIC", "TEMP_TOPIC", "TEMP_EVENT_TOPIC"} {
		if env[name] == nil {
			t.Errorf("the tab has no environment variable %s", name)
		}
		if strings.HasPrefix(name, envPrefix+"_") {
			t.Errorf("%s: spark2mqtt refuses unknown %s_ variables in a shared environment", name, envPrefix)
		}
	}

	broker := findNode(t, nodes, "mqtt-broker", "spark2mqtt")
	if broker.str("broker") != "${MQTT_HOST}" || broker.str("port") != "${MQTT_PORT}" {
		t.Errorf("broker %q port %q, want ${MQTT_HOST} ${MQTT_PORT}", broker.str("broker"), broker.str("port"))
	}
	out := findNode(t, nodes, "mqtt out", "heater function")
	if out.str("topic") != "${HEATER_TOPIC}" || out.str("retain") != "false" {
		t.Errorf("heater function: topic %q retain %q, want ${HEATER_TOPIC} false (a retained command would run again)", out.str("topic"), out.str("retain"))
	}
	for _, c := range []struct {
		name, topic, datatype string
	}{
		{"temperature (var/temp)", "${TEMP_TOPIC}", "utf8"},
		{"temperature (event)", "${TEMP_EVENT_TOPIC}", "utf8"},
		{"heater result", "${RESULT_TOPIC}", "json"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := findNode(t, nodes, "mqtt in", c.name)
			if n.str("topic") != c.topic || n.str("datatype") != c.datatype || n.str("broker") != broker.str("id") {
				t.Errorf("topic %q datatype %q broker %q, want %q %q %q", n.str("topic"), n.str("datatype"), n.str("broker"), c.topic, c.datatype, broker.str("id"))
			}
		})
	}
	for _, name := range []string{"on", "off"} {
		n := findNode(t, nodes, "inject", name)
		if n.str("payload") != name || n.str("payloadType") != "str" {
			t.Errorf("inject %q sends %q (%s), want the string %q", name, n.str("payload"), n.str("payloadType"), name)
		}
	}
	findNode(t, nodes, "function", "thermostat")
	findNode(t, nodes, "debug", "temperature")
	findNode(t, nodes, "debug", "heater result")
	if c := findComment(nodes); c == nil || c.str("info") == "" {
		t.Error("no comment node explaining the flow")
	}
}

func findComment(nodes []flowNode) flowNode {
	for _, n := range nodes {
		if n.str("type") == "comment" {
			return n
		}
	}
	return nil
}

// TestNodeRED runs the shipped flow in a real Node-RED against the binary
// and a simulated heater: the "on" button switches the heater on, the flow
// receives the temperature, and its thermostat switches the heater off when
// the water passes the threshold.
func TestNodeRED(t *testing.T) {
	nodeBin, redJS := findNodeRED(t)
	flows, nodes := loadFlows(t)
	onID := findNode(t, nodes, "inject", "on").str("id")
	thermostatID := findNode(t, nodes, "function", "thermostat").str("id")

	dataDir := t.TempDir()
	srv := startServer(t, dataDir, "SPARK2MQTT_POLL_INTERVAL=1s")
	base := "spark/" + heaterID
	w := newWatcher(t, srv.MQTTAddr, base+"/fn/heater/result")
	heater := newSimHeater(t, dataDir)
	heater.connect(srv.DeviceAddr)

	// The simulated heater starts at 20 °C and warms up by about 1 °C in
	// 3 s once on: a cut-off at 21 °C is crossed soon after "on", and
	// never before.
	const maxTemp = 21.0
	maxText := strconv.FormatFloat(maxTemp, 'f', -1, 64)
	host, port, err := net.SplitHostPort(srv.MQTTAddr)
	if err != nil {
		t.Fatal(err)
	}
	red := startNodeRED(t, nodeBin, redJS, flows,
		"MQTT_HOST="+host,
		"MQTT_PORT="+port,
		"SPARK_DEVICE="+heaterID,
		"HEATER_MAX_TEMP="+maxText,
	)

	// The flow receives the temperature (the thermostat keeps the last one
	// in its node context). This also shows its broker connection is up,
	// which the buttons need: Node-RED drops what an unconnected mqtt out
	// node is given.
	var temp float64
	waitFor(t, 30*time.Second, "the flow to receive a temperature", func() bool {
		var ok bool
		temp, ok = red.contextNumber(thermostatID, "temperature")
		return ok
	})
	if temp >= maxTemp {
		t.Fatalf("temperature %v before the heater was switched on, want below %v", temp, maxTemp)
	}
	if heater.heater.On() {
		t.Fatal("the heater is on before the flow switched it on")
	}

	// The "on" button switches the heater on.
	mk := w.mark()
	red.inject(onID)
	w.wait(mk, base+"/fn/heater/result", 15*time.Second, resultOf("on", 1))
	if !heater.heater.On() {
		t.Fatal("the simulated heater is not on after the flow's \"on\" (return_value 1)")
	}

	// The water warms up; past the cut-off the thermostat switches it off.
	w.wait(mk, base+"/fn/heater/result", 30*time.Second, resultOf("off", 0))
	if heater.heater.On() {
		t.Fatal("the simulated heater is still on after the thermostat's \"off\" (return_value 0)")
	}
	if on, ok := red.context(thermostatID, "heaterOn"); !ok || on != "false" {
		t.Errorf("thermostat context heaterOn = %q (known %v), want false", on, ok)
	}
	// It says so, with the temperature that crossed the cut-off (the last
	// temperature it has seen may be lower again: the readings are noisy
	// and the water cools).
	var cutOff []string
	waitFor(t, 10*time.Second, "the thermostat's warning in Node-RED's log", func() bool {
		cutOff = red.find(cutOffRE)
		return cutOff != nil
	})
	if v, err := strconv.ParseFloat(cutOff[1], 64); err != nil || v < maxTemp || cutOff[2] != maxText {
		t.Errorf("thermostat: %q, want a temperature of at least %v and the cut-off %s", cutOff[0], maxTemp, maxText)
	}

	heater.disconnect()
	srv.stop()
}

// cutOffRE is the thermostat's warning in Node-RED's log.
var cutOffRE = regexp.MustCompile(`water at ([0-9.-]+) °C, cut-off ([0-9.-]+) °C: switching the heater off`)

// resultOf matches a function result for arg with the return value want.
func resultOf(arg string, want float64) func(string) bool {
	return func(p string) bool {
		m := jsonField(p)
		v, ok := m["return_value"].(float64)
		return m["arg"] == arg && ok && v == want
	}
}

// findNodeRED returns node and Node-RED's red.js under NODE_RED_HOME (the
// folder where `npm install node-red@4` ran). Missing, the test skips, or
// fails when SPARK2MQTT_REQUIRE_NODERED=1 (CI).
func findNodeRED(t testing.TB) (nodeBin, redJS string) {
	t.Helper()
	const hint = "install it with `npm install node-red@4` in a folder, then set " + nodeREDHomeEnv + " to that folder"
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...) + "; " + hint
		if os.Getenv(nodeREDRequireEnv) == "1" {
			t.Fatalf("%s (%s=1 makes this a failure)", msg, nodeREDRequireEnv)
		}
		t.Skip(msg)
	}
	home := os.Getenv(nodeREDHomeEnv)
	if home == "" {
		missing("Node-RED not found: %s is not set", nodeREDHomeEnv)
	}
	redJS = filepath.Join(home, "node_modules", "node-red", "red.js")
	if _, err := os.Stat(redJS); err != nil {
		missing("Node-RED not found in %s=%s: %v", nodeREDHomeEnv, home, err)
	}
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		missing("Node.js (node) not found on PATH: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(redJS), "package.json")); err == nil {
		var pkg struct{ Version string }
		if json.Unmarshal(b, &pkg) == nil {
			t.Logf("Node-RED %s (%s)", pkg.Version, redJS)
		}
	}
	return nodeBin, redJS
}

// nodeRED is a running Node-RED.
type nodeRED struct {
	t    testing.TB
	cmd  *exec.Cmd
	url  string // the admin API, http://127.0.0.1:port
	http *http.Client

	mu    sync.Mutex
	lines []string // its log so far
	done  chan struct{}
	werr  error
}

// listenRE finds the admin address in Node-RED's "Server now running at
// http://127.0.0.1:port/" log line (the URL only: the words are translated).
var listenRE = regexp.MustCompile(`\bhttp://127\.0\.0\.1:[0-9]+`)

// nodeREDSettings is the settings file of the tests' Node-RED: the editor
// and admin API on a free loopback port, nothing sent anywhere else.
const nodeREDSettings = `module.exports = {
    uiHost: "127.0.0.1",
    uiPort: 0,
    flowFile: "flows.json",
    credentialSecret: false,
    telemetry: { enabled: false },
    editorTheme: { projects: { enabled: false }, tours: false },
    logging: { console: { level: "info", metrics: false, audit: false } },
};
`

// startNodeRED runs Node-RED with flows as its flow file, in a temporary
// user dir, with only PATH and env in its environment, and waits until its
// admin API answers with the flows. The test's cleanup stops it (SIGTERM to
// its process) and, when the test failed, logs its output.
func startNodeRED(t testing.TB, nodeBin, redJS string, flows []byte, env ...string) *nodeRED {
	t.Helper()
	userDir := t.TempDir()
	settings := filepath.Join(userDir, "settings.js")
	if err := os.WriteFile(settings, []byte(nodeREDSettings), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(userDir, "flows.json"), flows, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nodeBin, redJS, "--userDir", userDir, "--settings", settings)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + userDir}, env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // the same pipe: one log, in order
	if err := cmd.Start(); err != nil {
		t.Fatalf("start Node-RED: %v", err)
	}
	r := &nodeRED{
		t:    t,
		cmd:  cmd,
		http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		done: make(chan struct{}),
	}
	listening := make(chan string, 1)
	// Owned by r: ends when Node-RED exits and closes its output.
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if testing.Verbose() {
				t.Logf("node-red: %s", line)
			}
			r.mu.Lock()
			r.lines = append(r.lines, line)
			r.mu.Unlock()
			if u := listenRE.FindString(line); u != "" {
				select {
				case listening <- u:
				default:
				}
			}
		}
		r.werr = cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(r.stop)
	select {
	case r.url = <-listening:
	case <-r.done:
		t.Fatalf("Node-RED exited before listening: %v\n%s", r.werr, r.log())
	case <-time.After(60 * time.Second):
		t.Fatalf("Node-RED did not report its address within 60 s:\n%s", r.log())
	}
	waitFor(t, 30*time.Second, "Node-RED's admin API to serve the flows", func() bool {
		b, code, err := r.do(http.MethodGet, "/flows")
		return err == nil && code == http.StatusOK && strings.Contains(string(b), `"mqtt-broker"`)
	})
	return r
}

// stop ends Node-RED: SIGTERM to the process this test started, then a kill
// if it has not exited within 20 s.
func (r *nodeRED) stop() {
	select {
	case <-r.done:
	default:
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			r.t.Errorf("Node-RED did not exit within 20 s of SIGTERM; killing it")
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	}
	if r.werr != nil {
		r.t.Logf("Node-RED exit: %v", r.werr)
	}
	if r.t.Failed() && !testing.Verbose() {
		r.t.Logf("Node-RED's log:\n%s", r.log())
	}
}

func (r *nodeRED) log() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.lines, "\n")
}

// find returns the submatches of re in the first line of Node-RED's log
// that matches it, or nil.
func (r *nodeRED) find(re *regexp.Regexp) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.lines {
		if m := re.FindStringSubmatch(l); m != nil {
			return m
		}
	}
	return nil
}

// do calls the admin API and returns the body and status code.
func (r *nodeRED) do(method, path string) ([]byte, int, error) {
	req, err := http.NewRequest(method, r.url+path, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// inject clicks the button of the inject node id (POST /inject/id).
func (r *nodeRED) inject(id string) {
	r.t.Helper()
	b, code, err := r.do(http.MethodPost, "/inject/"+id)
	if err != nil || code != http.StatusOK {
		r.t.Fatalf("POST /inject/%s: %d %s %v", id, code, b, err)
	}
}

// context returns the value of key in node id's context as Node-RED's admin
// API shows it (GET /context/node/id: {"store": {"key": {"msg": value,
// "format": type}}}).
func (r *nodeRED) context(id, key string) (string, bool) {
	r.t.Helper()
	b, code, err := r.do(http.MethodGet, "/context/node/"+id)
	if err != nil || code != http.StatusOK {
		return "", false
	}
	var stores map[string]map[string]struct {
		Msg    string `json:"msg"`
		Format string `json:"format"`
	}
	if err := json.Unmarshal(b, &stores); err != nil {
		r.t.Fatalf("GET /context/node/%s: %v: %s", id, err, b)
	}
	for _, s := range stores {
		if v, ok := s[key]; ok {
			return v.Msg, true
		}
	}
	return "", false
}

// contextNumber returns a number kept in node id's context.
func (r *nodeRED) contextNumber(id, key string) (float64, bool) {
	r.t.Helper()
	s, ok := r.context(id, key)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		r.t.Fatalf("node %s context %s = %q, want a number", id, key, s)
	}
	return v, true
}
