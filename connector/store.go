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
	"time"
)

// writeFileAtomic replaces path with data so that a crash at any moment
// leaves either the old file or the new one, never a mix or an empty
// file: write a temporary file in the same directory, fsync it, rename it
// over path, then fsync the directory so the rename itself is durable.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
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
	Approved  bool       `json:"approved"`
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
	return writeFileAtomic(path, append(data, '\n'), 0o600)
}

// removeStaleTemps removes the temporary files writeFileAtomic leaves
// behind for path when the process dies between creating and renaming one
// (kill -9, power loss). Only a starting connector calls it, before it
// writes anything itself.
func removeStaleTemps(path string) {
	stale, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp*"))
	for _, f := range stale {
		os.Remove(f)
	}
}

// errRoutesUnreadable marks a routes file that exists but cannot be read:
// it must not be overwritten either.
var errRoutesUnreadable = errors.New("routes file unreadable")

// loadRoutes reads the learned routes. A missing file is no routes. A
// file that does not parse is moved aside (to path.corrupt-<unix time>)
// so that it is kept for inspection and not overwritten; the error says
// where it went.
func loadRoutes(path string, now time.Time) ([]storedRoute, error) {
	removeStaleTemps(path)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load routes: %w: %w", errRoutesUnreadable, err)
	}
	var f routesFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(&f)
	if err == nil && f.Version != routesFileVersion {
		err = fmt.Errorf("unknown version %d", f.Version)
	}
	if err == nil {
		for i, r := range f.Routes {
			if !r.Addr.IsValid() || r.App == "" {
				err = fmt.Errorf("route %d: missing addr or app", i+1)
				break
			}
		}
	}
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, now.Unix())
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("load routes: %s is corrupt (%v) and could not be moved aside: %w", path, err, rerr)
		}
		return nil, fmt.Errorf("load routes: %s is corrupt (%v); moved it to %s and started with no learned routes", path, err, aside)
	}
	return f.Routes, nil
}
