package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/calicov3"
	"github.com/margaynet/margay/control/resource"
)

// margayctl policy: Margay's first policy commands, kept as aliases of the Calico forms. Each
// runs the Calico form's code (control/calicov3), so there is one way to write, read and delete
// a policy; apply -f also takes Margay's own policy format, which it converts to the
// GlobalNetworkPolicy (or NetworkPolicy) it is.

const policyAliases = `Aliases of the Calico forms, kept for the scripts that use them; each runs the Calico form:

  margayctl policy apply -f FILE     margayctl apply -f FILE
  margayctl policy list              margayctl get globalnetworkpolicy -o wide (-o yaml|json: in full)
  margayctl policy get NAME          margayctl get globalnetworkpolicy NAME -o yaml (-o json)
  margayctl policy delete NAME...    margayctl delete globalnetworkpolicy NAME...

Namespaced policies are NetworkPolicies: margayctl get networkpolicy -n NS | -A.`

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Aliases: []string{"policies"},
		Short:   "Aliases of apply -f, get gnp and delete gnp (Calico's GlobalNetworkPolicy)",
		Long:    policyAliases,
	}
	cmd.AddCommand(newPolicyApplyCmd(g), newPolicyListCmd(g), newPolicyGetCmd(g), newPolicyDeleteCmd(g))
	return cmd
}

func readInput(cmd *cobra.Command, file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(file)
}

func newPolicyApplyCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Alias of margayctl apply -f FILE, which also takes Margay's own policy format",
		Long: `Alias of margayctl apply -f FILE: create or replace the resources of FILE (- for stdin).

` + calicoInput + `

A document without apiVersion and kind is read in Margay's own policy format, as this command
took it before Calico's manifests, and applied as the GlobalNetworkPolicy it is (a
NetworkPolicy when it has a namespace): name, namespace, tier, order, selector,
namespaceSelector, serviceAccountSelector, types, ingress, egress, each rule's action (allow,
deny, log, pass), protocol, icmp, notProtocol, notICMP, source and destination (nets, notNets,
selector, notSelector, namespaceSelector, serviceAccounts, ports, notPorts) and annotations.
margayctl get gnp NAME -o yaml shows it as Calico writes it.`,
		Example: `  margayctl policy apply -f web.yaml

  # web.yaml, Margay's own format
  name: web
  selector: app == "web"
  ingress:
    - action: allow
      protocol: tcp
      source:
        selector: app == "frontend"
      destination:
        ports: [80, "8000:8080"]`,
		Args:    cobra.NoArgs,
		PreRunE: g.checkNoOutput,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.calicoWriteFile(cmd, file, calicov3.ActionApply, calicov3.Apply, calicov3.DecodeWithPolicyRecords)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "YAML or JSON file of Calico resources or Margay policies, - for stdin (required)")
	return cmd
}

func newPolicyListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "Alias of margayctl get globalnetworkpolicy -o wide (-o yaml or -o json: in full)",
		Args:    cobra.NoArgs,
		PreRunE: g.checkGetOutput,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.output == "table" || g.output == "" {
				g.output = "wide"
			}
			return g.calicoGet(cmd, resource.KindGlobalNetworkPolicy, "", "", false)
		},
	}
}

func newPolicyGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "get NAME",
		Short:   "Alias of margayctl get globalnetworkpolicy NAME -o yaml (-o json); apply -f takes the output back",
		Args:    cobra.ExactArgs(1),
		PreRunE: g.checkGetOutput,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.output != "json" {
				g.output = "yaml"
			}
			return g.calicoGet(cmd, resource.KindGlobalNetworkPolicy, args[0], "", false)
		},
	}
}

func newPolicyDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME...",
		Short:   "Alias of margayctl delete globalnetworkpolicy NAME...",
		Args:    cobra.MinimumNArgs(1),
		PreRunE: g.checkNoOutput,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.calicoDelete(cmd, resource.KindGlobalNetworkPolicy, "", args)
		},
	}
}
