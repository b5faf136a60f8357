package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/vim25/types"
)

// The benchmarks of this file run the server as a child process (this test
// binary again, in TestChildServer) against a simulator in the benchmark's
// own process, so that the server's RSS and CPU are its own: the simulator,
// the clients and the benchmark are in the parent.

// childServerEnv makes TestChildServer run the server; its value is the
// flags, separated by spaces.
const childServerEnv = "VES_CHILD_SERVER_ARGS"

// TestChildServer is the server process of the benchmarks below; it is
// skipped in a normal test run.
func TestChildServer(t *testing.T) {
	args, ok := os.LookupEnv(childServerEnv)
	if !ok {
		t.Skip("runs only as a benchmark's child process")
	}
	raiseFileLimit(t)
	// SIGUSR1 asks for a line of memory figures on stderr.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			reportMemory(os.Stderr)
		}
	}()
	// VES_CPUPROFILE=file profiles the server (the last child started
	// writes it).
	if path := os.Getenv("VES_CPUPROFILE"); path != "" {
		out, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		// A finer rate than the default 100 Hz: an idle server's few ms.
		runtime.SetCPUProfileRate(2000)
		if err := pprof.StartCPUProfile(out); err != nil {
			t.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if os.Getenv(bareServerEnv) != "" {
		serveBare(t)
		return
	}
	err := run(context.Background(), append([]string{"vsphere-event-streaming"}, strings.Fields(args)...), os.Getenv, io.Discard, os.Stderr, nil)
	if err != nil {
		t.Fatal(err)
	}
}

// bareServerEnv makes TestChildServer serve, instead of the server, a
// handler that answers every request with the headers of a watch and then
// waits for the client to leave: what net/http alone costs per watch.
const bareServerEnv = "VES_CHILD_BARE"

func serveBare(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.WriteHeader(http.StatusOK)
			_ = http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Fprintf(os.Stderr, "{\"msg\":\"serving HTTP\",\"addr\":%q}\n{\"msg\":\"caught up with vCenter\"}\n", ln.Addr().String())
	_ = srv.Serve(ln)
}

// memoryReport is the line of memory and CPU figures of a child server.
type memoryReport struct {
	Msg          string
	HeapObjects  uint64 // bytes of live and not yet swept heap objects
	HeapLive     uint64 // bytes of live heap after the last GC
	Stacks       uint64
	HeapGoal     uint64
	HeapReleased uint64
	Goroutines   uint64
	OtherRuntime uint64        // runtime metadata, buffers, ...
	HeapFree     uint64        // free heap memory not yet returned to the OS
	StackScanned uint64        // stack in use by goroutines at the last GC
	CPU          time.Duration // user and system time of the process so far
	System       time.Duration // of which system time
}

// reportMemory writes the process's memory figures as one JSON line.
func reportMemory(w io.Writer) {
	samples := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/gc/heap/goal:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/sched/goroutines:goroutines"},
		{Name: "/memory/classes/other:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/scan/stack:bytes"},
	}
	metrics.Read(samples)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	v := func(i int) uint64 { return samples[i].Value.Uint64() }
	line, _ := json.Marshal(memoryReport{Msg: "memory", HeapObjects: v(0), HeapLive: v(1), Stacks: v(2),
		HeapGoal: v(3), HeapReleased: v(4), Goroutines: v(5), OtherRuntime: v(6), HeapFree: v(7), StackScanned: v(8),
		CPU: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), System: time.Duration(ru.Stime.Nano())})
	fmt.Fprintf(w, "%s\n", line)
}

// raiseFileLimit raises the soft limit of open files to the hard limit:
// 10,000 watches over loopback are 10,000 descriptors on each side.
func raiseFileLimit(tb testing.TB) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			tb.Fatal(err)
		}
	}
	return lim.Cur
}

// childServer is a server running as a child process.
type childServer struct {
	cmd    *exec.Cmd
	url    string // http://127.0.0.1:port
	addr   string // 127.0.0.1:port
	memory chan memoryReport
	logs   *logRecorder // its stderr
}

// startChildServer runs the server in a child process against sim, with
// args as its flags, and waits until it has caught up with vCenter.
func startChildServer(b *testing.B, sim *simulation, args ...string) *childServer {
	return startChild(b, sim, nil, args...)
}

// startChild is startChildServer with env added to the child's environment
// (a variable given there overrides the one set here).
func startChild(b testing.TB, sim *simulation, env []string, args ...string) *childServer {
	b.Helper()
	secrets := b.TempDir()
	writeFile(b, filepath.Join(secrets, "username"), sim.username)
	writeFile(b, filepath.Join(secrets, "password"), sim.password)
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildServer$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		childServerEnv+"="+strings.Join(args, " "),
		envVCenterURL+"="+sim.url.String(),
		envVCenterInsecure+"=true",
		envSecretPath+"="+secrets,
		envPort+"=0",
		envDebug+"=false",
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	s := &childServer{cmd: cmd, memory: make(chan memoryReport, 1), logs: newLogRecorder()}
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			_, _ = s.logs.Write(append(sc.Bytes(), '\n'))
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "memory":
				var m memoryReport
				_ = json.Unmarshal(sc.Bytes(), &m)
				s.memory <- m
			case "serving HTTP":
				_, port, _ := net.SplitHostPort(line.Addr)
				s.addr = "127.0.0.1:" + port
			case "caught up with vCenter":
				// Only the first counts; a later one (a new session)
				// must not stop the reading of stderr.
				select {
				case ready <- nil:
				default:
				}
			}
		}
		select {
		case ready <- fmt.Errorf("child server ended before catching up with vCenter"):
		default:
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case err := <-ready:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(waitTimeout):
		b.Fatal("child server did not catch up with vCenter in time")
	}
	s.url = "http://" + s.addr
	return s
}

// procStatus returns a field of /proc/<pid>/status in bytes (for kB values).
func procStatusBytes(b *testing.B, pid int, field string) float64 {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Skip("no /proc:", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb * 1024
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// memoryFigures asks the child for its runtime's memory figures.
func (s *childServer) memoryFigures(b *testing.B) memoryReport {
	b.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		b.Fatal(err)
	}
	select {
	case m := <-s.memory:
		return m
	case <-time.After(waitTimeout):
		b.Fatal("no memory figures from the child server")
		return memoryReport{}
	}
}

// rss is the child's resident set size.
func (s *childServer) rss(b *testing.B) float64 {
	return procStatusBytes(b, s.cmd.Process.Pid, "VmRSS")
}

// cpu is the CPU time (user and system, all threads) the child has used,
// from /proc/<pid>/stat, in clock ticks of 10 ms.
func (s *childServer) cpu(b *testing.B) time.Duration {
	return procCPU(b, s.cmd.Process.Pid)
}

// procCPU is the CPU time of process pid from /proc/<pid>/stat.
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Skip("no /proc:", err)
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis. utime and stime are fields 14 and 15.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("cannot parse /proc/%d/stat: %s", pid, stat)
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(utime+stime) * tick
}

// openTCPWatch opens a watch on a bare TCP connection and reads the
// response's header: the client side costs one descriptor and no goroutine.
func openTCPWatch(b *testing.B, addr string, sse bool) net.Conn {
	b.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	req := "GET /api/v1/events?watch=true HTTP/1.1\r\nHost: " + addr + "\r\n"
	if sse {
		req += "Accept: text/event-stream\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		b.Fatal(err)
	}
	// The header comes in one flush; read until its blank line.
	var head []byte
	buf := make([]byte, 1024)
	_ = conn.SetReadDeadline(time.Now().Add(waitTimeout))
	for !strings.Contains(string(head), "\r\n\r\n") {
		n, err := conn.Read(buf)
		if err != nil {
			b.Fatalf("watch header: %v (%q)", err, head)
		}
		head = append(head, buf[:n]...)
	}
	_ = conn.SetReadDeadline(time.Time{})
	if !strings.HasPrefix(string(head), "HTTP/1.1 200 ") {
		b.Fatalf("watch: %q", head)
	}
	return conn
}

// BenchmarkIdleWatchMemory: the server's RSS and CPU with 1,000 and then
// 10,000 idle watches open, the server in a child process: NDJSON watches,
// half NDJSON and half SSE, and for comparison a bare net/http handler
// that only waits. Each step waits idleWindow (one SSE heartbeat included)
// and reports the CPU used meanwhile and the RSS at its end.
func BenchmarkIdleWatchMemory(b *testing.B) {
	const idleWindow = 16 * time.Second // > the 15 s SSE heartbeat
	const kib, mib = 1 << 10, 1 << 20
	if limit := raiseFileLimit(b); limit < 10100 {
		b.Skipf("open files limited to %d: 10,000 watches need more", limit)
	}
	sim := startTestSimulation(b)
	for _, variant := range []struct {
		name string
		env  []string
		sse  bool // every other watch is SSE
	}{
		{"server-ndjson", nil, false},
		{"server-half-sse", nil, true},
		{"bare-net-http", []string{bareServerEnv + "=1"}, false},
	} {
		b.Run(variant.name, func(b *testing.B) {
			for range b.N {
				srv := startChild(b, sim, variant.env, "--max-watches=0")
				// The server's own: caught up, idle for a moment.
				idle(idleWindow / 4)
				base := srv.rss(b)
				baseMem := srv.memoryFigures(b)
				b.ReportMetric(base/mib, "base-rss-MiB")
				var conns []net.Conn
				for _, n := range []int{1000, 10000} {
					for len(conns) < n {
						conns = append(conns, openTCPWatch(b, srv.addr, variant.sse && len(conns)%2 == 1))
					}
					before := srv.cpu(b)
					idle(idleWindow)
					used := srv.cpu(b) - before
					rss := srv.rss(b)
					m := srv.memoryFigures(b)
					b.ReportMetric(100*used.Seconds()/idleWindow.Seconds(), fmt.Sprintf("cpu-%%-of-core-%d", n))
					b.ReportMetric((rss-base)/float64(n)/kib, fmt.Sprintf("rss-KiB/watch-%d", n))
					b.ReportMetric((rss-base)/mib, fmt.Sprintf("rss-above-base-MiB-%d", n))
					b.ReportMetric(float64(m.Stacks-baseMem.Stacks)/float64(n)/kib, fmt.Sprintf("stack-KiB/watch-%d", n))
					b.ReportMetric(float64(m.HeapObjects-baseMem.HeapObjects)/float64(n)/kib, fmt.Sprintf("heap-KiB/watch-%d", n))
				}
				for _, c := range conns {
					c.Close()
				}
				// Give the child's descriptors back before the next variant.
				_ = srv.cmd.Process.Signal(syscall.SIGTERM)
				_ = srv.cmd.Wait()
			}
		})
	}
}

// idle waits for d: the measurement is of doing nothing for this long.
func idle(d time.Duration) { time.Sleep(d) }

// ownCPU is the CPU time this process has used.
func ownCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// eventCost is what one mode of the collector spent on a paced run.
type eventCost struct {
	server    time.Duration // the server's CPU per event
	simulator time.Duration // the benchmark process's (simulator, poster, watcher) per event
	latencies []time.Duration
}

// measureEventCost runs a child server with args against sim, posts n
// events at rate per second, waits until a watcher received all of them,
// and returns the CPU per event of the server and of this process.
func measureEventCost(b *testing.B, sim *simulation, n int, rate float64, args ...string) eventCost {
	b.Helper()
	vc := connectVCenter(b, sim)
	srv := startChildServer(b, sim, args...)
	defer func() {
		_ = srv.cmd.Process.Signal(syscall.SIGTERM)
		_ = srv.cmd.Wait()
	}()
	first := newestKey(b, vc) + 1
	w := openLightWatch(b, http.DefaultClient, srv.url+fmt.Sprintf("/api/v1/events?watch=true&offset=%d", first))
	defer w.body.Close()
	// Let the start settle: the collector's first wait, the watch.
	idle(time.Second)
	before, ownBefore := srv.memoryFigures(b), ownCPU(b)
	serverBefore := before.CPU
	received := make([]time.Time, n)
	var returned []time.Time
	var postErr error
	posted := make(chan struct{})
	go func() {
		defer close(posted)
		returned, postErr = paced(context.Background(), vc, n, rate)
	}()
	// A lost event would block the watcher for ever: give up in time.
	deadline := time.AfterFunc(time.Duration(float64(n)/rate*float64(time.Second))+waitTimeout, func() { w.body.Close() })
	defer deadline.Stop()
	for i := range n {
		key, err := w.nextKey()
		if err != nil {
			b.Fatalf("%v: after %d of %d events: %v", args, i, n, err)
		}
		if i := key - first; i >= 0 && i < int64(n) {
			received[i] = time.Now()
		} else {
			b.Fatalf("unexpected key %d", key)
		}
	}
	<-posted
	if postErr != nil {
		b.Fatal(postErr)
	}
	after := srv.memoryFigures(b)
	b.Logf("%v: server user %v, system %v", args, after.CPU-after.System-(before.CPU-before.System), after.System-before.System)
	cost := eventCost{
		server:    (after.CPU - serverBefore) / time.Duration(n),
		simulator: (ownCPU(b) - ownBefore) / time.Duration(n),
		latencies: make([]time.Duration, n),
	}
	for i := range n {
		cost.latencies[i] = max(0, received[i].Sub(returned[i]))
	}
	return cost
}

// newestKey is the key of vCenter's newest event.
func newestKey(b *testing.B, vc *vcenter) int64 {
	b.Helper()
	page, err := event.NewManager(vc.client.Client).QueryEvents(context.Background(), types.EventFilterSpec{MaxCount: 1})
	if err != nil || len(page) == 0 {
		b.Fatalf("newest event: %v", err)
	}
	return int64(page[0].GetEvent().Key)
}

// median returns the median of xs (the upper one of an even count).
func median[T time.Duration | float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkEventCPU: the server's CPU per event, pushed (default) and
// polled (--push=false --poll-interval=1s; 500ms at 1,000 events/s), at 5,
// 20, 100 and 1,000 events per second, with the server in a child process (its CPU from getrusage)
// and the simulator in this one. The modes alternate, eventRuns times
// each; the figures are medians, the ratio the median of the runs' ratios.
// The push latency is PostEvent returning to the watcher's line.
func BenchmarkEventCPU(b *testing.B) {
	const eventRuns = 3
	for _, rate := range []int{5, 20, 100, 1000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			// About 10 s of events, at least 100.
			n := max(100, 10*rate)
			if rate >= 1000 {
				n = 3 * rate
			}
			// The simulator loses a collector's place once 1,000 events
			// come between two reads: poll faster at 1,000 events/s.
			pollInterval := time.Second
			if rate >= 1000 {
				pollInterval = 500 * time.Millisecond
			}
			sim := startTestSimulation(b)
			var push, poll, pushSim, pollSim []time.Duration
			var ratios []float64
			var latencies []time.Duration
			for range b.N * eventRuns {
				p := measureEventCost(b, sim, n, float64(rate))
				q := measureEventCost(b, sim, n, float64(rate), "--push=false", "--poll-interval="+pollInterval.String())
				push, pushSim = append(push, p.server), append(pushSim, p.simulator)
				poll, pollSim = append(poll, q.server), append(pollSim, q.simulator)
				ratios = append(ratios, float64(p.server)/float64(max(1, q.server)))
				latencies = append(latencies, p.latencies...)
			}
			us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
			b.ReportMetric(us(median(push)), "push-µs/event")
			b.ReportMetric(us(median(poll)), "poll-µs/event")
			b.ReportMetric(median(ratios), "push/poll")
			b.ReportMetric(us(median(pushSim)), "push-sim-µs/event")
			b.ReportMetric(us(median(pollSim)), "poll-sim-µs/event")
			quantiles(b, latencies, "-push")
			b.Logf("push %v, poll %v, ratios %v", push, poll, ratios)
		})
	}
}
