package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var reportTestScenarios = []string{"direct", "stock", "connector", "socks5"}

// reportFixture has four scenarios, a metric missing for socks5 (rtt-p50),
// zero samples and medians (cpu), equal medians (conns-1) and per-process
// rows given out of process order.
func reportFixture() *Report {
	return &Report{
		Meta: Meta{
			Date: "2025-11-26T16:00:00Z", Command: "go run ./bench -runs 3", GoVersion: "go1.26.8",
			OS: "linux", Arch: "amd64", CPU: "Test CPU @ 3.00GHz", NumCPU: 8, Runs: 3, Duration: "2s",
			Commit: "abc1234",
		},
		Results: []Result{
			{Scenario: "direct", Metric: "bulk-up", Unit: "MB/s", Higher: true, Samples: []float64{1000, 1200, 1100}},
			{Scenario: "stock", Metric: "bulk-up", Unit: "MB/s", Higher: true, Samples: []float64{100, 90, 110}},
			{Scenario: "connector", Metric: "bulk-up", Unit: "MB/s", Higher: true, Samples: []float64{300, 280, 320}},
			{Scenario: "socks5", Metric: "bulk-up", Unit: "MB/s", Higher: true, Samples: []float64{250, 240, 260}},
			{Scenario: "direct", Metric: "cpu-per-gib", Unit: "s/GiB", Process: "harness", Samples: []float64{1, 1, 1}},
			{Scenario: "direct", Metric: "cpu-per-gib", Unit: "s/GiB", Process: "client", Samples: []float64{0, 0, 0}},
			{Scenario: "stock", Metric: "cpu-per-gib", Unit: "s/GiB", Process: "client", Samples: []float64{2, 2.5, 3}},
			{Scenario: "connector", Metric: "cpu-per-gib", Unit: "s/GiB", Process: "client", Samples: []float64{1, 0, 2}},
			{Scenario: "socks5", Metric: "cpu-per-gib", Unit: "s/GiB", Process: "client", Samples: []float64{4, 4, 4}},
			{Scenario: "direct", Metric: "rtt-p50", Unit: "µs", Samples: []float64{10, 12, 11}},
			{Scenario: "stock", Metric: "rtt-p50", Unit: "µs", Samples: []float64{50, 40, 60}},
			{Scenario: "connector", Metric: "rtt-p50", Unit: "µs", Samples: []float64{25, 20, 30}},
			{Scenario: "direct", Metric: "conns-1", Unit: "conns/s", Higher: true, Samples: []float64{12345, 12000, 13000}},
			{Scenario: "stock", Metric: "conns-1", Unit: "conns/s", Higher: true, Samples: []float64{100, 100, 100}},
			{Scenario: "connector", Metric: "conns-1", Unit: "conns/s", Higher: true, Samples: []float64{100.2, 100, 99}},
			{Scenario: "socks5", Metric: "conns-1", Unit: "conns/s", Higher: true, Samples: []float64{1e6, 1e6, 1e6}},
		},
	}
}

func TestResultStats(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name             string
		samples          []float64
		median, min, max float64
	}{
		{"odd", []float64{3, 1, 2}, 2, 1, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5, 1, 4},
		{"single", []float64{7}, 7, 7, 7},
		{"zeros", []float64{0, 0}, 0, 0, 0},
		{"negative", []float64{-1, 5, -3}, -1, -3, 5},
		{"empty", nil, nan, nan, nan},
		{"nan", []float64{1, nan, 2}, nan, nan, nan},
	}
	same := func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Result{Samples: slices.Clone(tt.samples)}
			if got := r.Median(); !same(got, tt.median) {
				t.Errorf("Median = %v, want %v", got, tt.median)
			}
			if got := r.Min(); !same(got, tt.min) {
				t.Errorf("Min = %v, want %v", got, tt.min)
			}
			if got := r.Max(); !same(got, tt.max) {
				t.Errorf("Max = %v, want %v", got, tt.max)
			}
			if !slices.Equal(r.Samples, tt.samples) && tt.name != "nan" {
				t.Errorf("samples reordered: %v", r.Samples)
			}
		})
	}
}

func TestFormatSig3(t *testing.T) {
	tests := []struct {
		v    float64
		want string
	}{
		{0, "0"},
		{math.Copysign(0, -1), "0"},
		{1, "1.00"},
		{12.345, "12.3"},
		{0.012345, "0.0123"},
		{9.996, "10.0"},
		{99.96, "100"},
		{999.7, "1,000"},
		{1234.5, "1,230"},
		{12345, "12,300"},
		{1234567, "1,230,000"},
		{-1234, "-1,230"},
		{-0.5, "-0.500"},
		{1e-9, "1.00e-09"},
		{math.NaN(), "NaN"},
		{math.Inf(1), "∞"},
	}
	for _, tt := range tests {
		if got := formatSig3(tt.v); got != tt.want {
			t.Errorf("formatSig3(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}

func TestMarkdown(t *testing.T) {
	var buf bytes.Buffer
	if err := reportFixture().Markdown(&buf, reportTestScenarios); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	t.Log("\n" + md)
	want := []string{
		"2025-11-26T16:00:00Z · Test CPU @ 3.00GHz (8 CPUs, linux/amd64) · go1.26.8 · 3 runs × 2s per measurement · commit abc1234",
		"Command: `go run ./bench -runs 3`",
		"| Metric | Unit | direct | stock | connector | socks5 | connector/stock | socks5/stock | stock/direct | connector/direct | socks5/direct |\n" +
			"|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
		// Higher is better: 3× stock is better, 0.27× direct worse.
		"| bulk-up | MB/s ↑ | 1,100 (1,000–1,200) | 100 (90.0–110) | 300 (280–320) | 250 (240–260) | 3.00× ✓ | 2.50× ✓ | 0.09× ✗ | 0.27× ✗ | 0.23× ✗ |\n",
		// Rows of one metric are adjacent and ordered by process; a zero
		// baseline median gives no ratio.
		"| cpu-per-gib (client) | s/GiB ↓ | 0 (0–0) | 2.50 (2.00–3.00) | 1.00 (0–2.00) | 4.00 (4.00–4.00) | 0.40× ✓ | 1.60× ✗ | — | — | — |\n" +
			"| cpu-per-gib (harness) | s/GiB ↓ | 1.00 (1.00–1.00) | — | — | — | — | — | — | — | — |\n",
		// Lower is better: the marks flip; socks5 is missing.
		"| rtt-p50 | µs ↓ | 11.0 (10.0–12.0) | 50.0 (40.0–60.0) | 25.0 (20.0–30.0) | — | 0.50× ✓ | — | 4.55× ✗ | 2.27× ✗ | — |\n",
		// A ratio shown as 1.00× is unmarked; large ratios get separators.
		"| conns-1 | conns/s ↑ | 12,300 (12,000–13,000) | 100 (100–100) | 100 (99.0–100) | 1,000,000 (1,000,000–1,000,000) | 1.00× | 10,000× ✓ | 0.01× ✗ | 0.01× ✗ | 81.00× ✓ |\n",
	}
	for _, w := range want {
		if !strings.Contains(md, w) {
			t.Errorf("Markdown lacks %q", w)
		}
	}
}

func TestMarkdownScenarioOrder(t *testing.T) {
	r := &Report{Meta: Meta{Runs: 1}, Results: []Result{
		{Scenario: "connector", Metric: "m", Unit: "u|v", Samples: []float64{2}},
		{Scenario: "direct", Metric: "m", Unit: "u|v", Samples: []float64{1}},
		{Scenario: "extra", Metric: "m", Unit: "u|v", Samples: []float64{4}},
	}}
	tests := []struct {
		scenarios []string
		header    string
	}{
		{nil, "| Metric | Unit | connector | direct | extra | connector/direct | extra/direct |"},
		{[]string{"direct", "connector"}, "| Metric | Unit | direct | connector | extra | connector/direct | extra/direct |"},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		if err := r.Markdown(&buf, tt.scenarios); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(buf.String(), tt.header+"\n") {
			t.Errorf("scenarios %q: no header %q in\n%s", tt.scenarios, tt.header, buf.String())
		}
		// A single sample shows its min and max like any other cell; pipes
		// in cells are escaped.
		if !strings.Contains(buf.String(), "| m | u\\|v ↓ | 1.00 (1.00–1.00) | 2.00 (2.00–2.00) | 4.00 (4.00–4.00) | 2.00× ✗ | 4.00× ✗ |") &&
			!strings.Contains(buf.String(), "| m | u\\|v ↓ | 2.00 (2.00–2.00) | 1.00 (1.00–1.00) | 4.00 (4.00–4.00) | 2.00× ✗ | 4.00× ✗ |") {
			t.Errorf("scenarios %q: row missing in\n%s", tt.scenarios, buf.String())
		}
	}
}

func TestWriteJSON(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, resultsJSONFile)
	want := reportFixture()
	for range 2 { // the second write replaces the first
		if err := want.WriteJSON(path); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got Report
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want.Stalls = []Stall{} // written even when there are none
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, *want)
	}
	if !strings.Contains(string(data), `"stalls": []`) {
		t.Errorf("no empty stalls list in\n%s", data)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only %s", len(entries), resultsJSONFile)
	}

	stalled := reportFixture()
	stalled.Results[2].Samples[1] = 70 // connector/bulk-up: 300 (70–320)
	if err := stalled.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	if stalled.Stalls != nil {
		t.Errorf("WriteJSON changed the report's Stalls to %v", stalled.Stalls)
	}
	data, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got = Report{}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	wantStalls := []Stall{{Scenario: "connector", Metric: "bulk-up", Unit: "MB/s", Higher: true, Run: 2, Value: 70, Median: 300}}
	if !reflect.DeepEqual(got.Stalls, wantStalls) {
		t.Errorf("stalls read back %+v, want %+v", got.Stalls, wantStalls)
	}

	bad := reportFixture()
	bad.Results[2].Samples[1] = math.NaN()
	if err := bad.WriteJSON(path); err == nil || !strings.Contains(err.Error(), "connector/bulk-up") {
		t.Errorf("NaN sample: err = %v, want one naming connector/bulk-up", err)
	}
}

// svgElements parses an SVG file and counts its elements by local name.
func svgElements(t *testing.T, path string) (root xml.StartElement, count map[string]int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	count = map[string]int{}
	dec := xml.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return root, count
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s", path, err, data)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if len(count) == 0 {
				root = se
			}
			count[se.Name.Local]++
		}
	}
}

func TestWriteSVG(t *testing.T) {
	nan := math.NaN()
	weird := &Report{Meta: Meta{Runs: 2, CPU: `<CPU & "co">`}, Results: []Result{
		{Scenario: "direct", Metric: "zero", Unit: "u", Samples: []float64{0, 0}},
		{Scenario: "stock", Metric: "zero", Unit: "u", Samples: []float64{0}},
		{Scenario: "connector", Metric: "mixed", Unit: "u", Samples: []float64{-5, 3}},
		{Scenario: "stock", Metric: "mixed", Unit: "u", Samples: []float64{nan, 1}}, // no bar
		{Scenario: "socks5", Metric: "mixed", Unit: "u", Samples: nil},              // no bar
		{Scenario: "direct", Metric: "inf", Unit: "u", Samples: []float64{1, math.Inf(1), 2}},
		{Scenario: "a<b>&c", Metric: "<script>&", Unit: "\"µs\"", Process: "p'", Samples: []float64{1}},
	}}
	stalled := reportFixture()
	stalled.Results[2].Samples[1] = 70   // connector/bulk-up
	stalled.Results[10].Samples[2] = 201 // stock/rtt-p50
	tests := []struct {
		name         string
		r            *Report
		bars, stalls int
	}{
		{"fixture", reportFixture(), 16, 0},
		{"stalled", stalled, 16, 2},
		{"weird", weird, 5, 0},
		{"empty", &Report{}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), resultsSVGFile)
			if err := tt.r.WriteSVG(path, reportTestScenarios); err != nil {
				t.Fatal(err)
			}
			root, count := svgElements(t, path)
			if root.Name.Local != "svg" || root.Name.Space != svgNamespace {
				t.Errorf("root = %v, want svg in %s", root.Name, svgNamespace)
			}
			if count["rect"] != tt.bars {
				t.Errorf("%d <rect>, want one per bar: %d", count["rect"], tt.bars)
			}
			if count["circle"] != tt.stalls {
				t.Errorf("%d <circle>, want one per stall: %d", count["circle"], tt.stalls)
			}
			if err := validateResultsSVG(path); err != nil {
				t.Error(err)
			}
		})
	}
}

// writeReportDir writes the fixture into a new directory as the harness does.
func writeReportDir(t *testing.T, r *Report) string {
	t.Helper()
	dir := t.TempDir()
	if err := r.WriteJSON(filepath.Join(dir, resultsJSONFile)); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteSVG(filepath.Join(dir, resultsSVGFile), reportTestScenarios); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteMarkdown(filepath.Join(dir, resultsMDFile), reportTestScenarios); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestValidate(t *testing.T) {
	if err := Validate(writeReportDir(t, reportFixture())); err != nil {
		t.Fatalf("valid dir: %v", err)
	}

	writeFile := func(name, content string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	remove := func(name string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendFile := func(name, content string) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString(content); err != nil {
				t.Fatal(err)
			}
		}
	}
	editReport := func(edit func(r *Report)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			r := reportFixture()
			edit(r)
			data, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(resultsJSONFile, string(data))(t, dir)
		}
	}
	tests := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
		want    []string
	}{
		{"no json", remove(resultsJSONFile), []string{resultsJSONFile, "no such file"}},
		{"no svg", remove(resultsSVGFile), []string{resultsSVGFile, "no such file"}},
		{"no md", remove(resultsMDFile), []string{resultsMDFile, "no such file"}},
		{"bad json", writeFile(resultsJSONFile, `{"meta": {"runs": 3}, "results": [`), []string{resultsJSONFile}},
		{"unknown field", writeFile(resultsJSONFile, `{"meta": {"runs": 1}, "extra": 1}`), []string{resultsJSONFile, "extra"}},
		{"trailing data", appendFile(resultsJSONFile, "{}"), []string{resultsJSONFile, "data after"}},
		{"no results", editReport(func(r *Report) { r.Results = nil }), []string{resultsJSONFile, "no results"}},
		{"no runs", editReport(func(r *Report) { r.Meta.Runs = 0 }), []string{resultsJSONFile, "meta.runs"}},
		{"sample count", editReport(func(r *Report) { r.Meta.Runs = 4 }), []string{resultsJSONFile, "3 samples, want 4"}},
		{"short result", editReport(func(r *Report) { r.Results[3].Samples = r.Results[3].Samples[:2] }),
			[]string{resultsJSONFile, "result 3 (socks5/bulk-up)", "2 samples"}},
		{"negative", editReport(func(r *Report) { r.Results[1].Samples[0] = -1 }), []string{resultsJSONFile, "sample 0 is -1"}},
		{"no unit", editReport(func(r *Report) { r.Results[0].Unit = "" }), []string{resultsJSONFile, "empty unit"}},
		{"no scenario", editReport(func(r *Report) { r.Results[0].Scenario = "" }), []string{resultsJSONFile, "empty scenario"}},
		{"duplicate", editReport(func(r *Report) { r.Results[1].Scenario = "direct" }), []string{resultsJSONFile, "duplicate"}},
		{"truncated svg", func(t *testing.T, dir string) {
			data, err := os.ReadFile(filepath.Join(dir, resultsSVGFile))
			if err != nil {
				t.Fatal(err)
			}
			writeFile(resultsSVGFile, string(data[:len(data)/2]))(t, dir)
		}, []string{resultsSVGFile, "malformed XML"}},
		{"mismatched svg", writeFile(resultsSVGFile, `<svg xmlns="http://www.w3.org/2000/svg"><g></svg>`), []string{resultsSVGFile, "malformed XML"}},
		{"empty svg", writeFile(resultsSVGFile, ""), []string{resultsSVGFile, "no root"}},
		{"html", writeFile(resultsSVGFile, `<html></html>`), []string{resultsSVGFile, "<html>"}},
		{"svg without xmlns", writeFile(resultsSVGFile, `<svg></svg>`), []string{resultsSVGFile, "want <svg>"}},
		{"two roots", writeFile(resultsSVGFile, `<svg xmlns="http://www.w3.org/2000/svg"/><svg xmlns="http://www.w3.org/2000/svg"/>`),
			[]string{resultsSVGFile, "more than one root"}},
		{"md without table", writeFile(resultsMDFile, "# Benchmark results\n\nnothing | here\n"), []string{resultsMDFile, "no Markdown table"}},
		{"md without body", writeFile(resultsMDFile, "| a | b |\n|---|---|\n"), []string{resultsMDFile, "no Markdown table"}},
		{"md bad delimiter", writeFile(resultsMDFile, "| a | b |\n|---|\n| 1 | 2 |\n"), []string{resultsMDFile, "no Markdown table"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeReportDir(t, reportFixture())
			tt.corrupt(t, dir)
			err := Validate(dir)
			if err == nil {
				t.Fatal("Validate passed")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestFindStalls(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name    string
		unit    string
		higher  bool
		samples []float64
		stalled []int // indexes
	}{
		{"rate steady", "MB/s", true, []float64{100, 90, 110}, nil},
		{"rate stall", "MB/s", true, []float64{126, 4.16, 130}, []int{1}},
		{"rate exactly 25%", "MB/s", true, []float64{100, 25, 100}, nil},
		{"rate just under 25%", "MB/s", true, []float64{100, 24.999, 100}, []int{1}},
		{"rate far above", "conns/s", true, []float64{100, 100, 10000}, nil},
		{"rate two stalls", "names/s", true, []float64{100, 1, 100, 100, 2}, []int{1, 4}},
		{"rate even count", "MB/s", true, []float64{10, 100}, []int{0}}, // median 55
		{"rate zero median", "MB/s", true, []float64{0, 0, 5}, nil},
		{"time steady", "µs", false, []float64{300, 250, 350}, nil},
		{"time stall", "µs", false, []float64{300, 1201, 250}, []int{1}},
		{"time exactly 4×", "µs", false, []float64{300, 1200, 250}, nil},
		{"time far below", "µs", false, []float64{300, 1, 250}, nil},
		{"time in ms", "ms", false, []float64{1, 1, 5}, []int{2}},
		{"one sample", "MB/s", true, []float64{0.001}, nil},
		{"cost not watched", "s/GiB", false, []float64{1, 1, 100}, nil},
		{"memory not watched", "KiB", false, []float64{0.0004, 0, 11.6}, nil},
		{"count not watched", "conns", false, []float64{0, 0, 1}, nil},
		{"nan", "MB/s", true, []float64{100, nan, 1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Result{Scenario: "connector", Metric: "m", Unit: tt.unit, Higher: tt.higher, Samples: tt.samples}
			if got := res.stalledRuns(); !slices.Equal(got, tt.stalled) {
				t.Errorf("stalledRuns = %v, want %v", got, tt.stalled)
			}
			rep := &Report{Results: []Result{res}}
			stalls := rep.findStalls()
			if stalls == nil || len(stalls) != len(tt.stalled) {
				t.Fatalf("findStalls = %#v, want %d", stalls, len(tt.stalled))
			}
			for i, s := range stalls {
				j := tt.stalled[i]
				if s.Run != j+1 || s.Value != tt.samples[j] || s.Median != res.Median() || s.Unit != tt.unit || s.Higher != tt.higher {
					t.Errorf("stall %d = %+v, want run %d at %v, median %v", i, s, j+1, tt.samples[j], res.Median())
				}
			}
		})
	}
}

func TestStallString(t *testing.T) {
	tests := []struct {
		s    Stall
		want string
	}{
		{Stall{Scenario: "connector", Metric: "bulk-up", Unit: "MB/s", Higher: true, Run: 3, Value: 4.16, Median: 126},
			"connector/bulk-up run 3: 4.16 MB/s, below 25% of the median 126 MB/s"},
		{Stall{Scenario: "socks5", Metric: "rtt-p99", Unit: "µs", Run: 1, Value: 2500, Median: 600},
			"socks5/rtt-p99 run 1: 2,500 µs, above 4× the median 600 µs"},
		{Stall{Scenario: "stock", Metric: "m", Process: "client", Unit: "ms", Run: 2, Value: 9, Median: 2},
			"stock/m (client) run 2: 9.00 ms, above 4× the median 2.00 ms"},
	}
	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("String = %q, want %q", got, tt.want)
		}
	}
}

func TestMarkdownStalls(t *testing.T) {
	r := reportFixture()
	r.Results[2].Samples[1] = 70   // connector/bulk-up: 300 (70–320)
	r.Results[10].Samples[2] = 201 // stock/rtt-p50: 50.0 (40.0–201)
	var buf bytes.Buffer
	if err := r.Markdown(&buf, reportTestScenarios); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	t.Log("\n" + md)
	for _, w := range []string{
		"| bulk-up | MB/s ↑ | 1,100 (1,000–1,200) | 100 (90.0–110) | 300 (70.0–320) ⚠ | 250 (240–260) |",
		"| rtt-p50 | µs ↓ | 11.0 (10.0–12.0) | 50.0 (40.0–201) ⚠ | 25.0 (20.0–30.0) | — |",
		"\nStalls: 2 (a run of a rate below 25% of its scenario's median, or of a time above 4× it):\n\n" +
			"- ⚠ connector/bulk-up run 2: 70.0 MB/s, below 25% of the median 300 MB/s\n" +
			"- ⚠ stock/rtt-p50 run 3: 201 µs, above 4× the median 50.0 µs\n",
	} {
		if !strings.Contains(md, w) {
			t.Errorf("Markdown lacks %q", w)
		}
	}

	buf.Reset()
	if err := reportFixture().Markdown(&buf, reportTestScenarios); err != nil {
		t.Fatal(err)
	}
	if md := buf.String(); !strings.Contains(md, "\nStalls: none (") || strings.Contains(md, " ⚠ |") || strings.Contains(md, "- ⚠") {
		t.Errorf("without stalls, Markdown should say so and mark no cell:\n%s", md)
	}
}

func TestValidateStalls(t *testing.T) {
	tests := []struct {
		name string
		edit func(r *Report)
		want []string // nil: Validate passes
	}{
		{"none", func(r *Report) {}, nil},
		{"rate stall", func(r *Report) { r.Results[2].Samples[1] = 70 }, // connector/bulk-up
			[]string{resultsJSONFile, "1 stalled run ", "connector/bulk-up run 2: 70.0 MB/s, below 25% of the median 300 MB/s"}},
		{"rate at exactly 25%", func(r *Report) { r.Results[2].Samples[1] = 75 }, nil},
		{"rate just under 25%", func(r *Report) { r.Results[2].Samples[1] = 74.9 },
			[]string{"connector/bulk-up run 2: 74.9 MB/s, below 25% of the median 300 MB/s"}},
		{"rate far above", func(r *Report) { r.Results[2].Samples[1] = 5000 }, nil},
		{"time stall", func(r *Report) { r.Results[11].Samples[2] = 101 }, // connector/rtt-p50, median 25
			[]string{"1 stalled run ", "connector/rtt-p50 run 3: 101 µs, above 4× the median 25.0 µs"}},
		{"time at exactly 4×", func(r *Report) { r.Results[11].Samples[2] = 100 }, nil},
		{"time far below", func(r *Report) { r.Results[11].Samples[2] = 0.5 }, nil},
		{"cost not watched", func(r *Report) { r.Results[7].Samples[2] = 100 }, nil}, // connector/cpu-per-gib
		{"two stalls", func(r *Report) {
			r.Results[2].Samples[1] = 70
			r.Results[11].Samples[2] = 101
		}, []string{"2 stalled runs", "connector/bulk-up run 2", "; connector/rtt-p50 run 3"}},
		{"recorded stall the samples lack", func(r *Report) {
			r.Stalls = []Stall{{Scenario: "stock", Metric: "bulk-up", Unit: "MB/s", Higher: true, Run: 1, Value: 1, Median: 100}}
		}, []string{resultsJSONFile, "stalls lists 1 runs, but no sample stalled", "stock/bulk-up run 1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := reportFixture()
			tt.edit(r)
			dir := writeReportDir(t, r)
			if r.Stalls != nil { // WriteJSON writes the stalls it finds: put the recorded ones back
				data, err := json.Marshal(r)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, resultsJSONFile), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			err := Validate(dir)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate passed")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
