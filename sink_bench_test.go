package main

import (
	"context"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/client"
	cloudevents "github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/vmware/govmomi/vim25/types"
)

// benchSink is a sink that acknowledges at once: the SDK's HTTP receiver
// on loopback. It notes when each key arrived and whether keys came in
// order.
type benchSink struct {
	url string

	mu       sync.Mutex
	received map[int64]time.Time
	last     int64
	outOfOrd int
	want     int64         // the key whose arrival closes arrived
	arrived  chan struct{} // closed when want arrives
}

func startBenchSink(b *testing.B) *benchSink {
	b.Helper()
	s := &benchSink{received: map[int64]time.Time{}, last: -1, want: -1, arrived: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s.url = "http://" + ln.Addr().String() + "/"
	p, err := cehttp.New(cehttp.WithListener(ln))
	if err != nil {
		b.Fatal(err)
	}
	c, err := client.New(p, client.WithBlockingCallback())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.StartReceiver(ctx, func(ev cloudevents.Event) {
			now := time.Now()
			key, _ := strconv.ParseInt(ev.ID(), 10, 64)
			s.mu.Lock()
			defer s.mu.Unlock()
			if key <= s.last {
				s.outOfOrd++
			}
			s.last = key
			s.received[key] = now
			if key == s.want {
				close(s.arrived)
			}
		})
	}()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	return s
}

// expect makes arrived close when key arrives.
func (s *benchSink) expect(key int64) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = key
	s.arrived = make(chan struct{})
	if _, ok := s.received[key]; ok {
		close(s.arrived)
	}
	return s.arrived
}

// benchRecords returns n records of a realistic VmPoweredOnEvent, keys
// 1..n, as the collector encodes them (about 1.3 KiB each).
func benchRecords(b testing.TB, n int) []record {
	b.Helper()
	conv := &eventConverter{source: "https://vcenter.example.com/sdk", maxRecordSize: defaultMaxRecordSize}
	created := time.Date(2026, 11, 25, 1, 0, 0, 0, time.UTC)
	out := make([]record, n)
	for i := range n {
		key := int32(i + 1)
		ev := &types.VmPoweredOnEvent{VmEvent: types.VmEvent{Event: types.Event{
			Key: key, ChainId: key, CreatedTime: created.Add(time.Duration(i) * time.Millisecond),
			UserName:             "VSPHERE.LOCAL\\Administrator",
			FullFormattedMessage: "DC0_H0_VM0 on host DC0_H0 in DC0 is powered on",
			Datacenter: &types.DatacenterEventArgument{
				EntityEventArgument: types.EntityEventArgument{Name: "DC0"},
				Datacenter:          types.ManagedObjectReference{Type: "Datacenter", Value: "datacenter-2"},
			},
			Host: &types.HostEventArgument{
				EntityEventArgument: types.EntityEventArgument{Name: "DC0_H0"},
				Host:                types.ManagedObjectReference{Type: "HostSystem", Value: "host-21"},
			},
			Vm: &types.VmEventArgument{
				EntityEventArgument: types.EntityEventArgument{Name: "DC0_H0_VM0"},
				Vm:                  types.ManagedObjectReference{Type: "VirtualMachine", Value: "vm-57"},
			},
		}}}
		c, err := conv.convert(ev)
		if err != nil {
			b.Fatal(err)
		}
		out[i] = c.record
	}
	return out
}

// BenchmarkSinkThroughput: how many events per second the deliverer gets
// acknowledged, one at a time in order, by a loopback sink that answers at
// once (the SDK's receiver, in the same process, on the same 2 cores).
// Each op is one event; run with e.g. -benchtime 20000x.
func BenchmarkSinkThroughput(b *testing.B) {
	for _, mode := range []struct {
		name string
		cfg  sinkConfig
	}{
		{"binary", sinkConfig{}},
		{"binary+overrides", sinkConfig{extensions: map[string]string{"cluster": "bench"}}},
		{"structured", sinkConfig{structured: true}},
		{"structured+overrides", sinkConfig{structured: true, extensions: map[string]string{"cluster": "bench"}}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			records := benchRecords(b, b.N)
			j := newJournal(b.N)
			for _, r := range records {
				if err := j.append(r); err != nil {
					b.Fatal(err)
				}
			}
			sink := startBenchSink(b)
			cfg := mode.cfg
			cfg.url, _ = url.Parse(sink.url)
			cfg.timeout = defaultSinkTimeout
			d := newTestDeliverer(b, cfg, j, slog.New(slog.DiscardHandler))
			arrived := sink.expect(int64(b.N))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			b.ResetTimer()
			start := time.Now()
			go func() {
				defer close(done)
				d.run(ctx)
			}()
			select {
			case <-arrived:
			case <-time.After(10 * time.Minute):
				b.Fatal("not every event arrived")
			}
			elapsed := time.Since(start)
			b.StopTimer()
			cancel()
			<-done
			sink.mu.Lock()
			defer sink.mu.Unlock()
			if sink.outOfOrd > 0 || len(sink.received) != b.N {
				b.Fatalf("%d of %d events arrived, %d out of order", len(sink.received), b.N, sink.outOfOrd)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
		})
	}
}

// BenchmarkSinkLatency: the time from PostEvent returning to the event
// reaching the sink, through the whole server (collector, journal,
// deliverer), at 100 events per second for 5 s.
func BenchmarkSinkLatency(b *testing.B) {
	const rate = 100
	sim := startTestSimulation(b)
	vc := connectVCenter(b, sim)
	sink := startBenchSink(b)
	srv := startServer(b, sim, map[string]string{envDebug: "false", envSink: sink.url})
	latest := vc.latestKey(b)
	waitForKey(b, srv, latest)
	<-sink.expect(latest) // the events from before are delivered
	first := latest + 1

	n := 5 * rate * b.N
	arrived := sink.expect(first + int64(n) - 1)
	b.ResetTimer()
	returned, err := paced(context.Background(), vc, n, rate)
	if err != nil {
		b.Fatal(err)
	}
	select {
	case <-arrived:
	case <-time.After(waitTimeout):
		b.Fatal("not every event reached the sink")
	}
	b.StopTimer()
	sink.mu.Lock()
	defer sink.mu.Unlock()
	latencies := make([]time.Duration, n)
	for i := range n {
		at, ok := sink.received[first+int64(i)]
		if !ok {
			b.Fatalf("event %d never reached the sink", first+int64(i))
		}
		latencies[i] = max(0, at.Sub(returned[i]))
	}
	if sink.outOfOrd > 0 {
		b.Fatalf("%d events out of order", sink.outOfOrd)
	}
	quantiles(b, latencies, "")
}
