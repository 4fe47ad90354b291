package logger

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"golang.org/x/time/rate"
)

// Lines beyond the limiter's tokens are dropped and counted; the count
// rides on the next line that passes.
func TestRateLimitCountsSuppressed(t *testing.T) {
	var got []string
	r := &rateLog{
		logf: func(format string, args ...any) { got = append(got, fmt.Sprintf(format, args...)) },
		lim:  rate.NewLimiter(0, 1), // one token, never refilled
	}
	for _, s := range []string{"a", "b", "c"} {
		r.printf("line %s", s)
	}
	r.lim.SetLimit(rate.Inf)
	r.printf("line %s", "d")
	r.printf("line %s", "e")
	want := []string{"line a", "line d (2 more lines suppressed)", "line e"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("logged %q, want %q", got, want)
	}
}

func TestRateLimitBurst(t *testing.T) {
	var n int
	logf := RateLimit(func(string, ...any) { n++ }, 1e-9, 3)
	for range 10 {
		logf("x")
	}
	if n != 3 {
		t.Fatalf("%d lines passed a burst of 3", n)
	}
}

func TestSlog(t *testing.T) {
	var b bytes.Buffer
	l := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelInfo}))
	Slog(l, slog.LevelDebug)("hidden %d", 1)
	Slog(l, slog.LevelWarn)("shown %d", 2)
	if out := b.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `msg="shown 2"`) || !strings.Contains(out, "level=WARN") {
		t.Fatalf("log: %q", out)
	}
}
