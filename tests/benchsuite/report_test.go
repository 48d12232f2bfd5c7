package benchsuite

import "testing"

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
