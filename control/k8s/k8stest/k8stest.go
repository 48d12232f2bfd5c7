package k8stest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/margaynet/margay/control/datastore/etcdembed"
	"github.com/margaynet/margay/tests/poll"
)

const (
	// BinDirEnv names the directory of the Kubernetes binaries, DefaultBinDir without it.
	BinDirEnv = "MARGAY_K8S_BIN_DIR"
	// DefaultBinDir is where make k8s-bins puts Kubernetes v1.37.2.
	DefaultBinDir = "/var/cache/margay/kubernetes/v1.37.2/bin"
	// ServiceCIDR is the API server's range of service addresses: inside 198.18.0.0/15, as every
	// address of Margay's tests, though nothing here routes it.
	ServiceCIDR = "198.18.128.0/24"
	// Issuer is the issuer of the API server's service account tokens.
	Issuer = "https://kubernetes.default.svc.cluster.local"
)

// readyWithin bounds the wait for /readyz: a few seconds usually, much more on two loaded cores.
const readyWithin = 2 * time.Minute

// API is a kube-apiserver and its etcd, both on 127.0.0.1.
type API struct {
	// Config is the admin's: a client certificate of user admin in group system:masters.
	Config *rest.Config
	// Client is a clientset of Config.
	Client kubernetes.Interface

	ca   *authority
	etcd *etcdembed.Etcd
	kv   *clientv3.Client // the API server's etcd, for Store
	proc *process

	stopOnce sync.Once
}

// Start starts an etcd and a kube-apiserver of their own for the test, with their data in
// tb.TempDir(), and stops both at cleanup, logging the API server's last output when the test
// failed. It fails the test when the binary is missing (make k8s-bins builds it).
func Start(tb testing.TB) *API {
	tb.Helper()
	a, err := start(tb.TempDir())
	if err != nil {
		tb.Fatalf("k8stest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("kube-apiserver's last output:\n%s", a.proc.out.String())
		}
		a.Stop()
	})
	return a
}

// shared is the API server of the test process that Shared starts and Main stops.
var shared struct {
	once sync.Once
	dir  string
	api  *API
	err  error
}

// mainRuns: Main runs the package's tests, and so stops what Shared starts.
var mainRuns atomic.Bool

// Main runs the package's tests and then stops the API server that Shared started, if any. A
// package whose tests call Shared has `func TestMain(m *testing.M) { k8stest.Main(m) }`.
func Main(m *testing.M) {
	mainRuns.Store(true)
	code := m.Run()
	if shared.api != nil {
		shared.api.Stop()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// Shared returns the API server of the test process, started by the first call: the tests of
// a package share it, each in namespaces of its own (Namespace). When the test fails, the API
// server's last output is logged. The package's TestMain must be Main.
func Shared(tb testing.TB) *API {
	tb.Helper()
	if !mainRuns.Load() {
		tb.Fatal("k8stest.Shared: the package's TestMain must call k8stest.Main, which stops the shared kube-apiserver at exit")
	}
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "margay-k8s-"); shared.err == nil {
			shared.api, shared.err = start(shared.dir)
		}
	})
	if shared.err != nil {
		tb.Fatalf("k8stest: %v", shared.err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("the shared kube-apiserver's last output:\n%s", shared.api.proc.out.String())
		}
	})
	return shared.api
}

// BinDir returns the directory of the Kubernetes binaries: $MARGAY_K8S_BIN_DIR, or DefaultBinDir.
func BinDir() string {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d
	}
	return DefaultBinDir
}

// start starts etcd and the API server with their files in dir and waits until /readyz says ok.
// On an error it leaves nothing running.
func start(dir string) (_ *API, err error) {
	bin := filepath.Join(BinDir(), "kube-apiserver")
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("no kube-apiserver binary at %s (%s=%q): run make k8s-bins, which builds Kubernetes v1.37.2 there",
			bin, BinDirEnv, os.Getenv(BinDirEnv))
	}
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	a := &API{}
	if a.ca, err = newAuthority(); err != nil {
		return nil, err
	}
	servingCert, servingKey, err := a.ca.serving()
	if err != nil {
		return nil, err
	}
	adminCert, adminKey, err := a.ca.client("admin", "system:masters")
	if err != nil {
		return nil, err
	}
	saPriv, saPub, err := serviceAccountKeys()
	if err != nil {
		return nil, err
	}
	if err := writeFiles(pki, map[string][]byte{
		"ca.crt": a.ca.certPEM, "apiserver.crt": servingCert, "apiserver.key": servingKey,
		"sa.key": saPriv, "sa.pub": saPub,
	}); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), readyWithin)
	defer cancel()
	if a.etcd, err = etcdembed.Start(ctx, filepath.Join(dir, "etcd"),
		etcdembed.WithClientURL("http://127.0.0.1:0"), etcdembed.WithUnsafeNoFsync()); err != nil {
		return nil, fmt.Errorf("start the API server's etcd: %w", err)
	}
	defer func() {
		if err != nil {
			a.Stop()
		}
	}()
	if a.kv, err = clientv3.New(clientv3.Config{Endpoints: a.etcd.Endpoints(), DialTimeout: 10 * time.Second}); err != nil {
		return nil, fmt.Errorf("connect to the API server's etcd: %w", err)
	}

	// A free port can be taken by someone else between our look and the API server's bind:
	// then it exits at once, and another port is tried.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		a.Config = &rest.Config{
			Host:            "https://127.0.0.1:" + strconv.Itoa(port),
			TLSClientConfig: rest.TLSClientConfig{CAData: a.ca.certPEM, CertData: adminCert, KeyData: adminKey},
			QPS:             100, Burst: 200, // the tests' setup; the clients under test keep client-go's limits
		}
		if a.Client, err = kubernetes.NewForConfig(a.Config); err != nil {
			return nil, err
		}
		args := []string{
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(port),
			"--etcd-servers=" + strings.Join(a.etcd.Endpoints(), ","),
			// The kubernetes service's endpoints would be 127.0.0.1, which the reconciler refuses.
			"--endpoint-reconciler-type=none",
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
			"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
			"--cert-dir=" + pki, // nothing is written there with the files above; not /var/run/kubernetes
			"--client-ca-file=" + filepath.Join(pki, "ca.crt"),
			"--service-account-issuer=" + Issuer,
			"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
			"--authorization-mode=RBAC",
			// No controller manager creates each namespace's default service account, which
			// this plugin would wait for; and tests store pods exactly as they write them (a pod
			// without a service account, as margay-cni must handle).
			"--disable-admission-plugins=ServiceAccount",
			"--profiling=false",
		}
		a.proc, err = startProcess(bin, args...)
		if err != nil {
			return nil, err
		}
		err = a.waitReady(ctx)
		if err == nil {
			return a, nil
		}
		if attempt < 3 && a.proc.exited() && strings.Contains(a.proc.out.String(), "address already in use") {
			continue
		}
		return nil, fmt.Errorf("%w\nkube-apiserver's last output:\n%s", err, a.proc.out.String())
	}
}

// waitReady polls /readyz until it says ok, the process exits or ctx ends.
func (a *API) waitReady(ctx context.Context) error {
	deadline, _ := ctx.Deadline()
	rc := a.Client.Discovery().RESTClient()
	err := poll.Every(100*time.Millisecond, time.Until(deadline), func() error {
		if a.proc.exited() {
			return nil // said below
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		body, err := rc.Get().AbsPath("/readyz").DoRaw(rctx)
		if err != nil {
			return fmt.Errorf("GET /readyz: %w: %s", err, bytes.TrimSpace(body))
		}
		return nil
	})
	if a.proc.exited() {
		return fmt.Errorf("kube-apiserver exited at start: %v", a.proc.err)
	}
	if err != nil {
		return fmt.Errorf("kube-apiserver at %s not ready within %s: %w", a.Config.Host, readyWithin, err)
	}
	return nil
}

// Stop stops the API server (SIGTERM, then SIGKILL after 10 s) and then its etcd, and waits
// for both; calling it again does nothing.
func (a *API) Stop() {
	a.stopOnce.Do(func() {
		if a.proc != nil {
			a.proc.stop()
		}
		if a.kv != nil {
			_ = a.kv.Close()
		}
		if a.etcd != nil {
			a.etcd.Close()
		}
	})
}

// Output returns the API server's last output.
func (a *API) Output() string { return a.proc.out.String() }

// process is a running kube-apiserver.
type process struct {
	cmd  *exec.Cmd
	out  *tail
	done chan struct{} // closed when it has exited; err is then its exit status
	err  error
}

func startProcess(bin string, args ...string) (*process, error) {
	p := &process{out: &tail{max: 256 << 10}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	// Killed with the test process however that ends (a timeout's panic runs no cleanup).
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kube-apiserver: %w", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

// String returns the last 60 lines kept.
func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := strings.Split(strings.TrimRight(string(t.buf), "\n"), "\n")
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	return strings.Join(lines, "\n")
}

// freePort returns a TCP port of 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ClosedAddress returns an https URL of 127.0.0.1 where nothing listens: where a kubeconfig
// points when its API server is down.
func ClosedAddress(tb testing.TB) string {
	tb.Helper()
	port, err := freePort()
	if err != nil {
		tb.Fatal(err)
	}
	return "https://127.0.0.1:" + strconv.Itoa(port)
}
