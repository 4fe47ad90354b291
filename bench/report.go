// Results of a benchmark run and how they are presented: the Report data
// model with summary statistics, Markdown and SVG renderings, atomic JSON
// persistence, and Validate, which checks an output directory.

package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/appconnector/appconnector/connector"
)

// Names of the files the harness writes into its output directory; Validate
// checks all three.
const (
	resultsJSONFile = "results.json"
	resultsSVGFile  = "results.svg"
	resultsMDFile   = "results.md"
)

// Result is one figure measured in every run for one scenario.
type Result struct {
	Scenario string    `json:"scenario"`          // "direct", "stock", "connector", "socks5"
	Metric   string    `json:"metric"`            // e.g. "bulk-up", "rtt-p50", "conns-32", "idle-rss-per-flow"
	Unit     string    `json:"unit"`              // "MB/s", "µs", "conns/s", "names/s", "KiB", "s/GiB"
	Higher   bool      `json:"higherIsBetter"`    // whether a higher value is better
	Samples  []float64 `json:"samples"`           // one per run, in run order
	Process  string    `json:"process,omitempty"` // for per-process metrics such as CPU: "harness", "connector", "client"
}

// Meta describes the run.
type Meta struct {
	Date      string `json:"date"`    // RFC 3339
	Command   string `json:"command"` // the command line
	GoVersion string `json:"goVersion"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	CPU       string `json:"cpu"` // model name from /proc/cpuinfo if available
	NumCPU    int    `json:"numCPU"`
	Runs      int    `json:"runs"`
	Duration  string `json:"duration"` // per measurement
	Quick     bool   `json:"quick"`
	Commit    string `json:"commit,omitempty"`
}

// Report is everything one run of the harness measured.
type Report struct {
	Meta    Meta     `json:"meta"`
	Results []Result `json:"results"`
	// Stalls lists the stalled runs in Results (see findStalls). It is
	// derived: WriteJSON fills it from the samples, Validate checks it.
	Stalls []Stall `json:"stalls"`
}

// summary returns pick applied to the sorted samples, or NaN if there are
// no samples or any of them is NaN.
func (r Result) summary(pick func(sorted []float64) float64) float64 {
	if len(r.Samples) == 0 || slices.ContainsFunc(r.Samples, math.IsNaN) {
		return math.NaN()
	}
	s := slices.Clone(r.Samples)
	slices.Sort(s)
	return pick(s)
}

// Median returns the median sample (the mean of the middle two for an even
// count). It is NaN if there are no samples or any sample is NaN.
func (r Result) Median() float64 {
	return r.summary(func(s []float64) float64 {
		if n := len(s); n%2 == 0 {
			return (s[n/2-1] + s[n/2]) / 2
		}
		return s[len(s)/2]
	})
}

// Min returns the smallest sample; NaN as for Median.
func (r Result) Min() float64 { return r.summary(func(s []float64) float64 { return s[0] }) }

// Max returns the largest sample; NaN as for Median.
func (r Result) Max() float64 { return r.summary(func(s []float64) float64 { return s[len(s)-1] }) }

// reportRow is one metric (with its unit and process) across scenarios: a
// row of the Markdown table and a panel of the SVG.
type reportRow struct {
	metric, unit, process string
	higher                bool
	byScenario            map[string]*Result // the first Result for each scenario wins
}

// label is the metric name with the process, if any: "cpu-per-gib (client)".
func (row *reportRow) label() string {
	if row.process == "" {
		return row.metric
	}
	return row.metric + " (" + row.process + ")"
}

// rows groups r.Results by metric, unit and process. Metrics come in order of
// first appearance; rows of the same metric are adjacent, ordered by process,
// so that per-process rows do not depend on map order in the harness.
func (r *Report) rows() []*reportRow {
	var rows []*reportRow
	metricPos := map[string]int{}
	for i := range r.Results {
		res := &r.Results[i]
		if _, ok := metricPos[res.Metric]; !ok {
			metricPos[res.Metric] = len(metricPos)
		}
		j := slices.IndexFunc(rows, func(row *reportRow) bool {
			return row.metric == res.Metric && row.unit == res.Unit && row.process == res.Process
		})
		if j < 0 {
			rows = append(rows, &reportRow{metric: res.Metric, unit: res.Unit, process: res.Process,
				higher: res.Higher, byScenario: map[string]*Result{}})
			j = len(rows) - 1
		}
		if rows[j].byScenario[res.Scenario] == nil {
			rows[j].byScenario[res.Scenario] = res
		}
	}
	slices.SortStableFunc(rows, func(a, b *reportRow) int {
		if c := metricPos[a.metric] - metricPos[b.metric]; c != 0 {
			return c
		}
		return strings.Compare(a.process, b.process)
	})
	return rows
}

// scenarioOrder returns the given scenarios, without duplicates, followed by
// any other scenario found in r.Results in order of first appearance, so
// that no measurement is silently left out.
func (r *Report) scenarioOrder(given []string) []string {
	var out []string
	for _, s := range given {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, res := range r.Results {
		if !slices.Contains(out, res.Scenario) {
			out = append(out, res.Scenario)
		}
	}
	return out
}

// ratioBaselines are the scenarios others are compared against, most
// interesting first. A baseline is itself compared only with the baselines
// after it: stock against direct, never direct against stock. limit (the
// one-core crypto bound) has only bulk figures: its columns show bulk as
// a fraction of it.
var ratioBaselines = []string{"stock", "kernel", "direct", "limit"}

// ratioColumn is one "scenario/base" ratio column of the Markdown table.
type ratioColumn struct{ scenario, base string }

// ratioColumns lists the ratio columns for scens, grouped by baseline, each
// group in scenario order. stock-inproc is compared with stock only (the
// cost of sharing the harness's process), kernel (the privileged gateway)
// with the connector only, and limit only with the tunnels: stock, kernel
// and connector.
func ratioColumns(scens []string) []ratioColumn {
	var cols []ratioColumn
	for bi, base := range ratioBaselines {
		if !slices.Contains(scens, base) {
			continue
		}
		for _, s := range scens {
			if j := slices.Index(ratioBaselines, s); j >= bi {
				continue // s is base itself or a more basic baseline
			}
			if s == "stock-inproc" && base != "stock" || base == "kernel" && s != "connector" ||
				base == "limit" && s != "stock" && s != "kernel" && s != "connector" {
				continue
			}
			cols = append(cols, ratioColumn{s, base})
		}
	}
	return cols
}

// ratioCell formats median(scenario)/median(base) like "0.93× ✗", marked ✓
// if better than 1× given row.higher and ✗ if worse; "—" if either side is
// missing or the ratio is undefined.
func ratioCell(row *reportRow, c ratioColumn) string {
	a, b := row.byScenario[c.scenario], row.byScenario[c.base]
	if a == nil || b == nil {
		return "—"
	}
	mb := b.Median()
	q := a.Median() / mb
	if mb == 0 || math.IsNaN(q) || math.IsInf(q, 0) {
		return "—"
	}
	var s string
	if math.Abs(q) < 100 {
		s = strconv.FormatFloat(q, 'f', 2, 64) + "×"
	} else {
		s = formatSig3(q) + "×"
	}
	shown := math.Round(q*100) / 100 // judge what the reader sees: 1.001 is "1.00×", unmarked
	switch {
	case shown == 1:
		return s
	case (shown > 1) == row.higher:
		return s + " ✓"
	default:
		return s + " ✗"
	}
}

// formatSig3 formats v to 3 significant digits, with thousands separators in
// the integer part: "0.0123", "12.3", "1,230", "1,230,000".
func formatSig3(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "∞"
	case math.IsInf(v, -1):
		return "-∞"
	case v == 0:
		return "0"
	}
	e := strconv.FormatFloat(v, 'e', 2, 64) // "-1.23e+04": rounded once, exponent after
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -6 || exp > 15 {
		return e
	}
	rounded, _ := strconv.ParseFloat(e, 64)
	s := strconv.FormatFloat(rounded, 'f', max(0, 2-exp), 64)
	sign := ""
	if s[0] == '-' {
		sign, s = "-", s[1:]
	}
	intPart, frac, hasFrac := strings.Cut(s, ".")
	var b strings.Builder
	b.WriteString(sign)
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if hasFrac {
		b.WriteString("." + frac)
	}
	return b.String()
}

// summaryCell formats res as "median (min–max)", followed by " ⚠" if a run
// stalled; "—" if res is nil. A single sample is shown the same way, as
// "7.00 (7.00–7.00)", so that every cell of every row has its min in the
// same place whatever the number of runs.
func summaryCell(res *Result) string {
	if res == nil {
		return "—"
	}
	s := formatSig3(res.Median()) + " (" + formatSig3(res.Min()) + "–" + formatSig3(res.Max()) + ")"
	if len(res.stalledRuns()) > 0 {
		s += " ⚠"
	}
	return s
}

// betterArrow is "↑" if higher is better, else "↓".
func betterArrow(higher bool) string {
	if higher {
		return "↑"
	}
	return "↓"
}

// describe is a one-line summary of the meta: date, machine, Go, runs,
// duration, mode and commit, separated by " · "; empty parts are left out.
func (m Meta) describe() string {
	machine := m.CPU
	if m.NumCPU > 0 {
		machine = strings.TrimSpace(fmt.Sprintf("%s (%d CPUs, %s/%s)", m.CPU, m.NumCPU, m.OS, m.Arch))
	}
	runs := fmt.Sprintf("%d runs", m.Runs)
	if m.Duration != "" {
		runs += " × " + m.Duration + " per measurement"
	}
	parts := []string{m.Date, machine, m.GoVersion, runs}
	if m.Quick {
		parts = append(parts, "quick")
	}
	if m.Commit != "" {
		parts = append(parts, "commit "+m.Commit)
	}
	parts = slices.DeleteFunc(parts, func(s string) bool { return s == "" })
	return strings.Join(parts, " · ")
}

// markdownCell escapes s for a table cell.
func markdownCell(s string) string {
	return strings.NewReplacer("|", `\|`, "\r", " ", "\n", " ").Replace(s)
}

// markdownCode formats s as an inline code span.
func markdownCode(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	if strings.Contains(s, "`") {
		return "``` " + s + " ```"
	}
	return "`" + s + "`"
}

// Markdown writes the report as Markdown: a heading, a line describing the
// run and the command, then one table with a row per metric (and process)
// and a column per scenario, in the order given followed by any scenario
// not given but present in the results, then the stalls. Each cell is
// "median (min–max)", marked ⚠ if a run stalled. Extra columns hold the
// ratio of medians of each scenario to "stock" and to "direct" (stock itself
// only to direct), marked ✓ or ✗ when better or worse than 1×. After the
// table, every stalled run (see findStalls) is listed with its scenario,
// metric, run, value and median, or a line says there were none.
func (r *Report) Markdown(w io.Writer, scenarios []string) error {
	scens := r.scenarioOrder(scenarios)
	cols := ratioColumns(scens)
	var b strings.Builder
	b.WriteString("# Benchmark results\n\n")
	b.WriteString(markdownCell(r.Meta.describe()) + "\n\n")
	if r.Meta.Command != "" {
		b.WriteString("Command: " + markdownCode(r.Meta.Command) + "\n\n")
	}
	b.WriteString("Cells are median (min–max) over the runs; ratios are median ÷ median, so read the min beside them. " +
		"↑ higher is better, ↓ lower is better; ✓ better than the baseline, ✗ worse; " +
		"⚠ a run stalled (listed below the table).\n\n")

	b.WriteString("| Metric | Unit |")
	for _, s := range scens {
		b.WriteString(" " + markdownCell(s) + " |")
	}
	for _, c := range cols {
		b.WriteString(" " + markdownCell(c.scenario+"/"+c.base) + " |")
	}
	b.WriteString("\n|:--|:--|" + strings.Repeat("--:|", len(scens)+len(cols)) + "\n")
	for _, row := range r.rows() {
		b.WriteString("| " + markdownCell(row.label()) + " | " + markdownCell(row.unit) + " " + betterArrow(row.higher) + " |")
		for _, s := range scens {
			b.WriteString(" " + summaryCell(row.byScenario[s]) + " |")
		}
		for _, c := range cols {
			b.WriteString(" " + ratioCell(row, c) + " |")
		}
		b.WriteString("\n")
	}
	writeStallsMarkdown(&b, r.findStalls())
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteMarkdown writes r.Markdown(scenarios) to path atomically.
func (r *Report) WriteMarkdown(path string, scenarios []string) error {
	var buf bytes.Buffer
	if err := r.Markdown(&buf, scenarios); err != nil {
		return err
	}
	return connector.WriteFileAtomic(path, buf.Bytes(), 0o644)
}

// WriteJSON writes r to path as indented JSON, atomically, with Stalls
// filled from the samples (r itself is not changed). JSON has no NaN or
// infinity, so a non-finite sample is an error that names its result.
func (r *Report) WriteJSON(path string) error {
	for _, res := range r.Results {
		for i, v := range res.Samples {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("write %s: %s/%s: sample %d is %v", path, res.Scenario, res.Metric, i, v)
			}
		}
	}
	out := *r
	out.Stalls = r.findStalls()
	data, err := json.MarshalIndent(&out, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return connector.WriteFileAtomic(path, append(data, '\n'), 0o644)
}

// SVG layout in px, and the colour of each scenario.
const (
	svgNamespace = "http://www.w3.org/2000/svg"
	svgWidth     = 1000
	svgColumns   = 3
	svgHeaderH   = 44
	svgPanelH    = 250
	svgPanelW    = svgWidth / svgColumns
)

var (
	svgScenarioColors = map[string]string{
		"direct": "#4e79a7", "stock": "#f28e2b", "stock-inproc": "#ffbe7d", "kernel": "#e15759", "connector": "#59a14f", "socks5": "#b07aa1",
	}
	svgOtherColors = []string{"#e15759", "#76b7b2", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"}
)

// svgText escapes s for SVG character data.
func svgText(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s)) // never fails writing to a Builder
	return b.String()
}

// WriteSVG draws the report to path as a standalone SVG 1.1 image, about
// 1000 px wide: a panel per metric (and process), three across, each with a
// bar per scenario at the median, a whisker from min to max, a red dot at
// each stalled run and the median printed above. Scenarios are ordered as in Markdown; a scenario without the
// metric, or with a NaN median, gets a labelled slot and no bar.
func (r *Report) WriteSVG(path string, scenarios []string) error {
	scens := r.scenarioOrder(scenarios)
	colors, others := map[string]string{}, 0
	for _, s := range scens {
		if c, ok := svgScenarioColors[s]; ok {
			colors[s] = c
		} else {
			colors[s] = svgOtherColors[others%len(svgOtherColors)]
			others++
		}
	}
	rows := r.rows()
	height := svgHeaderH + max(1, (len(rows)+svgColumns-1)/svgColumns)*svgPanelH + 8

	var b bytes.Buffer
	fmt.Fprintf(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"+
		"<svg xmlns=%q version=\"1.1\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n",
		svgNamespace, svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, "<path d=\"M0 0H%dV%dH0Z\" fill=\"#ffffff\"/>\n", svgWidth, height)
	fmt.Fprintf(&b, "<text x=\"12\" y=\"20\" font-size=\"15\" font-weight=\"bold\">Benchmark results</text>\n")
	fmt.Fprintf(&b, "<text x=\"12\" y=\"37\" fill=\"#555555\">%s</text>\n", svgText(r.Meta.describe()))
	if len(rows) == 0 {
		fmt.Fprintf(&b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">No results.</text>\n", svgWidth/2, svgHeaderH+svgPanelH/2)
	}
	for i, row := range rows {
		x0 := float64(i%svgColumns) * svgPanelW
		y0 := float64(svgHeaderH + i/svgColumns*svgPanelH)
		writeSVGPanel(&b, row, scens, colors, x0, y0)
	}
	b.WriteString("</svg>\n")
	return connector.WriteFileAtomic(path, b.Bytes(), 0o644)
}

// writeSVGPanel draws row into the panel whose top left corner is (x0, y0).
func writeSVGPanel(b *bytes.Buffer, row *reportRow, scens []string, colors map[string]string, x0, y0 float64) {
	const pad = 6.0
	fmt.Fprintf(b, "<g>\n<path d=\"M%.1f %.1fh%.1fv%.1fh%.1fZ\" fill=\"none\" stroke=\"#dddddd\"/>\n",
		x0+pad, y0+pad, svgPanelW-2*pad, svgPanelH-2*pad, -(svgPanelW - 2*pad))
	cx := x0 + svgPanelW/2
	fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">%s</text>\n",
		cx, y0+26, svgText(row.label()+" · "+row.unit))
	better := "lower is better"
	if row.higher {
		better = "higher is better"
	}
	fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" fill=\"#777777\">%s</text>\n",
		cx, y0+41, better)

	// Scale to the finite medians, minima and maxima, always including zero.
	lo, hi := 0.0, 0.0
	for _, res := range row.byScenario {
		for _, v := range []float64{res.Median(), res.Min(), res.Max()} {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				lo, hi = min(lo, v), max(hi, v)
			}
		}
	}
	if hi == lo {
		hi = lo + 1
	}
	top, bottom := y0+66, y0+svgPanelH-40
	y := func(v float64) float64 { return bottom - (v-lo)/(hi-lo)*(bottom-top) }
	left, right := x0+pad+10, x0+svgPanelW-pad-10
	fmt.Fprintf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888888\"/>\n", left, y(0), right, y(0))

	slot := (right - left) / float64(len(scens))
	barW := min(slot*0.6, 60)
	for i, s := range scens {
		mid := left + (float64(i)+0.5)*slot
		fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n",
			mid, bottom+18, svgText(s))
		res := row.byScenario[s]
		med := math.NaN()
		if res != nil {
			med = res.Median()
		}
		if math.IsNaN(med) || math.IsInf(med, 0) {
			fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#999999\">n/a</text>\n", mid, y(0)-6)
			continue
		}
		yTop := min(y(med), y(0))
		fmt.Fprintf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>%s</title></rect>\n",
			mid-barW/2, yTop, barW, math.Abs(y(med)-y(0)), colors[s],
			svgText(s+": "+summaryCell(res)+" "+row.unit))
		lowV, highV := res.Min(), res.Max()
		if len(res.Samples) > 1 && !math.IsInf(lowV, 0) && !math.IsInf(highV, 0) {
			fmt.Fprintf(b, "<path d=\"M%.1f %.1fV%.1fM%.1f %.1fh%.1fM%.1f %.1fh%.1f\" stroke=\"#333333\" fill=\"none\"/>\n",
				mid, y(lowV), y(highV), mid-barW/5, y(lowV), barW*2/5, mid-barW/5, y(highV), barW*2/5)
			yTop = min(yTop, y(highV))
		}
		for _, j := range res.stalledRuns() {
			if math.IsInf(res.Samples[j], 0) {
				continue
			}
			stall := Stall{Scenario: s, Metric: row.metric, Process: row.process, Unit: row.unit,
				Higher: row.higher, Run: j + 1, Value: res.Samples[j], Median: med}
			fmt.Fprintf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"><title>stall: %s</title></circle>\n",
				mid, y(stall.Value), svgText(stall.String()))
		}
		fmt.Fprintf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", mid, yTop-5, formatSig3(med))
	}
	b.WriteString("</g>\n")
}

// Validate checks an output directory written by the harness: results.json
// holds a Report with at least one Result, each with a scenario, metric and
// unit, exactly Meta.Runs finite non-negative samples, and no duplicate;
// no run stalled (see findStalls), and the stalls it records are those;
// results.svg is well-formed XML with an <svg> root in the SVG namespace;
// results.md contains a Markdown table. The error names the first problem
// and its file.
func Validate(dir string) error {
	if err := validateResultsJSON(filepath.Join(dir, resultsJSONFile)); err != nil {
		return err
	}
	if err := validateResultsSVG(filepath.Join(dir, resultsSVGFile)); err != nil {
		return err
	}
	return validateResultsMD(filepath.Join(dir, resultsMDFile))
}

// validateResultsJSON checks path as described for Validate, decoding
// strictly: unknown fields and trailing data are errors.
func validateResultsJSON(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var rep Report
	if err := dec.Decode(&rep); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%s: data after the report", path)
	}
	if rep.Meta.Runs < 1 {
		return fmt.Errorf("%s: meta.runs is %d, want at least 1", path, rep.Meta.Runs)
	}
	if len(rep.Results) == 0 {
		return fmt.Errorf("%s: no results", path)
	}
	seen := map[[3]string]bool{}
	for i, res := range rep.Results {
		name := fmt.Sprintf("result %d (%s/%s)", i, res.Scenario, res.Metric)
		switch {
		case res.Scenario == "":
			return fmt.Errorf("%s: %s: empty scenario", path, name)
		case res.Metric == "":
			return fmt.Errorf("%s: %s: empty metric", path, name)
		case res.Unit == "":
			return fmt.Errorf("%s: %s: empty unit", path, name)
		case len(res.Samples) != rep.Meta.Runs:
			return fmt.Errorf("%s: %s: %d samples, want %d (meta.runs)", path, name, len(res.Samples), rep.Meta.Runs)
		}
		for j, v := range res.Samples {
			if !(v >= 0) || math.IsInf(v, 0) {
				return fmt.Errorf("%s: %s: sample %d is %v, want finite and non-negative", path, name, j, v)
			}
		}
		key := [3]string{res.Scenario, res.Metric, res.Process}
		if seen[key] {
			return fmt.Errorf("%s: %s: duplicate scenario/metric/process", path, name)
		}
		seen[key] = true
	}
	if stalls := rep.findStalls(); len(stalls) > 0 {
		return stallsError(path, stalls)
	}
	if len(rep.Stalls) > 0 {
		return fmt.Errorf("%s: stalls lists %d runs, but no sample stalled: first %s", path, len(rep.Stalls), rep.Stalls[0])
	}
	return nil
}

// validateResultsSVG checks that path is well-formed XML with a single root
// element, <svg> in the SVG namespace.
func validateResultsSVG(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	depth, roots := 0, 0
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: malformed XML: %w", path, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if depth == 0 {
				roots++
				if roots > 1 {
					return fmt.Errorf("%s: more than one root element", path)
				}
				if t.Name.Local != "svg" || t.Name.Space != svgNamespace {
					return fmt.Errorf("%s: root element is <%s> in namespace %q, want <svg> in %q",
						path, t.Name.Local, t.Name.Space, svgNamespace)
				}
			}
			depth++
		case xml.EndElement:
			depth--
		}
	}
	if roots == 0 {
		return fmt.Errorf("%s: no root element", path)
	}
	return nil
}

// markdownDelimRow matches a table's delimiter row, such as "|:--|--:|".
var markdownDelimRow = regexp.MustCompile(`^\|(\s*:?-+:?\s*\|)+$`)

// validateResultsMD checks that path contains a Markdown table: a header
// row, a delimiter row with as many cells, and at least one body row.
func validateResultsMD(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	lines := strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n")
	for i := 0; i+2 < len(lines); i++ {
		head, delim, body := strings.TrimSpace(lines[i]), strings.TrimSpace(lines[i+1]), strings.TrimSpace(lines[i+2])
		if markdownDelimRow.MatchString(delim) && strings.HasPrefix(head, "|") && strings.HasPrefix(body, "|") &&
			markdownCells(head) == markdownCells(delim) {
			return nil
		}
	}
	return fmt.Errorf("%s: no Markdown table", path)
}

// markdownCells counts the cells of a table row with leading and trailing
// pipes, skipping escaped pipes.
func markdownCells(row string) int {
	return strings.Count(row, "|") - strings.Count(row, `\|`) - 1
}
