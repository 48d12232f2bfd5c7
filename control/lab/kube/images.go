package kube

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/margaynet/margay/control/lab"
)

// The references of the images in the archive, as kubelet asks containerd for them.
const (
	NodeRef     = "margay/node:latest"
	NodeNextRef = "margay/node:next"
	BusyboxRef  = "busybox:margay"
	PauseRef    = "margay/pause:lab"
)

const (
	// DefaultCacheDir holds the archive, the base images and the build dockerd's data root.
	DefaultCacheDir = "/var/cache/margay/images"
	// KubernetesVersion is the module k8s.io/kubernetes whose build/pause/linux/pause.c the pause
	// image is compiled from: the version the lab's Kubernetes binaries are built from.
	KubernetesVersion = "v1.37.2"
	// RevisionLabel tells the node image's two builds apart: NodeNext carries "next", so that it
	// has an image ID of its own while every layer is shared.
	RevisionLabel = "dev.margay.revision"
	// SourceLabel on the node images is the hash of their build context.
	SourceLabel = "dev.margay.source"

	suite     = "bookworm"
	debianRef = "debian:bookworm-slim"
	golangRef = "golang:1.26-bookworm"
	// baseLabel holds the key of a base image's inputs, so a present image is known current.
	baseLabel = "dev.margay.base"
	// recipe names the way this file makes the images: change it when that changes, so that no
	// cached image of the old way is used.
	recipe = "margay-images-1"
	// cgroupParent is where the build's containers go (leftovers.sh looks for *margay-lab-*),
	// with a hash of CacheDir unless that is the default.
	cgroupParent = "margay-lab-images"
	pauseVersion = "margay-k8s-" + KubernetesVersion
	logTail      = 40
)

// BusyboxApplets are the commands of the test pods' busybox image: the Docker lab's
// (lab.BusyboxApplets) and what Service tests and small scripts need, httpd above all
// (busybox httpd -f -p 8080; nc -l is Debian's busybox nc).
var BusyboxApplets = withApplets(lab.BusyboxApplets, "httpd", "env", "mkdir", "rm", "cp", "mv", "touch", "ln", "chmod",
	"grep", "sed", "awk", "cut", "tr", "sort", "uniq", "head", "tail", "wc", "seq", "xargs", "printf", "test", "[",
	"date", "id", "kill", "uname", "timeout", "nslookup", "netstat", "mktemp", "stat", "sha256sum", "dd")

func withApplets(base []string, more ...string) []string {
	all := slices.Clone(base)
	for _, a := range more {
		if !slices.Contains(all, a) {
			all = append(all, a)
		}
	}
	return all
}

// ImageBuild builds and caches the lab's container images.
//
// Nothing comes from a registry: the base images deploy/Dockerfile names are made here —
// debian:bookworm-slim by debootstrap from the machine's Debian mirror, golang:1.26-bookworm from
// it and this machine's Go toolchain — and kept as docker-save archives in CacheDir. The builds
// run in a dockerd of their own (lab.DockerHost: own mount namespace, data root under CacheDir,
// cgroup) in this machine's network namespace, with no bridge, NAT or firewall rule, and with
// `docker build --network host` so that apt and the Go module proxy are reached. That dockerd is
// stopped before Build returns. The archive is cached under a hash of every input: a second
// Build with nothing changed starts no dockerd.
type ImageBuild struct {
	Repo     string    // repository root: the build context of deploy/Dockerfile
	CacheDir string    // default /var/cache/margay/images
	Out      io.Writer // progress lines
	// Mirror is the Debian mirror of debootstrap and of the images' apt, SecurityMirror the one of
	// bookworm-security; by default the URIs of /etc/apt/sources.list.d/debian.sources (else
	// deb.debian.org).
	Mirror, SecurityMirror string
	// Docker is the docker client; by default Debian's /usr/bin/docker (the version of its dockerd:
	// a newer client may want buildx for `docker build`).
	Docker string
}

// Images is a docker-archive tarball (docker save format, which `ctr -n k8s.io images import`
// reads) holding every image the lab needs, and their references.
type Images struct {
	Archive  string // path of the tarball
	Node     string // "margay/node:latest" built from deploy/Dockerfile
	NodeNext string // "margay/node:next": the same build with RevisionLabel=next, another image ID
	Busybox  string // "busybox:margay": Debian's static busybox with BusyboxApplets, CMD ["/bin/sh"]
	Pause    string // "margay/pause:lab": Kubernetes' pause.c, static, FROM scratch, ENTRYPOINT ["/pause"]
	Key      string // the hash of every input, part of the archive's name
	Cached   bool   // the archive was there already: Build started no dockerd
}

func (b ImageBuild) withDefaults() ImageBuild {
	if b.CacheDir == "" {
		b.CacheDir = DefaultCacheDir
	}
	if b.Out == nil {
		b.Out = io.Discard
	}
	if b.Mirror == "" || b.SecurityMirror == "" {
		m, s := aptMirrors("/etc/apt/sources.list.d/debian.sources")
		if b.Mirror == "" {
			b.Mirror = m
		}
		if b.SecurityMirror == "" {
			b.SecurityMirror = s
		}
	}
	if b.Docker == "" {
		b.Docker = "docker"
		if _, err := os.Stat("/usr/bin/docker"); err == nil {
			b.Docker = "/usr/bin/docker"
		}
	}
	return b
}

// DockerHost is the build's dockerd. Its Netns is /proc/self/ns/net: nsenter opens that in its
// own process, which is in the caller's (the machine's) network namespace, so joining it changes
// nothing — pid 1's namespace links are not readable on every machine.
func (b ImageBuild) DockerHost() lab.DockerHost {
	b = b.withDefaults()
	cgroup := cgroupParent
	if filepath.Clean(b.CacheDir) != DefaultCacheDir {
		// Builds in other cache directories may run at the same time: StopDocker kills what is
		// in its cgroup.
		cgroup += "-" + hashOf(filepath.Clean(b.CacheDir))[:8]
	}
	return lab.DockerHost{Name: "images", Netns: "/proc/self/ns/net", Dir: filepath.Join(b.CacheDir, "dockerd"),
		CgroupParent: cgroup, Client: b.Docker}
}

func (b ImageBuild) logf(format string, args ...any) {
	fmt.Fprintf(b.Out, "images: "+format+"\n", args...)
}

// Build returns the archive of the current inputs: the cached one, or one built now.
func (b ImageBuild) Build(ctx context.Context) (Images, error) {
	b = b.withDefaults()
	if b.Repo == "" {
		return Images{}, errors.New("images: no repository (ImageBuild.Repo)")
	}
	if err := os.MkdirAll(b.CacheDir, 0o755); err != nil {
		return Images{}, fmt.Errorf("images: %w", err)
	}
	in, err := b.inputs(ctx)
	if err != nil {
		return Images{}, fmt.Errorf("images: %w", err)
	}
	img := Images{Archive: filepath.Join(b.CacheDir, "margay-images-"+in.key+".tar"),
		Node: NodeRef, NodeNext: NodeNextRef, Busybox: BusyboxRef, Pause: PauseRef, Key: in.key}
	unlock, err := b.lock(ctx)
	if err != nil {
		return Images{}, fmt.Errorf("images: %w", err)
	}
	defer unlock()
	if _, err := os.Stat(img.Archive); err == nil {
		removeOthers(b.CacheDir, "margay-images-", img.Archive)
		b.logf("%s is current (no build)", img.Archive)
		img.Cached = true
		return img, nil
	}
	start := time.Now()
	if err := b.build(ctx, in, img.Archive); err != nil {
		return Images{}, err
	}
	st, err := os.Stat(img.Archive)
	if err != nil {
		return Images{}, fmt.Errorf("images: %w", err)
	}
	b.logf("built %s (%d MB) in %s", img.Archive, st.Size()>>20, time.Since(start).Round(time.Second))
	return img, nil
}

// inputs are what the images are made of, and the keys of their caches.
type inputs struct {
	goVersion, goroot, goproxy, gosumdb string
	pauseSrc                            string
	localCAs                            map[string][]byte // the machine's /usr/local/share/ca-certificates/*.crt
	source                              string            // hash of deploy/Dockerfile's build context
	debian, golang, key                 string            // cache keys: the base images' and the archive's
}

func (b ImageBuild) inputs(ctx context.Context) (inputs, error) {
	var in inputs
	out, err := exec.CommandContext(ctx, "go", "env", "GOVERSION", "GOROOT", "GOPROXY", "GOSUMDB", "GOARCH", "GOMODCACHE").Output()
	if err != nil {
		return in, fmt.Errorf("go env: %w", err)
	}
	env := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(env) != 6 {
		return in, fmt.Errorf("go env: unexpected output %q", out)
	}
	in.goVersion, in.goroot, in.goproxy, in.gosumdb = strings.TrimPrefix(env[0], "go"), env[1], env[2], env[3]
	goarch, modcache := env[4], env[5]
	in.pauseSrc = filepath.Join(modcache, "k8s.io", "kubernetes@"+KubernetesVersion, "build", "pause", "linux", "pause.c")
	if _, err := os.Stat(in.pauseSrc); err != nil {
		// Outside any module, so that no go.mod or go.sum changes.
		cmd := exec.CommandContext(ctx, "go", "mod", "download", "k8s.io/kubernetes@"+KubernetesVersion)
		cmd.Dir = os.TempDir()
		if out, err := cmd.CombinedOutput(); err != nil {
			return in, fmt.Errorf("download the pause source (k8s.io/kubernetes@%s): %w: %s", KubernetesVersion, err, out)
		}
	}
	pause, err := os.ReadFile(in.pauseSrc)
	if err != nil {
		return in, fmt.Errorf("read the pause source: %w", err)
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return in, fmt.Errorf("busybox image: %w (make deps installs busybox-static)", err)
	}
	if in.source, err = contextHash(b.Repo, "deploy/Dockerfile"); err != nil {
		return in, fmt.Errorf("hash the build context: %w", err)
	}
	in.localCAs = map[string][]byte{}
	cas, _ := filepath.Glob("/usr/local/share/ca-certificates/*.crt")
	var caHash []string
	for _, f := range cas {
		crt, err := os.ReadFile(f)
		if err != nil {
			return in, fmt.Errorf("local certificate authorities: %w", err)
		}
		in.localCAs[filepath.Base(f)] = crt
		caHash = append(caHash, filepath.Base(f), string(crt))
	}
	in.debian = hashOf(recipe, "debian", suite, b.Mirror, b.SecurityMirror, goarch)
	in.golang = hashOf(in.debian, "golang", in.goVersion, in.goproxy, in.gosumdb, hashOf(caHash...))
	in.key = hashOf(in.golang, in.source, hashOf(string(pause)), pauseVersion, hashOf(string(busybox)),
		strings.Join(BusyboxApplets, " "))
	return in, nil
}

func hashOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// build makes the archive in the build's dockerd, which it stops whatever happens.
func (b ImageBuild) build(ctx context.Context, in inputs, archive string) (err error) {
	h := b.DockerHost()
	// dockerd's containerd puts its sockets below Dir (108 bytes at most for a socket path).
	if len(h.Dir) > 60 {
		return fmt.Errorf("images: cache directory %s is too long for dockerd's sockets", b.CacheDir)
	}
	// A build that was killed leaves its pid files in Dir: what they name goes first.
	if err := h.StopDocker(ctx); err != nil {
		return fmt.Errorf("images: stop what an earlier build left: %w", err)
	}
	// dockerd's BuildKit runs runc with its default state directory, /run/runc, which is the
	// machine's: if the build makes it, the build removes it (only when empty, so never while
	// another runc uses it).
	_, runcErr := os.Stat("/run/runc")
	defer func() {
		if e := h.StopDocker(context.Background()); e != nil {
			err = errors.Join(err, fmt.Errorf("images: stop the build's dockerd: %w", e))
		}
		if errors.Is(runcErr, fs.ErrNotExist) {
			_ = os.Remove("/run/runc")
		}
		b.logf("build dockerd stopped")
	}()
	steps := []struct {
		name string
		do   func(context.Context, io.Writer) error
	}{
		{"start dockerd", func(ctx context.Context, log io.Writer) error { return b.startDockerd(ctx, log, h) }},
		{"debian base image", func(ctx context.Context, log io.Writer) error { return b.debian(ctx, log, h, in) }},
		{"golang base image", func(ctx context.Context, log io.Writer) error { return b.golang(ctx, log, h, in) }},
		{"node image", func(ctx context.Context, log io.Writer) error {
			return b.docker(ctx, log, h, nil, "build", "--progress", "plain", "--network", "host",
				"-f", filepath.Join(b.Repo, "deploy", "Dockerfile"), "--label", SourceLabel+"="+in.source,
				"-t", NodeRef, b.Repo)
		}},
		{"node-next image", func(ctx context.Context, log io.Writer) error {
			// The node image with one more label: its layers, another image ID.
			return b.docker(ctx, log, h, strings.NewReader("FROM "+NodeRef+"\n"), "build", "--progress", "plain",
				"--label", RevisionLabel+"=next", "-t", NodeNextRef, "-")
		}},
		{"busybox image", func(ctx context.Context, log io.Writer) error { return b.busybox(ctx, log, h) }},
		{"pause image", func(ctx context.Context, log io.Writer) error { return b.pause(ctx, log, h, in) }},
		{"save", func(ctx context.Context, log io.Writer) error {
			tmp := archive + ".tmp"
			defer os.Remove(tmp)
			if err := b.docker(ctx, log, h, nil, "save", "-o", tmp, NodeRef, NodeNextRef, BusyboxRef, PauseRef); err != nil {
				return err
			}
			if err := os.Rename(tmp, archive); err != nil {
				return err
			}
			removeOthers(b.CacheDir, "margay-images-", archive)
			return nil
		}},
		{"prune", func(ctx context.Context, log io.Writer) error {
			// Earlier builds' images lose their tags; the build cache keeps its newest 4 GB. The
			// archive is made: a failure here costs disk space only.
			if err := errors.Join(b.docker(ctx, log, h, nil, "image", "prune", "-f"),
				b.docker(ctx, log, h, nil, "builder", "prune", "-f", "--keep-storage", "4GB")); err != nil {
				b.logf("prune (ignored): %v", err)
			}
			return nil
		}},
	}
	for _, s := range steps {
		if err := b.step(ctx, s.name, s.do); err != nil {
			return err
		}
	}
	return nil
}

// step runs one step with its output in CacheDir/logs/<step>.log; a failure names the step and
// shows the log's tail.
func (b ImageBuild) step(ctx context.Context, name string, do func(context.Context, io.Writer) error) error {
	dir := filepath.Join(b.CacheDir, "logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("images: %s: %w", name, err)
	}
	file := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".log")
	log, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("images: %s: %w", name, err)
	}
	defer log.Close()
	b.logf("%s (log %s)", name, file)
	start := time.Now()
	if err := do(ctx, log); err != nil {
		return fmt.Errorf("images: %s: %w\n%s", name, err, tail(file, logTail))
	}
	b.logf("%s: done in %s", name, time.Since(start).Round(100*time.Millisecond))
	return nil
}

func (b ImageBuild) startDockerd(ctx context.Context, log io.Writer, h lab.DockerHost) error {
	if err := h.StartNamespace(); err != nil {
		return err
	}
	// dockerd uses a containerd at /run/containerd/containerd.sock when it finds one, instead of
	// starting its own: in the build's mount namespace that directory is an empty tmpfs, so no
	// lab containerd of the machine ever runs the build's containers (and the build's shims put
	// their sockets there, not in the machine's /run).
	if st, err := os.Stat("/run/containerd"); err == nil && st.IsDir() {
		cmd, err := h.Command("mount", "-t", "tmpfs", "-o", "mode=0711,size=4m", "tmpfs", "/run/containerd")
		if err != nil {
			return err
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("hide /run/containerd: %w: %s", err, out)
		}
	}
	if err := h.StartDockerd(ctx); err != nil {
		fmt.Fprintf(log, "%v\n%s", err, tail(h.LogFile("dockerd"), logTail))
		return err
	}
	return nil
}

// docker runs the build's docker client, with BuildKit: it reads deploy/Dockerfile.dockerignore.
func (b ImageBuild) docker(ctx context.Context, log io.Writer, h lab.DockerHost, stdin io.Reader, args ...string) error {
	return run(ctx, log, stdin, []string{"DOCKER_BUILDKIT=1"}, h.Client, append([]string{"-H", "unix://" + h.Sock()}, args...)...)
}

// hasBase tells whether the build's dockerd holds ref made from the inputs of key.
func (b ImageBuild) hasBase(ctx context.Context, h lab.DockerHost, ref, key string) bool {
	out, err := exec.CommandContext(ctx, h.Client, "-H", "unix://"+h.Sock(), "image", "inspect", "--format",
		`{{index .Config.Labels "`+baseLabel+`"}}`, ref).Output()
	return err == nil && strings.TrimSpace(string(out)) == key
}

// loadBase makes ref current in the build's dockerd: present already, loaded from its cached
// archive, or made by make and then saved to that archive.
func (b ImageBuild) loadBase(ctx context.Context, log io.Writer, h lab.DockerHost, ref, prefix, key string, make func() error) error {
	if b.hasBase(ctx, h, ref, key) {
		fmt.Fprintf(log, "%s (%s) is present\n", ref, key)
		return nil
	}
	cache := filepath.Join(b.CacheDir, prefix+key+".tar")
	if _, err := os.Stat(cache); err == nil {
		if err := b.docker(ctx, log, h, nil, "load", "-i", cache); err != nil {
			return err
		}
		if !b.hasBase(ctx, h, ref, key) {
			return fmt.Errorf("%s does not hold %s with %s=%s", cache, ref, baseLabel, key)
		}
		return nil
	}
	if err := make(); err != nil {
		return err
	}
	tmp := cache + ".tmp"
	defer os.Remove(tmp)
	if err := b.docker(ctx, log, h, nil, "save", "-o", tmp, ref); err != nil {
		return err
	}
	if err := os.Rename(tmp, cache); err != nil {
		return err
	}
	removeOthers(b.CacheDir, prefix, cache)
	return nil
}

// debian makes debian:bookworm-slim as Debian's image is made: a minbase debootstrap, without
// documentation, apt lists and caches, imported with the image's PATH and CMD.
func (b ImageBuild) debian(ctx context.Context, log io.Writer, h lab.DockerHost, in inputs) error {
	return b.loadBase(ctx, log, h, debianRef, "debian-bookworm-slim-", in.debian, func() error {
		if _, err := exec.LookPath("debootstrap"); err != nil {
			return fmt.Errorf("debootstrap is not installed (apt-get install debootstrap): %w", err)
		}
		if err := checkMirror(ctx, b.Mirror); err != nil {
			return err
		}
		root := filepath.Join(b.CacheDir, "rootfs")
		if err := removeTree(root); err != nil {
			return err
		}
		defer removeTree(root)
		defer os.Remove(root + ".tar")
		// In a mount namespace of its own: the /proc and /sys that debootstrap mounts in the target
		// go with it, also when debootstrap fails or is killed.
		if err := run(ctx, log, nil, nil, "unshare", "--mount", "--propagation", "private", "--",
			"debootstrap", "--variant=minbase", suite, root, b.Mirror); err != nil {
			return fmt.Errorf("debootstrap: %w", errors.Unwrap(err))
		}
		if err := b.slim(ctx, log, root); err != nil {
			return err
		}
		if err := run(ctx, log, nil, nil, "tar", "--numeric-owner", "-C", root, "-cf", root+".tar", "."); err != nil {
			return err
		}
		return b.docker(ctx, log, h, nil, "import",
			"--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"--change", `CMD ["bash"]`, "--change", "LABEL "+baseLabel+"="+in.debian, root+".tar", debianRef)
	})
}

// The files of Debian's slim images (debuerreotype): dpkg leaves documentation out, apt keeps no
// package cache and fetches no translations.
const (
	dpkgSlim = `path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
`
	aptClean = `DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
`
	aptNoLanguages = "Acquire::Languages \"none\";\n"
	slimScript     = `set -e
cd "$1"
rm -f etc/apt/sources.list
rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb var/log/apt/* var/log/*.log dev/* tmp/* var/tmp/*
if [ -d usr/share/doc ]; then
	find usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
	find usr/share/doc -mindepth 1 -type d -empty -delete
fi
rm -rf usr/share/man/* usr/share/info/* usr/share/groff/* usr/share/lintian/* usr/share/linda/*
if [ -d usr/share/locale ]; then find usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +; fi
: >etc/resolv.conf
: >etc/hostname
`
)

func (b ImageBuild) slim(ctx context.Context, log io.Writer, root string) error {
	if err := noMountsBelow(root); err != nil {
		return err
	}
	sources := fmt.Sprintf(`Types: deb
URIs: %s
Suites: %s %s-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: %s
Suites: %s-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`, b.Mirror, suite, suite, b.SecurityMirror, suite)
	for file, content := range map[string]string{
		"etc/apt/sources.list.d/debian.sources":  sources,
		"etc/dpkg/dpkg.cfg.d/docker":             dpkgSlim,
		"etc/apt/apt.conf.d/docker-clean":        aptClean,
		"etc/apt/apt.conf.d/docker-no-languages": aptNoLanguages,
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(file)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, file), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return run(ctx, log, nil, nil, "sh", "-c", slimScript, "sh", root)
}

// golang makes golang:1.26-bookworm as the official image is (its ENV included), with this
// machine's Go toolchain at /usr/local/go and its module proxy settings. It also trusts the
// certificate authorities this machine's administrator added (/usr/local/share/ca-certificates,
// Debian's place for them): where egress goes through a TLS-inspecting proxy, `go mod download`
// in the build reaches the module proxy only so. Only the build stage gets them, not the node
// image.
func (b ImageBuild) golang(ctx context.Context, log io.Writer, h lab.DockerHost, in inputs) error {
	return b.loadBase(ctx, log, h, golangRef, "golang-1.26-bookworm-", in.golang, func() error {
		dockerfile := fmt.Sprintf(`FROM %s
COPY local-ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
	&& DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
	&& rm -rf /var/lib/apt/lists/*
ENV GOLANG_VERSION=%s GOTOOLCHAIN=local GOPATH=/go GOPROXY=%q GOSUMDB=%q
ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY go/ /usr/local/go/
RUN mkdir -p /go/src /go/bin && chmod -R 1777 /go
WORKDIR /go
LABEL %s=%s
`, debianRef, in.goVersion, in.goproxy, in.gosumdb, baseLabel, in.golang)
		fmt.Fprintf(log, "Dockerfile (context: local-ca/ %v, go/ %s):\n%s\n", slices.Sorted(maps.Keys(in.localCAs)), in.goroot, dockerfile)
		// The context is a tar written as docker reads it: GOROOT is not copied anywhere first.
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(golangContext(pw, dockerfile, in.localCAs, in.goroot)) }()
		defer pr.Close() // a writer that docker stopped reading from ends
		return b.docker(ctx, log, h, pr, "build", "--progress", "plain", "--network", "host", "-t", golangRef, "-")
	})
}

// golangContext writes the build context of the golang image: its Dockerfile, local-ca/ and go/.
func golangContext(w io.Writer, dockerfile string, cas map[string][]byte, goroot string) error {
	tw := tar.NewWriter(w)
	add := func(hd *tar.Header, body []byte) error {
		hd.Uid, hd.Gid, hd.Uname, hd.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hd); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	if err := add(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), Typeflag: tar.TypeReg}, []byte(dockerfile)); err != nil {
		return err
	}
	if err := add(&tar.Header{Name: "local-ca/", Mode: 0o755, Typeflag: tar.TypeDir}, nil); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(cas)) {
		if err := add(&tar.Header{Name: "local-ca/" + name, Mode: 0o644, Size: int64(len(cas[name])), Typeflag: tar.TypeReg}, cas[name]); err != nil {
			return err
		}
	}
	err := filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(goroot, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		} else if !info.IsDir() && !info.Mode().IsRegular() {
			return nil
		}
		hd, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hd.Name = path.Join("go", filepath.ToSlash(rel))
		if info.IsDir() {
			hd.Name += "/"
		}
		if err := add(hd, nil); err != nil || !info.Mode().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// busybox imports BusyboxImage's kind of root file system with BusyboxApplets and the files a
// pod's tools look for (/etc/passwd, /etc/group).
func (b ImageBuild) busybox(ctx context.Context, log io.Writer, h lab.DockerHost) error {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("%w (make deps installs busybox-static)", err)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []*tar.Header{{Name: "bin/", Mode: 0o755, Typeflag: tar.TypeDir}, {Name: "etc/", Mode: 0o755, Typeflag: tar.TypeDir},
		{Name: "root/", Mode: 0o700, Typeflag: tar.TypeDir}, {Name: "tmp/", Mode: 0o1777, Typeflag: tar.TypeDir},
		{Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		hdrs = append(hdrs, &tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg})
	}
	for _, a := range BusyboxApplets {
		hdrs = append(hdrs, &tar.Header{Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink})
	}
	for _, hd := range hdrs {
		if err := tw.WriteHeader(hd); err != nil {
			return err
		}
		var body []byte
		if hd.Name == "bin/busybox" {
			body = bin
		} else if c, ok := files[hd.Name]; ok {
			body = []byte(c)
		}
		if _, err := tw.Write(body); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return b.docker(ctx, log, h, &buf, "import", "--change", `CMD ["/bin/sh"]`, "-", BusyboxRef)
}

// pause compiles Kubernetes' pause.c as its build/pause Makefile does (static, -Os) and builds
// the image as its Dockerfile does.
func (b ImageBuild) pause(ctx context.Context, log io.Writer, h lab.DockerHost, in inputs) error {
	if _, err := exec.LookPath("gcc"); err != nil {
		return fmt.Errorf("gcc is not installed (apt-get install gcc libc6-dev): %w", err)
	}
	dir := filepath.Join(b.CacheDir, "pause")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := run(ctx, log, nil, nil, "gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION="+pauseVersion,
		"-o", filepath.Join(dir, "pause"), in.pauseSrc); err != nil {
		return fmt.Errorf("%w (a static libc comes with libc6-dev)", err)
	}
	if err := run(ctx, log, nil, nil, "strip", filepath.Join(dir, "pause")); err != nil {
		return err
	}
	dockerfile := "FROM scratch\nADD pause /pause\nUSER 65535:65535\nENTRYPOINT [\"/pause\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		return err
	}
	return b.docker(ctx, log, h, nil, "build", "--progress", "plain", "-t", PauseRef, dir)
}

// run runs a command with its output in log, in a process group of its own that a cancelled ctx
// kills whole (debootstrap's dpkg, docker's children).
func run(ctx context.Context, log io.Writer, stdin io.Reader, env []string, name string, args ...string) error {
	fmt.Fprintf(log, "+ %s %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, log, log
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		what := filepath.Base(name)
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			what += " " + args[0]
		}
		if len(args) > 2 && args[0] == "-H" { // the docker client
			what = "docker " + args[2]
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// checkMirror fetches the suite's Release file, so that an unreachable mirror is named as such.
func checkMirror(ctx context.Context, mirror string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := strings.TrimSuffix(mirror, "/") + "/dists/" + suite + "/Release"
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return fmt.Errorf("debian mirror %s: %w", mirror, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("debian mirror %s unreachable: %w", mirror, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("debian mirror %s: %s: %s", mirror, url, resp.Status)
	}
	return nil
}

// aptMirrors reads the Debian and the security mirror from a deb822 sources file.
func aptMirrors(file string) (mirror, security string) {
	mirror, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
	b, err := os.ReadFile(file)
	if err != nil {
		return
	}
	main := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "URIs:" {
			continue
		}
		if strings.Contains(f[1], "security") {
			security = strings.TrimSuffix(f[1], "/")
		} else if !main {
			mirror, main = strings.TrimSuffix(f[1], "/"), true
		}
	}
	return
}

// lock serialises builds sharing CacheDir (the lab's and a test's, say).
func (b ImageBuild) lock(ctx context.Context) (func(), error) {
	file := filepath.Join(b.CacheDir, "lock")
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for said := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", file, err)
		}
		if !said {
			b.logf("waiting for another build (%s)", file)
			said = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", file, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// removeOthers removes the cache files named prefix<key>.tar but keep.
func removeOthers(dir, prefix, keep string) {
	old, _ := filepath.Glob(filepath.Join(dir, prefix+"*.tar"))
	for _, f := range old {
		if f != keep {
			_ = os.Remove(f)
		}
	}
}

// removeTree removes dir, which must have nothing mounted below it.
func removeTree(dir string) error {
	if err := noMountsBelow(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

func noMountsBelow(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			return fmt.Errorf("%s is mounted (left by an earlier debootstrap?): umount it first", f[4])
		}
	}
	return nil
}

// contextHash hashes the build context of dockerfile as docker sees it: the files of repo that
// its ignore file (<dockerfile>.dockerignore, else .dockerignore) lets through, with the
// Dockerfile and the ignore file themselves.
func contextHash(repo, dockerfile string) (string, error) {
	h := sha256.New()
	ignore := filepath.Join(repo, dockerfile+".dockerignore")
	if _, err := os.Stat(ignore); err != nil {
		ignore = filepath.Join(repo, ".dockerignore")
	}
	var pats []ignorePattern
	for _, f := range []string{filepath.Join(repo, dockerfile), ignore} {
		b, err := os.ReadFile(f)
		if err != nil {
			if f == ignore && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n%s", filepath.Base(f), len(b), b)
		if f == ignore {
			if pats, err = parseIgnore(b); err != nil {
				return "", fmt.Errorf("%s: %w", f, err)
			}
		}
	}
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repo, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if ignored(pats, rel) {
			if d.IsDir() && !mayInclude(pats, rel) {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "L %s %s\n", rel, target)
		case info.IsDir():
			fmt.Fprintf(h, "D %s %o\n", rel, info.Mode().Perm())
		case info.Mode().IsRegular():
			fmt.Fprintf(h, "F %s %o %d\n", rel, info.Mode().Perm(), info.Size())
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(h, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// ignorePattern is one line of a .dockerignore, with docker's (moby/patternmatcher) meaning: a
// path is ignored when the last pattern that matches it or one of its parents does not start
// with '!'.
type ignorePattern struct {
	text   string
	re     *regexp.Regexp
	negate bool
}

func parseIgnore(b []byte) ([]ignorePattern, error) {
	var pats []ignorePattern
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := ignorePattern{}
		if strings.HasPrefix(line, "!") {
			p.negate, line = true, strings.TrimSpace(line[1:])
		}
		p.text = strings.TrimPrefix(path.Clean(line), "/")
		re, err := regexp.Compile(globRegexp(p.text))
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", line, err)
		}
		p.re = re
		pats = append(pats, p)
	}
	return pats, sc.Err()
}

// globRegexp translates a dockerignore pattern: * and ? stay within a path element, ** spans
// any number of them, [...] is a character class.
func globRegexp(p string) string {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '*' && i+1 < len(p) && p[i+1] == '*':
			i++
			if i+1 < len(p) && p[i+1] == '/' {
				i++
			}
			if i+1 == len(p) {
				b.WriteString(".*")
			} else {
				b.WriteString("(.*/)?")
			}
		case c == '*':
			b.WriteString("[^/]*")
		case c == '?':
			b.WriteString("[^/]")
		case c == '[':
			if j := strings.IndexByte(p[i:], ']'); j > 0 {
				class := p[i+1 : i+j]
				if strings.HasPrefix(class, "!") {
					class = "^" + class[1:]
				}
				b.WriteString("[" + class + "]")
				i += j
			} else {
				b.WriteString(`\[`)
			}
		case c == '\\' && i+1 < len(p):
			i++
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	b.WriteString("$")
	return b.String()
}

func ignored(pats []ignorePattern, rel string) bool {
	ignore := false
	for _, p := range pats {
		m := p.re.MatchString(rel)
		for dir := path.Dir(rel); !m && dir != "."; dir = path.Dir(dir) {
			m = p.re.MatchString(dir)
		}
		if m {
			ignore = !p.negate
		}
	}
	return ignore
}

// mayInclude tells whether an ignored directory may hold files that a '!' pattern lets through,
// so that the walk must enter it (docker's own rule; a pattern starting with a wildcard may match
// anywhere).
func mayInclude(pats []ignorePattern, dir string) bool {
	for _, p := range pats {
		if p.negate && (strings.HasPrefix(p.text+"/", dir+"/") || strings.ContainsAny(p.text[:1], "*?[")) {
			return true
		}
	}
	return false
}
