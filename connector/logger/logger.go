// Package logger is the log function type every layer of appconnector
// takes, with the adapters and the rate limiter around it. It is a leaf:
// it imports nothing of appconnector.
package logger

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// Logf is a printf that a caller routes to its own logger. A nil Logf
// field means discard where it is documented so.
type Logf func(format string, args ...any)

// Discard drops every line.
func Discard(string, ...any) {}

// Slog returns a Logf that writes each line to l at level.
func Slog(l *slog.Logger, level slog.Level) Logf {
	return func(format string, args ...any) {
		if l.Enabled(context.Background(), level) {
			l.Log(context.Background(), level, fmt.Sprintf(format, args...))
		}
	}
}

// RateLimit returns a Logf that passes lines to logf at most perSecond a
// second on average (with bursts of burst), for per-flow and per-packet
// paths: a flood of refused flows must not become a flood of logs. Lines
// over the rate are counted, and the count is reported with the next line
// that passes. The result is safe for concurrent use.
func RateLimit(logf Logf, perSecond float64, burst int) Logf {
	r := &rateLog{logf: logf, lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
	return r.printf
}

// rateLog is a rate-limited Logf; see RateLimit.
type rateLog struct {
	logf       Logf
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
