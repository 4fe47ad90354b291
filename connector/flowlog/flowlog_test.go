package flowlog_test

import (
	"bufio"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// readLines parses every line of the file at path.
func readLines(t *testing.T, path string) []flowlog.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []flowlog.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r flowlog.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: line %d %q: %v", path, len(out)+1, sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func record(i int, end string) flowlog.Record {
	now := time.Now()
	return flowlog.Record{Time: now, Peer: "key", Proto: "tcp", App: "web", Domain: "app.example.com",
		Src: netip.MustParseAddrPort("10.0.0.2:40000"), Dst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(1000+i)),
		Start: now.Add(-time.Second), Duration: 1, BytesUp: uint64(i), BytesDown: uint64(2 * i), End: end}
}

func TestWriteAndParseBack(t *testing.T) {
	netstacktest.CheckLeaks(t)
	path := filepath.Join(t.TempDir(), "flows.log")
	w, err := flowlog.Open(flowlog.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		w.Write(record(i, "closed"))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != 1000 {
		t.Fatalf("%d lines, want 1000", len(lines))
	}
	for i, r := range lines {
		if r.BytesUp != uint64(i) || r.BytesDown != uint64(2*i) || r.Dst.Port() != uint16(1000+i) || r.End != "closed" || r.Domain != "app.example.com" {
			t.Fatalf("line %d: %+v", i+1, r)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	if st := w.Stats(); st.Written != 1000 || st.Dropped != 0 || st.Errors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestRefusalsAggregate: a flood of refusals writes one line per peer,
// destination and reason per second, and a bounded number for a scan.
func TestRefusalsAggregate(t *testing.T) {
	netstacktest.CheckLeaks(t)
	path := filepath.Join(t.TempDir(), "flows.log")
	w, err := flowlog.Open(flowlog.Config{Path: path, MaxRefusalKeys: 100})
	if err != nil {
		t.Fatal(err)
	}
	for range 10000 {
		w.Refused(record(1, "refused_policy"))
	}
	for i := range 5000 { // a scan: 5,000 destinations
		w.Refused(record(2+i, "refused_policy"))
	}
	w.Close()
	lines := readLines(t, path)
	// Within one second (or, if the second turned meanwhile, two).
	if len(lines) > 2*101 {
		t.Fatalf("%d lines for 15,000 refusals", len(lines))
	}
	var total, flood uint64
	for _, r := range lines {
		total += r.Count
		if r.Dst.Port() == 1001 {
			flood += r.Count
		}
	}
	if total != 15000 || flood != 10000 {
		t.Errorf("counts: %d in all, %d for the flooded destination; want 15000, 10000", total, flood)
	}
}

// TestStalledDisk: with the file stalled (a pipe nobody reads), Write
// neither blocks nor slows down: records are dropped and counted, and
// Close still returns.
func TestStalledDisk(t *testing.T) {
	netstacktest.CheckLeaks(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	w, err := flowlog.Open(flowlog.Config{Out: pw, Queue: 64})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200_000 {
			w.Write(record(i, "closed"))
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("writes blocked behind a stalled file")
	}
	if st := w.Stats(); st.Dropped == 0 || st.Written+st.Dropped > 200_000 {
		t.Errorf("stats %+v: want drops, and no more than what was written", st)
	}
	w.Close()
}

// TestReopenAndRotate: Reopen starts a new file after the old one was
// moved away; MaxSize rotates by itself, keeping MaxBackups.
func TestReopenAndRotate(t *testing.T) {
	netstacktest.CheckLeaks(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.log")
	w, err := flowlog.Open(flowlog.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	w.Write(record(1, "closed"))
	netstacktest.WaitFor(t, func() bool { return w.Stats().Written == 1 })
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	w.Reopen()
	netstacktest.WaitFor(t, func() bool { _, err := os.Stat(path); return err == nil })
	w.Write(record(2, "idle"))
	w.Close()
	if old, cur := readLines(t, path+".old"), readLines(t, path); len(old) != 1 || len(cur) != 1 || cur[0].End != "idle" {
		t.Errorf("after reopen: %d lines in the moved file, %d in the new one", len(old), len(cur))
	}

	rot := filepath.Join(dir, "rot.log")
	w, err = flowlog.Open(flowlog.Config{Path: rot, MaxSize: 4096, MaxBackups: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		w.Write(record(i, "closed"))
		if i%20 == 19 {
			n := uint64(i + 1)
			netstacktest.WaitFor(t, func() bool { return w.Stats().Written == n })
		}
	}
	w.Close()
	var total int
	for _, name := range []string{rot, rot + ".1", rot + ".2"} {
		fi, err := os.Stat(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if fi.Size() > 4096 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %d bytes, mode %v; want at most 4096, 0600", name, fi.Size(), fi.Mode())
		}
		total += len(readLines(t, name))
	}
	if _, err := os.Stat(rot + ".3"); err == nil {
		t.Error("more backups than MaxBackups")
	}
	if total == 0 || total >= 200 {
		t.Errorf("%d lines kept in three files of 4 KiB, want some but not all 200", total)
	}
}
