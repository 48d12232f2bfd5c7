package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/margaynet/margay/control/calicov3"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
)

// The Calico way: projectcalico.org/v3 resources, as calicoctl apply, create, replace, delete
// and get take them. control/calicov3 does the work; these commands parse flags and print.

const calicoInput = `FILE (or - for stdin) holds projectcalico.org/v3 resources, as calicoctl takes them: YAML
documents separated by --- lines, or JSON objects, or a JSON array of them. Every document is
decoded, validated and converted first; if one is wrong, nothing is written and the error names
each wrong document and field. Kinds: GlobalNetworkPolicy, IPPool, BGPPeer and BGPConfiguration
(default). What Margay cannot hold yet is refused by name, never ignored.`

// checkNoOutput refuses -o on the commands that only report what they wrote.
func (g *globals) checkNoOutput(*cobra.Command, []string) error {
	if g.output != "table" && g.output != "" {
		return fmt.Errorf("-o %s: this command only reports what it wrote", g.output)
	}
	return nil
}

type writeOp func(context.Context, *datastore.Client, []calicov3.Doc) (calicov3.Result, error)

// newCalicoWriteCmd is apply, create, replace or delete with -f FILE.
func newCalicoWriteCmd(g *globals, action calicov3.Action, short string, op writeOp) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:               string(action) + " -f FILE",
		Short:             short,
		Long:              short + ".\n\n" + calicoInput,
		Example:           "  margayctl " + string(action) + " -f resources.yaml",
		Args:              cobra.NoArgs,
		PersistentPreRunE: g.checkNoOutput,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("-f FILE is required (- reads stdin)")
			}
			input, err := readInput(cmd, file)
			if err != nil {
				return err
			}
			docs, err := calicov3.Decode(input, action)
			if err != nil {
				return err
			}
			return g.calicoWrite(cmd, func(c *datastore.Client) (calicov3.Result, error) { return op(cmd.Context(), c, docs) })
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "YAML or JSON file of Calico resources, - for stdin (required)")
	return cmd
}

// calicoWrite connects, writes and prints what was written, as calicoctl does, and then the
// error the write stopped at.
func (g *globals) calicoWrite(cmd *cobra.Command, write func(*datastore.Client) (calicov3.Result, error)) error {
	c, err := g.client(cmd.Context())
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := write(c)
	if err == nil || len(res.Done) > 0 {
		fmt.Fprintln(cmd.OutOrStdout(), res)
	}
	if err != nil {
		return fmt.Errorf("hit error: %w", err)
	}
	return nil
}

func newApplyCmd(g *globals) *cobra.Command {
	return newCalicoWriteCmd(g, calicov3.ActionApply, "Create or replace the Calico resources of a file", calicov3.Apply)
}

func newCreateCmd(g *globals) *cobra.Command {
	return newCalicoWriteCmd(g, calicov3.ActionCreate, "Create the Calico resources of a file; one that exists is an error", calicov3.Create)
}

func newReplaceCmd(g *globals) *cobra.Command {
	return newCalicoWriteCmd(g, calicov3.ActionReplace, "Replace the Calico resources of a file; one that does not exist is an error", calicov3.Replace)
}

func newDeleteCmd(g *globals) *cobra.Command {
	cmd := newCalicoWriteCmd(g, calicov3.ActionDelete, "Delete the Calico resources a file names, or KIND NAME", calicov3.Delete)
	cmd.Use = "delete (-f FILE | KIND NAME...)"
	cmd.Example = "  margayctl delete -f resources.yaml\n  margayctl delete gnp allow-tcp-6379"
	cmd.Args = cobra.ArbitraryArgs
	fromFile := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fromFile(cmd, args)
		}
		if cmd.Flags().Changed("filename") || len(args) < 2 {
			return errors.New("give -f FILE, or KIND and one or more NAMEs")
		}
		kind, err := calicov3.ParseKind(args[0])
		if err != nil {
			return err
		}
		refs := make([]calicov3.Ref, 0, len(args)-1)
		for _, name := range args[1:] {
			refs = append(refs, calicov3.Ref{Kind: kind, Name: name})
		}
		return g.calicoWrite(cmd, func(c *datastore.Client) (calicov3.Result, error) { return calicov3.DeleteRefs(cmd.Context(), c, refs) })
	}
	return cmd
}

func newGetCmd(g *globals) *cobra.Command {
	var (
		namespace     string
		allNamespaces bool
	)
	cmd := &cobra.Command{
		Use:   "get KIND [NAME] [-n NAMESPACE | -A] [-o yaml|json|wide]",
		Short: "Show Calico resources, as calicoctl get does (-o yaml: what apply -f takes back)",
		Long: `Show Calico resources, as calicoctl get does: a table (-o wide: more columns), or the
resources as YAML or JSON, a <Kind>List when no NAME is given.

KIND is a kind's name, plural or short form, in any case: globalnetworkpolicy (gnp), ippool
(pool), bgppeer, bgpconfiguration (bgpconfig), node, workloadendpoint (wep).`,
		Example: "  margayctl get gnp\n  margayctl get ippool default-ipv4-ippool -o yaml\n  margayctl get wep -A -o wide",
		Args:    cobra.RangeArgs(1, 2),
		PersistentPreRunE: func(*cobra.Command, []string) error {
			switch g.output {
			case "table", "", "wide", "yaml", "json":
				return nil
			}
			return fmt.Errorf("unknown output format %q (want yaml, json or wide)", g.output)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := calicov3.ParseKind(args[0])
			if err != nil {
				return err
			}
			if allNamespaces && len(args) == 2 {
				return errors.New("-A lists every namespace: give no NAME")
			}
			ns := namespace
			if kind.Namespaced() && ns == "" && !allNamespaces {
				ns = resource.DefaultNamespace
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			var (
				items []resource.Resource
				rev   int64
				data  []byte
			)
			if len(args) == 2 {
				r, err := calicov3.Get(ctx, c, kind, args[1], ns)
				if err != nil {
					return err
				}
				items = []resource.Resource{r}
				data, err = resource.Encode(r)
				if err != nil {
					return err
				}
			} else {
				if items, rev, err = calicov3.List(ctx, c, kind, ns); err != nil {
					return err
				}
				if data, err = calicov3.EncodeList(kind, items, rev); err != nil {
					return err
				}
			}
			switch g.output {
			case "yaml":
				y, err := yaml.JSONToYAML(data)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(y)
				return err
			case "json":
				var out bytes.Buffer
				if err := json.Indent(&out, data, "", "  "); err != nil {
					return err
				}
				out.WriteByte('\n')
				_, err = out.WriteTo(cmd.OutOrStdout())
				return err
			}
			header, rows := calicov3.Table(kind, items, g.output == "wide", allNamespaces)
			return renderTable(cmd.OutOrStdout(), header, rows)
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace of a namespaced kind (default: default)")
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "every namespace, of a namespaced kind")
	return cmd
}
