package netstack

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// rateLog passes lines to a Logf at a bounded rate, for the per-flow
// paths: a flood of refused flows must not become a flood of logs. Lines
// over the rate are counted and the count is reported with the next line
// that passes.
type rateLog struct {
	logf       func(format string, args ...any)
	lim        *rate.Limiter
	suppressed atomic.Int64
}

func newRateLog(logf func(string, ...any)) *rateLog {
	return &rateLog{logf: logf, lim: rate.NewLimiter(10, 20)}
}

func (r *rateLog) printf(format string, args ...any) {
	if !r.lim.Allow() {
		r.suppressed.Add(1)
		return
	}
	msg := fmt.Sprintf(format, args...)
	if n := r.suppressed.Swap(0); n > 0 {
		msg += fmt.Sprintf(" (%d more lines suppressed)", n)
	}
	r.logf("%s", msg)
}
