package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI is the cluster's certificate authority and the files made from it, under Dir:
//
//	ca.crt, ca.key               the cluster CA (client CA of the apiserver, kubelet and service account tokens' root)
//	apiserver.crt/.key           the apiserver's serving certificate
//	sa.key, sa.pub               the service account token signing key
//	<name>.crt/.key, <name>.kubeconfig   one identity: admin, controller-manager, scheduler, kube-proxy, node-vm100…
//
// Keys are ECDSA P-256; certificates last a year (a lab lives for hours).
type PKI struct {
	Dir string
	ca  *x509.Certificate
	key *ecdsa.PrivateKey
}

// Identity is a client of the apiserver: the certificate's CN is its user name, O its groups.
type Identity struct {
	File   string // base name of its files: <File>.crt, <File>.key, <File>.kubeconfig
	User   string
	Groups []string
}

// Identities of the control plane and of the lab's user; nodes get NodeIdentity.
var (
	Admin             = Identity{File: "admin", User: "margay-lab-admin", Groups: []string{"system:masters"}}
	ControllerManager = Identity{File: "controller-manager", User: "system:kube-controller-manager"}
	Scheduler         = Identity{File: "scheduler", User: "system:kube-scheduler"}
	KubeProxy         = Identity{File: "kube-proxy", User: "system:kube-proxy"}
	// KubeletClient is the apiserver's identity towards kubelets (logs, exec, port-forward).
	KubeletClient = Identity{File: "apiserver-kubelet-client", User: "kube-apiserver-kubelet-client", Groups: []string{"system:masters"}}
)

// NodeIdentity is a kubelet's identity, as the Node authorizer wants it.
func NodeIdentity(node string) Identity {
	return Identity{File: "node-" + node, User: "system:node:" + node, Groups: []string{"system:nodes"}}
}

// NewPKI creates the CA, the service account key and the apiserver's serving certificate for the
// given addresses and names, in dir (created).
func NewPKI(dir string, apiserverIPs []net.IP, apiserverNames []string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "margay-lab-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, ca: ca, key: key}
	if err := p.write("ca", der, key); err != nil {
		return nil, err
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), sa); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, err
	}
	return p, p.issue("apiserver", pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth, apiserverIPs, apiserverNames)
}

// LoadPKI reads the CA that NewPKI made in dir, to issue more identities.
func LoadPKI(dir string) (*PKI, error) {
	crt, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	key, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(crt)
	kb, _ := pem.Decode(key)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("%s: ca.crt or ca.key is no PEM", dir)
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	return &PKI{Dir: dir, ca: ca, key: k}, nil
}

// File is the path of one of the PKI's files, e.g. File("ca.crt").
func (p *PKI) File(name string) string { return filepath.Join(p.Dir, name) }

// Kubeconfig issues a client certificate for id and writes <File>.kubeconfig, which reaches the
// apiserver at server (https://…) with it; it returns the kubeconfig's path.
func (p *PKI) Kubeconfig(id Identity, server string) (string, error) {
	if err := p.issue(id.File, pkix.Name{CommonName: id.User, Organization: id.Groups}, x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
		return "", err
	}
	read := func(n string) (string, error) {
		b, err := os.ReadFile(p.File(n))
		return base64.StdEncoding.EncodeToString(b), err
	}
	ca, err1 := read("ca.crt")
	crt, err2 := read(id.File + ".crt")
	key, err3 := read(id.File + ".key")
	if err := errors.Join(err1, err2, err3); err != nil {
		return "", err
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
  - name: margay-lab
    cluster:
      server: %s
      certificate-authority-data: %s
users:
  - name: %s
    user:
      client-certificate-data: %s
      client-key-data: %s
contexts:
  - name: margay-lab
    context:
      cluster: margay-lab
      user: %s
current-context: margay-lab
`, server, ca, id.User, crt, key, id.User)
	path := p.File(id.File + ".kubeconfig")
	return path, os.WriteFile(path, []byte(kc), 0o600)
}

func (p *PKI) issue(file string, subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, names []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     p.ca.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
		DNSNames:     names,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", file, err)
	}
	return p.write(file, der, key)
}

func (p *PKI) write(file string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.WriteFile(p.File(file+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return writeKey(p.File(file+".key"), key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	b, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), 0o600)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
