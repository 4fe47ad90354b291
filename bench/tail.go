// The tail of a benchmark run: runs that stalled, far worse than their
// scenario's median, which a median alone hides.

package main

import (
	"fmt"
	"slices"
	"strings"
)

// stallFactor is how far from its median a run must fall to count as a
// stall: a rate below 1/stallFactor (25%) of the median, or a time above
// stallFactor (4×) the median. Exactly 25% or exactly 4× is not a stall.
// Four is a power of two, so multiplying by it is exact and the boundary
// does not depend on rounding.
const stallFactor = 4

// Stall is one run of a Result that stalled.
type Stall struct {
	Scenario string  `json:"scenario"`
	Metric   string  `json:"metric"`
	Process  string  `json:"process,omitempty"`
	Unit     string  `json:"unit"`
	Higher   bool    `json:"higherIsBetter"`
	Run      int     `json:"run"`    // 1-based, as the progress line counts; the sample is Samples[Run-1]
	Value    float64 `json:"value"`  // the stalled sample
	Median   float64 `json:"median"` // the median of the Result's samples
}

// String describes s in one line, such as
// "connector/bulk-up run 3: 4.16 MB/s, below 25% of the median 126 MB/s".
func (s Stall) String() string {
	name := s.Scenario + "/" + s.Metric
	if s.Process != "" {
		name += " (" + s.Process + ")"
	}
	bound := fmt.Sprintf("above %d× the median", stallFactor)
	if s.Higher {
		bound = fmt.Sprintf("below %d%% of the median", 100/stallFactor)
	}
	return fmt.Sprintf("%s run %d: %s %s, %s %s %s",
		name, s.Run, formatSig3(s.Value), s.Unit, bound, formatSig3(s.Median), s.Unit)
}

// durationUnits are the units of a time, such as a round trip or a lookup.
var durationUnits = []string{"ns", "µs", "us", "ms", "s"}

// tailWatched reports whether runs of a metric in unit are checked for
// stalls: rates ("MB/s", "conns/s", "names/s") and times ("µs"). Costs
// (CPU per GiB), memory and counts are not: a stall shows in the rate or the
// time measured alongside them, and their medians sit near zero, where any
// ratio to the median is noise.
func tailWatched(unit string) bool {
	return strings.HasSuffix(unit, "/s") || slices.Contains(durationUnits, unit)
}

// isStall reports whether v is a stall against median: for a metric where
// higher is better, v is below median/stallFactor; otherwise v is above
// median·stallFactor. A NaN on either side is never a stall.
func isStall(v, median float64, higher bool) bool {
	if higher {
		return v*stallFactor < median
	}
	return v > median*stallFactor
}

// stalledRuns returns the indexes of res's stalled samples, in run order;
// none if res's metric is not watched (see tailWatched) or its median is NaN.
func (r Result) stalledRuns() []int {
	if !tailWatched(r.Unit) {
		return nil
	}
	med := r.Median()
	var out []int
	for i, v := range r.Samples {
		if isStall(v, med, r.Higher) {
			out = append(out, i)
		}
	}
	return out
}

// findStalls returns every stalled run of r.Results, in result order and
// then run order; an empty, non-nil slice if there are none, so that
// results.json says "stalls": [] rather than leaving the question open.
func (r *Report) findStalls() []Stall {
	out := []Stall{}
	for i := range r.Results {
		res := &r.Results[i]
		med := res.Median()
		for _, j := range res.stalledRuns() {
			out = append(out, Stall{Scenario: res.Scenario, Metric: res.Metric, Process: res.Process,
				Unit: res.Unit, Higher: res.Higher, Run: j + 1, Value: res.Samples[j], Median: med})
		}
	}
	return out
}

// stallRule is the rule in words, for the report and errors.
var stallRule = fmt.Sprintf("a run of a rate below %d%% of its scenario's median, or of a time above %d× it",
	100/stallFactor, stallFactor)

// writeStallsMarkdown writes the stalls section that follows the table.
func writeStallsMarkdown(b *strings.Builder, stalls []Stall) {
	if len(stalls) == 0 {
		b.WriteString("\nStalls: none (" + stallRule + ").\n")
		return
	}
	fmt.Fprintf(b, "\nStalls: %d (%s):\n\n", len(stalls), stallRule)
	for _, s := range stalls {
		b.WriteString("- ⚠ " + markdownCell(s.String()) + "\n")
	}
}

// stallsError is the error Validate returns for stalls: all of them, each
// naming its scenario, metric, run, value and median.
func stallsError(path string, stalls []Stall) error {
	descs := make([]string, len(stalls))
	for i, s := range stalls {
		descs[i] = s.String()
	}
	noun := "runs"
	if len(stalls) == 1 {
		noun = "run"
	}
	return fmt.Errorf("%s: %d stalled %s (%s): %s", path, len(stalls), noun, stallRule, strings.Join(descs, "; "))
}
