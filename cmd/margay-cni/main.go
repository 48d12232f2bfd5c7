// Command margay-cni is Margay's CNI plugin (spec 0.4.0, 1.0.0 and 1.1.0): ADD gives a container a
// veth pair and a /32 from Margay's IP pools and records the workload in etcd for the agent, DEL
// undoes it, CHECK verifies it, GC removes what the runtime no longer knows and STATUS says
// whether ADD can work.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
)

// opTimeout bounds one command, etcd connection included.
const opTimeout = 60 * time.Second

func main() {
	// The error result carries the config's cniVersion (the spec's error object has it), so the
	// config is read here first and handed on to skel.
	var conf []byte
	if os.Getenv("CNI_COMMAND") != "" { // without a command skel prints its help and reads nothing
		var err error
		conf, err = io.ReadAll(os.Stdin)
		var r, w *os.File
		if err == nil {
			r, w, err = os.Pipe()
		}
		if err != nil {
			_ = printError(os.Stdout, types.NewError(types.ErrIOFailure, "margay-cni: read the network config from stdin", err.Error()), conf)
			os.Exit(1)
		}
		go func() { _, _ = w.Write(conf); _ = w.Close() }()
		os.Stdin = r
	}
	if e := skel.PluginMainFuncsWithError(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus},
		version.PluginSupports(supportedVersions...), "margay-cni: Margay's CNI plugin (pure L3, eBPF dataplane)"); e != nil {
		if err := printError(os.Stdout, e, conf); err != nil {
			slog.Error("write the error result", "err", err)
		}
		os.Exit(1)
	}
}

// supportedVersions are the CNI specification versions margay-cni speaks, oldest first.
var supportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// errorResult is the specification's error object: the config's cniVersion, code, msg, details.
type errorResult struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// printError writes e as the error result: with the cniVersion of conf, or the newest version
// margay-cni speaks when conf names none it can read.
func printError(w io.Writer, e *types.Error, conf []byte) error {
	v := supportedVersions[len(supportedVersions)-1]
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(conf, &c) == nil && c.CNIVersion != "" {
		v = c.CNIVersion
	}
	data, err := json.MarshalIndent(errorResult{CNIVersion: v, Code: e.Code, Msg: e.Msg, Details: e.Details}, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// session is what every command needs: the checked config, a logger and a datastore client.
type session struct {
	conf  *netConf
	ws    workload.Spec // for ADD, DEL and CHECK
	log   *slog.Logger
	ds    *datastore.Client
	close func()
}

// open parses the config and the arguments, sets up logging and connects to etcd within ctx.
func open(ctx context.Context, cmd string, args *skel.CmdArgs) (*session, error) {
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
	log, closeLog, err := conf.logger()
	if err != nil {
		return nil, err
	}
	log = log.With("cmd", cmd, "network", conf.Name, "node", conf.NodeName)
	if args.ContainerID != "" {
		log = log.With("container", args.ContainerID)
	}
	slog.SetDefault(log)
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
	cfg := conf.ds
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = datastore.DefaultCommandTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	ds, err := datastore.New(cctx, cfg, datastore.WithLogger(log))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("margay-cni: etcd is unreachable at %s (no answer within %s, datastore.dialTimeout); check that it runs and that \"datastore\" in the network config points at it",
					strings.Join(cfg.EndpointsOrDefault(), ","), cfg.DialTimeout), err.Error())
		}
		return nil, invalidConf("%v", err)
	}
	return ds, nil
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
		if err := datastore.ValidateName(ns); err != nil || containsDot(ns) {
			return workload.Spec{}, badEnv(fmt.Sprintf("CNI_ARGS: K8S_POD_NAMESPACE %q is not a Kubernetes namespace name", ns))
		}
		s.ID, s.Name, s.Namespace = workload.KubernetesID(ns, pod), pod, ns
	}
	if err := datastore.ValidateName(s.ID); err != nil {
		return workload.Spec{}, badEnv(fmt.Sprintf("workload ID %q (from CNI_CONTAINERID or K8S_POD_NAME): %v", s.ID, err))
	}
	return s, nil
}

func containsDot(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			return true
		}
	}
	return false
}

func cmdAdd(args *skel.CmdArgs) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := open(ctx, "ADD", args)
	if err != nil {
		return err
	}
	defer s.close()
	ws := s.ws
	ws.Started = start // the record carries the ADD's duration, etcd connection included
	if s.conf.Kubernetes != nil && ws.Namespace != "" {
		// Before anything is set up, so that a failure leaves nothing to undo.
		if ws.Labels, err = podLabels(ctx, s.conf.Kubernetes, ws.Namespace, ws.Name); err != nil {
			s.log.Error("add failed: no pod labels", "workload", ws.ID, "err", err)
			return err
		}
	}
	res, err := workload.Add(ctx, s.ds, ipam.New(s.ds, ipam.WithLogger(s.log)), ws)
	if err != nil {
		s.log.Error("add failed", "workload", ws.ID, "err", err)
		if errors.Is(err, ipam.ErrNodeNotRegistered) && s.conf.nodeFromHost {
			err = fmt.Errorf("%w (the network config sets no \"nodeName\", so the hostname %q stands in)", err, ws.Node)
		}
		return cniError(err)
	}
	if s.conf.policyTimeout > 0 {
		if err := waitProgrammed(ctx, s.conf.BPFFSRoot, res, s.conf.policyTimeout); err != nil {
			// Undo the ADD: a failed ADD leaves nothing behind, and the runtime tries again.
			s.log.Error("agent did not program the workload in time; undoing the ADD", "workload", ws.ID, "err", err)
			if derr := workload.Del(ctx, s.ds, ipam.New(s.ds, ipam.WithLogger(s.log)), ws); derr != nil {
				s.log.Error("undo add", "workload", ws.ID, "err", derr)
			}
			return types.NewError(types.ErrTryAgainLater, "policy setup timed out", err.Error())
		}
	}
	s.log.Debug("add done", "workload", ws.ID, "took", time.Since(start))
	return types.PrintResult(cniResult(res, s.conf), s.conf.CNIVersion)
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

func cmdDel(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := open(ctx, "DEL", args)
	if err != nil {
		return err
	}
	defer s.close()
	ws := s.ws
	if err := workload.Del(ctx, s.ds, ipam.New(s.ds, ipam.WithLogger(s.log)), ws); err != nil {
		s.log.Error("delete failed", "workload", ws.ID, "err", err)
		return cniError(err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := open(ctx, "CHECK", args)
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
		if len(rec.Value.IPv4) == 0 || ipc.Address.String() != rec.Value.IPv4[0].String() {
			return cniError(fmt.Errorf("prevResult has %s, the endpoint %v: %w", ipc.Address.String(), rec.Value.IPv4, workload.ErrMismatch))
		}
	}
	return nil
}

// cmdGC deletes this node's workloads of this network (the config's "name") whose container is
// not among the valid attachments. Workloads of other networks are theirs to collect, and
// workloads created by margayctl (no container ID) are not the runtime's: both stay.
//
// Records written before margay-cni recorded the network have none. Such a record whose
// container is among this network's valid attachments is this network's (the runtime says so):
// GC writes the network into it. Any other is left alone, since GC cannot tell whose it is, and
// GC logs it; CNI DEL of its container, or margayctl workload delete, removes it.
func cmdGC(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := open(ctx, "GC", args)
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
	ipm := ipam.New(s.ds, ipam.WithLogger(s.log))
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
		ws := workload.Spec{ID: it.Name, Node: s.conf.NodeName, ContainerID: w.ContainerID, Network: s.conf.Name}
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

// cmdStatus reports whether ADD can work: etcd answers and an enabled pool exists.
func cmdStatus(args *skel.CmdArgs) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := open(ctx, "STATUS", args)
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
