package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/maps"
)

// monitorOptions are the flags of margayctl monitor.
type monitorOptions struct {
	agent            string // this host's agent, which names rule ids
	trace, dropsOnly bool
	logsOnly         bool
	reasons          []string
	iface, hook      string
	count            int
	duration         time.Duration
	flow             ctFilter // --src, --dst, --proto: the packet's source, destination and protocol
}

// parse checks the flags and returns the events they select.
func (o *monitorOptions) parse() (maps.EventFilter, error) {
	var f maps.EventFilter
	if o.trace && o.dropsOnly {
		return f, errors.New("--trace and --drops-only exclude each other")
	}
	if o.logsOnly && (o.trace || o.dropsOnly) {
		return f, errors.New("--logs-only excludes --trace and --drops-only")
	}
	if o.count < 0 || o.duration < 0 {
		return f, errors.New("--count and --duration must not be negative")
	}
	var err error
	if f.Flow, err = o.flow.parse(); err != nil {
		return f, err
	}
	if o.dropsOnly {
		f.Kind = maps.EventDrop
	}
	if o.logsOnly {
		f.Kind = maps.EventPolicyLog
	}
	for _, s := range o.reasons {
		r, err := maps.ParseReason(s)
		if err != nil {
			return f, fmt.Errorf("--reason %q: %w", s, err)
		}
		f.Reasons = append(f.Reasons, r)
	}
	if o.iface != "" {
		if ifc, err := net.InterfaceByName(o.iface); err == nil {
			f.Ifindex = uint32(ifc.Index)
		} else if n, perr := strconv.ParseUint(o.iface, 10, 32); perr == nil && n > 0 {
			f.Ifindex = uint32(n)
		} else {
			return f, fmt.Errorf("--interface %q: %w", o.iface, err)
		}
	}
	if o.hook != "" {
		h, err := maps.ParseHook(o.hook)
		if err != nil {
			return f, fmt.Errorf("--hook %q: %w", o.hook, err)
		}
		f.Hooks = []maps.Hook{h}
	}
	return f, nil
}

// eventJSON is an event as monitor -o json prints it, one object per line.
type eventJSON struct {
	Time      time.Time `json:"time"`
	Kind      string    `json:"kind"`
	Interface string    `json:"interface"`
	Ifindex   uint32    `json:"ifindex"`
	Hook      string    `json:"hook"`
	Reason    string    `json:"reason,omitempty"`   // none in a policy log event: the verdict is not the log's
	Rule      uint32    `json:"rule,omitempty"`     // a policy log event's Log rule (rule_hits id)
	RuleName  string    `json:"ruleName,omitempty"` // and its policy/direction/index, when the agent names it
	Proto     string    `json:"proto,omitempty"`
	Protocol  uint8     `json:"protocol,omitempty"`
	Src       string    `json:"src,omitempty"`
	SrcPort   uint16    `json:"srcPort,omitempty"`
	Dst       string    `json:"dst,omitempty"`
	DstPort   uint16    `json:"dstPort,omitempty"`
	Len       uint32    `json:"len"`
}

func toEventJSON(e maps.Event, ruleName string) eventJSON {
	j := eventJSON{Time: e.Time, Kind: e.Kind.String(), Interface: ifName(e.Ifindex), Ifindex: e.Ifindex,
		Hook: e.Hook.String(), Reason: e.Reason.String(), Len: e.Len}
	if e.Kind == maps.EventPolicyLog {
		j.Reason, j.Rule, j.RuleName = "", e.Rule, ruleName
	}
	if e.Src.IsValid() {
		j.Proto, j.Protocol = hostconv.ProtocolName(e.Protocol), e.Protocol
		j.Src, j.Dst = e.Src.String(), e.Dst.String()
		j.SrcPort, j.DstPort = e.SrcPort, e.DstPort
	}
	return j
}

const monitorLine = "%-15s  %-15s  %-12s  %-20s  %-5s  %21s -> %-21s  %d\n"

// eventLine is an event's line of the table. A policy log event's reason is its Log rule: "LOG
// rule=7" (Calico's Log action), with its name when the agent gives it ("LOG
// web/ingress/0"), followed by its packet's drop or trace line, if any.
func eventLine(e maps.Event, ruleName string) string {
	proto := "-"
	if e.Src.IsValid() {
		proto = hostconv.ProtocolName(e.Protocol)
	}
	reason := e.Reason.String()
	if e.Kind == maps.EventPolicyLog {
		reason = fmt.Sprintf("LOG rule=%d", e.Rule)
		if ruleName != "" {
			reason = "LOG " + ruleName
		}
	}
	src, dst := e.Addrs()
	return fmt.Sprintf(monitorLine, e.Time.Format("15:04:05.000000"), ifName(e.Ifindex), e.Hook, reason, proto, src, dst, e.Len)
}

func (g *globals) monitor(cmd *cobra.Command, o *monitorOptions) (err error) {
	filter, err := o.parse()
	if err != nil {
		return err
	}
	root, err := g.bpffsRoot()
	if err != nil {
		return err
	}
	ev, err := maps.OpenEvents(root)
	if err != nil {
		return err
	}
	defer ev.Close()
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}

	r, err := ev.Reader()
	if err != nil {
		return err
	}
	defer r.Close()
	// What waits in the ring buffer was sent before this command ran, maybe long ago.
	if _, err := r.Discard(); err != nil {
		return err
	}
	lostBefore, err := ev.Lost()
	if err != nil {
		return err
	}

	if o.trace {
		if _, err := ev.SetTrace(true); err != nil {
			return err
		}
		// Off again however the command ends short of SIGKILL; a left-over flag only costs trace
		// events at the rate limit, and the next monitor --trace clears it.
		defer func() {
			if _, terr := ev.SetTrace(false); terr != nil && err == nil {
				err = terr
			}
		}()
	} else if on, err := ev.Trace(); err == nil && on {
		fmt.Fprintln(errOut, "note: tracing is on (another margayctl monitor --trace, or one that was killed); --drops-only hides trace events")
	}

	go func() {
		<-ctx.Done()
		r.Close() // interrupts Read
	}()

	if g.output != "json" {
		fmt.Fprintf(out, monitorLine[:len(monitorLine)-3]+"%s\n", "TIME", "INTERFACE", "HOOK", "REASON", "PROTO", "SRC", "DST", "LEN")
	}
	enc := json.NewEncoder(out)
	names := &ruleNames{agent: agentapi.New(o.agent, 2*time.Second)}
	shown := 0
	for o.count == 0 || shown < o.count {
		e, rerr := r.Read()
		if errors.Is(rerr, os.ErrClosed) {
			break
		}
		if rerr != nil {
			return rerr
		}
		if !filter.Match(e) {
			continue
		}
		shown++
		if g.output == "json" {
			err = enc.Encode(toEventJSON(e, names.name(ctx, e)))
		} else {
			_, err = io.WriteString(out, eventLine(e, names.name(ctx, e)))
		}
		if err != nil {
			return err
		}
	}

	lostAfter, err := ev.Lost()
	if err != nil {
		return err
	}
	lost := lostAfter.Since(lostBefore)
	fmt.Fprintf(errOut, "%d events shown; the dataplane lost %d events meanwhile (%d over the rate limit of %d/s per CPU, %d with the ring buffer full)\n",
		shown, lost.Total(), lost.RateLimited, maps.EventsRate, lost.BufferFull)
	return nil
}

func newMonitorCmd(g *globals) *cobra.Command {
	o := &monitorOptions{}
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Stream the dataplane's drop and policy log events, and with --trace every packet's, until Ctrl-C",
		Long: `Stream drop, policy log and trace events from the dataplane's ring buffer: one line per packet
with the interface and hook that handled it, the reason it was counted under and its 5-tuple
(ports of TCP, UDP, SCTP and UDP-Lite when the packet's linear data held them). -o json prints
one JSON object per line.

Every dropped packet makes a drop event. A policy rule with action Log that matches the first
packet of a flow makes a log event (kind "log", REASON "LOG rule=<id>", the id of the rule in
the rule_hits map and in margay_policy_rule_hits_*), before the packet's own drop event if it is
denied; the flow's later packets log nothing. --trace turns on trace events, for every other
packet, while the command runs. The programs send at most ` + strconv.Itoa(maps.EventsBurst) + ` events at once and ` + strconv.Itoa(maps.EventsRate) + ` a second per
CPU and kind, so a flood costs forwarding little; what is over is counted, and printed (to stderr)
when the command ends. The filters apply here, not in the dataplane (log events have no reason:
--reason leaves them out). Run one monitor at a time: two share the events between them.`,
		Example: `  margayctl monitor
  margayctl monitor --reason DROP_SPOOFED --interface cali1234567890a
  margayctl monitor --trace --src 198.19.0.5 --proto tcp --count 20 -o json
  margayctl monitor --logs-only --interface cali1234567890a`,
		Args:    cobra.NoArgs,
		PreRunE: g.checkOutput,
		RunE:    func(cmd *cobra.Command, _ []string) error { return g.monitor(cmd, o) },
	}
	f := cmd.Flags()
	f.BoolVar(&o.trace, "trace", false, "also trace every packet that is not dropped, while the command runs")
	f.BoolVar(&o.dropsOnly, "drops-only", false, "only drop events, also when another monitor traces")
	f.BoolVar(&o.logsOnly, "logs-only", false, "only policy log events (rules with action Log)")
	f.StringSliceVar(&o.reasons, "reason", nil, "only these reasons, such as DROP_SPOOFED or FWD_LOCAL (repeat or separate by commas)")
	f.StringVar(&o.iface, "interface", "", "only packets handled on this interface (name or ifindex)")
	f.StringVar(&o.hook, "hook", "", "only this hook: "+strings.Join(maps.HookNames(), ", "))
	f.StringVar(&o.flow.src, "src", "", "only packets from this address or CIDR")
	f.StringVar(&o.flow.dst, "dst", "", "only packets to this address or CIDR")
	f.StringVar(&o.flow.proto, "proto", "", "only this protocol: tcp, udp, icmp, sctp, udplite or a number")
	f.IntVar(&o.count, "count", 0, "stop after this many events (0: no limit)")
	f.StringVar(&o.agent, "agent", agentapi.DefaultAddr, "this host's margay-agent, which names the rules of policy log events")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	return cmd
}

// ruleNames names the Log rules of policy log events through the agent (/policy/rules): asked
// again when an event names a rule it does not know, at most once a second; without an agent,
// events show the rule id alone.
type ruleNames struct {
	agent *agentapi.Client
	rules map[uint32]agentapi.Rule
	asked time.Time
}

func (n *ruleNames) name(ctx context.Context, e maps.Event) string {
	if e.Kind != maps.EventPolicyLog {
		return ""
	}
	r, ok := n.rules[e.Rule]
	if !ok && time.Since(n.asked) >= time.Second {
		n.asked = time.Now()
		if rules, err := n.agent.PolicyRules(ctx); err == nil {
			n.rules = rules
			r, ok = rules[e.Rule]
		}
	}
	if !ok {
		return ""
	}
	return r.String()
}
