package connector

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestMain also makes the test binary a process that saves two route sets
// to the file its argument names, alternately, until it is killed (role
// "route-writer").
func TestMain(m *testing.M) {
	os.Exit(netstacktest.Main(m, map[string]func([]string) int{"route-writer": func(args []string) int {
		small, large := crashRouteSets()
		for i := 0; ; i++ {
			rs := small
			if i%2 == 1 {
				rs = large
			}
			if err := saveRoutes(args[0], rs); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if i == 1 {
				fmt.Println("writing")
			}
		}
	}}))
}

// crashRouteSets are two different non-empty route sets, one small and
// one large (a large write is more often cut short).
func crashRouteSets() (small, large []storedRoute) {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	mk := func(n int, app string) []storedRoute {
		rs := make([]storedRoute, n)
		for i := range rs {
			rs[i] = storedRoute{Addr: netip.AddrFrom4([4]byte{192, 0, byte(2 + i>>8), byte(i)}), App: app,
				Domain: fmt.Sprintf("h%d.%s.example.com", i, app), FirstSeen: t0, LastSeen: t0.Add(time.Duration(i) * time.Second), Approved: i%2 == 0}
		}
		return rs
	}
	return mk(20, "small"), mk(2000, "large")
}

// TestRoutesSurviveKill9 kills a process that is saving routes, 200 times
// at random moments, and loads the file after each kill as a restarting
// connector would: it must hold exactly one of the two route sets, never a
// mix, a corrupt file or nothing, and no temporary file may pile up.
func TestRoutesSurviveKill9(t *testing.T) {
	const kills = 200
	path := filepath.Join(t.TempDir(), routesFileName)
	small, large := crashRouteSets()
	if err := saveRoutes(path, small); err != nil {
		t.Fatal(err)
	}
	var sawSmall, sawLarge, cutShort int
	for i := range kills {
		cmd := exec.Command(os.Args[0], path)
		cmd.Env = append(os.Environ(), netstacktest.RoleEnv("route-writer"))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Once it has written both sets, kill it 0-5 ms later.
		if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("kill %d: the writer did not start: %v", i+1, err)
		}
		time.Sleep(time.Duration(rand.IntN(5000)) * time.Microsecond)
		cmd.Process.Kill()
		cmd.Wait()

		if stale, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*")); len(stale) > 0 {
			cutShort++ // killed between creating a temporary file and renaming it
		}
		rs, err := loadRoutes(path, time.Now())
		switch {
		case err != nil:
			t.Fatalf("kill %d: %v", i+1, err)
		case slices.Equal(rs, small):
			sawSmall++
		case slices.Equal(rs, large):
			sawLarge++
		default:
			t.Fatalf("kill %d: loaded %d routes, neither set", i+1, len(rs))
		}
		if stale, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*tmp*")); len(stale) > 0 {
			t.Fatalf("kill %d: temporary files left after loading: %v", i+1, stale)
		}
	}
	t.Logf("%d kills, %d of them in the middle of a write: the small set was on disk %d times, the large one %d",
		kills, cutShort, sawSmall, sawLarge)
}
