package wireguard

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
)

// RFC 7748 section 6.1 key pairs, in hex as printed there and in the base64
// form wg(8) uses (converted independently).
var rfc7748Pairs = []struct {
	name                     string
	privHex, pubHex          string
	privBase64, publicBase64 string
}{
	{
		name:         "alice",
		privHex:      "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
		pubHex:       "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
		privBase64:   "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=",
		publicBase64: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
	},
	{
		name:         "bob",
		privHex:      "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
		pubHex:       "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
		privBase64:   "XasIfmJKikt54X+Lg4AO5m87sSkmGLb9HC+LJ/+I4Os=",
		publicBase64: "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=",
	},
}

func TestPublicKeyRFC7748(t *testing.T) {
	for _, tc := range rfc7748Pairs {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := hex.DecodeString(tc.privHex)
			if err != nil {
				t.Fatal(err)
			}
			priv := Key(raw)
			if got := priv.String(); got != tc.privBase64 {
				t.Errorf("String() = %s, want %s", got, tc.privBase64)
			}
			parsed, err := ParseKey(tc.privBase64)
			if err != nil || parsed != priv {
				t.Fatalf("ParseKey(%s) = %v, %v; want the RFC key", tc.privBase64, parsed.Hex(), err)
			}
			pub := priv.PublicKey()
			if got := pub.Hex(); got != tc.pubHex {
				t.Errorf("PublicKey().Hex() = %s, want %s", got, tc.pubHex)
			}
			if got := pub.String(); got != tc.publicBase64 {
				t.Errorf("PublicKey().String() = %s, want %s", got, tc.publicBase64)
			}
		})
	}
}

func TestPublicKeyClampsFirst(t *testing.T) {
	// wg pubkey clamps its input, so unclamped bits must not matter.
	k, err := ParseKey(rfc7748Pairs[0].privBase64)
	if err != nil {
		t.Fatal(err)
	}
	unclamped := k
	unclamped[0] |= 7
	unclamped[31] |= 128
	unclamped[31] &^= 64
	if unclamped.PublicKey() != k.PublicKey() {
		t.Error("public key depends on bits that clamping clears")
	}
}

func TestGeneratePrivateKey(t *testing.T) {
	seen := make(map[Key]bool)
	for range 64 {
		k, err := GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
			t.Fatalf("key %x is not clamped", k)
		}
		if seen[k] {
			t.Fatalf("key %x generated twice", k)
		}
		seen[k] = true
		if k.PublicKey().IsZero() {
			t.Fatal("zero public key")
		}
	}
}

func TestGeneratePresharedKey(t *testing.T) {
	a, errA := GeneratePresharedKey()
	b, errB := GeneratePresharedKey()
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if a == b || a.IsZero() {
		t.Errorf("preshared keys not random: %x %x", a, b)
	}
}

func TestParseKey(t *testing.T) {
	valid := rfc7748Pairs[0].privBase64
	tests := []struct {
		name, in string
		wantErr  string
	}{
		{"valid", valid, ""},
		{"surrounding whitespace", " \t" + valid + "\r\n", ""},
		{"zero key", strings.Repeat("A", 43) + "=", ""},
		{"empty", "", "want 44 base64 characters, got 0"},
		{"too short", valid[:43], "got 43"},
		{"too long", valid + "A", "got 45"},
		{"no padding", valid[:43] + "A", "not the base64 encoding"},
		{"illegal character", "*" + valid[1:], "not the base64 encoding"},
		{"url alphabet", strings.Repeat("_", 43) + "=", "not the base64 encoding"},
		{"padding bits set", valid[:42] + "p=", "not the base64 encoding"},
		{"hex form", rfc7748Pairs[0].privHex, "got 64"},
		{"inner space", valid[:20] + " " + valid[21:], "not the base64 encoding"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKey(tc.in)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseKey: %v", err)
				}
				if got := k.String(); got != strings.TrimSpace(tc.in) {
					t.Errorf("String() = %s, want %s", got, strings.TrimSpace(tc.in))
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseKey(%q) = %v, want error", tc.in, k)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if len(tc.in) > 8 && strings.Contains(err.Error(), tc.in[:8]) {
				t.Errorf("error %q echoes the input", err)
			}
		})
	}
}

func TestKeyIsZero(t *testing.T) {
	var k Key
	if !k.IsZero() {
		t.Error("zero Key not IsZero")
	}
	k[31] = 1
	if k.IsZero() {
		t.Error("non-zero Key IsZero")
	}
}

func TestKeyJSON(t *testing.T) {
	type doc struct {
		Key Key  `json:"key"`
		Ptr *Key `json:"ptr"`
	}
	k, err := ParseKey(rfc7748Pairs[1].publicBase64)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(doc{Key: k, Ptr: &k})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"key":"` + k.String() + `","ptr":"` + k.String() + `"}`
	if string(data) != want {
		t.Errorf("Marshal = %s, want %s", data, want)
	}
	var back doc
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Key != k || back.Ptr == nil || *back.Ptr != k {
		t.Errorf("Unmarshal = %+v, want key %v", back, k)
	}
	if err := json.Unmarshal([]byte(`{"key":"bm90IGEga2V5"}`), &back); err == nil {
		t.Error("Unmarshal accepted a short key")
	}
}
