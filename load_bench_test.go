package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These benchmarks measure the whole server against the in-process
// simulator. They report their figures with b.ReportMetric; run each on its
// own with -benchtime 1x (see BENCHMARKS.md).

// lineKey returns the id of a compact CloudEvent line without decoding it
// all: the readers of the benchmarks must not be their bottleneck.
func lineKey(line []byte) (int64, bool) {
	const prefix = `{"specversion":"1.0","id":"`
	if !bytes.HasPrefix(line, []byte(prefix)) {
		return 0, false
	}
	rest := line[len(prefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return n, err == nil
}

// rawWatch is a light NDJSON watch for many concurrent readers.
type rawWatch struct {
	r    *bufio.Reader
	body interface{ Close() error }
}

func openLightWatch(tb testing.TB, client *http.Client, target string) *rawWatch {
	tb.Helper()
	resp, err := client.Get(target)
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		tb.Fatalf("watch %s: %d", target, resp.StatusCode)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	return &rawWatch{r: bufio.NewReaderSize(resp.Body, 64<<10), body: resp.Body}
}

// nextKey reads the next line and returns its key.
func (w *rawWatch) nextKey() (int64, error) {
	line, err := w.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	key, ok := lineKey(line)
	if !ok {
		return 0, fmt.Errorf("not an event: %.100s", line)
	}
	return key, nil
}

// paced posts n events at rate per second from one session and records
// when each PostEvent returned. Events get the keys first, first+1, ...:
// nothing else happens on the simulator meanwhile.
func paced(ctx context.Context, vc *vcenter, n int, rate float64) ([]time.Time, error) {
	returned := make([]time.Time, n)
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for i := range n {
		// Pacing, not waiting for a condition: the rate is the point.
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		if err := vc.postEvent(ctx, strconv.Itoa(i)); err != nil {
			return nil, err
		}
		returned[i] = time.Now()
	}
	return returned, nil
}

// quantiles reports p50, p99 and max of latencies in milliseconds.
func quantiles(b *testing.B, latencies []time.Duration, suffix string) {
	slices.Sort(latencies)
	q := func(f float64) float64 {
		return float64(latencies[int(f*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.5), "p50-ms"+suffix)
	b.ReportMetric(q(0.99), "p99-ms"+suffix)
	b.ReportMetric(q(1), "max-ms"+suffix)
}

// latencyServer starts the simulator and the server, with its log quiet,
// and returns the key the next event will get.
func latencyServer(b *testing.B) (*simulation, *vcenter, *testServer, int64) {
	sim := startTestSimulation(b)
	vc := connectVCenter(b, sim)
	srv := startServer(b, sim, map[string]string{envDebug: "false"})
	latest := vc.latestKey(b)
	waitForKey(b, srv, latest)
	return sim, vc, srv, latest + 1
}

// BenchmarkLatency: the time from PostEvent returning to the line reaching
// a watcher, at 10, 100 and 1,000 events per second (5 s each).
func BenchmarkLatency(b *testing.B) {
	for _, rate := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) {
			_, vc, srv, first := latencyServer(b)
			w := openLightWatch(b, http.DefaultClient, srv.url+"/api/v1/events?watch=true")
			n := 5 * rate * b.N
			received := make([]time.Time, n)
			var returned []time.Time
			var postErr error
			posted := make(chan struct{})
			go func() {
				defer close(posted)
				returned, postErr = paced(context.Background(), vc, n, float64(rate))
			}()
			for range n {
				key, err := w.nextKey()
				if err != nil {
					b.Fatal(err)
				}
				i := key - first
				if i < 0 || i >= int64(n) {
					b.Fatalf("unexpected key %d", key)
				}
				received[i] = time.Now()
			}
			<-posted
			if postErr != nil {
				b.Fatal(postErr)
			}
			latencies := make([]time.Duration, n)
			for i := range n {
				// The line can beat PostEvent's own answer back to the client.
				latencies[i] = max(0, received[i].Sub(returned[i]))
			}
			quantiles(b, latencies, "")
		})
	}
}

// BenchmarkFanOut: 1,000 watchers over real HTTP while 100 events per
// second arrive for 5 s: every watcher must receive every event.
func BenchmarkFanOut(b *testing.B) {
	const watchers, rate, seconds = 1000, 100, 5
	_, vc, srv, first := latencyServer(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: watchers}}
	n := rate * seconds * b.N
	received := make([][]time.Time, watchers)
	var wg sync.WaitGroup
	errs := make(chan error, watchers)
	for i := range watchers {
		w := openLightWatch(b, client, srv.url+"/api/v1/events?watch=true")
		received[i] = make([]time.Time, n)
		wg.Go(func() {
			for range n {
				key, err := w.nextKey()
				if err != nil {
					errs <- err
					return
				}
				if k := key - first; k >= 0 && k < int64(n) {
					received[i][k] = time.Now()
				}
			}
		})
	}
	b.ResetTimer()
	returned, err := paced(context.Background(), vc, n, rate)
	if err != nil {
		b.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	latencies := make([]time.Duration, 0, watchers*n)
	complete := 0
	for _, times := range received {
		got := 0
		for i, t := range times {
			if !t.IsZero() {
				got++
				latencies = append(latencies, max(0, t.Sub(returned[i])))
			}
		}
		if got == n {
			complete++
		}
	}
	b.ReportMetric(float64(complete), "complete-watchers")
	quantiles(b, latencies, "")
}

// cpuTime is the CPU time this process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdleWatchers: the CPU that 1,000 open but idle watches cost
// over 10 s (half NDJSON, half SSE with the default 15 s heartbeat).
func BenchmarkIdleWatchers(b *testing.B) {
	const watchers, idle = 1000, 10 * time.Second
	j := newJournal(1000)
	_ = j.append(record{offset: 1, data: []byte(`{"id":"1"}`)})
	srv := httptest.NewServer(newHandler(handlerDeps{journal: j, log: apiLogger()}))
	b.Cleanup(srv.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: watchers}}
	for i := range watchers {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/events?watch=true", nil)
		if i%2 == 1 {
			req.Header.Set("Accept", "text/event-stream")
		}
		resp, err := client.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("watch %d: %v %v", i, resp, err)
		}
		b.Cleanup(func() { resp.Body.Close() })
	}
	runtime.GC()
	b.ResetTimer()
	for range b.N {
		before := cpuTime(b)
		time.Sleep(idle) // the measurement is of doing nothing for this long
		used := cpuTime(b) - before
		b.ReportMetric(100*used.Seconds()/idle.Seconds(), "cpu-%-of-core")
	}
}

// rssBytes is the resident set size of this process.
func rssBytes(b *testing.B) float64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status:", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb * 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkMemory: heap and RSS of the process with a full journal of
// 2 x 10,000 records of 1 KiB. Run it alone: RSS counts the whole process.
func BenchmarkMemory(b *testing.B) {
	const segment, size = 10000, 1 << 10
	const mib = 1 << 20
	for range b.N {
		j := newJournal(segment)
		for k := int64(1); k <= 3*segment; k++ { // a third more: a purge happened
			data := bytes.Repeat([]byte{'x'}, size)
			if err := j.append(record{offset: k, data: data, eventType: "vmware.vsphere.VmPoweredOnEvent.v0", class: classEvent}); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		_, payload := j.stats()
		rss := rssBytes(b)
		b.ReportMetric(float64(payload)/mib, "payload-MiB")
		b.ReportMetric(float64(ms.HeapAlloc)/mib, "heap-MiB")
		b.ReportMetric(rss/mib, "rss-MiB")
		b.ReportMetric((1.5*float64(payload)+30*mib)/mib, "target-rss-MiB")
		runtime.KeepAlive(j)
	}
}

// BenchmarkIngest: how fast the simulator takes PostEvent calls from
// several sessions, alone and with the server attached and a watcher
// receiving every event (lossless). The ratio is the server's share.
func BenchmarkIngest(b *testing.B) {
	const clients, perClient = 4, 2500
	const n = clients * perClient
	sessions := func(b *testing.B, sim *simulation) []*vcenter {
		out := make([]*vcenter, clients)
		for i := range out {
			out[i] = connectVCenter(b, sim)
		}
		return out
	}
	post := func(b *testing.B, sessions []*vcenter) time.Duration {
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		start := time.Now()
		for _, vc := range sessions {
			wg.Go(func() {
				for i := range perClient {
					if err := vc.postEvent(context.Background(), strconv.Itoa(i)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var alone float64
	b.Run("simulator", func(b *testing.B) {
		for range b.N {
			sim := startTestSimulation(b)
			alone = n / post(b, sessions(b, sim)).Seconds()
			b.ReportMetric(alone, "events/s")
		}
	})
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"server", nil},
		// Polling instead of update notifications, for comparison: the
		// simulator sends one update per event, each with a copy of the
		// collector's latest page.
		{"server-poll-20ms", []string{"--push=false", "--poll-interval=20ms"}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			for range b.N {
				sim := startTestSimulation(b)
				srv := startServer(b, sim, map[string]string{envDebug: "false"}, mode.args...)
				// Log in first: only the posted events come after the watch opens.
				s := sessions(b, sim)
				waitForKey(b, srv, s[0].latestKey(b))
				w := openLightWatch(b, http.DefaultClient, srv.url+"/api/v1/events?watch=true")
				start := time.Now()
				done := make(chan int, 1)
				go func() {
					seen := 0
					for seen < n {
						if _, err := w.nextKey(); err != nil {
							break
						}
						seen++
					}
					done <- seen
				}()
				post(b, s)
				var seen int
				select {
				case seen = <-done:
				case <-time.After(time.Minute):
					b.Fatalf("events lost: the watcher has not received all %d events after a minute", n)
				}
				if seen < n {
					b.Fatalf("the watch ended after %d of %d events", seen, n)
				}
				attached := n / time.Since(start).Seconds()
				b.ReportMetric(attached, "events/s")
				if alone > 0 {
					b.ReportMetric(100*attached/alone, "%-of-simulator")
				}
			}
		})
	}
}
