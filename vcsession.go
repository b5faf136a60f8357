package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/vmware/govmomi/event"
	"github.com/vmware/govmomi/property"
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
// (destroying the history collector, logging out), all together.
const cleanupTimeout = 2 * time.Second

// A drain that finds floodEvents or more after an announcement starts a
// flood: the collector then reads every floodPause without announcements,
// until a read finds fewer than a tenth as many.
const (
	floodEvents = 100
	floodPause  = 20 * time.Millisecond
)

// updateWaitFailures is how many failed waits for an update in a row make a
// session fall back to polling.
const updateWaitFailures = 3

// announcedPageSize is the size of the history collector's latestPage,
// which every announcement carries whole: the newest event is all it needs
// to tell, the reads fetch the rest. (vCenter's default is 10, each
// decoded on every announcement.)
const announcedPageSize = 1

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

func (m collectMode) String() string {
	switch m {
	case modePush:
		return "push"
	case modeFlood:
		return "flood"
	}
	return "poll"
}

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

// errStalled ends a session whose vCenter calls stopped succeeding.
var errStalled = errors.New("vCenter stalled: no call succeeded within the watchdog bound")

// sessionWatchdog ends a session in which no vCenter call has succeeded
// for its bound, whatever the call is blocked on; each success puts it off.
// It does not run while the session waits for something other than
// vCenter (between polls, for the sink).
type sessionWatchdog struct {
	timer *time.Timer
	bound time.Duration
}

func newSessionWatchdog(bound time.Duration, stalled func()) *sessionWatchdog {
	return &sessionWatchdog{timer: time.AfterFunc(bound, stalled), bound: bound}
}

func (w *sessionWatchdog) succeeded() { w.timer.Reset(w.bound) }

func (w *sessionWatchdog) stop() { w.timer.Stop() }

// pause stops the watchdog while wait runs, and returns what wait does.
func (w *sessionWatchdog) pause(wait func() bool) bool {
	w.timer.Stop()
	defer w.succeeded()
	return wait()
}

// readEvents reads the next page of up to size events of hc.
// A panic of govmomi's decoder (a type it maps to something that is not an
// event) is returned as an error wrapping errPanic.
func readEvents(ctx context.Context, hc *event.HistoryCollector, size int) (events []types.BaseEvent, err error) {
	defer recoverAsError(&err)
	return hc.ReadNextEvents(ctx, int32(size))
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
