package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const dockerfilePath = "deploy/Dockerfile"

type instruction struct {
	cmd  string // upper case: FROM, RUN, COPY, …
	args string
}

type stage struct {
	image, name string
	instrs      []instruction
}

// parseDockerfile splits a Dockerfile into stages of instructions, continuation lines joined and
// comments dropped.
func parseDockerfile(tb testing.TB, text string) []stage {
	tb.Helper()
	var stages []stage
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{strings.ToUpper(cmd), strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			return
		}
		if len(stages) == 0 {
			tb.Fatalf("%s: %s before FROM", dockerfilePath, in.cmd)
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	flush()
	return stages
}

type copyInstr struct {
	from    string
	sources []string
	dest    string
}

func (s stage) copies() []copyInstr {
	var out []copyInstr
	for _, in := range s.instrs {
		if in.cmd != "COPY" && in.cmd != "ADD" {
			continue
		}
		var c copyInstr
		var rest []string
		for _, f := range strings.Fields(in.args) {
			if v, ok := strings.CutPrefix(f, "--from="); ok {
				c.from = v
			} else if !strings.HasPrefix(f, "--") {
				rest = append(rest, f)
			}
		}
		c.sources, c.dest = rest[:len(rest)-1], rest[len(rest)-1]
		out = append(out, c)
	}
	return out
}

func (s stage) runs() string {
	var b strings.Builder
	for _, in := range s.instrs {
		if in.cmd == "RUN" {
			b.WriteString(in.args + "\n")
		}
	}
	return b.String()
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, readRepoFile(t, dockerfilePath))
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages, want a builder and a final stage", dockerfilePath, len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// The builder's Go is go.mod's.
	goLine := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindStringSubmatch(readRepoFile(t, "go.mod"))
	img := regexp.MustCompile(`^golang:(\d+)\.(\d+)(?:\.\d+)?-bookworm$`).FindStringSubmatch(build.image)
	if img == nil || goLine == nil || img[1] != goLine[1] || img[2] != goLine[2] {
		t.Errorf("builder image %s, want golang:%s.%s-bookworm (go.mod's go line)", build.image, goLine[1], goLine[2])
	}

	// It builds every command in cmd/, statically, with -trimpath.
	var cmds []string
	entries, _ := os.ReadDir(repoPath("cmd"))
	for _, e := range entries {
		if e.IsDir() && exists("cmd/"+e.Name()+"/main.go") {
			cmds = append(cmds, "./cmd/"+e.Name())
		}
	}
	run := build.runs()
	built := regexp.MustCompile(`\./cmd/[\w-]+`).FindAllString(run, -1)
	slices.Sort(built)
	if !slices.Equal(built, cmds) {
		t.Errorf("the builder builds %v, cmd/ has %v", built, cmds)
	}
	for _, want := range []string{"CGO_ENABLED=0", "go build", "-trimpath"} {
		if !strings.Contains(run, want) {
			t.Errorf("the builder's RUN lacks %q", want)
		}
	}

	// COPY sources exist, and the Dockerfile's .dockerignore lets them into the context.
	ignore := readRepoFile(t, dockerfilePath+".dockerignore")
	names := map[string]bool{}
	for i, s := range stages {
		if s.name != "" {
			names[s.name] = true
		}
		for _, c := range s.copies() {
			if c.from != "" {
				if !names[c.from] {
					t.Errorf("stage %d copies from %q, no earlier stage", i, c.from)
				}
				continue
			}
			for _, src := range c.sources {
				if !exists(src) {
					t.Errorf("COPY %s: no such file in the repository", src)
				}
				if !regexp.MustCompile(`(?m)^!` + regexp.QuoteMeta(strings.TrimSuffix(src, "/")) + `/?$`).MatchString(ignore) {
					t.Errorf("COPY %s: not let in by %s.dockerignore", src, dockerfilePath)
				}
			}
		}
	}

	// The final stage: slim Debian with bpftool and iproute2, the binaries in /usr/local/bin and
	// what the init container runs where the manifest and install-cni.sh expect it.
	if !strings.HasPrefix(final.image, "debian:") || !strings.HasSuffix(final.image, "-slim") {
		t.Errorf("final image %s, want a slim Debian", final.image)
	}
	install := regexp.MustCompile(`apt-get install[^&;]*`).FindString(final.runs())
	for _, pkg := range []string{"bpftool", "iproute2"} {
		if !slices.Contains(strings.Fields(install), pkg) {
			t.Errorf("the final stage does not install %s (%q)", pkg, install)
		}
	}
	defs := scriptDefaults(readRepoFile(t, "deploy/k8s/install-cni.sh"))
	initCmd := container(t, loadManifest(t).daemonSet(t).Spec.Template.Spec.InitContainers, "install-cni").Command
	want := map[string]string{ // file in the image -> what puts it there
		"/usr/local/bin/margay-agent":                    "",
		"/usr/local/bin/margay-cni":                      "",
		"/usr/local/bin/margay-cni-direct":               "",
		"/usr/local/bin/margayctl":                       "",
		"/usr/local/bin/margay-docker":                   "",
		defs["MARGAY_BIN_DIR"] + "/margay-cni":           "",
		defs["MARGAY_BIN_DIR"] + "/margay-cni-direct":    "",
		defs["MARGAY_SHARE_DIR"] + "/10-margay.conflist": "deploy/cni/10-margay.conflist",
	}
	if len(initCmd) > 0 {
		want[initCmd[0]] = "deploy/k8s/install-cni.sh"
	}
	have := map[string]string{}
	for _, c := range final.copies() {
		for _, src := range c.sources {
			dst := c.dest
			if strings.HasSuffix(dst, "/") {
				dst += filepath.Base(src)
			}
			have[dst] = src
		}
	}
	for dst, src := range want {
		got, ok := have[dst]
		if !ok || (src != "" && got != src) {
			t.Errorf("the image has no %s from %q (copies %v)", dst, src, have)
		}
	}
}

// TestDockerfileBuildContext lays out the builder stage's COPY sources in a directory of their own
// and lists the packages its RUN builds there: what the image build would lack shows as an error.
func TestDockerfileBuildContext(t *testing.T) {
	build := parseDockerfile(t, readRepoFile(t, dockerfilePath))[0]
	dir := t.TempDir()
	for _, c := range build.copies() {
		for _, src := range c.sources {
			from, dst := repoPath(src), filepath.Join(dir, c.dest)
			switch {
			case strings.HasSuffix(src, "/"): // a directory's contents into dest
				from += "/."
			case strings.HasSuffix(c.dest, "/"):
				dst = filepath.Join(dst, filepath.Base(src))
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("cp", "-a", from, dst).CombinedOutput(); err != nil {
				t.Fatalf("cp %s: %v\n%s", src, err, out)
			}
		}
	}
	pkgs := regexp.MustCompile(`\./cmd/[\w-]+`).FindAllString(build.runs(), -1)
	cmd := exec.Command("go", append([]string{"list", "-deps", "-test=false"}, pkgs...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=readonly", "GOPROXY=off", "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("go list in the builder's context: %v\n%s", err, out)
	}
}
