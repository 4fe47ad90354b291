package main

import (
	"bytes"
	"log/slog"
	"os"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
)

// policyWatcher re-reads the policy file on SIGHUP and every poll. A new
// policy applies only if it is valid; otherwise the old one stays and the
// error is logged with its file, line and key. (A policy file is small:
// reading it every few seconds catches every edit, including ones that
// keep its size and modification time.)
type policyWatcher struct {
	path    string
	applied []byte // content of the policy in force
	lastErr string // the last error logged, so a lasting one is logged once
}

func newPolicyWatcher(path string) (*policyWatcher, *apptype.Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	p, err := apptype.ParsePolicy(path, data)
	if err != nil {
		return nil, nil, err
	}
	return &policyWatcher{path: path, applied: data}, p, nil
}

// reload applies the file to c if its content changed. forced (SIGHUP)
// logs the outcome even when nothing changed.
func (w *policyWatcher) reload(c *connector.Connector, log *slog.Logger, forced bool) {
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.logErr(log, forced, "policy not reloaded; the old one stays in force", err)
		return
	}
	if bytes.Equal(data, w.applied) {
		w.lastErr = ""
		if forced {
			log.Info("SIGHUP: the policy is unchanged", "file", w.path)
		}
		return
	}
	p, err := apptype.ParsePolicy(w.path, data)
	if err != nil {
		w.logErr(log, forced, "new policy rejected; the old one stays in force", err)
		return
	}
	c.SetPolicy(p)
	w.applied, w.lastErr = data, ""
	log.Info("policy reloaded", "file", w.path, "apps", len(p.Apps))
}

func (w *policyWatcher) logErr(log *slog.Logger, forced bool, msg string, err error) {
	if !forced && err.Error() == w.lastErr {
		return
	}
	w.lastErr = err.Error()
	log.Error(msg, "err", err.Error())
}
