package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// errCheckpointCorrupt is returned for a checkpoint file that exists but
// does not hold a checkpoint: delivery cannot know where to resume.
var errCheckpointCorrupt = errors.New("checkpoint file is corrupt")

// checkpoint is where delivery to the sink resumes: after Offset, the last
// event the deliverer is done with (acknowledged, refused for good or not
// selected by the filter). Time is that event's creation time in vCenter,
// from which the collector must read again after a restart to include the
// next event. InstanceUUID and Epoch are the timeline of Offset (the
// vCenter, and how many times its keys started over): an offset of another
// timeline names another event. A checkpoint written before they were
// recorded has neither.
type checkpoint struct {
	Offset       int64     `json:"offset"`
	Time         time.Time `json:"time"`
	InstanceUUID string    `json:"instanceUuid,omitempty"`
	Epoch        int       `json:"epoch,omitempty"`
}

// timeline is the timeline of the checkpoint's offset.
func (cp checkpoint) timeline() timeline {
	return timeline{instanceUUID: cp.InstanceUUID, epoch: cp.Epoch}
}

// loadCheckpoint reads the checkpoint at path; ok is false if there is no
// file yet.
func loadCheckpoint(path string) (cp checkpoint, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return cp, false, nil
	}
	if err != nil {
		return cp, false, fmt.Errorf("read checkpoint: %w", err)
	}
	if err := json.Unmarshal(b, &cp); err != nil || cp.Offset < 0 || cp.Time.IsZero() || cp.Epoch < 0 {
		return cp, false, fmt.Errorf("%w: %q is not {\"offset\":N,\"time\":\"RFC 3339\"}", errCheckpointCorrupt, path)
	}
	return cp, true, nil
}

// saveCheckpoint replaces the checkpoint at path atomically: it writes a
// temporary file beside it, syncs it, renames it over the old one and syncs
// the directory, so that a crash leaves either the old checkpoint or the
// new one, never a torn file.
func saveCheckpoint(path string, cp checkpoint) (err error) {
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	// The rename is durable only once the directory is synced.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
