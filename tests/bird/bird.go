package bird

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// Router is a BIRD daemon running in a namespace; Stop (also run at cleanup) ends it.
type Router struct {
	ns   *netns.NS
	dir  string
	sock string
	cmd  *exec.Cmd
	done chan error
}

// Start writes conf and runs bird in the foreground inside ns, returning once its control socket
// answers. The test fails when BIRD is not installed: `make deps` installs bird2.
func Start(tb testing.TB, ns *netns.NS, conf string) *Router {
	tb.Helper()
	bin, err := exec.LookPath("bird")
	if err != nil {
		tb.Fatal("bird is not installed: run make deps (Debian package bird2)")
	}
	dir := tb.TempDir()
	r := &Router{ns: ns, dir: dir, sock: filepath.Join(dir, "bird.ctl"), done: make(chan error, 1)}
	confPath := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	if out, err := ns.Command(bin, "-p", "-c", confPath).CombinedOutput(); err != nil {
		tb.Fatalf("bird config %s: %v\n%s\n%s", confPath, err, out, conf)
	}
	r.cmd = ns.Command(bin, "-f", "-c", confPath, "-s", r.sock, "-P", filepath.Join(dir, "bird.pid"))
	r.cmd.Stdout, r.cmd.Stderr = netns.LogWriter(tb, "bird: "), netns.LogWriter(tb, "bird: ")
	if err := r.cmd.Start(); err != nil {
		tb.Fatalf("start bird: %v", err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	tb.Cleanup(r.Stop)

	poll.Until(tb, "bird's control socket answers", 10*time.Second, func() error {
		_, err := r.Birdc("show", "status")
		if err != nil {
			select {
			case err := <-r.done:
				r.done <- err
				tb.Fatalf("bird exited at start: %v", err)
			default:
			}
		}
		return err
	})
	return r
}

// NS is the namespace BIRD runs in.
func (r *Router) NS() *netns.NS { return r.ns }

// Stop ends BIRD and waits for it; calling it again does nothing.
func (r *Router) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case err := <-r.done:
		r.done <- err // already gone
		return
	default:
	}
	_ = r.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-r.done:
		r.done <- err
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		r.done <- <-r.done
	}
}

// Birdc runs one birdc command against this BIRD and returns its output.
func (r *Router) Birdc(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "birdc", append([]string{"-s", r.sock}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Route is one route of BIRD's table.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr // invalid for routes without a gateway (static blackholes, device routes)
	Proto   string     // the protocol that brought it, e.g. the BGP session's name
}

var (
	routeLine = regexp.MustCompile(`^(\d+\.\d+\.\d+\.\d+/\d+)\s+\S+\s+\[(\S+)`)
	viaLine   = regexp.MustCompile(`^\s+via\s+(\d+\.\d+\.\d+\.\d+)`)
	altLine   = regexp.MustCompile(`^\s+\S+\s+\[(\S+)`) // a further route to the same prefix
)

// Routes returns the best route of every prefix in BIRD's IPv4 table (`show route`).
func (r *Router) Routes() (map[netip.Prefix]Route, error) {
	out, err := r.Birdc("show", "route", "primary")
	if err != nil {
		return nil, err
	}
	routes := map[netip.Prefix]Route{}
	var cur *Route
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := routeLine.FindStringSubmatch(line); m != nil {
			p, err := netip.ParsePrefix(m[1])
			if err != nil {
				return nil, fmt.Errorf("parse route line %q: %w", line, err)
			}
			routes[p] = Route{Prefix: p, Proto: m[2]}
			rt := routes[p]
			cur = &rt
			continue
		}
		if cur == nil {
			continue
		}
		if m := viaLine.FindStringSubmatch(line); m != nil && !routes[cur.Prefix].NextHop.IsValid() {
			rt := routes[cur.Prefix]
			rt.NextHop = netip.MustParseAddr(m[1])
			routes[cur.Prefix] = rt
		} else if altLine.MatchString(line) {
			cur = nil // only the first (best) route of a prefix counts
		}
	}
	return routes, sc.Err()
}

// Established reports whether the BGP protocol of that name is up and Established.
func (r *Router) Established(proto string) (bool, error) {
	out, err := r.Birdc("show", "protocols", proto)
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == proto {
			return f[3] == "up" && strings.Contains(line, "Established"), nil
		}
	}
	return false, errors.New("no protocol " + proto + " in: " + out)
}
