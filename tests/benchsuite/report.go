package benchsuite

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// Stats are the median, min and max of a measurement over the rounds.
type Stats struct{ Med, Min, Max float64 }

// Summarize returns the median (mean of the middle two for an even count), min and max of v.
func Summarize(v []float64) Stats {
	if len(v) == 0 {
		return Stats{math.NaN(), math.NaN(), math.NaN()}
	}
	v = slices.Sorted(slices.Values(v))
	s := Stats{Min: v[0], Max: v[len(v)-1], Med: v[len(v)/2]}
	if len(v)%2 == 0 {
		s.Med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return s
}

// Sample is what one topology measured in one round.
type Sample struct {
	StreamGbps       float64 // iperf3, received
	StreamCPUPerGbit float64 // busy CPU seconds of the whole machine per Gbit carried
	StreamRetrans    float64 // iperf3's retransmits
	RR               float64 // transactions/s on one connection
	RRP50            float64 // µs
	RRP90            float64
	RRP99            float64
	RRCPU            float64 // busy CPU µs per transaction
	CRR              float64 // connections/s (connect, 1 byte each way, close)
	CRRCPU           float64 // busy CPU µs per connection
}

// Measure is one column of the results: how to read it from a sample and which way is better.
type Measure struct {
	Key, Name, Unit string
	Get             func(Sample) float64
	HigherIsBetter  bool
	Format          string
}

// Measures are every figure the suite reports, in table order.
var Measures = []Measure{
	{"stream", "TCP stream", "Gbit/s", func(s Sample) float64 { return s.StreamGbps }, true, "%.2f"},
	{"stream_cpu", "CPU per Gbit", "CPU s/Gbit", func(s Sample) float64 { return s.StreamCPUPerGbit }, false, "%.3f"},
	{"rr", "TCP RR", "trans/s", func(s Sample) float64 { return s.RR }, true, "%.0f"},
	{"rr_p50", "RR p50", "µs", func(s Sample) float64 { return s.RRP50 }, false, "%.1f"},
	{"rr_p90", "RR p90", "µs", func(s Sample) float64 { return s.RRP90 }, false, "%.1f"},
	{"rr_p99", "RR p99", "µs", func(s Sample) float64 { return s.RRP99 }, false, "%.1f"},
	{"rr_cpu", "CPU per RR trans", "CPU µs", func(s Sample) float64 { return s.RRCPU }, false, "%.1f"},
	{"crr", "TCP CRR", "conn/s", func(s Sample) float64 { return s.CRR }, true, "%.0f"},
	{"crr_cpu", "CPU per CRR trans", "CPU µs", func(s Sample) float64 { return s.CRRCPU }, false, "%.1f"},
}

// MeasureByKey returns the measure with that key.
func MeasureByKey(key string) Measure {
	for _, m := range Measures {
		if m.Key == key {
			return m
		}
	}
	panic("no measure " + key)
}

// Topology describes one measured topology.
type Topology struct {
	Key, Title, Description string
}

// Comparison is a ratio num/den computed round by round.
type Comparison struct {
	Num, Den string // topology keys
	Title    string
}

// Goal is a bound on the median of a comparison's per-round ratios.
type Goal struct {
	Comparison int    // index into Report.Comparisons
	Measure    string // measure key
	Bound      float64
	AtMost     bool // ratio ≤ Bound; otherwise ratio ≥ Bound
}

// BPFPoint is one BPF_PROG_TEST_RUN figure.
type BPFPoint struct {
	Routes   int
	Case     string
	NsPerPkt float64
}

// ControlFigure is one control-plane figure parsed from a Go benchmark.
type ControlFigure struct {
	Name, Value, Unit, Command string
}

// ProgramFigure is what the kernel says about one attached program while traffic ran.
type ProgramFigure struct {
	Topology, Test, Host, Program string
	Round                         int
	XlatedInsns                   int
	JitedBytes                    int
	RunCount                      uint64
	NsPerRun                      float64
}

// ProgramGoal bounds a program's time per run on one host in one test of a topology: the median
// over the rounds must be at most Bound ns.
type ProgramGoal struct {
	Topology, Test, Host, Program string
	Case                          string // what the runs are, e.g. "established flow"
	Bound                         float64
}

// Report is everything BENCHMARKS.md is made from.
type Report struct {
	Generated                time.Time
	Machine                  []string
	Command                  string
	Rounds                   int
	StreamSec, RRSec, CRRSec float64
	Topologies               []Topology
	Samples                  map[string][]Sample // by topology key, one per round
	Comparisons              []Comparison
	Goals                    []Goal
	Checks                   []string // what the path checks proved before timing
	Evidence                 []string // facts gathered during the run (offloads, profiles)
	Programs                 []ProgramFigure
	ProgramGoals             []ProgramGoal
	BPF                      []BPFPoint
	BPFCommand, BPFNote      string
	Control                  []ControlFigure
	ControlNote              string
	Plots                    []string // paths relative to BENCHMARKS.md
	Findings                 string   // the analysis of the shortfalls, markdown

	// Docker is the `docker run` benchmark's last results (docker-run.json beside the plots,
	// which BenchmarkDockerRun writes): kept in a file of their own so that the benchmark can
	// run alone; DockerNote says what this run of the suite did about it.
	Docker          *DockerRun `json:"-"`
	DockerNote      string
	DockerGenerated time.Time // the Generated of the results this run of the suite measured
}

// Save writes the report's data (not its findings) as JSON, so that BENCHMARKS.md can be
// rendered again without measuring again.
func (r *Report) Save(path string) error {
	c := *r
	c.Findings, c.Plots = "", nil
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Load reads what Save wrote.
func Load(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}

// Ratios returns the per-round ratios num/den of a measure.
func (r *Report) Ratios(c Comparison, measure string) []float64 {
	m := MeasureByKey(measure)
	num, den := r.Samples[c.Num], r.Samples[c.Den]
	var out []float64
	for i := range min(len(num), len(den)) {
		d := m.Get(den[i])
		if d == 0 {
			continue
		}
		out = append(out, m.Get(num[i])/d)
	}
	return out
}

// Met says whether a goal is met by the median of the per-round ratios.
func (r *Report) Met(g Goal) (Stats, bool) {
	s := Summarize(r.Ratios(r.Comparisons[g.Comparison], g.Measure))
	if g.AtMost {
		return s, s.Med <= g.Bound
	}
	return s, s.Med >= g.Bound
}

//go:embed benchmarks.md.tmpl
var mdTemplate string

// Markdown renders BENCHMARKS.md.
func (r *Report) Markdown() ([]byte, error) {
	funcs := template.FuncMap{
		"results": r.resultsTable,
		"ratios":  r.ratiosTable,
		"goals":   r.goalsTable,
		"bpf":     r.bpfTable,
		"progs":   r.programsTable,
		"pgoals":  r.programGoalsTable,
		"date":    func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
	}
	t, err := template.New("md").Funcs(funcs).Parse(mdTemplate)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, r); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func cell(m Measure, s Stats) string {
	if math.IsNaN(s.Med) {
		return "–"
	}
	return fmt.Sprintf(m.Format+" ("+m.Format+"–"+m.Format+")", s.Med, s.Min, s.Max)
}

// resultsTable: one row per topology, median (min–max) of every measure.
func (r *Report) resultsTable() string {
	var b strings.Builder
	b.WriteString("| topology |")
	for _, m := range Measures {
		fmt.Fprintf(&b, " %s [%s] |", m.Name, m.Unit)
	}
	b.WriteString("\n|---|")
	for range Measures {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, t := range r.Topologies {
		fmt.Fprintf(&b, "| %s |", t.Title)
		for _, m := range Measures {
			var v []float64
			for _, s := range r.Samples[t.Key] {
				v = append(v, m.Get(s))
			}
			fmt.Fprintf(&b, " %s |", cell(m, Summarize(v)))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// ratiosTable: one row per comparison, the median (min–max) of the per-round ratios.
func (r *Report) ratiosTable() string {
	var b strings.Builder
	b.WriteString("| ratio |")
	for _, m := range Measures {
		fmt.Fprintf(&b, " %s |", m.Name)
	}
	b.WriteString("\n|---|")
	for range Measures {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, c := range r.Comparisons {
		fmt.Fprintf(&b, "| %s |", c.Title)
		for _, m := range Measures {
			s := Summarize(r.Ratios(c, m.Key))
			if math.IsNaN(s.Med) {
				b.WriteString(" – |")
				continue
			}
			fmt.Fprintf(&b, " %.3f (%.3f–%.3f) |", s.Med, s.Min, s.Max)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func (r *Report) goalsTable() string {
	var b strings.Builder
	b.WriteString("| comparison | measure | goal | median ratio | min–max | met |\n|---|---|---|---:|---:|:---:|\n")
	for _, g := range r.Goals {
		c := r.Comparisons[g.Comparison]
		m := MeasureByKey(g.Measure)
		s, ok := r.Met(g)
		op := "≥"
		if g.AtMost {
			op = "≤"
		}
		verdict := "**not met**"
		if ok {
			verdict = "met"
		}
		fmt.Fprintf(&b, "| %s | %s | %s %.2f | %.3f | %.3f–%.3f | %s |\n", c.Title, m.Name, op, g.Bound, s.Med, s.Min, s.Max, verdict)
	}
	return b.String()
}

func (r *Report) bpfTable() string {
	if len(r.BPF) == 0 {
		return "_No BPF_PROG_TEST_RUN figures: " + r.BPFNote + "_\n"
	}
	var routes []int
	var cases []string
	v := map[string]float64{}
	for _, p := range r.BPF {
		if !slices.Contains(routes, p.Routes) {
			routes = append(routes, p.Routes)
		}
		if !slices.Contains(cases, p.Case) {
			cases = append(cases, p.Case)
		}
		v[fmt.Sprint(p.Routes, p.Case)] = p.NsPerPkt
	}
	sort.Ints(routes)
	var b strings.Builder
	b.WriteString("| program / path |")
	for _, n := range routes {
		fmt.Fprintf(&b, " %d routes |", n)
	}
	b.WriteString("\n|---|")
	for range routes {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, c := range cases {
		fmt.Fprintf(&b, "| %s |", c)
		for _, n := range routes {
			if x, ok := v[fmt.Sprint(n, c)]; ok {
				fmt.Fprintf(&b, " %.1f ns |", x)
			} else {
				b.WriteString(" – |")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// programRuns is the ns per run of one program on one host in one test, over the rounds, with
// its size.
type programRuns struct {
	ProgramFigure
	ns   []float64
	runs []uint64
}

// programRuns groups the program figures by topology, test, host and program, in their order.
func (r *Report) programRuns() []*programRuns {
	var out []*programRuns
	idx := map[[4]string]*programRuns{}
	for _, p := range r.Programs {
		k := [4]string{p.Topology, p.Test, p.Host, p.Program}
		g := idx[k]
		if g == nil {
			g = &programRuns{ProgramFigure: p}
			idx[k] = g
			out = append(out, g)
		}
		g.ns = append(g.ns, p.NsPerRun)
		g.runs = append(g.runs, p.RunCount)
	}
	return out
}

func (r *Report) programsTable() string {
	if len(r.Programs) == 0 {
		return "_No program statistics were gathered._\n"
	}
	var b strings.Builder
	b.WriteString("| topology | test | host | program | xlated insns | jited bytes | rounds | runs per round (median) | ns per run, median (min–max) |\n|---|---|---|---|---:|---:|---:|---:|---:|\n")
	for _, g := range r.programRuns() {
		runs := make([]float64, len(g.runs))
		for i, n := range g.runs {
			runs[i] = float64(n)
		}
		ns := Summarize(g.ns)
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %d | %d | %.0f | %.0f (%.0f–%.0f) |\n", g.Topology, g.Test, g.Host, g.Program,
			g.XlatedInsns, g.JitedBytes, len(g.ns), Summarize(runs).Med, ns.Med, ns.Min, ns.Max)
	}
	return b.String()
}

// ProgramMet says whether a program goal is met by the median of its rounds; ok is false when
// the program did not run in that test.
func (r *Report) ProgramMet(g ProgramGoal) (s Stats, met, ok bool) {
	for _, p := range r.programRuns() {
		if p.Topology == g.Topology && p.Test == g.Test && p.Host == g.Host && p.Program == g.Program {
			s = Summarize(p.ns)
			return s, s.Med <= g.Bound, true
		}
	}
	return s, false, false
}

func (r *Report) programGoalsTable() string {
	var b strings.Builder
	b.WriteString("| program | host | case (topology, test) | goal | median ns per run | min–max | met |\n|---|---|---|---:|---:|---:|:---:|\n")
	for _, g := range r.ProgramGoals {
		s, met, ok := r.ProgramMet(g)
		if !ok {
			fmt.Fprintf(&b, "| %s | %s | %s (%s, %s) | ≤ %.0f ns | – | – | **not measured** |\n", g.Program, g.Host, g.Case, g.Topology, g.Test, g.Bound)
			continue
		}
		verdict := "**not met**"
		if met {
			verdict = "met"
		}
		fmt.Fprintf(&b, "| %s | %s | %s (%s, %s) | ≤ %.0f ns | %.0f | %.0f–%.0f | %s |\n", g.Program, g.Host, g.Case, g.Topology, g.Test, g.Bound, s.Med, s.Min, s.Max, verdict)
	}
	return b.String()
}

var bpfLine = regexp.MustCompile(`routes=(\d+)/(\S+?)-\d+\s+\d+\s+.*?([\d.]+) ns/pkt`)

// ParseBPFBench reads the BPF_PROG_TEST_RUN curve from `go test -bench . ./tests/bpfbench/`.
func ParseBPFBench(out string) []BPFPoint {
	var pts []BPFPoint
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := bpfLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		ns, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		pts = append(pts, BPFPoint{Routes: n, Case: m[2], NsPerPkt: ns})
	}
	return pts
}

var (
	benchName   = regexp.MustCompile(`^(Benchmark[^\s-]+(?:/\S+?)?)(?:-\d+)?(?:\s|$)`)
	benchResult = regexp.MustCompile(`^\s*\d+\s+([\d.eE+-]+ \S+.*)$`)
	metric      = regexp.MustCompile(`([\d.eE+-]+) (\S+)`)
)

// ParseMetrics reads every metric of every benchmark in go test output, except ns/op, B/op and
// allocs/op. A benchmark's log output may come between its name and its result line, so the
// last name seen owns the next result line.
func ParseMetrics(out, command string) []ControlFigure {
	var figs []ControlFigure
	name := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest := line
		if m := benchName.FindStringSubmatch(line); m != nil {
			name = m[1]
			rest = strings.TrimSpace(line[len(m[0]):])
			if !benchResult.MatchString(rest) {
				continue
			}
		}
		m := benchResult.FindStringSubmatch(rest)
		if m == nil || name == "" {
			continue
		}
		for _, mm := range metric.FindAllStringSubmatch(m[1], -1) {
			if mm[2] == "ns/op" || mm[2] == "B/op" || mm[2] == "allocs/op" {
				continue
			}
			figs = append(figs, ControlFigure{Name: name, Value: mm[1], Unit: mm[2], Command: command})
		}
		name = ""
	}
	return figs
}

// ControlRow is one control-plane figure summarized over the runs of its benchmark.
type ControlRow struct {
	Name, Unit, Command string
	Stats
	Runs int
}

// ControlSummary groups the control-plane figures by benchmark and unit, in the order they came,
// with the median and range over the runs (-count).
func (r *Report) ControlSummary() []ControlRow {
	var rows []ControlRow
	vals := map[[2]string][]float64{}
	for _, f := range r.Control {
		k := [2]string{f.Name, f.Unit}
		v, err := strconv.ParseFloat(f.Value, 64)
		if err != nil {
			continue
		}
		if _, ok := vals[k]; !ok {
			rows = append(rows, ControlRow{Name: f.Name, Unit: f.Unit, Command: f.Command})
		}
		vals[k] = append(vals[k], v)
	}
	for i := range rows {
		v := vals[[2]string{rows[i].Name, rows[i].Unit}]
		rows[i].Stats, rows[i].Runs = Summarize(v), len(v)
	}
	return rows
}

// sizeParam reads the size of a sub-benchmark such as BenchmarkBGPScale/routes=10000-2: the
// benchmark, the parameter's name and its value.
var sizeParam = regexp.MustCompile(`^(Benchmark[^/]+)/(\w+)=(\d+)(?:-\d+)?$`)

// ControlSeries are the control-plane figures that grow with a size parameter: for each
// benchmark and unit with two sizes or more, the median at each size, sorted by size.
type ControlSeries struct {
	Bench, Param, Unit string
	Sizes              []float64
	Medians            []float64
}

// ControlCurves returns the series of ControlSummary for the given units.
func (r *Report) ControlCurves(units ...string) []ControlSeries {
	var out []ControlSeries
	idx := map[[2]string]int{}
	for _, row := range r.ControlSummary() {
		m := sizeParam.FindStringSubmatch(row.Name)
		if m == nil || !slices.Contains(units, row.Unit) {
			continue
		}
		size, _ := strconv.ParseFloat(m[3], 64)
		k := [2]string{m[1], row.Unit}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, ControlSeries{Bench: m[1], Param: m[2], Unit: row.Unit})
		}
		out[i].Sizes = append(out[i].Sizes, size)
		out[i].Medians = append(out[i].Medians, row.Med)
	}
	var kept []ControlSeries
	for _, s := range out {
		if len(s.Sizes) < 2 {
			continue
		}
		ord := make([]int, len(s.Sizes))
		for i := range ord {
			ord[i] = i
		}
		sort.Slice(ord, func(a, b int) bool { return s.Sizes[ord[a]] < s.Sizes[ord[b]] })
		sz, md := make([]float64, len(ord)), make([]float64, len(ord))
		for i, j := range ord {
			sz[i], md[i] = s.Sizes[j], s.Medians[j]
		}
		s.Sizes, s.Medians = sz, md
		kept = append(kept, s)
	}
	return kept
}
