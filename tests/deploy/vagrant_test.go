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

// shellVars returns the literal assignments of a script (`uplink=ens32`), to resolve $uplink.
func shellVars(script string) map[string]string {
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\w+)=([^\s$"'`+"`"+`;]+)$`).FindAllStringSubmatch(script, -1) {
		out[m[1]] = m[2]
	}
	return out
}

func expand(s string, vars map[string]string) string {
	return regexp.MustCompile(`\$\{?(\w+)\}?`).ReplaceAllStringFunc(s, func(ref string) string {
		name := strings.Trim(ref, "${}")
		if v, ok := vars[name]; ok {
			return v
		}
		return ref
	})
}

func TestVagrantfile(t *testing.T) {
	vf := readRepoFile(t, "vagrant/Vagrantfile")
	vms := map[string]string{}
	macs := map[string]bool{}
	for _, m := range regexp.MustCompile(`"(vm\d+)"\s*=>\s*\[\s*"([\d.]+)"\s*,\s*"([0-9a-fA-F]{12})"\s*\]`).FindAllStringSubmatch(vf, -1) {
		vms[m[1]] = m[2]
		macs[strings.ToLower(m[3])] = true
	}
	want := map[string]string{"vm100": "192.168.26.100", "vm101": "192.168.26.101", "vm102": "192.168.26.102"}
	if len(vms) != len(want) || len(macs) != len(want) {
		t.Errorf("Vagrantfile VMs %v with %d distinct MACs, want %v each with its own", vms, len(macs), want)
	}
	for name, ip := range want {
		if vms[name] != ip {
			t.Errorf("Vagrantfile: %s at %q, want %s", name, vms[name], ip)
		}
	}
	for _, re := range []string{
		`config\.vm\.box\s*=\s*BOX`,
		`BOX\s*=\s*ENV\.fetch\("[A-Z_]+",\s*"debian/[\w.-]+"\)`,
		`\.vm\.network\s+"private_network",\s*ip:\s*ip,.*mac:\s*mac`,
		`synced_folder\s+"\.\.",\s*"/vagrant"`,
		`\.vm\.hostname\s*=\s*name`,
	} {
		if !regexp.MustCompile(re).MatchString(vf) {
			t.Errorf("Vagrantfile does not match %s", re)
		}
	}
	provisioners := regexp.MustCompile(`path:\s*"([^"]+)"`).FindAllStringSubmatch(vf, -1)
	if len(provisioners) == 0 {
		t.Error("Vagrantfile has no shell provisioner")
	}
	for _, m := range provisioners {
		if !exists("vagrant/" + m[1]) {
			t.Errorf("Vagrantfile provisions with %s, not in vagrant/", m[1])
		}
	}
	if ruby, err := exec.LookPath("ruby"); err == nil {
		if out, err := exec.Command(ruby, "-c", repoPath("vagrant/Vagrantfile")).CombinedOutput(); err != nil {
			t.Errorf("ruby -c Vagrantfile: %v\n%s", err, out)
		}
	} else {
		t.Log("no ruby: the Vagrantfile's syntax is not checked")
	}
}

func TestVagrantProvisioning(t *testing.T) {
	prov := readRepoFile(t, "vagrant/provision.sh")
	vars := shellVars(prov)
	if vars["uplink"] != "ens32" || vars["repo"] != "/vagrant" {
		t.Fatalf("provision.sh: uplink=%q repo=%q, want ens32 and /vagrant", vars["uplink"], vars["repo"])
	}
	// The uplink is renamed ens32 by MAC, and the agent uses it, in a BGP mesh.
	for _, re := range []string{`(?m)^MACAddress=\$mac$`, `(?m)^Name=\$uplink$`, `ip link set "\$cur" name "\$uplink"`} {
		if !regexp.MustCompile(re).MatchString(prov) {
			t.Errorf("provision.sh does not match %s", re)
		}
	}
	args := regexp.MustCompile(`MARGAY_AGENT_ARGS="([^"]*)"`).FindStringSubmatch(prov)
	if args == nil {
		t.Fatal("provision.sh sets no MARGAY_AGENT_ARGS")
	}
	agentArgs := strings.Fields(expand(args[1], vars))
	checkInvocation(t, "provision.sh MARGAY_AGENT_ARGS", "margay-agent", agentArgs)
	checkFlagValues(t, "provision.sh MARGAY_AGENT_ARGS", "margay-agent", agentArgs)
	for _, want := range [][]string{{"--uplink", "ens32"}, {"--bgp"}} {
		if i := slices.Index(agentArgs, want[0]); i < 0 || (len(want) == 2 && (i+1 >= len(agentArgs) || agentArgs[i+1] != want[1])) {
			t.Errorf("provision.sh: margay-agent %v lacks %v", agentArgs, want)
		}
	}
	// etcd: a member per VM, clustered; Margay installed with deploy/install.sh and started.
	for _, want := range []string{"etcd-server", "ETCD_INITIAL_CLUSTER=", "deploy/install.sh", "systemctl restart margay-agent.service"} {
		if !strings.Contains(prov, want) {
			t.Errorf("provision.sh lacks %q", want)
		}
	}
	if !strings.Contains(readRepoFile(t, "vagrant/check.sh"), "ping") {
		t.Error("check.sh does not ping")
	}
}

// deploymentTexts are the files of the Vagrant setup and of the deployment docs that name commands
// and repository paths.
func deploymentTexts(t *testing.T) map[string]string {
	out := map[string]string{}
	entries, err := os.ReadDir(repoPath("vagrant"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		out["vagrant/"+e.Name()] = readRepoFile(t, "vagrant/"+e.Name())
	}
	for _, f := range []string{"deploy/install.sh", "deploy/k8s/install-cni.sh", "deploy/systemd/margay.env", "deploy/systemd/datastore.yaml"} {
		out[f] = readRepoFile(t, f)
	}
	out["README.md#Deployment"] = readmeSection(t, "Deployment")
	return out
}

func readmeSection(t *testing.T, title string) string {
	readme := readRepoFile(t, "README.md")
	start := strings.Index(readme, "\n## "+title+"\n")
	if start < 0 {
		t.Fatalf("README.md has no section %q", title)
	}
	rest := readme[start+1:]
	if end := strings.Index(rest[3:], "\n## "); end >= 0 {
		rest = rest[:end+4]
	}
	return rest
}

// TestCommandsExist checks every margayctl and margay-agent command line of the Vagrant setup,
// the install scripts and the README's Deployment section against the binaries' --help.
func TestCommandsExist(t *testing.T) {
	n := 0
	for name, text := range deploymentTexts(t) {
		keepComments := false
		if strings.HasSuffix(name, ".md") || strings.Contains(name, ".md#") {
			text, keepComments = markdownCode(text), true
		}
		for _, bin := range []string{"margayctl", "margay-agent"} {
			for _, words := range invocations(text, bin, keepComments) {
				checkInvocation(t, name, bin, words)
				n++
			}
		}
		for _, m := range regexp.MustCompile(`MARGAY_AGENT_ARGS="([^"]*)"`).FindAllStringSubmatch(text, -1) {
			checkInvocation(t, name+" MARGAY_AGENT_ARGS", "margay-agent", strings.Fields(m[1]))
			n++
		}
	}
	if n < 10 {
		t.Errorf("found only %d command lines: is the parser broken?", n)
	}
	t.Logf("%d command lines checked", n)
}

// TestReferencedPathsExist checks the repository paths the Vagrant setup and the docs name: under
// /vagrant in the VMs, Markdown links, and deploy/, vagrant/, cmd/ paths.
func TestReferencedPathsExist(t *testing.T) {
	n := 0
	for name, text := range deploymentTexts(t) {
		var paths []string
		for _, m := range regexp.MustCompile(`(?:/vagrant|\$repo|\$\{repo\})/([\w./-]*[\w-])`).FindAllStringSubmatch(text, -1) {
			paths = append(paths, m[1])
		}
		base := filepath.Dir(strings.TrimSuffix(name, "#Deployment"))
		for _, m := range regexp.MustCompile(`\]\(([^)#:]+)\)`).FindAllStringSubmatch(text, -1) {
			paths = append(paths, filepath.ToSlash(filepath.Join(base, m[1])))
		}
		for _, m := range regexp.MustCompile("(?:^|[\\s`(\"'])((?:deploy|vagrant|cmd)/[\\w./-]*[\\w-])").FindAllStringSubmatch(text, -1) {
			paths = append(paths, m[1])
		}
		for _, p := range paths {
			if p == "bin" || strings.HasPrefix(p, "bin/") { // built by make build
				continue
			}
			n++
			if !exists(p) {
				t.Errorf("%s names %s, which is not in the repository", name, p)
			}
		}
	}
	if n < 10 {
		t.Errorf("found only %d paths: is the parser broken?", n)
	}
	t.Logf("%d paths checked", n)
}

// TestScriptsParse runs the shells' syntax check on every script (and shellcheck where installed).
func TestScriptsParse(t *testing.T) {
	scripts := []string{"deploy/install.sh", "deploy/k8s/install-cni.sh"}
	matches, _ := filepath.Glob(repoPath("vagrant/*.sh"))
	for _, m := range matches {
		rel, _ := filepath.Rel(repoRoot(), m)
		scripts = append(scripts, filepath.ToSlash(rel))
	}
	shellcheck, _ := exec.LookPath("shellcheck")
	for _, s := range scripts {
		text := readRepoFile(t, s)
		shebang, _, _ := strings.Cut(text, "\n")
		var shells []string
		switch shebang {
		case "#!/bin/sh":
			shells = []string{"sh", "dash", "bash"} // POSIX: every shell must take it
		case "#!/bin/bash":
			shells = []string{"bash"}
		default:
			t.Errorf("%s: shebang %q, want #!/bin/sh or #!/bin/bash", s, shebang)
			continue
		}
		for _, sh := range shells {
			path, err := exec.LookPath(sh)
			if err != nil {
				continue
			}
			if out, err := exec.Command(path, "-n", repoPath(s)).CombinedOutput(); err != nil {
				t.Errorf("%s -n %s: %v\n%s", sh, s, err, out)
			}
		}
		if st, err := os.Stat(repoPath(s)); err != nil || st.Mode().Perm()&0o100 == 0 {
			t.Errorf("%s is not executable", s)
		}
		if !regexp.MustCompile(`(?m)^set -e`).MatchString(text) {
			t.Errorf("%s does not set -e", s)
		}
		if shellcheck != "" {
			if out, err := exec.Command(shellcheck, repoPath(s)).CombinedOutput(); err != nil {
				t.Errorf("shellcheck %s: %v\n%s", s, err, out)
			}
		}
	}
}
