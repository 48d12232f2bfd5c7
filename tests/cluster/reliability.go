package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// Kill ends the host's agent with SIGKILL, as a crash or an OOM kill would: no cleanup, no BGP
// notification, nothing but what the kernel does for a dead process.
func (h *Host) Kill() {
	h.tb.Helper()
	if h.stopped {
		return
	}
	h.stopped = true
	if err := h.cmd.Process.Kill(); err != nil {
		h.tb.Fatalf("kill %s's agent: %v", h.Name, err)
	}
	<-h.done
}

// StartWorkload runs margay-cni ADD for a new workload on h in the background, exactly as a
// container runtime does (environment and stdin), and returns a function that waits for it and
// returns the workload. The ADD returns once the host's agent has programmed the workload, so
// it may be started while the agent is down. DEL runs at cleanup.
func (c *Cluster) StartWorkload(h *Host, name string) (wait func() *Workload) {
	c.tb.Helper()
	return c.StartWorkloadTimeout(h, name, "20s")
}

// StartWorkloadTimeout is StartWorkload with the plugin's policySetupTimeout ("0": ADD returns
// without waiting for the agent to program the workload).
func (c *Cluster) StartWorkloadTimeout(h *Host, name, policySetupTimeout string) (wait func() *Workload) {
	tb := c.tb
	tb.Helper()
	// IPAM serves registered nodes only, and a host's agent registers its node when it starts.
	poll.Until(tb, h.Name+" registered", 30*time.Second, func() error {
		_, err := c.DS.Nodes().Get(context.Background(), h.Name)
		return err
	})
	ns := netns.New(tb, "mgyw"+name+"-")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"margay","type":"margay-cni","nodeName":%q,"mtu":1500,`+
		`"policySetupTimeout":%q,"bpffsRoot":%q,"datastore":{"endpoints":[%q]}}`, h.Name, policySetupTimeout, h.Root, h.etcd)
	bin := Binaries(tb)
	cni := func(command string) ([]byte, error) {
		cmd := h.NS.Command(filepath.Join(bin, "margay-cni"))
		cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=ctr-"+name, "CNI_NETNS="+ns.Path,
			"CNI_IFNAME=eth0", "CNI_PATH="+bin)
		cmd.Stdin = strings.NewReader(conf)
		return cmd.Output()
	}
	w := &Workload{Name: name, NS: ns, Host: h, cni: cni}
	// DEL at cleanup whatever the ADD did: it is idempotent, and undoes a half-done ADD too.
	tb.Cleanup(func() {
		if !w.gone {
			if err := w.Del(); err != nil {
				tb.Error(err)
			}
		}
	})
	type added struct {
		out []byte
		err error
	}
	res := make(chan added, 1)
	go func() {
		out, err := cni("ADD")
		res <- added{out, err}
	}()
	return func() *Workload {
		tb.Helper()
		a := <-res
		if a.err != nil {
			tb.Fatalf("margay-cni ADD %s on %s: %v\n%s", name, h.Name, a.err, a.out)
		}
		var r struct {
			IPs []struct {
				Address string `json:"address"`
			} `json:"ips"`
		}
		if err := json.Unmarshal(a.out, &r); err != nil || len(r.IPs) != 1 {
			tb.Fatalf("margay-cni result: %v\n%s", err, a.out)
		}
		p, err := netip.ParsePrefix(r.IPs[0].Address)
		if err != nil {
			tb.Fatal(err)
		}
		w.IP = p.Addr()
		return w
	}
}

// ID is the workload's ID in the datastore (its record under workloads/<node>/ and its IPAM
// handle): the container ID the harness gives margay-cni.
func (w *Workload) ID() string { return "ctr-" + w.Name }

// Alive reports an error when the host's agent process has exited since Start.
func (h *Host) Alive() error {
	if h.stopped {
		return fmt.Errorf("%s's agent was stopped", h.Name)
	}
	select {
	case err := <-h.done:
		h.done <- err // for Stop
		return fmt.Errorf("%s's agent exited: %v", h.Name, err)
	default:
		return nil
	}
}

// DialTCP connects from the workload's namespace to port on to, within timeout.
func (w *Workload) DialTCP(to netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := w.NS.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(to, uint16(port)).String(), timeout)
		return err
	})
	return conn, err
}
