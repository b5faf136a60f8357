// Command vsphere-event-streaming serves vCenter's events as CloudEvents
// over a plain HTTP API: read by offset (the vCenter event key), read pages,
// and watch a live stream from any offset.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// HTTP server settings.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	// shutdownTimeout bounds the graceful part of shutdown, leaving room
	// for the vCenter logout within the 5 s the contract allows.
	shutdownTimeout = 2 * time.Second
)

func main() {
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "vsphere-event-streaming:", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	simulate     bool
	simulateRate float64
	maxWatches   int
	collector    collectorOptions
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{maxWatches: defaultMaxWatches, collector: defaultCollectorOptions()}
	name := "vsphere-event-streaming"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.simulate, "simulate", false, "start an in-process vCenter simulator that keeps producing events, and stream from it (no vCenter needed)")
	fs.Float64Var(&o.simulateRate, "simulate-rate", 2, "with --simulate: simulated operations per second (each yields one or two events)")
	fs.IntVar(&o.maxWatches, "max-watches", o.maxWatches, "watches open at once at most; more get 503 with Retry-After (0: no limit)")
	fs.BoolVar(&o.collector.push, "push", o.collector.push, "learn of new events from vCenter's update notifications (WaitForUpdatesEx); false: poll")
	fs.DurationVar(&o.collector.pollInterval, "poll-interval", o.collector.pollInterval, "pause between reads of vCenter when polling (--push=false, or when update notifications keep failing)")
	fs.DurationVar(&o.collector.watchdog, "watchdog", o.collector.watchdog, "rebuild the vCenter session when no vCenter call has succeeded for this long (at least 3s)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	// The negated test also refuses NaN.
	if !(o.simulateRate > 0 && o.simulateRate <= maxSimulateRate) {
		return o, fmt.Errorf("--simulate-rate must be above 0 and at most %d, not %v", maxSimulateRate, o.simulateRate)
	}
	if o.maxWatches < 0 {
		return o, fmt.Errorf("--max-watches must not be negative, not %d", o.maxWatches)
	}
	if o.collector.pollInterval <= 0 {
		return o, fmt.Errorf("--poll-interval must be positive, not %v", o.collector.pollInterval)
	}
	if o.collector.watchdog < 3*time.Second {
		return o, fmt.Errorf("--watchdog must be at least 3s, not %v", o.collector.watchdog)
	}
	// Idle sessions must make a successful call well within the watchdog
	// bound: wait for announcements at most a third of it.
	o.collector.safetyInterval = min(o.collector.safetyInterval, o.collector.watchdog/3)
	return o, nil
}

// running is a server that run has started, as its started callback sees
// it: what a test waits on, rather than on the log.
type running struct {
	addr    net.Addr // where it listens
	journal *journal
	status  *collectorStatus
	sink    *sinkStatus   // nil without a sink
	tokens  *tokenAuth    // nil without API_TOKENS_PATH
	certs   *certReloader // nil without TLS
}

// run is the whole program: it serves until ctx is done or SIGINT/SIGTERM
// arrives, then shuts down and returns nil; it returns an error for a bad
// configuration or a failure to reach vCenter. started, if set, is called
// once the server listens (tests pass one; main does not).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, started func(running)) error {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg, err := parseConfig(getenv, !opts.simulate)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if cfg.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	// Watches on connections taken over from net/http: srv.Shutdown does
	// not wait for them, run does.
	taken := new(takenWatches)
	var auth *tokenAuth
	if cfg.tokensPath != "" {
		if auth, err = newTokenAuth(cfg.tokensPath, log); err != nil {
			return err
		}
	}
	var certs *certReloader
	if cfg.tlsCertFile != "" {
		if certs, err = newCertReloader(cfg.tlsCertFile, cfg.tlsKeyFile, log); err != nil {
			return err
		}
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancelCause(ctx)
	var sim *simulation
	if opts.simulate {
		if sim, err = startSimulation(); err != nil {
			cancel(nil)
			return err
		}
		defer sim.close()
		cfg.useSimulation(sim)
		log.Info("started vCenter simulator", "url", sim.url.String())
	}
	// On the way out: cancel, wait for every goroutine (the collector logs
	// out), and only then stop the simulator.
	var workers sync.WaitGroup
	defer workers.Wait()
	defer cancel(nil)
	if sim != nil {
		workers.Go(func() {
			keepRunning(ctx, log, "simulated event generator", func(ctx context.Context) {
				if err := sim.generate(ctx, opts.simulateRate, log); err != nil && ctx.Err() == nil {
					log.Error("simulated event generator stopped", "error", err)
				}
			})
		})
	}

	journal := newJournal(cfg.maxSegmentSize)
	status := newCollectorStatus(opts.collector.stuckAfter())
	// Without a sink there is no deliverer, and no pace for the collector.
	var (
		sink     *deliverer
		pace     *sinkPace
		delivery *sinkStatus
	)
	if cfg.sink.url != nil {
		// A sink that retries one event, timing out and backing off, is
		// still taking events.
		if pace, err = newSinkPace(cfg.sink.checkpointFile, max(sinkPatience, 2*cfg.sink.timeout+sinkBackoffMax), status); err != nil {
			return err
		}
		if !pace.resume.Time.IsZero() {
			// Offsets go on in the timeline the checkpoint was written in.
			journal.continueTimeline(pace.resume.timeline())
		}
		if sink, err = newDeliverer(cfg.sink, journal, pace, log); err != nil {
			return err
		}
		delivery = sink.status
	}
	collector := newCollector(cfg, opts.collector, journal, status, pace, log)

	ln, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.port)))
	if err != nil {
		return fmt.Errorf("listen on port %d: %w", cfg.port, err)
	}
	// Requests live in a context of their own, ended at shutdown: it is
	// what ends open watches, which http.Server.Shutdown would wait for.
	requests, endRequests := context.WithCancel(context.WithoutCancel(ctx))
	defer endRequests()
	srv := &http.Server{
		Handler: newHandler(handlerDeps{
			journal: journal, status: status, log: log, sink: delivery, auth: auth, taken: taken,
			maxWatches: opts.maxWatches,
		}),
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return requests },
		// OPTIONS * would get an empty 200 from net/http; the API answers
		// it like every other method it does not serve: 405.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	serve := func() error { return srv.Serve(ln) }
	if certs != nil {
		srv.TLSConfig = certs.tlsConfig()
		serve = func() error { return srv.ServeTLS(ln, "", "") }
	}
	log.Info("serving HTTP", "addr", ln.Addr().String(), "tls", certs != nil, "tokens", auth != nil)
	if auth == nil {
		log.Warn("API_TOKENS_PATH is not set: anyone who reaches this port reads every event")
	}
	if opts.simulate {
		fmt.Fprintf(stdout, "Live event viewer: %s\n", viewerURL(ln.Addr(), certs != nil))
	}
	workers.Go(func() {
		if err := serve(); !errors.Is(err, http.ErrServerClosed) {
			cancel(fmt.Errorf("serve HTTP: %w", err))
		}
	})
	if auth != nil {
		workers.Go(func() { keepRunning(ctx, log, "token reload", auth.run) })
	}
	if certs != nil {
		workers.Go(func() { keepRunning(ctx, log, "certificate reload", certs.run) })
	}
	workers.Go(func() { keepRunning(ctx, log, "vCenter collector", collector.run) })
	if sink != nil {
		workers.Go(func() { keepRunning(ctx, log, "sink delivery", sink.run) })
	}
	if started != nil {
		started(running{addr: ln.Addr(), journal: journal, status: status, sink: delivery, tokens: auth, certs: certs})
	}

	<-ctx.Done()
	// A second signal now ends the process at once.
	stop()
	log.Info("shutting down")
	endRequests()
	shutdownCtx, cancelShutdown := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancelShutdown()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	// Ended with the requests' context, they write their last chunk and
	// close their connections within watchEndTimeout.
	_ = taken.wait(shutdownCtx)
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
