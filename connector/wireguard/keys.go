package wireguard

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Key is a WireGuard key: a Curve25519 private or public key, or a
// preshared key. The zero Key means "no key". String and MarshalText give
// the base64 form used by wg(8); take care not to log private keys.
type Key [32]byte

// GeneratePrivateKey returns a new random Curve25519 private key, clamped
// exactly like the output of `wg genkey`.
func GeneratePrivateKey() (Key, error) {
	k, err := GeneratePresharedKey()
	if err != nil {
		return Key{}, err
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// GeneratePresharedKey returns 32 random bytes for use as a preshared key,
// like `wg genpsk`. The result is not clamped.
func GeneratePresharedKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// ParseKey parses a key in standard padded base64: 44 characters encoding
// exactly 32 bytes, as printed by wg(8). Surrounding whitespace is ignored.
// Like wg, it rejects non-zero padding bits. Errors never contain the input,
// which may be a secret.
func ParseKey(s string) (Key, error) {
	s = strings.TrimSpace(s)
	if len(s) != 44 {
		return Key{}, fmt.Errorf("invalid key: want 44 base64 characters, got %d", len(s))
	}
	var buf [33]byte // base64.StdEncoding.DecodedLen(44); Decode needs the room
	if n, err := base64.StdEncoding.Strict().Decode(buf[:], []byte(s)); err != nil || n != len(Key{}) {
		return Key{}, errors.New("invalid key: not the base64 encoding of 32 bytes")
	}
	return Key(buf[:32]), nil
}

// String returns the key in standard padded base64, as printed by wg(8).
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// Hex returns the key in lowercase hex, the form used by the wireguard-go
// configuration protocol (UAPI).
func (k Key) Hex() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros, that is, unset.
func (k Key) IsZero() bool { return k == Key{} }

// PublicKey returns the public key for the private key k: X25519 of k and
// the base point. k is clamped first, as X25519 requires, so the result
// equals `wg pubkey` output for any 32 bytes.
func (k Key) PublicKey() Key {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		// Only a wrong length fails, and a Key is always 32 bytes.
		panic("wireguard: X25519 rejected a 32-byte key: " + err.Error())
	}
	return Key(priv.PublicKey().Bytes())
}

// MarshalText implements encoding.TextMarshaler with the base64 form, so a
// Key can be stored in JSON.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; it accepts what
// ParseKey accepts.
func (k *Key) UnmarshalText(text []byte) error {
	parsed, err := ParseKey(string(text))
	if err != nil {
		return err
	}
	*k = parsed
	return nil
}
