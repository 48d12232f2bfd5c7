package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/maps"
)

// ctFilter holds the flags --src, --dst and --proto, which select flows by initiator address,
// responder address and protocol.
type ctFilter struct {
	src, dst, proto string
}

func (f *ctFilter) bind(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.src, "src", "", "only flows initiated from this address or CIDR")
	cmd.Flags().StringVar(&f.dst, "dst", "", "only flows to this address or CIDR")
	cmd.Flags().StringVar(&f.proto, "proto", "", "only flows of this protocol: tcp, udp, icmp, sctp, udplite or a number")
}

func parseAddrOrPrefix(flag, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
		return netip.PrefixFrom(a, 32), nil
	}
	if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
		return p.Masked(), nil
	}
	return netip.Prefix{}, fmt.Errorf("--%s %q: want an IPv4 address or CIDR such as 198.19.0.5 or 198.19.0.0/16", flag, s)
}

func (f *ctFilter) parse() (maps.FlowFilter, error) {
	var (
		ff  maps.FlowFilter
		err error
	)
	if ff.Src, err = parseAddrOrPrefix("src", f.src); err != nil {
		return ff, err
	}
	if ff.Dst, err = parseAddrOrPrefix("dst", f.dst); err != nil {
		return ff, err
	}
	if f.proto != "" {
		if ff.Protocol, err = hostconv.ParseProtocol(f.proto); err != nil {
			return ff, fmt.Errorf("--proto: %w", err)
		}
	}
	return ff, nil
}

// flowJSON is a conntrack entry as conntrack list -o json prints it.
type flowJSON struct {
	Proto        string  `json:"proto"`
	Protocol     uint8   `json:"protocol"`
	Src          string  `json:"src"`
	SrcPort      uint16  `json:"srcPort"`
	Dst          string  `json:"dst"`
	DstPort      uint16  `json:"dstPort"`
	State        string  `json:"state"`
	Verdict      string  `json:"verdict"`
	KernelNAT    bool    `json:"kernelNAT,omitempty"` // the kernel translates the flow: it takes the kernel path
	Generation   uint32  `json:"generation"`
	RuleEgress   uint32  `json:"ruleEgress,omitempty"`
	RuleIngress  uint32  `json:"ruleIngress,omitempty"`
	PacketsOrig  uint64  `json:"packetsOriginal"` // initiator to responder
	PacketsReply uint64  `json:"packetsReply"`
	BytesOrig    uint64  `json:"bytesOriginal"`
	BytesReply   uint64  `json:"bytesReply"`
	AgeSeconds   float64 `json:"ageSeconds"`
	IdleSeconds  float64 `json:"idleSeconds"`
}

func toFlowJSON(f maps.Flow) flowJSON {
	return flowJSON{Proto: hostconv.ProtocolName(f.Protocol), Protocol: f.Protocol, Src: f.Src.String(), SrcPort: f.SrcPort,
		Dst: f.Dst.String(), DstPort: f.DstPort, State: f.State.String(), Verdict: f.Verdict.String(),
		KernelNAT: f.KernelNAT, Generation: f.Generation, RuleEgress: f.RuleEgress, RuleIngress: f.RuleIngress,
		PacketsOrig: f.Packets[0], PacketsReply: f.Packets[1], BytesOrig: f.Bytes[0], BytesReply: f.Bytes[1],
		AgeSeconds: f.Age.Seconds(), IdleSeconds: f.Idle.Seconds()}
}

func endpoint(proto uint8, a netip.Addr, port uint16) string {
	if hostconv.ProtocolHasPorts(proto) {
		return netip.AddrPortFrom(a, port).String()
	}
	return a.String()
}

func shortDuration(d time.Duration) string {
	if d < time.Second {
		return "0s"
	}
	return d.Truncate(time.Second).String()
}

func flowRules(f maps.Flow) string {
	var rs []string
	if f.RuleEgress != 0 {
		rs = append(rs, fmt.Sprintf("egress=%d", f.RuleEgress))
	}
	if f.RuleIngress != 0 {
		rs = append(rs, fmt.Sprintf("ingress=%d", f.RuleIngress))
	}
	return orDash(strings.Join(rs, " "))
}

// flowVerdict is the verdict, marked "+NAT" for a flow the kernel translates.
func flowVerdict(f maps.Flow) string {
	if f.KernelNAT {
		return f.Verdict.String() + "+NAT"
	}
	return f.Verdict.String()
}

func flowRow(f maps.Flow) []string {
	return []string{hostconv.ProtocolName(f.Protocol), endpoint(f.Protocol, f.Src, f.SrcPort), endpoint(f.Protocol, f.Dst, f.DstPort),
		f.State.String(), flowVerdict(f),
		fmt.Sprintf("%d/%d", f.Packets[0], f.Packets[1]), fmt.Sprintf("%d/%d", f.Bytes[0], f.Bytes[1]),
		shortDuration(f.Age), shortDuration(f.Idle), flowRules(f)}
}

func (g *globals) listConntrack(cmd *cobra.Command, f *ctFilter) error {
	filter, err := f.parse()
	if err != nil {
		return err
	}
	return listMap(g, cmd.OutOrStdout(), []string{"PROTO", "SRC", "DST", "STATE", "VERDICT", "PACKETS", "BYTES", "AGE", "IDLE", "RULES"},
		func(s *maps.Set) ([]maps.Flow, error) {
			flows, err := s.Conntrack.List()
			return slices.DeleteFunc(flows, func(fl maps.Flow) bool { return !filter.Flow(fl) }), err
		}, flowRow, toFlowJSON)
}

func newConntrackCmd(g *globals) *cobra.Command {
	var f ctFilter
	cmd := &cobra.Command{
		Use:     "conntrack",
		Aliases: []string{"ct"},
		Short:   "List or flush the dataplane's connection tracking entries (bare: list)",
		Long: `List or flush the dataplane's connection tracking entries, read from the pinned conntrack map.

Each flow is shown from its initiator's side: SRC started it, DST answered. PACKETS and BYTES
are initiator-to-responder/replies; AGE is the time since the first packet, IDLE since the latest.
RULES are the ids of the policy rules that decided the flow, per direction.`,
		Args:              cobra.NoArgs,
		PersistentPreRunE: g.checkOutput,
		RunE:              func(cmd *cobra.Command, _ []string) error { return g.listConntrack(cmd, &f) },
	}
	f.bind(cmd)
	cmd.AddCommand(newConntrackListCmd(g), newConntrackFlushCmd(g))
	return cmd
}

func newConntrackListCmd(g *globals) *cobra.Command {
	var f ctFilter
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the conntrack entries, optionally only some (--src, --dst, --proto)",
		Example: "  margayctl conntrack list --src 198.19.0.5 --proto tcp\n  margayctl ct list --dst 198.19.0.0/16 -o json",
		Args:    cobra.NoArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return g.listConntrack(cmd, &f) },
	}
	f.bind(cmd)
	return cmd
}

type conntrackFlushJSON struct {
	Deleted int `json:"deleted"`
}

func newConntrackFlushCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "flush",
		Short: "Delete every conntrack entry and print how many",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := g.open()
			if err != nil {
				return err
			}
			defer set.Close()
			n, err := set.Conntrack.Flush()
			if err != nil {
				return err
			}
			noun := "entries"
			if n == 1 {
				noun = "entry"
			}
			return g.result(cmd.OutOrStdout(), fmt.Sprintf("flushed %d conntrack %s", n, noun), conntrackFlushJSON{Deleted: n})
		},
	}
}
