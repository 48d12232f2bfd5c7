package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

const unitPath = "deploy/systemd/margay-agent.service"

// unitSettings parses a systemd unit into "Section.Key" -> values.
func unitSettings(text string) map[string][]string {
	out := map[string][]string{}
	section := ""
	text = strings.ReplaceAll(text, "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, _ := strings.Cut(line, "=")
			out[section+"."+strings.TrimSpace(k)] = append(out[section+"."+strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return out
}

// envAssignments returns the VAR=value lines of an environment file, quotes removed.
func envAssignments(text string) map[string]string {
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=(.*)$`).FindAllStringSubmatch(text, -1) {
		out[m[1]] = strings.Trim(strings.TrimSpace(m[2]), `"'`)
	}
	return out
}

func TestSystemdUnit(t *testing.T) {
	text := readRepoFile(t, unitPath)
	u := unitSettings(text)
	one := func(key string) string {
		if len(u[key]) != 1 {
			t.Errorf("%s: %s set %d times, want once", unitPath, key, len(u[key]))
			return ""
		}
		return u[key][0]
	}
	for key, want := range map[string]string{
		"Service.Restart":         "always",
		"Service.LimitMEMLOCK":    "infinity",
		"Service.EnvironmentFile": "-/etc/margay/margay.env",
		"Install.WantedBy":        "multi-user.target",
	} {
		if got := one(key); got != want {
			t.Errorf("%s: %s=%s, want %s", unitPath, key, got, want)
		}
	}
	for _, key := range []string{"Unit.After", "Unit.Wants"} {
		if !slices.Contains(strings.Fields(strings.Join(u[key], " ")), "network-online.target") {
			t.Errorf("%s: %s lacks network-online.target", unitPath, key)
		}
	}

	// ExecStart runs the agent install.sh installs, with flags it has; $MARGAY_AGENT_ARGS comes
	// from the environment file, whose template's flags must exist too.
	exec0 := strings.Fields(one("Service.ExecStart"))
	if len(exec0) == 0 || exec0[0] != "/usr/local/bin/margay-agent" {
		t.Fatalf("%s: ExecStart %v, want /usr/local/bin/margay-agent …", unitPath, exec0)
	}
	checkInvocation(t, unitPath+" ExecStart", "margay-agent", exec0[1:])
	env := envAssignments(readRepoFile(t, "deploy/systemd/margay.env"))
	if _, ok := env["MARGAY_AGENT_ARGS"]; !ok || !slices.Contains(exec0, "$MARGAY_AGENT_ARGS") {
		t.Errorf("margay.env's MARGAY_AGENT_ARGS is not passed by ExecStart %v", exec0)
	}
	checkInvocation(t, "deploy/systemd/margay.env MARGAY_AGENT_ARGS", "margay-agent", strings.Fields(env["MARGAY_AGENT_ARGS"]))
	var full []string
	for _, w := range exec0[1:] {
		if w == "$MARGAY_AGENT_ARGS" {
			full = append(full, strings.Fields(env["MARGAY_AGENT_ARGS"])...)
		} else {
			full = append(full, w)
		}
	}
	checkFlagValues(t, unitPath+" ExecStart with margay.env", "margay-agent", full)
	agentEnv := help(t, "margay-agent").env
	for k := range envAssignments(regexp.MustCompile(`(?m)^#`).ReplaceAllString(readRepoFile(t, "deploy/systemd/margay.env"), "")) {
		if k != "MARGAY_AGENT_ARGS" && k != "MARGAY_DOCKER_ARGS" && !agentEnv[k] {
			t.Errorf("margay.env sets %s, which margay-agent does not read (its --help names %v)", k, keys(agentEnv))
		}
	}
	// --config names the file install.sh writes; the template must load.
	for i, w := range exec0 {
		if w == "--config" && i+1 < len(exec0) && exec0[i+1] != "/etc/margay/datastore.yaml" {
			t.Errorf("ExecStart reads %s, install.sh writes /etc/margay/datastore.yaml", exec0[i+1])
		}
	}
	if cfg, err := datastore.LoadConfigFile(repoPath("deploy/systemd/datastore.yaml")); err != nil {
		t.Error(err)
	} else if err := cfg.Validate(); err != nil {
		t.Error(err)
	}

	// systemd's own check, with the binary where it can find it.
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: the unit was checked by the parser above only")
		return
	}
	dir := t.TempDir()
	agent := filepath.Join(dir, "margay-agent")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "margay-agent.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(text, "/usr/local/bin/margay-agent", agent)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", unit).CombinedOutput()
	// verify reports unknown settings as warnings with exit status 0: any line about our unit fails.
	var bad []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "margay-agent") {
			bad = append(bad, line)
		}
	}
	if err != nil || len(bad) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitPath, err, out)
	}
}

const dockerUnitPath = "deploy/systemd/margay-docker.service"

// The Docker plugin's unit runs margay-docker with flags it has, with margay.env's
// MARGAY_DOCKER_ARGS, before dockerd (which restores its containers' networks through it).
func TestSystemdDockerUnit(t *testing.T) {
	text := readRepoFile(t, dockerUnitPath)
	u := unitSettings(text)
	for key, want := range map[string]string{
		"Service.Restart":         "always",
		"Service.EnvironmentFile": "-/etc/margay/margay.env",
		"Unit.Before":             "docker.service",
		"Install.WantedBy":        "multi-user.target",
	} {
		if got := strings.Join(u[key], " "); got != want {
			t.Errorf("%s: %s=%q, want %q", dockerUnitPath, key, got, want)
		}
	}
	exec0 := strings.Fields(strings.Join(u["Service.ExecStart"], " "))
	if len(exec0) == 0 || exec0[0] != "/usr/local/bin/margay-docker" || !slices.Contains(exec0, "$MARGAY_DOCKER_ARGS") {
		t.Fatalf("%s: ExecStart %v, want /usr/local/bin/margay-docker … $MARGAY_DOCKER_ARGS", dockerUnitPath, exec0)
	}
	env := envAssignments(readRepoFile(t, "deploy/systemd/margay.env"))
	if _, ok := env["MARGAY_DOCKER_ARGS"]; !ok {
		t.Errorf("margay.env has no MARGAY_DOCKER_ARGS")
	}
	var full []string
	for _, w := range exec0[1:] {
		if w == "$MARGAY_DOCKER_ARGS" {
			full = append(full, strings.Fields(env["MARGAY_DOCKER_ARGS"])...)
		} else {
			full = append(full, w)
		}
	}
	checkInvocation(t, dockerUnitPath+" ExecStart", "margay-docker", full)
	checkFlagValues(t, dockerUnitPath+" ExecStart with margay.env", "margay-docker", full)
}

func TestInstallScript(t *testing.T) {
	root := t.TempDir()
	// A systemctl that records its arguments, first on PATH, to see what install.sh asks of it.
	fake := t.TempDir()
	calls := filepath.Join(fake, "calls")
	if err := os.WriteFile(filepath.Join(fake, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >>"+calls+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	install := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command("sh", append([]string{repoPath("deploy/install.sh")}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PATH="+fake+":"+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("install.sh %v: %v\n%s", args, err, out)
		}
	}
	install(repoRoot(), "--bin", binaries, "--root", root, "--no-systemctl")
	if _, err := os.Stat(calls); err == nil {
		t.Error("install.sh --no-systemctl ran systemctl")
	}

	want := map[string]struct {
		src  string // repository file or binary it is a copy of
		exec bool
	}{
		"usr/local/bin/margay-agent":               {filepath.Join(binaries, "margay-agent"), true},
		"usr/local/bin/margay-cni":                 {filepath.Join(binaries, "margay-cni"), true},
		"usr/local/bin/margay-cni-direct":          {filepath.Join(binaries, "margay-cni-direct"), true},
		"usr/local/bin/margayctl":                  {filepath.Join(binaries, "margayctl"), true},
		"usr/local/bin/margay-docker":              {filepath.Join(binaries, "margay-docker"), true},
		"etc/systemd/system/margay-docker.service": {repoPath(dockerUnitPath), false},
		"opt/cni/bin/margay-cni":                   {filepath.Join(binaries, "margay-cni"), true},
		"opt/cni/bin/margay-cni-direct":            {filepath.Join(binaries, "margay-cni-direct"), true},
		"etc/cni/net.d/10-margay.conflist":         {repoPath("deploy/cni/10-margay.conflist"), false},
		"etc/systemd/system/margay-agent.service":  {repoPath(unitPath), false},
		"etc/margay/margay.env":                    {repoPath("deploy/systemd/margay.env"), false},
		"etc/margay/datastore.yaml":                {repoPath("deploy/systemd/datastore.yaml"), false},
		"etc/margay/margayctl.cfg":                 {repoPath("deploy/systemd/margayctl.cfg"), false},
	}
	var files []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	for _, f := range files {
		if _, ok := want[f]; !ok {
			t.Errorf("install.sh wrote %s, which it should not (a temporary file?)", f)
		}
	}
	for rel, w := range want {
		got, err := os.ReadFile(filepath.Join(root, rel))
		src, _ := os.ReadFile(w.src)
		if err != nil || !bytes.Equal(got, src) {
			t.Errorf("%s: not a copy of %s: %v", rel, w.src, err)
			continue
		}
		st, _ := os.Stat(filepath.Join(root, rel))
		if isExec := st.Mode().Perm()&0o111 != 0; isExec != w.exec {
			t.Errorf("%s: mode %v", rel, st.Mode())
		}
	}
	// The conflist's datastoreConfig is the file installed beside it (a short dial timeout: no
	// etcd here).
	ds := filepath.Join(root, "etc/margay/datastore.yaml")
	if f, err := os.OpenFile(ds, os.O_APPEND|os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("dialTimeout: 300ms\n")
		_ = f.Close()
	}
	validateConflist(t, filepath.Join(root, "etc/cni/net.d/10-margay.conflist"), map[string]string{"/etc/margay": filepath.Join(root, "etc/margay")})
	// margayctl loads the margayctl.cfg installed, and through it the datastore file beside it:
	// what fails is etcd (none runs here), not the config.
	ctlCfg, err := os.ReadFile(filepath.Join(root, "etc/margay/margayctl.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	remapped := filepath.Join(t.TempDir(), "margayctl.cfg")
	if err := os.WriteFile(remapped, bytes.ReplaceAll(ctlCfg, []byte("/etc/margay/"), []byte(filepath.Join(root, "etc/margay")+"/")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(binaries, "margayctl"), "--config", remapped, "pool", "list").CombinedOutput(); err != nil &&
		!strings.Contains(string(out), "connect to etcd at http://127.0.0.1:2379") {
		t.Errorf("margayctl with the installed margayctl.cfg: %v\n%s", err, out)
	}

	// Local settings stay; the rest is updated. Without --bin, ./bin is used. With --root,
	// systemctl enables the unit below the root and starts nothing.
	env := filepath.Join(root, "etc/margay/margay.env")
	if err := os.WriteFile(env, []byte("MARGAY_AGENT_ARGS=--bgp\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(root, "etc/systemd/system/margay-agent.service")
	if err := os.WriteFile(unit, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	cwd := t.TempDir()
	if err := os.Symlink(binaries, filepath.Join(cwd, "bin")); err != nil {
		t.Fatal(err)
	}
	install(cwd, "--root", root, "--no-start")
	if b, _ := os.ReadFile(env); string(b) != "MARGAY_AGENT_ARGS=--bgp\n" {
		t.Errorf("install.sh overwrote margay.env: %q", b)
	}
	if b, _ := os.ReadFile(unit); string(b) == "old" {
		t.Error("install.sh did not update the unit")
	}
	b, _ := os.ReadFile(calls)
	if got, want := strings.TrimSpace(string(b)), "--root="+root+" enable margay-agent.service"; got != want {
		t.Errorf("install.sh --root ran systemctl %q, want %q", got, want)
	}
	// A host with dockerd gets the Docker plugin's unit enabled too.
	if err := os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/sbin/dockerd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(calls)
	install(cwd, "--root", root, "--no-start")
	b, _ = os.ReadFile(calls)
	if got, want := strings.TrimSpace(string(b)), "--root="+root+" enable margay-agent.service margay-docker.service"; got != want {
		t.Errorf("install.sh --root on a Docker host ran systemctl %q, want %q", got, want)
	}

	// Bad arguments are refused before anything is written.
	cmd := exec.Command("sh", repoPath("deploy/install.sh"), "--bogus")
	if err := cmd.Run(); err == nil {
		t.Error("install.sh --bogus succeeded")
	}
	cmd = exec.Command("sh", repoPath("deploy/install.sh"), "--bin", t.TempDir(), "--root", t.TempDir(), "--no-systemctl")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "missing") {
		t.Errorf("install.sh with no binaries: %v %s", err, out)
	}
}
