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
		// A single sample has no range; pipes in cells are escaped.
		if !strings.Contains(buf.String(), "| m | u\\|v ↓ | 1.00 | 2.00 | 4.00 | 2.00× ✗ | 4.00× ✗ |") &&
			!strings.Contains(buf.String(), "| m | u\\|v ↓ | 2.00 | 1.00 | 4.00 | 2.00× ✗ | 4.00× ✗ |") {
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
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, *want)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only %s", len(entries), resultsJSONFile)
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
	tests := []struct {
		name string
		r    *Report
		bars int
	}{
		{"fixture", reportFixture(), 16},
		{"weird", weird, 5},
		{"empty", &Report{}, 0},
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
