package connector

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector/apptype"
)

func TestStaleCacheBounded(t *testing.T) {
	c := staleCache{max: 2}
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	answer := func(name string) *dns.Msg {
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		rr, _ := dns.NewRR(name + " 3600 IN A 192.0.2.1")
		m.Answer = []dns.RR{rr}
		return m
	}
	k := func(name string) staleKey { return staleKey{name: apptype.CanonicalName(name), qtype: dns.TypeA} }
	c.put(k("a.example."), answer("a.example."), now)
	c.put(k("b.example."), answer("b.example."), now)
	c.put(k("a.example."), answer("a.example."), now.Add(time.Minute)) // a is the newest now
	c.put(k("c.example."), answer("c.example."), now.Add(time.Minute)) // b goes
	if c.len() != 2 {
		t.Errorf("%d answers kept, want 2", c.len())
	}
	if m, _ := c.get(k("b.example."), now); m != nil {
		t.Error("the least recently stored answer was kept over the cap")
	}
	m, age := c.get(k("a.example."), now.Add(2*time.Minute))
	if m == nil || m.Answer[0].Header().Ttl != staleTTL || age != time.Minute {
		t.Errorf("stale a: %v (age %v)", m, age)
	}
	if m, _ := c.get(k("a.example."), now.Add(time.Minute+staleMaxAge+time.Second)); m != nil {
		t.Error("an answer older than staleMaxAge was served")
	}
	// What get returns is a copy: the kept answer's TTLs stay.
	m.Answer[0].Header().Ttl = 1
	if m2, _ := c.get(k("a.example."), now); m2.Answer[0].Header().Ttl != staleTTL {
		t.Error("get returned the kept answer itself")
	}
}
