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
