package apptype

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// idnaProfile converts internationalized names for lookup (UTS #46
// non-transitional mapping, RFC 5893 Bidi rule, ContextJ rules). The ASCII
// repertoire and hyphen placement are deliberately left unchecked here
// because NormalizeDomain checks them itself with rules that allow '_' and
// "ab--c" style ASCII labels.
var idnaProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
)

// NormalizeDomain validates a domain entry of an app and returns its
// canonical form.
//
// An entry is a fully qualified domain name, or "*." followed by one for a
// wildcard. The canonical form is lower-case ASCII without a trailing dot;
// Unicode names are mapped and converted to punycode following the UTS #46
// lookup rules (non-transitional, so "ß" stays distinct from "ss"), and
// existing punycode labels must be valid and canonical. Each label is 1 to
// 63 characters of letters, digits, '-' and '_', not starting or ending with
// '-'; the name is at most 253 characters. Underscores are allowed because
// DNS permits them and real names such as "_dmarc.example.com" or legacy
// bucket host names use them. A name needs at least two labels, so bare
// top-level domains are rejected, and its last label may not be all digits,
// which catches IP addresses. '*' may appear only as the whole first label.
func NormalizeDomain(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty domain name")
	}
	name := s
	if isASCII(name) {
		name = strings.ToLower(name)
	} else {
		var err error
		if name, err = idnaProfile.ToASCII(name); err != nil {
			return "", fmt.Errorf("invalid internationalized domain name: %w", err)
		}
	}
	name = strings.TrimSuffix(name, ".")
	if name == "*" {
		return "", errors.New(`wildcard needs a domain, as in "*.example.com"`)
	}
	base := strings.TrimPrefix(name, "*.")
	labels := strings.Split(base, ".")
	hasPuny := false
	for _, l := range labels {
		if err := checkLabel(l); err != nil {
			return "", err
		}
		hasPuny = hasPuny || strings.HasPrefix(l, "xn--")
	}
	if len(labels) < 2 {
		return "", errors.New("need at least two labels; a bare top-level domain is not allowed")
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", errors.New("last label is numeric; put IP addresses in routes")
	}
	if len(name) > 253 {
		return "", fmt.Errorf("name is %d characters long, more than 253", len(name))
	}
	if hasPuny {
		if err := checkPunycode(base); err != nil {
			return "", err
		}
	}
	return name, nil
}

// checkLabel reports whether l is a valid lower-case ASCII label.
func checkLabel(l string) error {
	switch {
	case l == "":
		return errors.New("empty label")
	case strings.Contains(l, "*"):
		return errors.New(`wildcard "*" is allowed only as the whole first label, as in "*.example.com"`)
	case len(l) > 63:
		return fmt.Errorf("label %q is longer than 63 characters", excerpt(l))
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("label %q starts or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			r, _ := utf8.DecodeRuneInString(l[i:])
			return fmt.Errorf("label %q contains %q; want letters, digits, '-' or '_'", l, r)
		}
	}
	return nil
}

// checkPunycode validates the "xn--" labels of the lower-case ASCII name:
// they must decode to valid Unicode labels and be their canonical encoding.
func checkPunycode(name string) error {
	u, err := idnaProfile.ToUnicode(name)
	if err != nil {
		return fmt.Errorf("invalid punycode: %w", err)
	}
	for l := range strings.SplitSeq(u, ".") {
		if isASCII(l) {
			continue
		}
		// RFC 5891 section 4.2.3.1 hyphen rules for U-labels.
		r := []rune(l)
		if r[0] == '-' || r[len(r)-1] == '-' || len(r) >= 4 && r[2] == '-' && r[3] == '-' {
			return fmt.Errorf("invalid punycode: label %q breaks the hyphen rules", l)
		}
	}
	a, err := idnaProfile.ToASCII(u)
	if err != nil {
		return fmt.Errorf("invalid punycode: %w", err)
	}
	if a != name {
		// Covers "xn--" labels that decode to nothing or to plain ASCII.
		return errors.New("invalid punycode: labels are not in canonical form")
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
