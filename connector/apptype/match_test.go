package apptype

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestMatcher(t *testing.T) {
	apps := []App{
		{Name: "exact", Domains: []string{"example.com"}},
		{Name: "wild", Domains: []string{"*.example.com"}},
		{Name: "both", Domains: []string{"acme.com", "*.acme.com"}},
		{Name: "deep", Domains: []string{"*.b.example.com", "xn--bcher-kva.example"}},
	}
	m := NewMatcher(apps)
	for _, tc := range []struct {
		name string
		want []int
	}{
		{"example.com", []int{0}},
		{"example.com.", []int{0}},
		{"EXAMPLE.Com.", []int{0}},
		{"a.example.com", []int{1}},
		{"a.b.example.com", []int{1, 3}},
		{"x.a.b.example.com", []int{1, 3}},
		{"b.example.com", []int{1}},
		{"notexample.com", nil},
		{"example.com.evil", nil},
		{"com", nil},
		{"acme.com", []int{2}},
		{"www.acme.com", []int{2}},
		{"xn--bcher-kva.example", []int{3}},
		{"XN--BCHER-KVA.example.", []int{3}},
		{"", nil},
		{".", nil},
		{`evil\.b.example.com`, nil}, // one label "evil.b", not two
		{`x\046a.example.com`, nil},
	} {
		if got := m.Match(tc.name); !slices.Equal(got, tc.want) {
			t.Errorf("match(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// slowMatch is the obvious reference: compare the name against every
// domain of every app.
func slowMatch(apps []App, name string) []int {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	var out []int
	for i, a := range apps {
		for _, d := range a.Domains {
			if base, ok := strings.CutPrefix(d, "*."); ok {
				if strings.HasSuffix(name, "."+base) {
					out = append(out, i)
					break
				}
			} else if name == d {
				out = append(out, i)
				break
			}
		}
	}
	return out
}

func TestMatcherDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	labels := []string{"a", "b", "c", "ab", "x-y", "com", "example"}
	randName := func() string {
		n := 1 + r.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = labels[r.IntN(len(labels))]
		}
		return strings.Join(parts, ".")
	}
	for round := range 200 {
		var apps []App
		for range 1 + r.IntN(5) {
			var ds []string
			for range 1 + r.IntN(3) {
				d := randName() + ".com"
				if r.IntN(2) == 0 {
					d = "*." + d
				}
				ds = append(ds, d)
			}
			apps = append(apps, App{Domains: ds})
		}
		m := NewMatcher(apps)
		for range 200 {
			name := randName() + ".com"
			if r.IntN(3) == 0 {
				name = strings.ToUpper(name) + "."
			}
			if got, want := m.Match(name), slowMatch(apps, name); !slices.Equal(got, want) {
				t.Fatalf("round %d: apps %v: match(%q) = %v, want %v", round, apps, name, got, want)
			}
		}
	}
}
