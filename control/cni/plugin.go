// Package cni is Margay's CNI plugin (spec 0.4.0, 1.0.0 and 1.1.0): ADD gives a container a veth
// pair and a /32 from Margay's IP pools and records the workload in etcd for the agent, DEL
// undoes it, CHECK verifies it, GC removes what the runtime no longer knows and STATUS says
// whether ADD can work.
//
// The commands run in one of two places. margay-agent serves them on its CNI socket (Server),
// with the etcd connection it already holds, and the margay-cni binary the runtime executes only
// forwards each call there: a resident process answers an ADD without a process start's
// initialisation and without dialling etcd. When no agent answers on this host, margay-cni runs
// margay-cni-direct, which runs the same commands in its own process (Main).
package cni

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/margaynet/margay/control/cni/wire"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/control/workload/programmed"
)

// opTimeout bounds one command, etcd connection included.
const opTimeout = 60 * time.Second

// Plugin runs CNI commands.
type Plugin struct {
	// Log, when set, is the logger of every command, in place of the one the config's logLevel
	// and logFile describe (the agent logs CNI commands with its own).
	Log *slog.Logger
	// Datastore, when set, is the etcd client every command uses, in place of one dialled from
	// the config's datastore settings (the agent's own; see Server, which checks that the two
	// name the same etcd).
	Datastore *datastore.Client
	// Blocks, when set, is a watch-fed copy of Datastore's IPAM blocks that ADD tries the node's
	// own blocks from before it lists every block (see ipam.Blocks; Server keeps one).
	Blocks *ipam.Blocks
}

// Run runs one CNI command (ADD, DEL, CHECK, GC or STATUS), as skel would have dispatched it, and returns what
// the plugin prints on success: the result of ADD, nothing for the others. A failure is a
// *types.Error, printed by the caller as the error result.
func (p *Plugin) Run(ctx context.Context, cmd string, args *skel.CmdArgs) ([]byte, error) {
	return p.run(ctx, cmd, args, time.Now())
}

// run is Run for a call that began at started (in margay-cni, for a call the agent serves).
func (p *Plugin) run(ctx context.Context, cmd string, args *skel.CmdArgs, started time.Time) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	switch cmd {
	case "ADD":
		return p.add(ctx, args, started)
	case "DEL":
		return nil, p.del(ctx, args)
	case "CHECK":
		return nil, p.check(ctx, args)
	case "GC":
		return nil, p.gc(ctx, args)
	case "STATUS":
		return nil, p.status(ctx, args)
	}
	return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("margay-cni: unknown CNI_COMMAND %q", cmd), "")
}

// Main is margay-cni-direct's main: skel reads the call from the environment and stdin, Run runs
// it in this process, and the result or error result goes to stdout.
func Main() {
	p := &Plugin{}
	fn := func(cmd string) func(*skel.CmdArgs) error {
		return func(args *skel.CmdArgs) error {
			out, err := p.Run(context.Background(), cmd, args)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(out)
			return err
		}
	}
	wire.Main(skel.CNIFuncs{Add: fn("ADD"), Del: fn("DEL"), Check: fn("CHECK"), GC: fn("GC"), Status: fn("STATUS")}, nil)
}

// session is what every command needs: the checked config, a logger and a datastore client.
type session struct {
	conf   *netConf
	ws     workload.Spec // for ADD, DEL and CHECK
	log    *slog.Logger
	ds     *datastore.Client
	blocks *ipam.Blocks // nil unless the agent serves the call
	close  func()
}

// ipam returns the session's address manager.
func (s *session) ipam() *ipam.IPAM {
	return ipam.New(s.ds, ipam.WithLogger(s.log), ipam.WithBlocks(s.blocks))
}

// open parses the config and the arguments, sets up logging and connects to etcd within ctx.
func (p *Plugin) open(ctx context.Context, cmd string, args *skel.CmdArgs) (*session, error) {
	conf, err := parseConf(args.StdinData, os.Hostname)
	if err != nil {
		return nil, err
	}
	var ws workload.Spec
	if args.ContainerID != "" {
		if ws, err = spec(args, conf); err != nil {
			return nil, err
		}
	}
	log, closeLog := p.Log, func() {}
	if log == nil {
		if log, closeLog, err = conf.logger(); err != nil {
			return nil, err
		}
	}
	log = log.With("cmd", cmd, "network", conf.Name, "node", conf.NodeName)
	if args.ContainerID != "" {
		log = log.With("container", args.ContainerID)
	}
	ws.Log = log
	if p.Datastore != nil {
		if err := reachable(ctx, p.Datastore, conf); err != nil {
			closeLog()
			return nil, err
		}
		return &session{conf: conf, ws: ws, log: log, ds: p.Datastore, blocks: p.Blocks, close: closeLog}, nil
	}
	ds, err := connect(ctx, conf, log)
	if err != nil {
		closeLog()
		return nil, err
	}
	return &session{conf: conf, ws: ws, log: log, ds: ds, close: func() { _ = ds.Close(); closeLog() }}, nil
}

// connect waits for etcd at most the dial timeout (datastore.dialTimeout, default
// datastore.DefaultCommandTimeout): a runtime would rather retry than hang.
func connect(ctx context.Context, conf *netConf, log *slog.Logger) (*datastore.Client, error) {
	ds, err := datastore.Dial(ctx, conf.ds, datastore.WithLogger(log))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, unreachableErr(conf, err)
		}
		return nil, invalidConf("%v", err)
	}
	return ds, nil
}

// reachable checks, for a command run with the agent's etcd client, what connect checks for
// one of its own: that etcd answers within the dial timeout. A client whose connection is up
// is not asked (no round trip); one whose connection is down (etcd stopped, restarting) gets
// one read, so that the command fails in the dial timeout, not in opTimeout.
func reachable(ctx context.Context, ds *datastore.Client, conf *netConf) error {
	if conn := ds.Raw().ActiveConnection(); conn != nil && conn.GetState() == connectivity.Ready {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, conf.ds.CommandDialTimeout())
	defer cancel()
	if _, err := ds.Raw().Get(cctx, conf.ds.PrefixOrDefault(), clientv3.WithCountOnly()); err != nil {
		return unreachableErr(conf, err)
	}
	return nil
}

func unreachableErr(conf *netConf, err error) *types.Error {
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("margay-cni: etcd is unreachable at %s (no answer within %s, datastore.dialTimeout); check that it runs and that \"datastore\" in the network config points at it",
			strings.Join(conf.ds.EndpointsOrDefault(), ","), conf.ds.CommandDialTimeout()), err.Error())
}

// spec builds the workload spec of a CNI call. A Kubernetes pod (K8S_POD_NAMESPACE and
// K8S_POD_NAME in CNI_ARGS) is the workload "<namespace>.<pod>", anything else the container ID.
func spec(args *skel.CmdArgs, conf *netConf) (workload.Spec, error) {
	kv, err := parseCNIArgs(args.Args)
	if err != nil {
		return workload.Spec{}, err
	}
	s := workload.Spec{Node: conf.NodeName, ContainerID: args.ContainerID, Network: conf.Name, Netns: args.Netns, IfName: args.IfName, MTU: conf.MTU}
	ns, pod := kv["K8S_POD_NAMESPACE"], kv["K8S_POD_NAME"]
	switch {
	case ns == "" && pod == "":
		s.ID, s.Name = args.ContainerID, args.ContainerID
	case ns == "" || pod == "":
		return workload.Spec{}, badEnv("CNI_ARGS has only one of K8S_POD_NAMESPACE and K8S_POD_NAME; give both or neither")
	default:
		if err := datastore.ValidateName(ns); err != nil || strings.Contains(ns, ".") {
			return workload.Spec{}, badEnv(fmt.Sprintf("CNI_ARGS: K8S_POD_NAMESPACE %q is not a Kubernetes namespace name", ns))
		}
		s.ID, s.Name, s.Namespace = workload.KubernetesID(ns, pod), pod, ns
	}
	if err := datastore.ValidateName(s.ID); err != nil {
		return workload.Spec{}, badEnv(fmt.Sprintf("workload ID %q (from CNI_CONTAINERID or K8S_POD_NAME): %v", s.ID, err))
	}
	return s, nil
}

func (p *Plugin) add(ctx context.Context, args *skel.CmdArgs, start time.Time) ([]byte, error) {
	s, err := p.open(ctx, "ADD", args)
	if err != nil {
		return nil, err
	}
	defer s.close()
	ws := s.ws
	ws.Started = start // the record carries the ADD's duration, process start and etcd connection included
	if s.conf.Kubernetes != nil && ws.Namespace != "" {
		// Before anything is set up, so that a failure leaves nothing to undo.
		pw, err := podWorkload(ctx, s.conf.Kubernetes, ws.Namespace, ws.Name, s.log)
		if err != nil {
			s.log.Error("add failed: no pod labels", "workload", ws.ID, "err", err)
			return nil, err
		}
		ws.Labels, ws.Ports = pw.Labels, pw.Ports
	}
	res, err := workload.Add(ctx, s.ds, s.ipam(), ws)
	if err != nil {
		s.log.Error("add failed", "workload", ws.ID, "err", err)
		if errors.Is(err, ipam.ErrNodeNotRegistered) && s.conf.nodeFromHost {
			err = fmt.Errorf("%w (the network config sets no \"nodeName\", so the hostname %q stands in)", err, ws.Node)
		}
		return nil, cniError(err)
	}
	if s.conf.policyTimeout > 0 {
		if err := programmed.Wait(ctx, s.conf.BPFFSRoot, res.HostVeth, res.IPv4.Addr(), s.conf.policyTimeout); err != nil {
			// Undo the ADD: a failed ADD leaves nothing behind, and the runtime tries again.
			s.log.Error("agent did not program the workload in time; undoing the ADD", "workload", ws.ID, "err", err)
			if derr := workload.Del(ctx, s.ds, s.ipam(), ws); derr != nil {
				s.log.Error("undo add", "workload", ws.ID, "err", derr)
			}
			return nil, types.NewError(types.ErrTryAgainLater, "policy setup timed out", err.Error())
		}
	}
	s.log.Debug("add done", "workload", ws.ID, "took", time.Since(start))
	r, err := cniResult(res, s.conf).GetAsVersion(s.conf.CNIVersion)
	if err != nil {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, "margay-cni: "+err.Error(), "")
	}
	var out bytes.Buffer
	if err := r.PrintTo(&out); err != nil {
		return nil, types.NewError(types.ErrIOFailure, "margay-cni: print the result", err.Error())
	}
	return out.Bytes(), nil
}

// cniResult is the ADD result: the host veth, the container interface with its sandbox, the /32
// with gateway 169.254.1.1 and the default route.
func cniResult(res workload.Result, conf *netConf) *current.Result {
	gw := net.IP(res.Gateway.AsSlice())
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: res.HostVeth, Mac: res.HostMAC.String()},
			{Name: res.IfName, Mac: res.MAC.String(), Sandbox: res.Netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: res.IPv4.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   gw,
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw}},
	}
	if ok, _ := version.GreaterThanOrEqualTo(conf.CNIVersion, "1.1.0"); ok {
		for _, i := range r.Interfaces {
			i.Mtu = res.MTU // the mtu field is new in 1.1.0
		}
	}
	if conf.DNS != nil {
		r.DNS = *conf.DNS
	}
	return r
}

func (p *Plugin) del(ctx context.Context, args *skel.CmdArgs) error {
	s, err := p.open(ctx, "DEL", args)
	if err != nil {
		return err
	}
	defer s.close()
	ws := s.ws
	if err := workload.Del(ctx, s.ds, s.ipam(), ws); err != nil {
		s.log.Error("delete failed", "workload", ws.ID, "err", err)
		return cniError(err)
	}
	return nil
}

func (p *Plugin) check(ctx context.Context, args *skel.CmdArgs) error {
	s, err := p.open(ctx, "CHECK", args)
	if err != nil {
		return err
	}
	defer s.close()
	ws := s.ws
	if err := workload.Check(ctx, s.ds, ws); err != nil {
		return cniError(err)
	}
	return checkPrevResult(ctx, s, ws)
}

// checkPrevResult compares the addresses the runtime remembers from ADD with the endpoint's.
func checkPrevResult(ctx context.Context, s *session, ws workload.Spec) error {
	if len(s.conf.RawPrevResult) == 0 {
		return nil
	}
	prev, err := version.NewResult(s.conf.CNIVersion, s.conf.RawPrevResult)
	if err != nil {
		return invalidConf("prevResult: %v", err)
	}
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return invalidConf("prevResult: %v", err)
	}
	rec, err := s.ds.Workloads(ws.Node).Get(ctx, ws.ID)
	if err != nil {
		return cniError(err)
	}
	for _, ipc := range res.IPs {
		if a, ok := rec.Value.Addr(); !ok || ipc.Address.String() != netip.PrefixFrom(a, 32).String() {
			return cniError(fmt.Errorf("prevResult has %s, the endpoint %v: %w", ipc.Address.String(), rec.Value.IPv4, workload.ErrMismatch))
		}
	}
	return nil
}

// gc deletes this node's workloads of this network (the config's "name") whose container is
// not among the valid attachments. Workloads of other networks are theirs to collect, and
// workloads created by margayctl (no container ID) are not the runtime's: both stay.
//
// Records written before margay-cni recorded the network have none. Such a record whose
// container is among this network's valid attachments is this network's (the runtime says so):
// GC writes the network into it. Any other is left alone, since GC cannot tell whose it is, and
// GC logs it; CNI DEL of its container, or margayctl workload delete, removes it.
func (p *Plugin) gc(ctx context.Context, args *skel.CmdArgs) error {
	s, err := p.open(ctx, "GC", args)
	if err != nil {
		return err
	}
	defer s.close()
	store := s.ds.Workloads(s.conf.NodeName)
	items, _, err := store.List(ctx)
	if err != nil {
		return cniError(err)
	}
	keep := s.conf.validAttachments()
	ipm := s.ipam()
	var errs []error
	for _, it := range items {
		w := it.Value
		switch {
		case w.ContainerID == "":
			continue
		case w.Network == "" && keep[w.ContainerID]:
			w.Network = s.conf.Name
			if _, err := store.Update(ctx, it.Name, w, it.ModRevision); err != nil {
				errs = append(errs, fmt.Errorf("record network %s in workload %s: %w", s.conf.Name, it.Name, err))
				continue
			}
			s.log.Info("workload record had no network; its container is a valid attachment of this network, recorded it",
				"workload", it.Name, "container", w.ContainerID)
			continue
		case w.Network == "":
			s.log.Warn("workload record names no network (written before margay-cni recorded it); GC leaves it alone",
				"workload", it.Name, "container", w.ContainerID, "ips", w.IPv4)
			continue
		case w.Network != s.conf.Name || keep[w.ContainerID]:
			continue
		}
		ws := workload.Spec{ID: it.Name, Node: s.conf.NodeName, ContainerID: w.ContainerID, Network: s.conf.Name, Log: s.log}
		if err := workload.Del(ctx, s.ds, ipm, ws); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("garbage-collected workload", "workload", it.Name, "container", w.ContainerID, "ips", w.IPv4)
	}
	if err := errors.Join(errs...); err != nil {
		return cniError(err)
	}
	return nil
}

// status reports whether ADD can work: etcd answers and an enabled pool exists.
func (p *Plugin) status(ctx context.Context, args *skel.CmdArgs) error {
	s, err := p.open(ctx, "STATUS", args)
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) && te.Code == types.ErrTryAgainLater {
			return types.NewError(types.ErrPluginNotAvailable, te.Msg, te.Details)
		}
		return err
	}
	defer s.close()
	pools, _, err := s.ds.Pools().List(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "margay-cni: cannot read the IP pools from etcd", err.Error())
	}
	for _, p := range pools {
		if !p.Value.Disabled {
			return nil
		}
	}
	return types.NewError(types.ErrPluginNotAvailable,
		"margay-cni: no enabled IP pool, so ADD cannot assign addresses; create one with margayctl pool add", "")
}
