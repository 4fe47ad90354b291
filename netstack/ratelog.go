package netstack

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// RateLimit returns a Logf that passes lines to logf at most perSecond a
// second on average (with bursts of burst), for per-flow and per-packet
// paths: a flood of refused flows must not become a flood of logs. Lines
// over the rate are counted, and the count is reported with the next line
// that passes. The result is safe for concurrent use.
func RateLimit(logf func(format string, args ...any), perSecond float64, burst int) func(format string, args ...any) {
	r := &rateLog{logf: logf, lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
	return r.printf
}

// rateLog is a rate-limited Logf; see RateLimit.
type rateLog struct {
	logf       func(format string, args ...any)
	lim        *rate.Limiter
	suppressed atomic.Int64
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
