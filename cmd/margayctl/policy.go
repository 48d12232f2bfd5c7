package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/margaynet/margay/control/datastore"
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

// policyDoc is one policy document of an input file, as JSON, before it is decoded.
type policyDoc struct {
	index int    // 1-based, over the non-empty documents of the input
	line  int    // line the YAML document starts on; 0 for JSON
	data  []byte // the document as JSON
	name  string // best effort, for messages: the name field if it is a string
	err   error  // set when the document could not be turned into JSON
}

func (d policyDoc) label() string {
	switch {
	case d.name != "":
		return fmt.Sprintf("document %d (policy %q)", d.index, d.name)
	case d.line > 0:
		return fmt.Sprintf("document %d (starting at line %d)", d.index, d.line)
	}
	return fmt.Sprintf("document %d", d.index)
}

// splitPolicyDocs reads the documents of an input: JSON (one object, several, or an array of
// objects) or YAML (documents separated by --- lines, each a mapping or a sequence of mappings).
func splitPolicyDocs(input []byte) ([]policyDoc, error) {
	input = bytes.TrimPrefix(input, []byte("\xef\xbb\xbf"))
	if looksLikeJSON(input) {
		return splitJSONDocs(input)
	}
	return splitYAMLDocs(input)
}

// looksLikeJSON tells JSON from YAML: JSON opens with { or [ and then a quoted key, another
// opening bracket or a closing one; YAML flow style such as {name: web} has a bare key.
func looksLikeJSON(input []byte) bool {
	rest := bytes.TrimSpace(input)
	if len(rest) == 0 || (rest[0] != '{' && rest[0] != '[') {
		return false
	}
	rest = bytes.TrimLeft(rest, "[{ \t\r\n")
	return len(rest) == 0 || rest[0] == '"' || rest[0] == '}' || rest[0] == ']'
}

func splitJSONDocs(input []byte) ([]policyDoc, error) {
	var docs []policyDoc
	dec := json.NewDecoder(bytes.NewReader(input))
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				line, col := lineCol(input, se.Offset)
				return nil, fmt.Errorf("invalid JSON at line %d, column %d: %w", line, col, err)
			}
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		docs = appendDocs(docs, raw, 0)
	}
}

// appendDocs adds a JSON value: an object is one document, an array one per element.
func appendDocs(docs []policyDoc, raw []byte, line int) []policyDoc {
	raw = bytes.TrimSpace(raw)
	switch {
	case bytes.Equal(raw, []byte("null")):
		return docs
	case len(raw) > 0 && raw[0] == '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return append(docs, policyDoc{index: len(docs) + 1, line: line, err: err})
		}
		for _, e := range elems {
			docs = append(docs, newPolicyDoc(len(docs)+1, line, e))
		}
		return docs
	}
	return append(docs, newPolicyDoc(len(docs)+1, line, raw))
}

func newPolicyDoc(index, line int, raw []byte) policyDoc {
	d := policyDoc{index: index, line: line, data: raw}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		d.err = fmt.Errorf("want a policy (a mapping with name, selector, ingress, …), found %s", jsonKind(raw))
		return d
	}
	_ = json.Unmarshal(fields["name"], &d.name)
	return d
}

func jsonKind(raw []byte) string {
	switch raw = bytes.TrimSpace(raw); {
	case len(raw) == 0:
		return "nothing"
	case raw[0] == '[':
		return "a list"
	case raw[0] == '"':
		return "a string " + string(raw)
	}
	return string(raw)
}

// splitYAMLDocs splits at lines that are "---" (optionally followed by a comment) and converts
// each document to JSON; documents holding only comments and blank lines are skipped.
func splitYAMLDocs(input []byte) ([]policyDoc, error) {
	var docs []policyDoc
	var cur bytes.Buffer
	start := 1
	flush := func() {
		if strings.TrimSpace(cur.String()) == "" {
			cur.Reset()
			return
		}
		j, err := yaml.YAMLToJSONStrict(cur.Bytes())
		if err != nil {
			docs = append(docs, policyDoc{index: len(docs) + 1, line: start, err: fmt.Errorf("invalid YAML: %w", err)})
		} else {
			docs = appendDocs(docs, j, start)
		}
		cur.Reset()
	}
	lines := strings.SplitAfter(string(input), "\n")
	for i, l := range lines {
		body := strings.TrimRight(l, "\r\n")
		if rest, ok := strings.CutPrefix(body, "---"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			flush()
			start = i + 2
			if r := strings.TrimSpace(rest); r != "" && r[0] != '#' {
				cur.WriteString(r + "\n") // "--- {name: web}"
				start = i + 1
			}
			continue
		}
		if body == "..." {
			flush()
			start = i + 2
			continue
		}
		if cur.Len() == 0 && strings.TrimSpace(body) == "" {
			start = i + 2
			continue
		}
		cur.WriteString(l)
	}
	flush()
	return docs, nil
}

func lineCol(input []byte, offset int64) (line, col int) {
	if offset > int64(len(input)) {
		offset = int64(len(input))
	}
	before := input[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// decodePolicyDocs decodes and validates every document, and reports every one that is wrong.
func decodePolicyDocs(docs []policyDoc) ([]datastore.Policy, []error) {
	var (
		out  []datastore.Policy
		errs []error
		seen = map[string]int{}
	)
	for _, d := range docs {
		if d.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.label(), d.err))
			continue
		}
		p, err := datastore.DecodePolicy(d.data)
		if err != nil {
			msg := err.Error()
			for _, prefix := range []string{fmt.Sprintf("policy %q: ", d.name), "policy: ", "decode policy: "} {
				msg = strings.TrimPrefix(msg, prefix)
			}
			if strings.Contains(msg, "cannot unmarshal bool") && d.line > 0 {
				msg += ` (YAML reads unquoted y, n, yes, no, on, off, true and false as booleans: quote the value)`
			}
			errs = append(errs, fmt.Errorf("%s: %s", d.label(), msg))
			continue
		}
		if first, ok := seen[p.Name]; ok {
			errs = append(errs, fmt.Errorf("%s: same name as document %d", d.label(), first))
			continue
		}
		seen[p.Name] = d.index
		out = append(out, p)
	}
	return out, errs
}

func readPolicyInput(cmd *cobra.Command, file string) ([]byte, error) {
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
			input, err := readPolicyInput(cmd, file)
			if err != nil {
				return fmt.Errorf("policy apply: %w", err)
			}
			docs, err := splitPolicyDocs(input)
			if err != nil {
				return fmt.Errorf("policy apply: %s: %w (nothing applied)", where, err)
			}
			if len(docs) == 0 {
				return fmt.Errorf("policy apply: %s holds no policy", where)
			}
			policies, errs := decodePolicyDocs(docs)
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
			out := cmd.OutOrStdout()
			results := []policyApplyJSON{}
			for i, p := range policies {
				result := "created"
				old, err := c.Policies().Get(ctx, p.Name)
				switch {
				case err == nil:
					result = "configured"
					if samePolicy(old.Value, p) {
						result = "unchanged"
					}
				case errors.Is(err, datastore.ErrNotFound):
				case errors.Is(err, datastore.ErrMalformed):
					result = "configured" // a stored value the agent cannot read: replace it
				default:
					return appliedSoFar(err, i, len(policies))
				}
				if result != "unchanged" {
					if _, err := c.Policies().Put(ctx, p.Name, p); err != nil {
						return appliedSoFar(err, i, len(policies))
					}
				}
				results = append(results, policyApplyJSON{Name: p.Name, Result: result})
				if g.output != "json" {
					fmt.Fprintf(out, "policy %q %s\n", p.Name, result)
				}
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

func appliedSoFar(err error, done, total int) error {
	if done == 0 {
		return fmt.Errorf("policy apply: %w (nothing applied)", err)
	}
	return fmt.Errorf("policy apply: %w (%d of %d policies applied before it; run the command again)", err, done, total)
}

// samePolicy compares two policies as they are stored: an empty list and a missing one are alike.
func samePolicy(a, b datastore.Policy) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
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
