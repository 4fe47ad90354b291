package apptype

import "strings"

// Matcher finds the apps a DNS name belongs to. It is built once per
// policy and read concurrently.
//
// "example.com" in an app's domains matches that name only;
// "*.example.com" matches every name below example.com, at any depth, and
// not example.com itself. Names are compared in their ASCII (punycode)
// form, case-insensitively, with or without a trailing dot.
type Matcher struct {
	exact map[string][]int // name → indexes of the apps listing it
	below map[string][]int // base → indexes of the apps listing "*.base"
}

// NewMatcher indexes the domains of apps.
func NewMatcher(apps []App) *Matcher {
	m := &Matcher{exact: make(map[string][]int), below: make(map[string][]int)}
	for i, a := range apps {
		for _, d := range a.Domains {
			if base, ok := strings.CutPrefix(d, "*."); ok {
				m.below[base] = appendUnique(m.below[base], i)
			} else {
				m.exact[d] = appendUnique(m.exact[d], i)
			}
		}
	}
	return m
}

// Match returns the indexes of the apps name belongs to, in ascending
// order, or nil.
func (m *Matcher) Match(name string) []int {
	name = CanonicalName(name)
	if name == "" {
		return nil
	}
	var out []int
	for _, i := range m.exact[name] {
		out = insertSorted(out, i)
	}
	// Every proper suffix that starts at a label boundary.
	for rest := name; ; {
		dot := strings.IndexByte(rest, '.')
		if dot < 0 {
			break
		}
		rest = rest[dot+1:]
		for _, i := range m.below[rest] {
			out = insertSorted(out, i)
		}
	}
	return out
}

// CanonicalName lower-cases ASCII letters and drops one trailing dot. DNS
// names on the wire are ASCII (internationalized labels travel as
// punycode), so this is the whole normalization a query name needs. A
// name with an escape (a label holding a dot or an odd byte, shown as
// "\." or "\DDD") belongs to no app: it returns "".
func CanonicalName(name string) string {
	if strings.IndexByte(name, '\\') >= 0 {
		return ""
	}
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

func appendUnique(s []int, v int) []int {
	if len(s) > 0 && s[len(s)-1] == v {
		return s
	}
	return append(s, v)
}

func insertSorted(s []int, v int) []int {
	for i, x := range s {
		if x == v {
			return s
		}
		if x > v {
			s = append(s, 0)
			copy(s[i+1:], s[i:])
			s[i] = v
			return s
		}
	}
	return append(s, v)
}

// DomainSet is a set of app domains in the policy's form ("example.com",
// "*.example.com") that tells whether a DNS name belongs to it, by the
// same rules the connector matches names with. A nil *DomainSet is empty.
// It is safe for concurrent use.
type DomainSet struct{ m *Matcher }

// NewDomainSet returns the set of domains. Entries are expected in the
// canonical form the route API and ParsePolicy give; others are lower-cased.
func NewDomainSet(domains []string) *DomainSet {
	norm := make([]string, len(domains))
	for i, d := range domains {
		norm[i] = CanonicalName(d)
	}
	return &DomainSet{m: NewMatcher([]App{{Domains: norm}})}
}

// Contains reports whether name belongs to the set.
func (s *DomainSet) Contains(name string) bool {
	return s != nil && len(s.m.Match(name)) > 0
}
