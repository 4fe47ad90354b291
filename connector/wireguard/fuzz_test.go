package wireguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error is a
// *ParseError, and that every config it accepts is valid and survives
// WriteTo → Parse unchanged (Tags included), with WriteTo's output a fixed
// point, and that its UAPI text never carries tags.
func FuzzParse(f *testing.F) {
	f.Add([]byte(realisticConf))
	f.Add([]byte("\ufeff" + realisticConf))
	f.Add([]byte(fmt.Sprintf(realisticCanonical, carolPub)))
	f.Add([]byte(minimal("")))
	f.Add([]byte(minimal("Address = fd00::1/64\nMTU = 1280\n[Peer]\nPublicKey = " + bobPub.String() + "\nEndpoint = [fe80::1%eth0]:1\nAllowedIPs = ::/0, 0.0.0.0/0\n")))
	f.Add([]byte("[Interface]\r\nPrivateKey=" + alicePriv.String() + "#c\r\n[peer]\r\npublickey=" + bobPub.String() + "\r\nPersistentKeepalive=off\r\n"))
	f.Add([]byte("[Interface]\nPrivateKey = AAAA\n"))
	f.Add([]byte(minimal("[Peer]\nPublicKey = " + bobPub.String() + "\nTags = tag:a, tag:B-2,tag:a\ntags=\nTAGS = tag:c # x\n")))
	f.Add([]byte(minimal("[Peer]\nPublicKey = " + bobPub.String() + "\nTags = tag:1, ,tag:a_b,*\n")))
	f.Add([]byte(""))

	lookup := func(ctx context.Context, host string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, warnings, err := Parse("fuzz.conf", data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || cfg != nil || warnings != nil {
				t.Fatalf("Parse error %v (%T) with config %v, warnings %v", err, err, cfg, warnings)
			}
			_ = err.Error()
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid config: %v", err)
		}
		var out bytes.Buffer
		if _, err := cfg.WriteTo(&out); err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
		back, backWarnings, err := Parse("fuzz.conf", out.Bytes())
		if err != nil {
			t.Fatalf("Parse(WriteTo()): %v\n%s", err, out.Bytes())
		}
		if len(backWarnings) != 0 {
			t.Fatalf("canonical output has warnings %v", backWarnings)
		}
		if !reflect.DeepEqual(back, cfg) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v\n%s", cfg, back, out.Bytes())
		}
		var again bytes.Buffer
		if _, err := back.WriteTo(&again); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatalf("WriteTo not a fixed point (%v):\n%s\n%s", err, out.Bytes(), again.Bytes())
		}
		uapi, err := cfg.UAPI(context.Background(), lookup)
		if err != nil {
			t.Fatalf("UAPI: %v", err)
		}
		if strings.Contains(uapi, "tag") {
			t.Fatalf("UAPI text carries tags:\n%s", uapi)
		}
	})
}
