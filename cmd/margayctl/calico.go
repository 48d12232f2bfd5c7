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
decoded, validated and converted first, and checked against the datastore (a policy's tier
must exist or come earlier in the file; a tier to delete must hold no policies); if one is
wrong, nothing is written and the error names each wrong document and field. Kinds:
GlobalNetworkPolicy, NetworkPolicy (in metadata.namespace, default: default), Tier, Profile,
IPPool, BGPPeer and BGPConfiguration (default). What Margay cannot hold yet is refused by name,
never ignored.`

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
			return g.calicoWriteFile(cmd, file, action, op, calicov3.Decode)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "YAML or JSON file of Calico resources, - for stdin (required)")
	return cmd
}

// calicoWriteFile is apply, create, replace or delete -f FILE: FILE decoded by decode
// (calicov3.Decode, or DecodeWithPolicyRecords for policy apply), then written by op.
func (g *globals) calicoWriteFile(cmd *cobra.Command, file string, action calicov3.Action, op writeOp,
	decode func([]byte, calicov3.Action) ([]calicov3.Doc, error)) error {
	if file == "" {
		return errors.New("-f FILE is required (- reads stdin)")
	}
	input, err := readInput(cmd, file)
	if err != nil {
		return err
	}
	docs, err := decode(input, action)
	if err != nil {
		return err
	}
	return g.calicoWrite(cmd, func(c *datastore.Client) (calicov3.Result, error) { return op(cmd.Context(), c, docs) })
}

// calicoWriteResources writes resources made by a command (pool add, ...) as apply, create or
// replace -f would a file holding them: through the same decoding, checks and conversion.
func (g *globals) calicoWriteResources(cmd *cobra.Command, action calicov3.Action, op writeOp, rs ...resource.Resource) error {
	var input []byte
	for _, r := range rs {
		b, err := resource.Encode(r)
		if err != nil {
			return err
		}
		input = append(append(input, b...), '\n')
	}
	docs, err := calicov3.Decode(input, action)
	if err != nil {
		return err
	}
	return g.calicoWrite(cmd, func(c *datastore.Client) (calicov3.Result, error) { return op(cmd.Context(), c, docs) })
}

// calicoUpdate reads the resource of kind named, changes it and replaces it, at the revision
// read: margayctl get KIND NAME -o yaml, an edit, margayctl replace -f, in one command.
func (g *globals) calicoUpdate(cmd *cobra.Command, kind resource.Kind, name, ns string, change func(resource.Resource)) error {
	return g.calicoWrite(cmd, func(c *datastore.Client) (calicov3.Result, error) {
		fail := calicov3.Result{Action: calicov3.ActionReplace, Total: 1}
		r, err := calicov3.Get(cmd.Context(), c, kind, name, ns)
		if err != nil {
			return fail, err
		}
		change(r)
		b, err := resource.Encode(r)
		if err != nil {
			return fail, err
		}
		docs, err := calicov3.Decode(b, calicov3.ActionReplace)
		if err != nil {
			return fail, err
		}
		return calicov3.Replace(cmd.Context(), c, docs)
	})
}

// calicoDelete is delete KIND NAME...: the resources of kind named, in namespace ns for a
// namespaced kind ("" is default).
func (g *globals) calicoDelete(cmd *cobra.Command, kind resource.Kind, ns string, names []string) error {
	if kind.Namespaced() && ns == "" {
		ns = resource.DefaultNamespace
	}
	if !kind.Namespaced() {
		ns = ""
	}
	refs := make([]calicov3.Ref, 0, len(names))
	for _, name := range names {
		refs = append(refs, calicov3.Ref{Kind: kind, Namespace: ns, Name: name})
	}
	return g.calicoWrite(cmd, func(c *datastore.Client) (calicov3.Result, error) { return calicov3.DeleteRefs(cmd.Context(), c, refs) })
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
	switch {
	case errors.Is(err, calicov3.ErrInvalid):
		return err // refused before anything was written: as Decode's errors
	case err != nil:
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
	var namespace string
	cmd := newCalicoWriteCmd(g, calicov3.ActionDelete, "Delete the Calico resources a file names, or KIND NAME", calicov3.Delete)
	cmd.Use = "delete (-f FILE | KIND NAME... [-n NAMESPACE])"
	cmd.Long += "\n\nKIND NAME... deletes by name, one after the other, as calicoctl does: a NetworkPolicy in\n" +
		"-n NAMESPACE (default: default). A tier goes only once it holds no policies; the default tier never."
	cmd.Example = "  margayctl delete -f resources.yaml\n  margayctl delete gnp allow-tcp-6379\n  margayctl delete networkpolicy allow-dns -n prod"
	cmd.Args = cobra.ArbitraryArgs
	fromFile := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			if cmd.Flags().Changed("namespace") {
				return errors.New("-n NAMESPACE goes with KIND NAME; with -f, each document names its namespace")
			}
			return fromFile(cmd, args)
		}
		if cmd.Flags().Changed("filename") || len(args) < 2 {
			return errors.New("give -f FILE, or KIND and one or more NAMEs")
		}
		kind, err := calicov3.ParseKind(args[0])
		if err != nil {
			return err
		}
		if namespace != "" && !kind.Namespaced() {
			return fmt.Errorf("-n NAMESPACE: %s is not namespaced", kind)
		}
		return g.calicoDelete(cmd, kind, namespace, args[1:])
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace of a NetworkPolicy (default: default)")
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
		Long: `Show Calico resources, as calicoctl get does: a table (-o wide: more columns; a NAMESPACE
column with -n or -A), or the resources as YAML or JSON, a <Kind>List when no NAME is given.

KIND is a kind's name, plural or short form, in any case: globalnetworkpolicy (gnp),
networkpolicy (np, policy), tier, profile, ippool (pool), bgppeer, bgpconfiguration
(bgpconfig), node, workloadendpoint (wep). The namespaced kinds (networkpolicy,
workloadendpoint) are read in -n NAMESPACE (default: default), or in every namespace with -A.`,
		Example: "  margayctl get gnp\n  margayctl get tier\n  margayctl get networkpolicy -A -o wide\n" +
			"  margayctl get ippool default-ipv4-ippool -o yaml\n  margayctl get wep -A -o wide",
		Args:              cobra.RangeArgs(1, 2),
		PersistentPreRunE: g.checkGetOutput,
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := calicov3.ParseKind(args[0])
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return g.calicoGet(cmd, kind, name, namespace, allNamespaces)
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "namespace of a namespaced kind (default: default)")
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false, "every namespace, of a namespaced kind")
	return cmd
}

// checkGetOutput refuses an -o that get cannot print.
func (g *globals) checkGetOutput(*cobra.Command, []string) error {
	switch g.output {
	case "table", "", "wide", "yaml", "json":
		return nil
	}
	return fmt.Errorf("unknown output format %q (want yaml, json or wide)", g.output)
}

// calicoGet is get KIND [NAME] [-n NAMESPACE | -A], printed as -o asks.
func (g *globals) calicoGet(cmd *cobra.Command, kind resource.Kind, name, namespace string, allNamespaces bool) error {
	if allNamespaces && name != "" {
		return errors.New("-A lists every namespace: give no NAME")
	}
	if allNamespaces && namespace != "" {
		return errors.New("give -n NAMESPACE or -A, not both")
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
	if name != "" {
		r, err := calicov3.Get(ctx, c, kind, name, ns)
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
		g.noteEmpty(cmd, len(items), fmt.Sprintf("no %s resources", kind))
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
	// As calicoctl: the NAMESPACE column when -A or -n is given.
	header, rows := calicov3.Table(kind, items, g.output == "wide", allNamespaces || namespace != "")
	return renderTable(cmd.OutOrStdout(), header, rows)
}
