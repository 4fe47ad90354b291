package netstack

import (
	"fmt"
	"testing"
)

// TestPeerRatesStayBounded: peers whose buckets have refilled are swept
// out, so the table does not grow with every peer ever seen.
func TestPeerRatesStayBounded(t *testing.T) {
	r := NewPeerRates(numBuckets, 1e12, 1) // refills at once: every entry is full again when swept
	for i := range 100 * minRateSweep {
		if !r.Allow(fmt.Sprint("peer", i), bucketEcho) {
			t.Fatalf("peer %d refused its first echo", i)
		}
	}
	if n := r.size(); n > 2*minRateSweep {
		t.Errorf("%d peers kept, want at most %d", n, 2*minRateSweep)
	}
	// A peer with an empty bucket is kept, and stays limited.
	r = NewPeerRates(numBuckets, 1e-9, 1)
	r.Allow("busy", bucketEcho)
	for i := range 3 * minRateSweep {
		r.Allow(fmt.Sprint("peer", i), bucketRefused)
	}
	if r.Allow("busy", bucketEcho) {
		t.Error("a peer's spent bucket was forgotten")
	}
	if !r.Allow("busy", bucketRefused) {
		t.Error("the refused bucket shares tokens with the echo bucket")
	}
}
