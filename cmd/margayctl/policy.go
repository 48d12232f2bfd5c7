package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/manifest"
	"github.com/margaynet/margay/control/policy"
)

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "policy",
		Aliases: []string{"policies"},
		Short:   "Apply, list, show and delete network policies",
		Long: `Network policies select workloads by label and say, per direction, which flows they accept.

Write them in YAML or JSON and apply them; margayctl checks every document of a file before it
writes any, so a file with a mistake leaves the policies in force as they were.`,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			// get and list can also print YAML, which apply reads back.
			readOnly := cmd.Name() == "get" || cmd.Name() == "list"
			switch {
			case g.output == "table" || g.output == "" || g.output == "json":
				return nil
			case g.output == "yaml" && readOnly:
				return nil
			case readOnly:
				return fmt.Errorf("unknown output format %q (want table, json or yaml)", g.output)
			}
			return fmt.Errorf("unknown output format %q (want table or json)", g.output)
		},
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

type policyApplyJSON struct {
	Name   string `json:"name"`
	Result string `json:"result"` // created, configured or unchanged
}

func newPolicyApplyCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or replace the policies of a YAML or JSON file (- for stdin)",
		Long: `Create or replace the policies of a YAML or JSON file.

FILE (or - for stdin) holds one or more policies: YAML documents separated by --- lines, or JSON
objects, or a JSON array of objects. Every document is checked first; if one is wrong, nothing is
written and the error names it. A policy of the same name is replaced as a whole.`,
		Example: `  margayctl policy apply -f web.yaml

  # web.yaml
  name: web
  selector: app == "web"
  ingress:
    - action: allow
      protocol: tcp
      source:
        selector: app == "frontend"
      destination:
        ports: [80, "8000:8080"]
  ---
  name: deny-egress
  selector: all()
  types: [Egress]`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("-f FILE is required (- reads stdin)")
			}
			where := file
			if file == "-" {
				where = "stdin"
			}
			input, err := readInput(cmd, file)
			if err != nil {
				return fmt.Errorf("policy apply: %w", err)
			}
			docs, err := manifest.Split(input)
			if err != nil {
				return fmt.Errorf("policy apply: %s: %w (nothing applied)", where, err)
			}
			if len(docs) == 0 {
				return fmt.Errorf("policy apply: %s holds no policy", where)
			}
			policies, errs := policy.DecodeDocs(docs)
			switch {
			case len(errs) == 1:
				return fmt.Errorf("policy apply: %s: %w (nothing applied)", where, errs[0])
			case len(errs) > 1:
				lines := make([]string, len(errs))
				for i, e := range errs {
					lines[i] = "  " + e.Error()
				}
				return fmt.Errorf("policy apply: %s: %d of %s are invalid, nothing applied:\n%s",
					where, len(errs), count(len(docs), "document"), strings.Join(lines, "\n"))
			}

			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			applied, err := policy.Apply(ctx, c.Policies(), policies)
			out := cmd.OutOrStdout()
			results := []policyApplyJSON{}
			for _, a := range applied {
				results = append(results, policyApplyJSON{Name: a.Name, Result: string(a.Result)})
				if g.output != "json" {
					fmt.Fprintf(out, "policy %q %s\n", a.Name, a.Result)
				}
			}
			if err != nil {
				return fmt.Errorf("policy apply: %w", err)
			}
			if g.output == "json" {
				return g.result(out, "", results)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "YAML or JSON file of policies, - for stdin (required)")
	return cmd
}

func policyOrder(p datastore.Policy) string {
	if p.Order == nil {
		return "-"
	}
	return strconv.FormatFloat(*p.Order, 'g', -1, 64)
}

func policyTypes(p datastore.Policy) string {
	ts := make([]string, len(p.Types))
	for i, t := range p.Types {
		ts[i] = string(t)
	}
	return orDash(strings.Join(ts, ","))
}

func newPolicyListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the policies: order, selector, directions and rule counts (-o json or -o yaml: in full)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			items, _, err := c.Policies().List(ctx)
			if err != nil {
				return err
			}
			g.noteEmpty(cmd, len(items), "no policies")
			ps := make([]datastore.Policy, 0, len(items))
			rows := make([][]string, 0, len(items))
			for _, it := range items {
				p := it.Value
				ps = append(ps, p)
				sel := p.Selector
				if sel == "" {
					sel = "all()"
				}
				rows = append(rows, []string{p.Name, policyOrder(p), sel, policyTypes(p),
					strconv.Itoa(len(p.Ingress)), strconv.Itoa(len(p.Egress))})
			}
			if g.output == "yaml" {
				return writeYAML(cmd.OutOrStdout(), ps)
			}
			return g.render(cmd.OutOrStdout(), []string{"NAME", "ORDER", "SELECTOR", "TYPES", "INGRESS", "EGRESS"}, rows, ps)
		},
	}
}

func writeYAML(w io.Writer, v any) error {
	y, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(y)
	return err
}

// getPolicy reads a policy and turns "not found" into a message that says where to look.
func getPolicy(cmd *cobra.Command, c *datastore.Client, name string) (datastore.Item[datastore.Policy], error) {
	it, err := c.Policies().Get(cmd.Context(), name)
	if errors.Is(err, datastore.ErrNotFound) {
		return it, fmt.Errorf("policy %q not found (margayctl policy list shows the policies)", name)
	}
	return it, err
}

func newPolicyGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a policy in full, as YAML (-o json: as JSON); the output can be applied again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			it, err := getPolicy(cmd, c, args[0])
			if err != nil {
				return err
			}
			if g.output == "json" {
				return g.result(cmd.OutOrStdout(), "", it.Value)
			}
			return writeYAML(cmd.OutOrStdout(), it.Value)
		},
	}
}

func newPolicyDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete policies; if one of them does not exist, none is deleted",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			var missing []string
			for _, name := range args {
				_, err := c.Policies().Get(ctx, name)
				switch {
				case errors.Is(err, datastore.ErrNotFound):
					missing = append(missing, strconv.Quote(name))
				case err != nil && !errors.Is(err, datastore.ErrMalformed):
					return err
				}
			}
			if len(missing) > 0 {
				what := "policy " + missing[0] + " not found"
				if len(missing) > 1 {
					what = "policies " + strings.Join(missing, ", ") + " not found"
				}
				deleted := ""
				if len(args) > len(missing) {
					deleted = "; nothing deleted"
				}
				return fmt.Errorf("policy delete: %s (margayctl policy list shows the policies)%s", what, deleted)
			}
			deleted := []string{}
			out := cmd.OutOrStdout()
			for _, name := range args {
				err := c.Policies().Delete(ctx, name, 0)
				if err != nil && !errors.Is(err, datastore.ErrNotFound) { // gone meanwhile: fine
					return fmt.Errorf("policy delete: %w (deleted before it: %s)", err, orDash(strings.Join(deleted, ", ")))
				}
				deleted = append(deleted, name)
				if g.output != "json" {
					fmt.Fprintf(out, "policy %q deleted\n", name)
				}
			}
			if g.output == "json" {
				return g.result(out, "", map[string][]string{"deleted": deleted})
			}
			return nil
		},
	}
}
