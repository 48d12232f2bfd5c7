package datastore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/datastore/etcdembed"
)

// testPKI holds PEM files of a CA, a server certificate for 127.0.0.1 and a client certificate.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	otherCert, otherKey                              string // a client certificate from another CA
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caCert, caKey := newCert(t, dir, "ca", nil, nil, func(c *x509.Certificate) {
		c.IsCA = true
		c.BasicConstraintsValid = true
		c.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	})
	_, _ = newCert(t, dir, "server", caCert, caKey, func(c *x509.Certificate) {
		c.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	_, _ = newCert(t, dir, "client", caCert, caKey, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	otherCA, otherKey := newCert(t, dir, "otherca", nil, nil, func(c *x509.Certificate) {
		c.IsCA = true
		c.BasicConstraintsValid = true
		c.KeyUsage = x509.KeyUsageCertSign
	})
	_, _ = newCert(t, dir, "other", otherCA, otherKey, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	f := func(name string) string { return filepath.Join(dir, name) }
	return testPKI{
		ca: f("ca.pem"), serverCert: f("server.pem"), serverKey: f("server-key.pem"),
		clientCert: f("client.pem"), clientKey: f("client-key.pem"),
		otherCert: f("other.pem"), otherKey: f("other-key.pem"),
	}
}

// newCert writes <name>.pem and <name>-key.pem, signed by parent (self-signed if nil).
func newCert(t *testing.T, dir, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, edit func(*x509.Certificate)) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "margay-test-" + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	edit(tmpl)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+"-key.pem", "EC PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestTLS(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	e := datastoretest.Start(t,
		etcdembed.WithClientURL("https://127.0.0.1:0"),
		etcdembed.WithServerTLS(pki.serverCert, pki.serverKey, pki.ca))
	eps := e.Endpoints()
	if !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("Endpoints() = %v, want https://127.0.0.1:<port>", eps)
	}

	c := datastoretest.Connect(t, datastore.Config{Endpoints: eps, CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey})
	if _, err := c.Pools().Create(t.Context(), "p", testPool("p", "198.19.0.0/16")); err != nil {
		t.Fatalf("write over TLS: %v", err)
	}

	// Without a client certificate, or with one from another CA, etcd refuses the connection and
	// New says so once its context ends.
	for _, tt := range []struct {
		name string
		cfg  datastore.Config
		want string
	}{
		{"no client cert", datastore.Config{Endpoints: eps, CAFile: pki.ca}, "certificate required"},
		{"foreign cert", datastore.Config{Endpoints: eps, CAFile: pki.ca, CertFile: pki.otherCert, KeyFile: pki.otherKey}, "remote error: tls"},
		{"server not trusted", datastore.Config{Endpoints: eps, CertFile: pki.clientCert, KeyFile: pki.clientKey}, "certificate signed by unknown authority"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
			defer cancel()
			c, err := datastore.New(ctx, tt.cfg)
			if err == nil {
				c.Close()
				t.Fatal("New succeeded, want an error")
			}
			if !strings.Contains(err.Error(), "connect to etcd at "+eps[0]) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want it to name the endpoint and say %q", err, tt.want)
			}
			t.Logf("New: %v", err)
		})
	}
}

// closedEndpoint returns the URL of a port nothing listens on.
func closedEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

func TestNewUnreachable(t *testing.T) {
	t.Parallel()
	ep := closedEndpoint(t)

	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	start := time.Now()
	c, err := datastore.New(ctx, datastore.Config{Endpoints: []string{ep}, DialTimeout: 300 * time.Millisecond})
	if err == nil {
		c.Close()
		t.Fatal("New succeeded against a closed port")
	}
	// The last dial's error: refused, as a rule, but on a loaded machine an attempt's own
	// deadline can pass before the dial ran (i/o timeout). Either way it is named.
	lastDial := "dial tcp " + strings.TrimPrefix(ep, "http://") + ": "
	if !strings.Contains(err.Error(), ep) || !strings.Contains(err.Error(), lastDial) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New = %v, want the endpoint, the deadline and the last dial's error named", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("New took %s, want it bounded by its 1s context", d)
	}
	t.Logf("New: %v", err)
}

// Dial, as a command connects, gives up after the dial timeout, or DefaultCommandTimeout when
// the config sets none, also when its context would wait longer.
func TestDialUnreachable(t *testing.T) {
	t.Parallel()
	ep := closedEndpoint(t)

	for _, tc := range []struct {
		dial, bound time.Duration
	}{{500 * time.Millisecond, 500 * time.Millisecond}, {0, datastore.DefaultCommandTimeout}} {
		cfg := datastore.Config{Endpoints: []string{ep}, DialTimeout: tc.dial}
		if got := cfg.CommandDialTimeout(); got != tc.bound {
			t.Errorf("CommandDialTimeout of dial timeout %s = %s, want %s", tc.dial, got, tc.bound)
		}
		start := time.Now()
		c, err := datastore.Dial(t.Context(), cfg)
		if err == nil {
			c.Close()
			t.Fatal("Dial succeeded against a closed port")
		}
		if !strings.Contains(err.Error(), "connect to etcd at "+ep) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Dial = %v, want the endpoint and the deadline named", err)
		}
		if d := time.Since(start); d < tc.bound || d > 2*tc.bound+time.Second {
			t.Errorf("Dial with dial timeout %s took %s, want about %s", tc.dial, d, tc.bound)
		}
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	e := datastoretest.Start(t)
	eps := e.Endpoints()
	admin := datastoretest.Connect(t, datastore.Config{Endpoints: eps}).Raw()
	if _, err := admin.UserAdd(ctx, "root", "s3cret"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}

	c := datastoretest.Connect(t, datastore.Config{Endpoints: eps, Username: "root", Password: "s3cret"})
	if _, err := c.Nodes().Create(ctx, "host1", datastore.Node{AddressV4: pfx("198.18.0.1/24")}); err != nil {
		t.Fatalf("write as root: %v", err)
	}

	// A wrong password fails at once, not when the context ends.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	bad, err := datastore.New(wctx, datastore.Config{Endpoints: eps, Username: "root", Password: "wrong"})
	if err == nil {
		bad.Close()
		t.Fatal("New with a wrong password succeeded")
	}
	if !strings.Contains(err.Error(), "authentication failed") || time.Since(start) > 5*time.Second {
		t.Fatalf("New with a wrong password = %v after %s, want an authentication error at once", err, time.Since(start))
	}
}
