package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// reloadInterval is how often a fileReloader reads its files. Go's
// standard library has no file notification (inotify is reachable only
// through raw, Linux-only syscalls), and kubelet itself refreshes Secret
// volumes only about once a minute, so reading a few small files once a
// second costs nothing and adds nothing noticeable to a rotation. The
// content is compared, not the files' stats: a Secret update swaps a
// "..data" symlink (another inode, any mtime), and two writes within the
// file system's timestamp granularity share one mtime. A loop (rather
// than a check per request or handshake) is what lets a removed token end
// the watches it opened even when no new request arrives.
const reloadInterval = time.Second

// fileReloader keeps the content of a few files in force: Run reads them
// every interval and hands a changed content to load. Content that cannot
// be read or loaded (half written, a mistake) leaves the last good one in
// force, and is logged once: failing closed would lock every client out
// over a typo.
type fileReloader struct {
	read     func() ([][]byte, error) // the files' content; its errors are logged as they are
	load     func([][]byte) error     // puts a content in force, or refuses it
	log      *slog.Logger
	failure  string // the message that logs a refused content
	attrs    []any  // the attributes of failure, besides the error
	interval time.Duration

	// loaded is notified when a changed content is put in force.
	loaded notifier

	reloading sync.Mutex        // one reload at a time
	sum       [sha256.Size]byte // of the content in force
	badSum    [sha256.Size]byte // of the content last refused, not to load it again
	lastErr   string            // the error last logged, not to log it again
}

// start loads the files' content for the first time. Its error is the
// caller's, a configuration error: there is no previous content to keep.
func (f *fileReloader) start() error {
	content, err := f.read()
	if err == nil {
		err = f.load(content)
	}
	if err != nil {
		return err
	}
	f.sum = contentSum(content)
	return nil
}

// run reloads the files every interval until ctx is done.
func (f *fileReloader) run(ctx context.Context) {
	tick := time.NewTicker(f.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			f.reload()
		}
	}
}

// reload reads the files and loads their content if it changed; a content
// refused (or the files unreadable) leaves the current one in force, and
// is tried again at every reload.
func (f *fileReloader) reload() {
	f.reloading.Lock()
	defer f.reloading.Unlock()
	content, err := f.read()
	if err != nil {
		// What comes back after the files could not be read is news,
		// refused before or not.
		f.badSum = [sha256.Size]byte{}
	} else {
		switch sum := contentSum(content); sum {
		case f.sum:
			f.lastErr = "" // unchanged, or back as it was: a new failure is news
			return
		case f.badSum:
			return // refused already, and logged
		default:
			if err = f.load(content); err == nil {
				f.sum, f.badSum, f.lastErr = sum, [sha256.Size]byte{}, ""
				f.loaded.notify()
				return
			}
			f.badSum = sum
		}
	}
	if msg := err.Error(); msg != f.lastErr {
		f.lastErr = msg
		f.log.Error(f.failure, append(slices.Clone(f.attrs), "error", msg)...)
	}
}

// contentSum is the digest of the files' content, each file's length
// first, so that no two contents share one.
func contentSum(content [][]byte) [sha256.Size]byte {
	h := sha256.New()
	for _, b := range content {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// fileError describes a file error on one line, without repeating the
// path (the caller quotes it, whatever characters it holds).
func fileError(err error) error {
	if unwrapped := withoutPath(err); unwrapped != err {
		return fmt.Errorf("cannot read: %w", unwrapped)
	}
	return err
}
