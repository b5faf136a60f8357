package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/property"
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

// cleanupTimeout bounds the calls made to vCenter at the end of a session
// (destroying its collectors, logging out), all together.
const cleanupTimeout = 2 * time.Second

// announcedPageSize is the size of the history collector's latestPage,
// which every announcement carries whole: the newest event is all it needs
// to tell, the reads fetch the rest. (vCenter's default is 10, each
// decoded on every announcement.)
const announcedPageSize = 1

// errStalled ends a session whose vCenter calls stopped succeeding.
var errStalled = errors.New("vCenter stalled: no call succeeded within the watchdog bound")

// collectMode is how a session learns of new events.
type collectMode int

const (
	// modePush waits for vCenter to announce a new event, then reads up
	// to the event announced.
	modePush collectMode = iota
	// modeFlood reads back to back, every floodPause, without
	// announcements: in a flood they cost more than they save, since
	// vCenter queues one per event (the simulator with a copy of the
	// latest page each) while every read finds many events anyway.
	modeFlood
	// modePoll reads every poll interval: push is off, or waiting for
	// announcements keeps failing.
	modePoll
)

// String is the mode's name in the log.
func (m collectMode) String() string {
	switch m {
	case modePush:
		return "push"
	case modeFlood:
		return "flood"
	}
	return "poll"
}

// A drain that finds floodEvents or more after an announcement starts a
// flood: the session then reads every floodPause without announcements,
// until a read finds fewer than a tenth as many.
const (
	floodEvents = 100
	floodPause  = 20 * time.Millisecond
)

// updateWaitFailures is how many failed waits for an update in a row make a
// session fall back to polling.
const updateWaitFailures = 3

// nextMode decides a session's next mode from its current one, the number
// of events its last read found and its failed waits for announcements in
// a row. It is the one place where the mode changes.
func nextMode(m collectMode, read, waitFailures int) collectMode {
	switch {
	case m == modePoll:
		return modePoll
	case m == modePush && waitFailures >= updateWaitFailures:
		return modePoll
	case m == modePush && read >= floodEvents:
		return modeFlood
	case m == modeFlood && read < floodEvents/10:
		return modePush
	}
	return m
}

// vcLogin is where and as whom sessions log in to vCenter.
type vcLogin struct {
	url         *url.URL // SDK endpoint, without credentials
	insecure    bool
	trust       vcenterTrust
	credentials *url.Userinfo
}

// newVCLogin returns the login to cfg's vCenter.
func newVCLogin(cfg config) vcLogin {
	return vcLogin{url: cfg.vcenterURL, insecure: cfg.insecure, trust: cfg.trust,
		credentials: url.UserPassword(cfg.username, cfg.password)}
}

// sessionOptions are a vCenter session's timings.
type sessionOptions struct {
	// pollInterval is the pause between reads when polling.
	pollInterval time.Duration
	// safetyInterval is the longest wait for an announcement before the
	// session reads anyway, in case one was missed.
	safetyInterval time.Duration
	// keepAlive is the interval of a cheap call (CurrentTime) that keeps
	// the session from idling out.
	keepAlive time.Duration
	// watchdog ends a session in which no vCenter call has succeeded for
	// this long (a silent stall), so that it is rebuilt.
	watchdog time.Duration
}

// vcSession is one login to vCenter, with what it holds there: the history
// collectors it reads, and for the one it follows (follow) the watch on its
// latest page that push mode waits on. A watchdog ends the session's
// context when no call has succeeded for its bound (a silent stall), and a
// cheap call keeps the session from idling out. Its calls take the
// session's context (open), from one goroutine.
type vcSession struct {
	// client's ServiceContent tells which vCenter this is (About).
	client   *vim25.Client
	opts     sessionOptions
	log      *slog.Logger
	watchdog *sessionWatchdog
	// cancel ends the session's context: at close, or with errStalled.
	cancel        context.CancelCauseFunc
	lastKeepAlive time.Time
	// skew is vCenter's clock minus ours, as last read.
	skew time.Duration
	// histories are the history collectors open in vCenter, destroyed at
	// close if not before.
	histories map[*eventHistory]struct{}

	// mode is how the session learns of the new events of the history it
	// follows (followed): in push mode from updates. waitFailures counts
	// the failed waits for an update in a row.
	mode         collectMode
	followed     *eventHistory
	updates      *pageUpdates
	waitFailures int
}

// open logs in to vCenter. ctx is the session's: it ends with parent, at
// close, or when the watchdog finds the session stalled (errStalled), so
// every call of the session takes it, or a context made from it.
func (l vcLogin) open(parent context.Context, opts sessionOptions, log *slog.Logger) (s *vcSession, ctx context.Context, err error) {
	ctx, cancel := context.WithCancelCause(parent)
	watchdog := newSessionWatchdog(opts.watchdog, func() { cancel(errStalled) })
	client, err := l.login(ctx, log)
	if err != nil {
		err = failed(ctx, "log in", err)
		watchdog.stop()
		cancel(nil)
		return nil, nil, err
	}
	s = &vcSession{client: client, opts: opts, log: log, watchdog: watchdog, cancel: cancel,
		lastKeepAlive: time.Now(), mode: modePoll, histories: make(map[*eventHistory]struct{})}
	s.succeeded()
	return s, ctx, nil
}

// login connects and logs in. The credentials are passed to Login only,
// never put in the URL, so no error message or log line can carry them.
func (l vcLogin) login(ctx context.Context, log *slog.Logger) (*vim25.Client, error) {
	sc := soap.NewClient(l.url, l.insecure)
	// vCenter lists sessions by user agent: say who we are.
	sc.UserAgent = userAgent
	sc.Types = withUnknownEvents(sc.Types)
	if l.trust.rootCAs != nil {
		sc.DefaultTransport().TLSClientConfig.RootCAs = l.trust.rootCAs
	}
	if l.trust.thumbprint != "" {
		// govmomi accepts a certificate with this fingerprint when no CA
		// vouches for it.
		sc.SetThumbprint(l.url.Host, l.trust.thumbprint)
	}
	client, err := vim25.NewClient(ctx, sc)
	if err != nil {
		sc.CloseIdleConnections()
		return nil, fmt.Errorf("connect to vCenter %s: %w", l.url.Host, err)
	}
	if err := session.NewManager(client).Login(ctx, l.credentials); err != nil {
		sc.CloseIdleConnections()
		return nil, fmt.Errorf("log in to vCenter %s: %w", l.url.Host, err)
	}
	about := client.ServiceContent.About
	log.Info("logged in to vCenter", "url", l.url.String(), "instanceUuid", about.InstanceUuid, "apiVersion", about.ApiVersion)
	return client, nil
}

// failed is the error of the call what: err, or for a call the watchdog
// cut short (which reports a cancelled context) the stall.
func failed(ctx context.Context, what string, err error) error {
	if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
		err = cause
	}
	return fmt.Errorf("%s: %w", what, err)
}

// succeeded puts the watchdog off: a call succeeded.
func (s *vcSession) succeeded() { s.watchdog.succeeded() }

// idle runs wait, which waits for something other than vCenter, with the
// watchdog paused, and returns what wait does.
func (s *vcSession) idle(wait func() bool) bool { return s.watchdog.pause(wait) }

// now reads vCenter's current time (a cheap call, also the keep-alive)
// and remembers how far it is from ours.
func (s *vcSession) now(ctx context.Context) (time.Time, error) {
	now, err := methods.GetCurrentTime(ctx, s.client)
	if err != nil {
		return time.Time{}, failed(ctx, "read vCenter time", err)
	}
	s.succeeded()
	s.skew = now.Sub(time.Now())
	return *now, nil
}

// keepAlive makes the cheap call that keeps the session from idling out,
// when one is due.
func (s *vcSession) keepAlive(ctx context.Context) error {
	if time.Since(s.lastKeepAlive) < s.opts.keepAlive {
		return nil
	}
	if _, err := s.now(ctx); err != nil {
		return fmt.Errorf("keep-alive: %w", err)
	}
	s.lastKeepAlive = time.Now()
	return nil
}

// eventHistory is a history collector of vCenter's events, read page by
// page from the oldest.
type eventHistory struct {
	session *vcSession
	hc      *event.HistoryCollector
}

// openHistory creates a history collector of the events of the whole
// inventory created from begin on, and until end unless that is zero.
func (s *vcSession) openHistory(ctx context.Context, begin, end time.Time) (*eventHistory, error) {
	span := &types.EventFilterSpecByTime{BeginTime: &begin}
	if !end.IsZero() {
		span.EndTime = &end
	}
	hc, err := event.NewManager(s.client).CreateCollectorForEvents(ctx, types.EventFilterSpec{
		Entity: &types.EventFilterSpecByEntity{Entity: s.client.ServiceContent.RootFolder, Recursion: types.EventFilterSpecRecursionOptionAll},
		Time:   span,
	})
	if err != nil {
		return nil, failed(ctx, "create event collector", err)
	}
	s.succeeded()
	h := &eventHistory{session: s, hc: hc}
	s.histories[h] = struct{}{}
	return h, nil
}

// readNext reads the next page of up to size events. A panic of govmomi's
// decoder (a type it maps to something that is not an event) is returned
// as an error wrapping errPanic; vCenter answered all the same, so it puts
// the watchdog off, and vCenter has moved the collector past the page.
func (h *eventHistory) readNext(ctx context.Context, size int) ([]types.BaseEvent, error) {
	events, err := readEvents(ctx, h.hc, size)
	if err == nil || errors.Is(err, errPanic) {
		h.session.succeeded()
	}
	return events, err
}

// readEvents reads the next page of up to size events of hc, a decoder's
// panic returned as an error.
func readEvents(ctx context.Context, hc *event.HistoryCollector, size int) (events []types.BaseEvent, err error) {
	defer recoverAsError(&err)
	return hc.ReadNextEvents(ctx, int32(size))
}

// newest returns the newest event of the history's latest page, which
// vCenter keeps current: the newest event it holds of the history's span;
// nil if there is none.
func (h *eventHistory) newest(ctx context.Context) (newest types.BaseEvent, err error) {
	defer recoverAsError(&err)
	page, err := h.hc.LatestPage(ctx)
	if err != nil {
		return nil, failed(ctx, "read the event collector's latest page", err)
	}
	h.session.succeeded()
	for _, ev := range page {
		if ev != nil && (newest == nil || ev.GetEvent().Key > newest.GetEvent().Key) { // nil: a type govmomi cannot map
			newest = ev
		}
	}
	return newest, nil
}

// close destroys the history collector in vCenter.
func (h *eventHistory) close(ctx context.Context) { h.session.destroy(ctx, h) }

// destroy destroys h in vCenter, and forgets it.
func (s *vcSession) destroy(ctx context.Context, h *eventHistory) {
	delete(s.histories, h)
	if err := h.hc.Destroy(ctx); err != nil {
		s.log.Debug("cannot destroy event collector", "error", err)
	}
}

// follow makes h the history whose new events the session waits for: in
// push mode if push is set, announced by vCenter, else polling.
func (s *vcSession) follow(ctx context.Context, h *eventHistory, push bool) error {
	s.followed = h
	if !push {
		return nil
	}
	// Before the first read: the simulator's collector starts its page
	// over when it is resized. Only the announcements' size depends on
	// it, so a vCenter that refuses it costs CPU, not events.
	if err := h.hc.SetPageSize(ctx, announcedPageSize); err != nil {
		if ctx.Err() != nil {
			return failed(ctx, "set the event collector's page size", err)
		}
		s.log.Warn("cannot set the event collector's page size; announcements carry vCenter's default page", "error", err)
	}
	return s.setMode(ctx, modePush)
}

// setMode makes the session learn of new events as mode says; only push
// mode watches the followed history's latest page.
func (s *vcSession) setMode(ctx context.Context, mode collectMode) error {
	if s.mode == modePush {
		s.unwatch(ctx)
	}
	if mode == modePush {
		updates, err := watchLatestPage(ctx, s.client, s.followed.hc, s.opts.safetyInterval)
		if err != nil {
			return failed(ctx, "watch the event collector", err)
		}
		s.succeeded()
		s.updates = updates
	}
	s.mode = mode
	return nil
}

// waitForEvents waits until the next read of the followed history is due
// and returns the newest key vCenter announced, -1 if none. In push mode
// it waits for an announcement, at most the safety interval; a failed wait
// is counted (waitFailures) and ends the wait early: the next read tells a
// dead connection from a failing update wait. In the other modes it pauses
// with the watchdog paused: a poll interval longer than its bound is no
// stall.
func (s *vcSession) waitForEvents(ctx context.Context) (announced int64, err error) {
	if s.mode != modePush {
		pause := s.opts.pollInterval
		if s.mode == modeFlood {
			pause = floodPause
		}
		if !s.idle(func() bool { return sleep(ctx, pause) }) {
			return -1, failed(ctx, "wait between reads", context.Cause(ctx))
		}
		return -1, nil
	}
	newest, err := s.updates.wait(ctx)
	switch {
	case err == nil:
		s.waitFailures = 0
		s.succeeded()
		return newest, nil
	case ctx.Err() != nil:
		return -1, failed(ctx, "wait for events", err)
	}
	s.waitFailures++
	s.log.Warn("waiting for new events failed", append(errorAttrs(err), "failures", s.waitFailures)...)
	return -1, nil
}

// unwatch destroys the property collector of the updates, if any. That
// also ends a wait still pending in vCenter, which would otherwise hold on
// to its connection until it times out.
func (s *vcSession) unwatch(ctx context.Context) {
	if s.updates == nil {
		return
	}
	if _, err := methods.DestroyPropertyCollector(ctx, s.client, &types.DestroyPropertyCollector{This: s.updates.req.This}); err != nil {
		s.log.Debug("cannot destroy property collector", "error", err)
	}
	s.updates = nil
}

// close destroys the session's collectors and logs out, within one bound,
// also when vCenter is gone or ctx is cancelled; then ends the session's
// context.
func (s *vcSession) close(ctx context.Context) {
	defer s.cancel(nil)
	s.watchdog.stop()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	s.unwatch(ctx)
	for h := range s.histories {
		s.destroy(ctx, h)
	}
	defer s.client.CloseIdleConnections()
	if err := session.NewManager(s.client).Logout(ctx); err != nil {
		s.log.Debug("cannot log out", "error", err)
		return
	}
	s.log.Info("logged out of vCenter")
}

// sessionWatchdog ends a session in which no vCenter call has succeeded
// for its bound, whatever the call is blocked on; each success puts it off.
// It does not run while the session waits for something other than
// vCenter (between polls, for the sink).
type sessionWatchdog struct {
	timer *time.Timer
	bound time.Duration
}

// newSessionWatchdog returns a running watchdog that calls stalled once
// bound passes without a success.
func newSessionWatchdog(bound time.Duration, stalled func()) *sessionWatchdog {
	return &sessionWatchdog{timer: time.AfterFunc(bound, stalled), bound: bound}
}

// succeeded puts the watchdog off for another bound.
func (w *sessionWatchdog) succeeded() { w.timer.Reset(w.bound) }

// stop stops the watchdog for good.
func (w *sessionWatchdog) stop() { w.timer.Stop() }

// pause stops the watchdog while wait runs, and returns what wait does.
func (w *sessionWatchdog) pause(wait func() bool) bool {
	w.timer.Stop()
	defer w.succeeded()
	return wait()
}

// pageUpdates waits for vCenter to announce a change of a history
// collector's latestPage, which it does for every new event.
type pageUpdates struct {
	client *vim25.Client
	req    types.WaitForUpdatesEx
}

// watchLatestPage creates a property collector of the session's own with a
// filter on hc's latestPage. Each wait returns at the latest after
// safetyInterval, so that a missed announcement costs at most that long.
func watchLatestPage(ctx context.Context, client *vim25.Client, hc *event.HistoryCollector, safetyInterval time.Duration) (*pageUpdates, error) {
	pc, err := property.DefaultCollector(client).Create(ctx)
	if err != nil {
		return nil, fmt.Errorf("create property collector: %w", err)
	}
	_, err = pc.CreateFilter(ctx, types.CreateFilter{Spec: types.PropertyFilterSpec{
		ObjectSet: []types.ObjectSpec{{Obj: hc.Reference()}},
		PropSet:   []types.PropertySpec{{Type: hc.Reference().Type, PathSet: []string{"latestPage"}}},
	}})
	if err != nil {
		return nil, fmt.Errorf("create property filter: %w", err)
	}
	maxWait := int32(max(1, safetyInterval/time.Second))
	return &pageUpdates{client: client, req: types.WaitForUpdatesEx{
		This:    pc.Reference(),
		Options: &types.WaitOptions{MaxWaitSeconds: &maxWait},
	}}, nil
}

// wait returns when latestPage changed or the safety interval passed. It
// returns the newest key the announcement carried, -1 if none (the safety
// interval passed). The announcement carries the latest page of events: an
// event that govmomi cannot decode makes the wait fail, and repeated
// failures make the collector poll instead.
func (u *pageUpdates) wait(ctx context.Context) (newest int64, err error) {
	defer recoverAsError(&err)
	res, err := methods.WaitForUpdatesEx(ctx, u.client, &u.req)
	if err != nil {
		return -1, err
	}
	set := res.Returnval
	if set == nil {
		return -1, nil
	}
	u.req.Version = set.Version
	return newestAnnounced(set), nil
}

// newestAnnounced returns the newest event key among the latestPage
// values of set, -1 if it has none.
func newestAnnounced(set *types.UpdateSet) int64 {
	newest := int64(-1)
	for _, filter := range set.FilterSet {
		for _, object := range filter.ObjectSet {
			for _, change := range object.ChangeSet {
				page, ok := change.Val.(types.ArrayOfEvent)
				if change.Name != "latestPage" || !ok {
					continue
				}
				for _, ev := range page.Event {
					if ev != nil { // a type govmomi cannot map
						newest = max(newest, int64(ev.GetEvent().Key))
					}
				}
			}
		}
	}
	return newest
}

// certificateUntrusted tells whether err is a TLS verification failure that
// trusting vCenter's certificate would fix: no CA vouches for it, it is not
// for vCenter's host name, or it does not have the pinned fingerprint.
func certificateUntrusted(err error) bool {
	if err == nil {
		return false
	}
	// govmomi's thumbprint check has no error type of its own.
	return soap.IsCertificateUntrusted(err) || strings.Contains(err.Error(), "thumbprint does not match")
}

// presentedFingerprint returns the SHA-256 fingerprint of the certificate
// host presents (from failure, the handshake's error, or else read anew),
// in the form VCENTER_THUMBPRINT takes, so that an operator who checks it
// can pin it; "" if it cannot be read.
func presentedFingerprint(ctx context.Context, failure error, host string) string {
	// The failed handshake usually carries the certificate.
	var verification *tls.CertificateVerificationError
	if errors.As(failure, &verification) && len(verification.UnverifiedCertificates) > 0 {
		return soap.ThumbprintSHA256(verification.UnverifiedCertificates[0])
	}
	if _, port, err := net.SplitHostPort(host); err != nil || port == "" {
		host = net.JoinHostPort(strings.Trim(host, "[]"), "443")
	}
	ctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
	defer cancel()
	// Verification is off only to read the certificate: nothing is sent.
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true}}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return ""
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return ""
	}
	return soap.ThumbprintSHA256(certs[0])
}
