package deploy_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// binaries is the directory of margay-agent, margay-cni, margay-cni-direct, margay-docker and
// margayctl, built by TestMain.
var binaries string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// MARGAY_TEST_BINARIES names a directory of binaries built already (from this tree!), to run
	// the tests many times without linking three binaries each time.
	if dir := os.Getenv("MARGAY_TEST_BINARIES"); dir != "" {
		binaries = dir
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "margay-bin-deploy-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./cmd/margay-agent", "./cmd/margay-cni", "./cmd/margay-cni-direct", "./cmd/margay-docker", "./cmd/margayctl")
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		return 1
	}
	binaries = dir
	return m.Run()
}

// repoRoot is the repository's top directory, two levels above this file.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func repoPath(rel string) string { return filepath.Join(repoRoot(), filepath.FromSlash(rel)) }

func readRepoFile(tb testing.TB, rel string) string {
	tb.Helper()
	b, err := os.ReadFile(repoPath(rel))
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

func exists(rel string) bool {
	_, err := os.Stat(repoPath(rel))
	return err == nil
}

// cliCommand is what `--help` says about one command of a binary.
type cliCommand struct {
	flags map[string]bool // flag name (without dashes, long and short) -> takes a value
	subs  map[string]bool // subcommands (cobra's Available Commands)
	env   map[string]bool // MARGAY_* variables the help names ("env MARGAY_X")
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]*cliCommand{}

	// "  -o, --output string   output format" or "      --bgp   run the BGP speaker".
	flagLine = regexp.MustCompile(`^\s+(?:-(\w), )?--([a-z0-9][a-z0-9-]*)(?: (\w+))?(?:\s{2,}|$)`)
	subLine  = regexp.MustCompile(`^  ([a-z][a-z0-9-]*)\s{2,}`)
	envName  = regexp.MustCompile(`env (MARGAY_[A-Z0-9_]+)`)
)

// help runs `BIN PATH... --help` and parses the flags (global ones included) and subcommands.
func help(tb testing.TB, bin string, path ...string) *cliCommand {
	tb.Helper()
	key := bin + " " + strings.Join(path, " ")
	helpMu.Lock()
	defer helpMu.Unlock()
	if c, ok := helpCache[key]; ok {
		return c
	}
	args := append(append([]string{}, path...), "--help")
	out, err := exec.Command(filepath.Join(binaries, bin), args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
	c := &cliCommand{flags: map[string]bool{}, subs: map[string]bool{}, env: map[string]bool{}}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasSuffix(line, ":") && !strings.HasPrefix(line, " ") {
			section = line
			continue
		}
		switch {
		case section == "Available Commands:":
			if m := subLine.FindStringSubmatch(line); m != nil {
				c.subs[m[1]] = true
			}
		case strings.HasSuffix(section, "Flags:"):
			if m := flagLine.FindStringSubmatch(line); m != nil {
				takes := m[3] != ""
				c.flags[m[2]] = takes
				if m[1] != "" {
					c.flags[m[1]] = takes
				}
			}
		}
		for _, m := range envName.FindAllStringSubmatch(line, -1) {
			c.env[m[1]] = true
		}
	}
	if len(c.flags) == 0 {
		tb.Fatalf("%s: no flags parsed from --help:\n%s", key, out)
	}
	helpCache[key] = c
	return c
}

// checkInvocation checks the words after BIN on a command line (a shell line, an ExecStart, a
// container's args): each subcommand must exist, each --flag must be one the (sub)command accepts.
// Words with shell expansions are taken as values. It returns the subcommand path it found.
func checkInvocation(tb testing.TB, where, bin string, words []string) []string {
	tb.Helper()
	var path []string
	cmd := help(tb, bin)
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "--":
			return path
		case strings.HasPrefix(w, "-") && len(w) > 1:
			name, _, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
			takes, ok := cmd.flags[name]
			if !ok {
				tb.Errorf("%s: %s %s has no flag %s (its --help lists %v)", where, bin, strings.Join(path, " "), w, keys(cmd.flags))
				continue
			}
			if takes && !hasValue {
				i++ // the flag's value
			}
		case len(cmd.subs) > 0 && !strings.ContainsAny(w, "$\"'`"):
			if !cmd.subs[w] {
				tb.Errorf("%s: %s %s has no subcommand %q (it has %v)", where, bin, strings.Join(path, " "), w, keys(cmd.subs))
				return path
			}
			path = append(path, w)
			cmd = help(tb, bin, path...)
		}
	}
	return path
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// invocations finds the command lines of BIN in a shell script, unit or Markdown file: the words
// after each mention of BIN as a command, up to the end of the shell command. Comment lines are
// skipped unless keepComments (documentation lists commands in comments).
func invocations(text, bin string, keepComments bool) [][]string {
	// BIN in command position: first on the line (after a prompt), after an operator, a shell
	// keyword or `--` (kubectl exec … --), or the end of a path.
	re := regexp.MustCompile(`(?:^\s*(?:\$\s+)?|[|;&(!{]\s*|\s--\s+|\b(?:if|then|do|else|elif|while|until|sudo|exec|time)\s+|/)` +
		regexp.QuoteMeta(bin) + `(?:\s|$)`)
	text = strings.ReplaceAll(text, "\\\n", " ")
	var out [][]string
	for _, line := range strings.Split(text, "\n") {
		if !keepComments && strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, loc := range re.FindAllStringIndex(line, -1) {
			rest := line[loc[1]:]
			if i := strings.IndexAny(rest, "|;&)<>`#"); i >= 0 {
				rest = rest[:i]
			}
			var words []string
			for _, w := range strings.Fields(rest) {
				w = strings.Trim(w, `"'`)
				if w != "" {
					words = append(words, w)
				}
			}
			out = append(out, words)
		}
	}
	return out
}

// markdownCode returns the code of a Markdown text: its fenced blocks and inline code spans, one
// per line, so that prose that names a command is not taken for a command line.
func markdownCode(md string) string {
	var code, prose strings.Builder
	fenced := false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case strings.HasPrefix(strings.TrimSpace(line), "```"):
			fenced = !fenced
		case fenced:
			code.WriteString(line + "\n")
		default:
			prose.WriteString(line + " ")
		}
	}
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(prose.String(), -1) {
		code.WriteString(strings.Join(strings.Fields(m[1]), " ") + "\n")
	}
	return code.String()
}

// checkFlagValues runs BIN ARGS --help: pflag parses every flag's value (bool, int, duration, …)
// before cobra answers --help, so a value of the wrong type fails.
func checkFlagValues(tb testing.TB, where, bin string, args []string) {
	tb.Helper()
	out, err := exec.Command(filepath.Join(binaries, bin), append(append([]string{}, args...), "--help")...).CombinedOutput()
	if err != nil {
		first, _, _ := strings.Cut(string(out), "\n")
		tb.Errorf("%s: %s %s: %v: %s", where, bin, strings.Join(args, " "), err, first)
	}
}
