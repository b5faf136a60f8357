package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// readPageSize is the number of events asked of vCenter per ReadNextEvents
// call: the largest page vCenter accepts, so that a burst is drained in as
// few round trips as possible.
const readPageSize = 1000

// userAgent identifies the server's sessions in vCenter.
const userAgent = "vsphere-event-streaming"

// cleanupTimeout bounds the calls made to vCenter after the collector was
// asked to stop (destroying the history collector, logging out).
const cleanupTimeout = 2 * time.Second

// CollectorStatus is what the collector reports about itself to the HTTP
// API. All fields are safe for concurrent use.
type CollectorStatus struct {
	// ready is set after the first successful read from vCenter.
	ready atomic.Bool
	// connected is true while the collector holds a working session.
	connected atomic.Bool
	// lastEvent is the CreatedTime (Unix nanoseconds) of the newest event appended.
	lastEvent atomic.Int64
	// ingested counts events appended to the journal.
	ingested atomic.Int64
	// skipped counts events not appended because their key was not above
	// the latest (already seen).
	skipped atomic.Int64
}

// Ready reports whether the collector has read from vCenter at least once.
func (s *CollectorStatus) Ready() bool { return s.ready.Load() }

// Connected reports whether the collector has a working vCenter session now.
func (s *CollectorStatus) Connected() bool { return s.connected.Load() }

// LastEventTime returns the creation time of the newest event appended, or
// the zero time if there is none.
func (s *CollectorStatus) LastEventTime() time.Time {
	if n := s.lastEvent.Load(); n != 0 {
		return time.Unix(0, n).UTC()
	}
	return time.Time{}
}

// Collector reads events from vCenter and appends them to the journal.
type Collector struct {
	url         *url.URL // SDK endpoint, without credentials
	insecure    bool
	credentials *url.Userinfo
	streamBegin time.Duration
	// pollInterval is the pause after a read found no new events.
	pollInterval time.Duration

	journal   *Journal
	converter *eventConverter
	status    *CollectorStatus
	log       *slog.Logger
}

// newCollector returns a collector for cfg's vCenter that appends to journal.
func newCollector(cfg Config, pollInterval time.Duration, journal *Journal, status *CollectorStatus, log *slog.Logger) *Collector {
	return &Collector{
		url:          cfg.VCenterURL,
		insecure:     cfg.Insecure,
		credentials:  url.UserPassword(cfg.Username, cfg.Password),
		streamBegin:  cfg.StreamBegin,
		pollInterval: pollInterval,
		journal:      journal,
		converter:    &eventConverter{source: cfg.VCenterURL.String(), maxRecordSize: cfg.MaxRecordSize},
		status:       status,
		log:          log,
	}
}

// Run logs in, replays the events of the last streamBegin, then follows
// vCenter's event stream until ctx is done, when it destroys its history
// collector, logs out and returns nil. A failure to talk to vCenter is
// returned.
func (c *Collector) Run(ctx context.Context) error {
	client, err := c.login(ctx)
	if err != nil {
		return err
	}
	c.status.connected.Store(true)
	defer func() {
		c.status.connected.Store(false)
		c.cleanup(ctx, "log out", func(ctx context.Context) error {
			return session.NewManager(client).Logout(ctx)
		})
	}()

	// Begin at vCenter's clock, not ours: the two may differ by minutes.
	now, err := methods.GetCurrentTime(ctx, client)
	if err != nil {
		return fmt.Errorf("read vCenter time: %w", err)
	}
	begin := now.Add(-c.streamBegin)
	root := client.ServiceContent.RootFolder
	hc, err := event.NewManager(client).CreateCollectorForEvents(ctx, types.EventFilterSpec{
		Entity: &types.EventFilterSpecByEntity{Entity: root, Recursion: types.EventFilterSpecRecursionOptionAll},
		Time:   &types.EventFilterSpecByTime{BeginTime: &begin},
	})
	if err != nil {
		return fmt.Errorf("create event collector: %w", err)
	}
	defer c.cleanup(ctx, "destroy event collector", hc.Destroy)
	c.log.Info("collecting vCenter events", "begin", begin, "streamBegin", c.streamBegin.String(), "pollInterval", c.pollInterval.String())

	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		if err := c.drain(ctx, hc); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !c.status.ready.Swap(true) {
			earliest, latest, _ := c.journal.Range()
			c.log.Info("caught up with vCenter", "earliest", earliest, "latest", latest)
		}
		timer.Reset(c.pollInterval)
	}
}

// drain reads pages until vCenter has no more events for the collector.
// Reading whole pages back to back, rather than one page per interval,
// keeps up with any burst vCenter can produce.
func (c *Collector) drain(ctx context.Context, hc *event.HistoryCollector) error {
	for {
		events, err := hc.ReadNextEvents(ctx, readPageSize)
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		if len(events) == 0 {
			return nil
		}
		for _, ev := range events {
			c.ingest(ev)
		}
	}
}

// ingest appends one event, skipping keys already appended.
func (c *Collector) ingest(ev types.BaseEvent) {
	rec, err := c.converter.Convert(ev)
	if err != nil {
		// The encoder covers every vSphere type; this would be a bug. Log it
		// with the key so the gap can be explained.
		c.log.Error("cannot encode event", "offset", ev.GetEvent().Key, "error", err)
		return
	}
	if err := c.journal.Append(rec.Offset, rec.Data); err != nil {
		if errors.Is(err, ErrOutOfOrder) {
			c.status.skipped.Add(1)
			c.log.Debug("skipped event already seen", "offset", rec.Offset, "type", rec.Type)
			return
		}
		c.log.Error("cannot append event", "offset", rec.Offset, "error", err)
		return
	}
	if rec.DataDropped {
		c.log.Warn("event larger than the record size limit: recorded without data",
			"offset", rec.Offset, "type", rec.Type, "limit", c.converter.maxRecordSize)
	}
	c.status.ingested.Add(1)
	c.status.lastEvent.Store(ev.GetEvent().CreatedTime.UnixNano())
	c.log.Debug("appended event", "offset", rec.Offset, "type", rec.Type, "bytes", len(rec.Data))
}

// login opens a session. The credentials are passed to Login only, never
// put in the URL, so no error message or log line can carry them.
func (c *Collector) login(ctx context.Context) (*vim25.Client, error) {
	sc := soap.NewClient(c.url, c.insecure)
	// vCenter lists sessions by user agent: say who we are.
	sc.UserAgent = userAgent
	client, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to vCenter %s: %w", c.url.Host, err)
	}
	if err := session.NewManager(client).Login(ctx, c.credentials); err != nil {
		return nil, fmt.Errorf("log in to vCenter %s: %w", c.url.Host, err)
	}
	c.log.Info("logged in to vCenter", "url", c.url.String())
	return client, nil
}

// cleanup runs a call to vCenter on the way out, when ctx may already be
// cancelled.
func (c *Collector) cleanup(ctx context.Context, what string, call func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := call(ctx); err != nil {
		c.log.Warn("cleanup failed", "step", what, "error", err)
	}
}
