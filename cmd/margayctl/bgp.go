package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/calicov3"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
)

// peerJSON is a peer as margayctl prints it: the secret replaced by whether there is one.
type peerJSON struct {
	datastore.BGPPeer
	PasswordSet bool `json:"passwordSet"`
}

// readSecret reads a secret from a file, or from r for "-", without its trailing newline.
func readSecret(r io.Reader, file string) (string, error) {
	var b []byte
	var err error
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(r, 4096))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", errors.New("empty secret")
	}
	return s, nil
}

func newBGPCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bgp", Short: "Explicit BGP peers (gateways, route reflectors): what a BGPPeer cannot hold, and aliases", PersistentPreRunE: g.checkOutput}
	peer := &cobra.Command{Use: "peer", Short: "Add, list and delete explicit BGP peers",
		Long: `Margay's first BGP peer commands, kept for the scripts that use them and for what Calico's
BGPPeer cannot hold:

  margayctl bgp peer add NAME --peer-ip IP [--asn N] [--node NODE]
                                  alias of margayctl create -f with a BGPPeer {peerIP, asNumber, node}
  margayctl bgp peer add ... --accept CIDR... | --password-file FILE
                                  no Calico form: a BGPPeer has no accept list, and its password is a
                                  Kubernetes secret Margay cannot read; written as Margay's peer record
  margayctl bgp peer list         the peers with their accept lists and whether a password is set
                                  (margayctl get bgppeer shows what a BGPPeer holds)
  margayctl bgp peer delete NAME  alias of margayctl delete bgppeer NAME`}

	var ip, node, passwordFile string
	var asn uint32
	var accept []string
	add := &cobra.Command{
		Use:   "add NAME --peer-ip IP --asn N [--node NODE] [--accept CIDR …] [--password-file FILE]",
		Short: "Peer every node (or --node) with a router (alias of create -f with a BGPPeer); --accept and --password-file have no Calico form",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(accept) == 0 && passwordFile == "" {
				if g.output != "table" && g.output != "" {
					return g.checkNoOutput(cmd, args)
				}
				return g.calicoWriteResources(cmd, calicov3.ActionCreate, calicov3.Create, &resource.BGPPeer{
					ObjectMeta: resource.ObjectMeta{Name: args[0]},
					Spec:       resource.BGPPeerSpec{Node: node, PeerIP: ip, ASNumber: resource.ASNumber(asn)}})
			}
			// What a BGPPeer cannot hold: Margay's own peer record.
			p := datastore.BGPPeer{Version: datastore.CurrentVersion, Name: args[0], ASN: asn, Node: node}
			var err error
			if p.PeerIP, err = netip.ParseAddr(ip); err != nil {
				return fmt.Errorf("bgp peer add: --peer-ip %q: %w", ip, err)
			}
			for _, a := range accept {
				pr, err := netip.ParsePrefix(a)
				if err != nil {
					return fmt.Errorf("bgp peer add: --accept %q: %w", a, err)
				}
				p.Accept = append(p.Accept, pr)
			}
			if passwordFile != "" {
				if p.Password, err = readSecret(cmd.InOrStdin(), passwordFile); err != nil {
					return fmt.Errorf("bgp peer add: --password-file: %w", err)
				}
			}
			if err := p.Validate(); err != nil {
				return fmt.Errorf("bgp peer add: %w", err)
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.BGPPeers().Create(ctx, p.Name, p); err != nil {
				return fmt.Errorf("bgp peer add: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added BGP peer %s: %s AS %d\n", p.Name, p.PeerIP, p.ASN)
			return nil
		},
	}
	add.Flags().StringVar(&ip, "peer-ip", "", "the router's address")
	add.Flags().Uint32Var(&asn, "asn", datastore.DefaultASN, "the router's AS number")
	add.Flags().StringVar(&node, "node", "", "peer only this node (default: every node)")
	add.Flags().StringSliceVar(&accept, "accept", nil, "prefixes the router may send besides the pools' (e.g. 0.0.0.0/0)")
	add.Flags().StringVar(&passwordFile, "password-file", "", "file (or - for standard input) holding the session's TCP MD5 secret; never on the command line")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the explicit BGP peers with their accept lists and whether a password is set (what a BGPPeer holds: margayctl get bgppeer)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			peers, _, err := c.BGPPeers().List(ctx)
			if err != nil {
				return err
			}
			g.noteEmpty(cmd, len(peers), "no explicit bgp peers")
			var rows [][]string
			js := []peerJSON{}
			for _, p := range peers {
				node := p.Value.Node
				if node == "" {
					node = "(every node)"
				}
				var acc []string
				for _, a := range p.Value.Accept {
					acc = append(acc, a.String())
				}
				md5 := "-"
				if p.Value.Password != "" {
					md5 = "set"
				}
				rows = append(rows, []string{p.Name, p.Value.PeerIP.String(), strconv.FormatUint(uint64(p.Value.ASN), 10), node, orDash(strings.Join(acc, ",")), md5})
				// The secret stays in the datastore: the listing says only whether there is one.
				v := p.Value
				v.Password = ""
				js = append(js, peerJSON{BGPPeer: v, PasswordSet: p.Value.Password != ""})
			}
			return g.render(cmd.OutOrStdout(), []string{"NAME", "PEER IP", "ASN", "NODE", "ACCEPT", "PASSWORD"}, rows, js)
		},
	}
	del := &cobra.Command{
		Use:     "delete NAME",
		Short:   "Alias of margayctl delete bgppeer NAME: remove an explicit BGP peer",
		Args:    cobra.ExactArgs(1),
		PreRunE: g.checkNoOutput,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.calicoDelete(cmd, resource.KindBGPPeer, "", args)
		},
	}
	peer.AddCommand(add, list, del)
	cmd.AddCommand(peer)
	return cmd
}
