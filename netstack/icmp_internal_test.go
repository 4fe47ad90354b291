package netstack

import (
	"fmt"
	"testing"
)

// TestEchoRatesStayBounded: peers whose buckets have refilled are swept
// out, so the table does not grow with every peer ever seen.
func TestEchoRatesStayBounded(t *testing.T) {
	var r echoRates
	r.init(1e12, 1) // refills at once: every entry is full again when swept
	for i := range 100 * minEchoSweep {
		if !r.allow(fmt.Sprint("peer", i), bucketEcho) {
			t.Fatalf("peer %d refused its first echo", i)
		}
	}
	if n := r.size(); n > 2*minEchoSweep {
		t.Errorf("%d peers kept, want at most %d", n, 2*minEchoSweep)
	}
	// A peer with an empty bucket is kept, and stays limited.
	r.init(1e-9, 1)
	r.allow("busy", bucketEcho)
	for i := range 3 * minEchoSweep {
		r.allow(fmt.Sprint("peer", i), bucketRefused)
	}
	if r.allow("busy", bucketEcho) {
		t.Error("a peer's spent bucket was forgotten")
	}
	if !r.allow("busy", bucketRefused) {
		t.Error("the refused bucket shares tokens with the echo bucket")
	}
}
