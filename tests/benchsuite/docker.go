package benchsuite

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// DockerSample is one container of the `docker run` benchmark (issue 21). Every time is in ms
// from t0, taken just before the docker client is started.
type DockerSample struct {
	JoinMs  float64 // dockerd's event "connect": the endpoint joined the container's sandbox
	RunMs   float64 // `docker run -d` returned: the container runs
	AddrMs  float64 // its address known (dockerd's API, asked once the run returned)
	ReachMs float64 // the first echo reply from it reached the prober on the other host
	Probes  int     // echo requests sent to it until then (1: the first was answered)
}

// DockerRound is one round: every driver's containers, measured interleaved.
type DockerRound struct {
	Start   time.Time
	Load1   float64  // the machine's 1-minute load average when the round started
	Order   []string // driver keys in the order each pair measured them
	Samples map[string][]DockerSample
}

// DockerDriver is one measured network driver: its key, a title and the `docker network
// create` that made its network.
type DockerDriver struct {
	Key, Title, Create string
}

// DockerRun is the results of the `docker run` benchmark, written to docker-run.json beside
// the plots and rendered into BENCHMARKS.md by the suite.
type DockerRun struct {
	Generated  time.Time
	Finished   time.Time
	Command    string
	Machine    []string
	Containers int     // per driver and round
	IntervalMs float64 // between two echo requests of the prober
	// Drivers[0] is the ratios' numerator (margay), Drivers[1] their denominator (bridge).
	Drivers []DockerDriver
	Rounds  []DockerRound
	Checks  []string // what the set-up proved before anything was timed
	Notes   []string // facts gathered during the run (the warm-up, …)
}

// Save writes the results as JSON.
func (d *DockerRun) Save(path string) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// LoadDockerRun reads what Save wrote.
func LoadDockerRun(path string) (*DockerRun, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d DockerRun
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &d, nil
}

// Percentile is the nearest-rank percentile p (0 < p ≤ 100) of v: the smallest value with at
// least p % of v at or below it. Of 20 values p50 is the 10th and p99 the largest.
func Percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(v))
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// DockerMeasure is a figure of one driver in one round, from its samples.
type DockerMeasure struct {
	Name string
	Get  func([]DockerSample) float64
}

func field(s []DockerSample, f func(DockerSample) float64) []float64 {
	v := make([]float64, len(s))
	for i, x := range s {
		v[i] = f(x)
	}
	return v
}

// DockerMeasures are the figures the report gives per driver and round.
var DockerMeasures = []DockerMeasure{
	{"reachable p50 [ms]", func(s []DockerSample) float64 {
		return Percentile(field(s, func(x DockerSample) float64 { return x.ReachMs }), 50)
	}},
	{"reachable p99 [ms]", func(s []DockerSample) float64 {
		return Percentile(field(s, func(x DockerSample) float64 { return x.ReachMs }), 99)
	}},
	{"endpoint joined, p50 [ms]", func(s []DockerSample) float64 {
		return Percentile(field(s, func(x DockerSample) float64 { return x.JoinMs }), 50)
	}},
	{"joined → `docker run` returned, p50 [ms]", func(s []DockerSample) float64 {
		return Percentile(field(s, func(x DockerSample) float64 { return x.RunMs - x.JoinMs }), 50)
	}},
	{"`docker run` returned, p50 [ms]", func(s []DockerSample) float64 {
		return Percentile(field(s, func(x DockerSample) float64 { return x.RunMs }), 50)
	}},
	{"returned → first answer, p50 [ms]", func(s []DockerSample) float64 {
		return Percentile(field(s, func(x DockerSample) float64 { return x.ReachMs - x.RunMs }), 50)
	}},
}

// PerRound is a measure of a driver in every round, in round order.
func (d *DockerRun) PerRound(driver string, m DockerMeasure) []float64 {
	var v []float64
	for _, r := range d.Rounds {
		if s := r.Samples[driver]; len(s) > 0 {
			v = append(v, m.Get(s))
		}
	}
	return v
}

// Ratios are a measure's per-round ratios of Drivers[0] to Drivers[1].
func (d *DockerRun) Ratios(m DockerMeasure) []float64 {
	if len(d.Drivers) < 2 {
		return nil
	}
	var v []float64
	for _, r := range d.Rounds {
		num, den := r.Samples[d.Drivers[0].Key], r.Samples[d.Drivers[1].Key]
		if len(num) == 0 || len(den) == 0 {
			continue
		}
		if x := m.Get(den); x != 0 {
			v = append(v, m.Get(num)/x)
		}
	}
	return v
}

func msCell(s Stats) string {
	if math.IsNaN(s.Med) {
		return "–"
	}
	return fmt.Sprintf("%.0f (%.0f–%.0f)", s.Med, s.Min, s.Max)
}

func ratioCell(s Stats) string {
	if math.IsNaN(s.Med) {
		return "–"
	}
	return fmt.Sprintf("**%.2f** (%.2f–%.2f)", s.Med, s.Min, s.Max)
}

// Table is the summary: per driver, every measure's median over the rounds (min–max), then the
// median of the per-round ratios (min–max).
func (d *DockerRun) Table() string {
	var b strings.Builder
	b.WriteString("| driver |")
	for _, m := range DockerMeasures {
		fmt.Fprintf(&b, " %s |", m.Name)
	}
	b.WriteString("\n|---|")
	for range DockerMeasures {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, dr := range d.Drivers {
		fmt.Fprintf(&b, "| %s |", dr.Title)
		for _, m := range DockerMeasures {
			fmt.Fprintf(&b, " %s |", msCell(Summarize(d.PerRound(dr.Key, m))))
		}
		b.WriteString("\n")
	}
	if len(d.Drivers) >= 2 {
		fmt.Fprintf(&b, "| %s / %s (per-round ratio) |", d.Drivers[0].Key, d.Drivers[1].Key)
		for _, m := range DockerMeasures {
			fmt.Fprintf(&b, " %s |", ratioCell(Summarize(d.Ratios(m))))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// RoundsTable gives every round's p50 and p99 per driver and their ratios.
func (d *DockerRun) RoundsTable() string {
	if len(d.Drivers) < 2 {
		return ""
	}
	a, c := d.Drivers[0].Key, d.Drivers[1].Key
	p50, p99 := DockerMeasures[0], DockerMeasures[1]
	var b strings.Builder
	fmt.Fprintf(&b, "| round | start (UTC) | load | first | %s p50 | %s p99 | %s p50 | %s p99 | p50 ratio | p99 ratio |\n", a, a, c, c)
	b.WriteString("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for i, r := range d.Rounds {
		first := ""
		if len(r.Order) > 0 {
			first = r.Order[0]
		}
		na, nc := r.Samples[a], r.Samples[c]
		fmt.Fprintf(&b, "| %d | %s | %.1f | %s | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f |\n", i+1, r.Start.UTC().Format("15:04:05"), r.Load1, first,
			p50.Get(na), p99.Get(na), p50.Get(nc), p99.Get(nc), p50.Get(na)/p50.Get(nc), p99.Get(na)/p99.Get(nc))
	}
	return b.String()
}

// Pooled are every driver's p50 and p99 over all its containers of all rounds.
func (d *DockerRun) Pooled() string {
	var parts []string
	for _, dr := range d.Drivers {
		var all []DockerSample
		for _, r := range d.Rounds {
			all = append(all, r.Samples[dr.Key]...)
		}
		if len(all) == 0 {
			continue
		}
		v := field(all, func(x DockerSample) float64 { return x.ReachMs })
		parts = append(parts, fmt.Sprintf("%s p50 %.0f ms, p99 %.0f ms (%d containers)", dr.Key, Percentile(v, 50), Percentile(v, 99), len(all)))
	}
	return strings.Join(parts, "; ")
}

// FirstAnswers says, per driver, how many containers answered the very first echo request: those
// were reachable by the time `docker run` returned and their address was read, so their
// figure is that moment, not the moment they became reachable.
func (d *DockerRun) FirstAnswers() string {
	var parts []string
	for _, dr := range d.Drivers {
		n, first := 0, 0
		for _, r := range d.Rounds {
			for _, s := range r.Samples[dr.Key] {
				n++
				if s.Probes == 1 {
					first++
				}
			}
		}
		parts = append(parts, fmt.Sprintf("%s %d of %d", dr.Key, first, n))
	}
	return strings.Join(parts, ", ")
}
