package upstream

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// An encrypted upstream's host name is looked up once, again when the
// addresses are old, and a failed lookup keeps the last ones.
func TestHostDialerLookup(t *testing.T) {
	calls := 0
	answers := [][]netip.Addr{{netip.MustParseAddr("127.0.0.1")}, {netip.MustParseAddr("::ffff:127.0.0.2")}, nil}
	d := newHostDialer("dns.example", "853", func(_ context.Context, host string) ([]netip.Addr, error) {
		if host != "dns.example" {
			t.Errorf("looked up %q", host)
		}
		calls++
		if a := answers[calls-1]; a != nil {
			return slices.Clone(a), nil
		}
		return nil, errors.New("resolver down")
	})
	ctx := context.Background()
	for range 3 {
		if got, err := d.lookup(ctx); err != nil || !slices.Equal(got, answers[0]) {
			t.Fatalf("lookup: %v %v", got, err)
		}
	}
	if calls != 1 {
		t.Errorf("%d lookups for fresh addresses, want 1", calls)
	}
	d.resolved = d.resolved.Add(-upstreamResolveEvery)
	if got, _ := d.lookup(ctx); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("127.0.0.2")}) || calls != 2 {
		t.Errorf("after the refresh interval: %v (%d lookups)", got, calls)
	}
	d.resolved = time.Time{}
	if got, err := d.lookup(ctx); err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("127.0.0.2")}) || calls != 3 {
		t.Errorf("failed refresh: %v %v (%d lookups), want the last addresses", got, err, calls)
	}
	if lit := newHostDialer("127.0.0.1", "853", nil); lit.resolve != nil {
		t.Error("an address literal is looked up")
	}
}
