package connector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/appconnector/appconnector/connector/apptype"
)

// WriteFileAtomic replaces path with data, created with perm, so that a
// crash at any moment leaves either the old file or the new one, never a
// mix or an empty file: write a temporary file in the same directory,
// fsync it, rename it over path, then fsync the directory so the rename
// itself is durable. The connector's state files and the benchmark's
// reports are written with it.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: fsync: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: open directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: fsync directory: %w", path, err)
	}
	return nil
}

// routesFileName is the learned-route file in the state directory.
const routesFileName = "routes.json"

// storedRoute is one app's claim on a learned address, as persisted.
type storedRoute struct {
	Addr      netip.Addr `json:"addr"`
	App       string     `json:"app"`
	Domain    string     `json:"domain"`
	FirstSeen time.Time  `json:"firstSeen"`
	LastSeen  time.Time  `json:"lastSeen"`
	// Expires is when the answers' lifetime ends; absent in files
	// written before lifetimes followed TTLs.
	Expires  time.Time `json:"expires,omitzero"`
	Approved bool      `json:"approved"`
}

// routesFile is the file format; Version changes if the format does.
type routesFile struct {
	Version int           `json:"version"`
	Routes  []storedRoute `json:"routes"`
}

const routesFileVersion = 1

func saveRoutes(path string, rs []storedRoute) error {
	data, err := json.MarshalIndent(routesFile{Version: routesFileVersion, Routes: rs}, "", "\t")
	if err != nil {
		return fmt.Errorf("save routes: %w", err)
	}
	return WriteFileAtomic(path, append(data, '\n'), 0o600)
}

// removeStaleTemps removes the temporary files WriteFileAtomic leaves
// behind for path when the process dies between creating and renaming one
// (kill -9, power loss). Only a starting connector calls it, before it
// writes anything itself.
func removeStaleTemps(path string) {
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp*"))
	for _, f := range stale {
		os.Remove(f)
	}
}

// errStateUnreadable marks a state file that exists but could not be
// read, or was corrupt and could not be moved aside: it must not be
// overwritten either.
var errStateUnreadable = errors.New("state file unreadable")

// readStateFile reads the state file at path and hands its contents to
// parse. A missing file is found == false and no error. A file parse
// rejects is moved aside (to path.corrupt-<unix time of now>), so that it
// is kept for inspection and not overwritten, and the error says where it
// went and ends with lost, what starting without it means. Errors that
// wrap errStateUnreadable mean the file is still in place: the caller must
// not write it.
func readStateFile(path string, now time.Time, lost string, parse func([]byte) error) (found bool, err error) {
	removeStaleTemps(path)
	if err := checkStateFile(path); err != nil {
		return false, fmt.Errorf("%w: %w", errStateUnreadable, err)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %w", errStateUnreadable, err)
	}
	if err := parse(data); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, now.Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return false, fmt.Errorf("%w: %s is corrupt (%v) and could not be moved aside: %w", errStateUnreadable, path, err, rerr)
		}
		return false, fmt.Errorf("%s is corrupt (%v); moved it to %s and %s", path, err, aside, lost)
	}
	return true, nil
}

// decodeStrict decodes one JSON value from data into v, refusing unknown
// keys.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// loadRoutes reads the learned routes. A missing file is no routes; a
// corrupt one is moved aside (see readStateFile).
func loadRoutes(path string, now time.Time) ([]storedRoute, error) {
	var f routesFile
	_, err := readStateFile(path, now, "started with no learned routes", func(data []byte) error {
		if err := decodeStrict(data, &f); err != nil {
			return err
		}
		if f.Version != routesFileVersion {
			return fmt.Errorf("unknown version %d", f.Version)
		}
		for i, r := range f.Routes {
			if !r.Addr.IsValid() || r.App == "" {
				return fmt.Errorf("route %d: missing addr or app", i+1)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load routes: %w", err)
	}
	return f.Routes, nil
}

// snapshot returns every claim for persistence if anything changed since
// the last snapshot (or if force is set), and marks the table clean.
func (t *routeTable) snapshot(force bool) ([]storedRoute, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.dirty && !force {
		return nil, false
	}
	out := make([]storedRoute, 0, t.all.Len())
	for e := t.all.Front(); e != nil; e = e.Next() {
		c := e.Value.(*claim)
		out = append(out, storedRoute{
			Addr: c.route.addr, App: c.app.Name, Domain: c.domain,
			FirstSeen: c.first, LastSeen: c.last, Expires: c.expires, Approved: c.approved,
		})
	}
	t.dirty = false
	return out, true
}

// restore adds persisted claims, oldest first, for apps and names the
// current policy still has; it returns how many it kept. Unsafe addresses
// (the policy may have changed) and claims over the caps are dropped.
func (t *routeTable) restore(rs []storedRoute) int {
	now := t.cfg.now()
	rs = slices.Clone(rs)
	for i := range rs {
		// A clock that was ahead when the file was written must not
		// keep routes alive (or ahead of newer ones) forever.
		if rs[i].LastSeen.After(now) {
			rs[i].LastSeen = now
		}
		if rs[i].FirstSeen.After(rs[i].LastSeen) {
			rs[i].FirstSeen = rs[i].LastSeen
		}
		// A file from before lifetimes followed TTLs: the longest.
		if rs[i].Expires.IsZero() || rs[i].Expires.After(rs[i].LastSeen.Add(t.cfg.ttl)) {
			rs[i].Expires = rs[i].LastSeen.Add(t.cfg.ttl)
		}
	}
	slices.SortStableFunc(rs, func(a, b storedRoute) int { return a.LastSeen.Compare(b.LastSeen) })
	t.mu.Lock()
	defer t.mu.Unlock()
	kept := 0
	for _, r := range rs {
		a := t.byName[r.App]
		if a == nil || !slices.Contains(t.match.Match(r.Domain), a.idx) || t.refusalLocked(a, r.Addr) != "" ||
			!r.Expires.After(now) {
			continue
		}
		if t.claimLocked(a, r.Addr, apptype.CanonicalName(r.Domain), r.LastSeen, r.Expires, "") != claimNew {
			continue
		}
		c := t.learned[r.Addr].claims[len(t.learned[r.Addr].claims)-1]
		c.first = r.FirstSeen
		c.approved = r.Approved || a.Approval != apptype.ApprovalManual
		kept++
	}
	if kept > 0 {
		t.bumpLocked()
	}
	return kept
}

// markDirty asks for the next snapshot to be taken (after a failed write).
func (t *routeTable) markDirty() {
	t.mu.Lock()
	t.dirty = true
	t.mu.Unlock()
}
