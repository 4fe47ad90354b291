package demo

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

func TestRun(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var out bytes.Buffer
	if err := Run(context.Background(), &out, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"learned 127.0.0.1/32", "hello from the app", "REFUSED", "All steps behaved as promised"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
