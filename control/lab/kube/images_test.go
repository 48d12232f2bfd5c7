//go:build k8s

package kube

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// Build makes the lab's four images in a dockerd of its own, which it stops: the archive holds
// them under their references, the node image runs margay-agent and carries every binary, the
// CNI install script and bpftool, its next revision is another image, busybox serves HTTP, and
// the pause binary is Kubernetes'. A second Build finds the archive by its inputs and starts no
// dockerd. The default cache directory is used, so that a warm cache makes this quick; other
// builds may share it (the lab's, another worktree's), which the checks allow for.
func TestImageBuild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 38*time.Minute)
	defer cancel()
	out := &logWriter{t: t}
	b := ImageBuild{Repo: repoRoot(t), Out: out}
	start := time.Now()
	img, err := b.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first Build: %s (cached %v), %s", time.Since(start).Round(time.Second), img.Cached, img.Archive)

	// Nothing changed: the archive is found by its inputs, with no dockerd. At once, before
	// another worktree's build (waiting for the cache's lock) replaces it.
	out.lines = nil
	start = time.Now()
	again, err := b.Build(ctx)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second Build: %s", took)
	if slices.ContainsFunc(out.lines, func(l string) bool { return strings.Contains(l, "waiting for another build") }) {
		t.Log("another build used the cache in between: the second Build is not checked")
	} else {
		if !again.Cached || again.Archive != img.Archive || again.Key != img.Key {
			t.Errorf("second Build: %+v, want the cached %s", again, img.Archive)
		}
		if took > 20*time.Second {
			t.Errorf("second Build took %s", took)
		}
	}
	checkNothingLeft(t, b)

	want := Images{Archive: img.Archive, Node: "margay/node:latest", NodeNext: "margay/node:next",
		Busybox: "busybox:margay", Pause: "margay/pause:lab", Key: img.Key, Cached: img.Cached}
	if img != want {
		t.Fatalf("images %+v, want %+v", img, want)
	}

	a := readArchive(t, img.Archive)
	var tags []string
	for _, m := range a.manifest {
		tags = append(tags, m.RepoTags...)
	}
	slices.Sort(tags)
	if w := []string{img.Busybox, img.Node, img.NodeNext, img.Pause}; !slices.Equal(tags, w) {
		t.Fatalf("archive's RepoTags %v, want %v", tags, w)
	}

	node, next := a.image(t, img.Node), a.image(t, img.NodeNext)
	if ep := node.config.Config.Entrypoint; !slices.Equal(ep, []string{"/usr/local/bin/margay-agent"}) {
		t.Errorf("node image's entrypoint %q", ep)
	}
	files := a.files(t, node)
	for _, f := range []string{"usr/local/bin/margay-agent", "usr/local/bin/margay-cni", "usr/local/bin/margay-cni-direct",
		"usr/local/bin/margay-docker", "usr/local/bin/margayctl", "opt/margay/install-cni.sh", "opt/margay/10-margay.conflist",
		"usr/sbin/bpftool", "usr/bin/ip", "etc/ssl/certs/ca-certificates.crt"} {
		if _, ok := files[f]; !ok {
			t.Errorf("node image lacks %s", f)
		}
	}
	if hd := files["opt/margay/install-cni.sh"]; hd != nil && hd.Mode&0o111 == 0 {
		t.Errorf("install-cni.sh is not executable: %o", hd.Mode)
	}
	if node.id == next.id {
		t.Errorf("%s and %s are one image (%s)", img.Node, img.NodeNext, node.id)
	}
	if l := next.config.Config.Labels[RevisionLabel]; l != "next" {
		t.Errorf("%s: %s=%q", img.NodeNext, RevisionLabel, l)
	}
	// docker save names an image's top layer after the image: the contents are compared.
	if d := node.config.RootFS.DiffIDs; len(d) == 0 || !slices.Equal(d, next.config.RootFS.DiffIDs) {
		t.Errorf("%s does not share the layers of %s", img.NodeNext, img.Node)
	}

	bb := a.image(t, img.Busybox)
	if cmd := bb.config.Config.Cmd; !slices.Equal(cmd, []string{"/bin/sh"}) {
		t.Errorf("busybox image's command %q", cmd)
	}
	bbFiles := a.files(t, bb)
	for _, f := range []string{"bin/busybox", "bin/sh", "bin/httpd", "bin/nc", "bin/wget", "bin/sleep", "etc/passwd", "tmp"} {
		if _, ok := bbFiles[f]; !ok {
			t.Errorf("busybox image lacks %s", f)
		}
	}

	pause := a.image(t, img.Pause)
	if ep := pause.config.Config.Entrypoint; !slices.Equal(ep, []string{"/pause"}) {
		t.Errorf("pause image's entrypoint %q", ep)
	}
	if len(pause.layers) != 1 {
		t.Errorf("pause image has %d layers, want 1 (FROM scratch)", len(pause.layers))
	}
	bin := filepath.Join(t.TempDir(), "pause")
	if err := os.WriteFile(bin, a.file(t, pause, "pause"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-v").CombinedOutput(); err != nil || !strings.Contains(string(out), "pause.c margay-k8s-"+KubernetesVersion) {
		t.Errorf("pause -v: %v: %s", err, out)
	}

}

// Failures name their step and show the tail of its output, and leave nothing running. Each
// case in a cache directory of its own, so that debootstrap is due: an unreachable mirror, a
// mirror that serves no Debian (on 127.0.0.1), a repository without deploy/Dockerfile.
func TestImageBuildErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "no Debian here\n")
	}))
	defer mirror.Close()
	empty := t.TempDir()
	for _, tc := range []struct {
		name, repo, mirror string
		want               []string
	}{
		{"unreachable mirror", repoRoot(t), "http://127.0.0.1:9/debian",
			[]string{"images: debian base image: debian mirror http://127.0.0.1:9/debian unreachable"}},
		{"no Debian mirror", repoRoot(t), mirror.URL + "/debian",
			[]string{"images: debian base image: debootstrap: exit status 1", "I: Retrieving InRelease", mirror.URL}},
		{"no Dockerfile", empty, "http://127.0.0.1:9/debian",
			[]string{"images: hash the build context: open " + filepath.Join(empty, "deploy", "Dockerfile")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache, err := os.MkdirTemp("", "mgyimg")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(cache) })
			b := ImageBuild{Repo: tc.repo, CacheDir: cache, Mirror: tc.mirror, Out: &logWriter{t: t}}
			_, err = b.Build(ctx)
			t.Logf("Build: %v", err)
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("Build: %v\nwant %q in it", err, w)
				}
			}
			checkNothingLeft(t, b)
		})
	}
}

// The build context's hash follows deploy/Dockerfile.dockerignore as docker does.
func TestDockerignore(t *testing.T) {
	repo := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		p := filepath.Join(repo, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ignore, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "Dockerfile.dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	write("deploy/Dockerfile.dockerignore", string(ignore))
	write("deploy/Dockerfile", "FROM scratch\n")
	write("go.mod", "module x\n")
	write("control/a/a.go", "package a\n")
	write("deploy/cni/10-margay.conflist", "{}\n")
	first := hashContext(t, repo)
	for _, tc := range []struct {
		file    string
		changes bool
	}{
		{"control/a/a.go", true},
		{"control/a/new.go", true},
		{"go.mod", true},
		{"deploy/cni/10-margay.conflist", true},
		{"deploy/k8s/install-cni.sh", true},
		{"deploy/Dockerfile", true},
		{"control/a/a_test.go", false},
		{"README.md", false},
		{"bin/margay-agent", false},
		{".git/index", false},
		{"deploy/cni/other.conflist", false},
		{"deploy/k8s/daemonset.yaml", false},
		{"tests/x/x.go", false},
	} {
		t.Run(tc.file, func(t *testing.T) {
			before := hashContext(t, repo)
			write(tc.file, "changed "+tc.file+"\n")
			if after := hashContext(t, repo); (after != before) != tc.changes {
				t.Errorf("hash %s → %s, want a change: %v", before, after, tc.changes)
			}
		})
	}
	if hashContext(t, repo) == first {
		t.Error("hash unchanged")
	}
}

func hashContext(t *testing.T, repo string) string {
	t.Helper()
	h, err := contextHash(repo, "deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func repoRoot(t testing.TB) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// logWriter logs Build's progress lines and keeps them.
type logWriter struct {
	t     *testing.T
	lines []string
}

func (w *logWriter) Write(p []byte) (int, error) {
	l := strings.TrimRight(string(p), "\n")
	w.lines = append(w.lines, l)
	w.t.Log(l)
	return len(p), nil
}

// checkNothingLeft: no process of the cache directory's dockerd (its binaries name the
// directory, the namespace holder has it mounted), no pid file, no cgroup. It holds the cache's
// lock, so that it sees no other Build at work there.
func checkNothingLeft(t *testing.T, b ImageBuild) {
	t.Helper()
	b = b.withDefaults()
	b.Out = &logWriter{t: t}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	unlock, err := b.lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	h := b.DockerHost()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		mounts, _ := os.ReadFile(filepath.Join(p, "mountinfo"))
		if bytes.Contains(cmdline, []byte(h.Dir)) || bytes.Contains(mounts, []byte(h.Dir+"/run ")) {
			t.Errorf("process %s left: %s", filepath.Base(p), bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '}))
		}
	}
	if _, err := h.Command("true"); err == nil {
		t.Error("the build's mount namespace holder still runs")
	}
	for _, f := range []string{"dockerd.pid", "mntns.pid"} {
		if _, err := os.Stat(filepath.Join(h.Dir, f)); err == nil {
			t.Errorf("%s left", f)
		}
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + h.CgroupParent); len(m) != 0 {
		t.Errorf("cgroups left: %v", m)
	}
}

// archive is a docker-save tarball: its manifest and image configs.
type archive struct {
	path     string
	manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	configs map[string][]byte
}

type image struct {
	id     string
	layers []string
	config struct {
		Config struct {
			Entrypoint, Cmd []string
			Labels          map[string]string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
}

func readArchive(t *testing.T, path string) *archive {
	t.Helper()
	a := &archive{path: path, configs: map[string][]byte{}}
	a.walk(t, func(hd *tar.Header, r io.Reader) {
		if hd.Name == "manifest.json" || (strings.HasSuffix(hd.Name, ".json") && !strings.Contains(hd.Name, "/")) {
			b, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			a.configs[hd.Name] = b
		}
	})
	if err := json.Unmarshal(a.configs["manifest.json"], &a.manifest); err != nil {
		t.Fatalf("%s: manifest.json: %v", path, err)
	}
	return a
}

func (a *archive) walk(t *testing.T, f func(*tar.Header, io.Reader)) {
	t.Helper()
	file, err := os.Open(a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	tr := tar.NewReader(file)
	for {
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", a.path, err)
		}
		f(hd, tr)
	}
}

func (a *archive) image(t *testing.T, ref string) image {
	t.Helper()
	for _, m := range a.manifest {
		if slices.Contains(m.RepoTags, ref) {
			img := image{id: strings.TrimSuffix(m.Config, ".json"), layers: m.Layers}
			if err := json.Unmarshal(a.configs[m.Config], &img.config); err != nil {
				t.Fatalf("%s: config %s: %v", ref, m.Config, err)
			}
			return img
		}
	}
	t.Fatalf("%s is not in %s", ref, a.path)
	return image{}
}

// files lists what the image's layers hold (whiteouts aside), by path without a leading "./".
func (a *archive) files(t *testing.T, img image) map[string]*tar.Header {
	t.Helper()
	files := map[string]*tar.Header{}
	a.walk(t, func(hd *tar.Header, r io.Reader) {
		if !slices.Contains(img.layers, hd.Name) {
			return
		}
		lr := tar.NewReader(r)
		for {
			h, err := lr.Next()
			if err != nil {
				return
			}
			files[strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")] = h
		}
	})
	return files
}

// file is one file's content from the image's layers.
func (a *archive) file(t *testing.T, img image, name string) []byte {
	t.Helper()
	var content []byte
	a.walk(t, func(hd *tar.Header, r io.Reader) {
		if !slices.Contains(img.layers, hd.Name) {
			return
		}
		lr := tar.NewReader(r)
		for {
			h, err := lr.Next()
			if err != nil {
				return
			}
			if strings.TrimPrefix(h.Name, "./") == name {
				if content, err = io.ReadAll(lr); err != nil {
					t.Fatal(err)
				}
			}
		}
	})
	if content == nil {
		t.Fatalf("%s: no %s in its layers", img.id, name)
	}
	return content
}
