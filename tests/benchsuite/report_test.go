package benchsuite

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	out := "goos: linux\nBenchmarkEventToMap-2   \t2026/11/29 08:25:03 INFO claimed block\n" +
		"       3\t2008668947 ns/op\t         2.593 ms-p50\t         6.762 ms-p99\n--- BENCH: BenchmarkEventToMap-2\n" +
		"BenchmarkCNIAdd-2   \t       1\t        34.24 ms-p50/add\t        65.99 ms-p99/add\nPASS\n"
	figs := ParseMetrics(out, "cmd")
	want := []ControlFigure{{"BenchmarkEventToMap", "2.593", "ms-p50", "cmd"}, {"BenchmarkEventToMap", "6.762", "ms-p99", "cmd"},
		{"BenchmarkCNIAdd", "34.24", "ms-p50/add", "cmd"}, {"BenchmarkCNIAdd", "65.99", "ms-p99/add", "cmd"}}
	if len(figs) != len(want) {
		t.Fatalf("got %v, want %v", figs, want)
	}
	for i := range want {
		if figs[i] != want[i] {
			t.Errorf("figure %d: got %v, want %v", i, figs[i], want[i])
		}
	}
}

func TestParseBPFBench(t *testing.T) {
	out := "BenchmarkPrograms/routes=10/from_wep-remote-2         \t      21\t       342.0 ns/pkt\t         7.742 x_empty\n" +
		"BenchmarkPrograms/routes=100000/lpm_lookup-2          \t      51\t       149.0 ns/pkt\t         3.500 x_empty\n"
	pts := ParseBPFBench(out)
	if len(pts) != 2 || pts[0] != (BPFPoint{10, "from_wep-remote", 342}) || pts[1] != (BPFPoint{100000, "lpm_lookup", 149}) {
		t.Fatalf("got %v", pts)
	}
}

func TestSummarize(t *testing.T) {
	if s := Summarize([]float64{3, 1, 2, 10}); s != (Stats{2.5, 1, 10}) {
		t.Fatalf("got %v", s)
	}
}

// The control-plane figures of several runs and sizes become one row per benchmark and unit
// (median and range) and one curve per unit that has two sizes or more, which ControlPlot draws.
func TestControlSummaryAndCurves(t *testing.T) {
	out := `goos: linux
BenchmarkBGPScale/routes=1000-2    1  5 ns/op  0.10 s  60 MiB-RSS
BenchmarkBGPScale/routes=1000-2    1  5 ns/op  0.30 s  62 MiB-RSS
BenchmarkBGPScale/routes=1000-2    1  5 ns/op  0.20 s  61 MiB-RSS
BenchmarkBGPScale/routes=10000-2   1  5 ns/op  0.90 s  100 MiB-RSS
BenchmarkHostWorkloads-2           1  5 ns/op  30.5 ms-cni-nowait-p50
`
	r := &Report{Control: ParseMetrics(out, "cmd")}
	rows := r.ControlSummary()
	if len(rows) != 5 {
		t.Fatalf("%d rows: %+v", len(rows), rows)
	}
	if got := rows[0]; got.Name != "BenchmarkBGPScale/routes=1000" || got.Unit != "s" || got.Runs != 3 ||
		got.Med != 0.2 || got.Min != 0.1 || got.Max != 0.3 {
		t.Errorf("first row %+v", got)
	}
	curves := r.ControlCurves("s", "ms/compile")
	if len(curves) != 1 || curves[0].Param != "routes" || !slices.Equal(curves[0].Sizes, []float64{1000, 10000}) ||
		!slices.Equal(curves[0].Medians, []float64{0.2, 0.9}) {
		t.Fatalf("curves %+v", curves)
	}
	path := filepath.Join(t.TempDir(), "c.png")
	if ok, err := r.ControlPlot(path, "s", "MiB-RSS"); err != nil || !ok {
		t.Fatalf("ControlPlot: %v %v", ok, err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Fatalf("plot: %v", err)
	}
}

func TestPercentile(t *testing.T) {
	v := make([]float64, 20)
	for i := range v {
		v[i] = float64(20 - i) // 20 … 1
	}
	if p50, p99 := Percentile(v, 50), Percentile(v, 99); p50 != 10 || p99 != 20 {
		t.Fatalf("p50 %v p99 %v, want 10 and 20 (nearest rank)", p50, p99)
	}
	if p := Percentile([]float64{3}, 50); p != 3 {
		t.Fatalf("one value: %v", p)
	}
}

// The docker run figures are per round, and the ratios are taken within each round before their
// median.
func TestDockerRunRatios(t *testing.T) {
	round := func(m, b float64) DockerRound {
		return DockerRound{Samples: map[string][]DockerSample{"m": {{ReachMs: m, RunMs: m - 1}}, "b": {{ReachMs: b, RunMs: b - 1}}}}
	}
	d := &DockerRun{Drivers: []DockerDriver{{Key: "m"}, {Key: "b"}}, Rounds: []DockerRound{round(10, 5), round(30, 10), round(20, 40)}}
	if got := Summarize(d.Ratios(DockerMeasures[0])); got != (Stats{2, 0.5, 3}) {
		t.Fatalf("ratios %+v", got)
	}
	if got := Summarize(d.PerRound("m", DockerMeasures[0])); got != (Stats{20, 10, 30}) {
		t.Fatalf("margay p50s %+v", got)
	}
	if got := d.FirstAnswers(); got != "m 0 of 3, b 0 of 3" {
		t.Fatalf("first answers %q", got)
	}
}
