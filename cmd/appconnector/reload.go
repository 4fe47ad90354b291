package main

import (
	"bytes"
	"log/slog"
	"os"
	"time"

	"github.com/appconnector/appconnector/connector"
)

// policyWatcher re-reads the policy file on SIGHUP and when it changes.
// A new policy applies only if it is valid; otherwise the old one stays
// and the error is logged with its file, line and key.
type policyWatcher struct {
	path    string
	applied []byte    // content of the policy in force
	modTime time.Time // of the file when last read
	size    int64
}

func newPolicyWatcher(path string) (*policyWatcher, *connector.Policy, error) {
	w := &policyWatcher{path: path}
	data, fi, err := w.read()
	if err != nil {
		return nil, nil, err
	}
	p, err := connector.ParsePolicy(path, data)
	if err != nil {
		return nil, nil, err
	}
	w.applied, w.modTime, w.size = data, fi.ModTime(), fi.Size()
	return w, p, nil
}

func (w *policyWatcher) read() ([]byte, os.FileInfo, error) {
	fi, err := os.Stat(w.path)
	if err != nil {
		return nil, nil, err
	}
	data, err := os.ReadFile(w.path)
	return data, fi, err
}

// reload applies the file to c if it changed (or, if forced, re-reads it
// anyway).
func (w *policyWatcher) reload(c *connector.Connector, log *slog.Logger, forced bool) {
	fi, err := os.Stat(w.path)
	if err != nil {
		log.Error("policy not reloaded", "file", w.path, "err", err)
		return
	}
	if !forced && fi.ModTime().Equal(w.modTime) && fi.Size() == w.size {
		return
	}
	data, fi, err := w.read()
	if err != nil {
		log.Error("policy not reloaded", "file", w.path, "err", err)
		return
	}
	w.modTime, w.size = fi.ModTime(), fi.Size()
	if bytes.Equal(data, w.applied) {
		return
	}
	p, err := connector.ParsePolicy(w.path, data)
	if err != nil {
		log.Error("new policy rejected; the old one stays in force", "err", err.Error())
		return
	}
	c.SetPolicy(p)
	w.applied = data
	log.Info("policy reloaded", "file", w.path, "apps", len(p.Apps))
}
