package benchsuite

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

type whiskers struct {
	plotter.XYs
	plotter.YErrors
}

// BarPlot writes a PNG with one bar per topology (the median over the rounds) and min/max
// whiskers for one measure.
func (r *Report) BarPlot(path, measure string) error {
	m := MeasureByKey(measure)
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s, median of %d rounds (whiskers: min/max)", m.Name, r.Rounds)
	p.Y.Label.Text = m.Unit
	var vals plotter.Values
	var xys plotter.XYs
	var errs plotter.YErrors
	var names []string
	for i, t := range r.Topologies {
		var v []float64
		for _, s := range r.Samples[t.Key] {
			v = append(v, m.Get(s))
		}
		s := Summarize(v)
		vals = append(vals, s.Med)
		xys = append(xys, plotter.XY{X: float64(i), Y: s.Med})
		errs = append(errs, struct{ Low, High float64 }{s.Med - s.Min, s.Max - s.Med})
		names = append(names, t.Key)
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(40))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	eb, err := plotter.NewYErrorBars(whiskers{xys, errs})
	if err != nil {
		return err
	}
	p.Add(plotter.NewGrid(), bars, eb)
	p.NominalX(names...)
	p.Y.Min = 0
	p.Y.Tick.Marker = plainTicks
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

// BPFPlot writes the BPF_PROG_TEST_RUN curve: ns per packet against the number of routes, one
// line per program path, log scale on x.
func (r *Report) BPFPlot(path string) error {
	p := plot.New()
	p.Title.Text = "BPF_PROG_TEST_RUN: ns per packet against routes"
	p.X.Label.Text = "routes in the LPM map"
	p.Y.Label.Text = "ns/pkt"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	byCase := map[string]plotter.XYs{}
	var cases []string
	for _, pt := range r.BPF {
		if !slices.Contains(cases, pt.Case) {
			cases = append(cases, pt.Case)
		}
		byCase[pt.Case] = append(byCase[pt.Case], plotter.XY{X: float64(pt.Routes), Y: pt.NsPerPkt})
	}
	for i, c := range cases {
		xys := byCase[c]
		sort.Slice(xys, func(a, b int) bool { return xys[a].X < xys[b].X })
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		pts.Color = plotutil.Color(i)
		pts.Shape = plotutil.Shape(i)
		p.Add(l, pts)
		p.Legend.Add(c, l, pts)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Y.Min = 0
	maxY := 0.0
	for _, pt := range r.BPF {
		maxY = max(maxY, pt.NsPerPkt)
	}
	p.Y.Max = maxY * 1.7 // room for the legend above the curves
	p.Y.Tick.Marker = plainTicks
	return p.Save(7*vg.Inch, 4*vg.Inch, path)
}

// WritePlots writes every PNG into dir and records their paths relative to relTo.
func (r *Report) WritePlots(dir, rel string) error {
	for _, m := range []string{"stream", "rr", "crr", "crr_cpu"} {
		name := "traffic-" + m + ".png"
		if err := r.BarPlot(filepath.Join(dir, name), m); err != nil {
			return err
		}
		r.Plots = append(r.Plots, rel+"/"+name)
	}
	if len(r.BPF) > 0 {
		if err := r.BPFPlot(filepath.Join(dir, "bpf-test-run.png")); err != nil {
			return err
		}
		r.Plots = append(r.Plots, rel+"/bpf-test-run.png")
	}
	ok, err := r.ControlPlot(filepath.Join(dir, "control-scale.png"), controlPlotUnits...)
	if err != nil {
		return err
	}
	if ok {
		r.Plots = append(r.Plots, rel+"/control-scale.png")
	}
	return nil
}

// plainTicks are gonum's default ticks labelled without trailing zeros.
var plainTicks = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'g', -1, 64)
		}
	}
	return ts
})

// ControlPlot writes one panel per control-plane series (ControlCurves): the median cost
// against the size, with the straight line through the origin and the smallest size's point
// (what linear growth from there would cost), so that super-linear growth shows as a curve above
// it. Nothing is written when there are no series.
func (r *Report) ControlPlot(path string, units ...string) (bool, error) {
	series := r.ControlCurves(units...)
	if len(series) == 0 {
		return false, nil
	}
	const w = 4.5
	img := vgimg.New(vg.Length(w*float64(len(series)))*vg.Inch, 4*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(series), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	for i, s := range series {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s: %s against %s", strings.TrimPrefix(s.Bench, "Benchmark"), s.Unit, s.Param)
		p.X.Label.Text = s.Param
		p.Y.Label.Text = s.Unit
		p.Add(plotter.NewGrid())
		xys := make(plotter.XYs, len(s.Sizes))
		for j := range s.Sizes {
			xys[j] = plotter.XY{X: s.Sizes[j], Y: s.Medians[j]}
		}
		l, pts, err := plotter.NewLinePoints(xys)
		if err != nil {
			return false, err
		}
		l.Color, pts.Color = plotutil.Color(0), plotutil.Color(0)
		p.Add(l, pts)
		p.Legend.Add("median", l, pts)
		last := s.Sizes[len(s.Sizes)-1]
		ref, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: last, Y: s.Medians[0] * last / s.Sizes[0]}})
		if err != nil {
			return false, err
		}
		ref.Color = plotutil.Color(1)
		ref.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(ref)
		p.Legend.Add("linear from the smallest size", ref)
		p.Legend.Top, p.Legend.Left = true, true
		p.X.Min, p.Y.Min = 0, 0
		p.Y.Tick.Marker = plainTicks
		p.Draw(tiles.At(dc, i, 0))
	}
	f, err := os.Create(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return false, err
	}
	return true, f.Close()
}

// controlPlotUnits are the control-plane figures plotted against size: BGP convergence (from
// the session's start) and the agent's memory after it, and policy compile time.
var controlPlotUnits = []string{"s", "MiB-RSS", "ms/compile"}
