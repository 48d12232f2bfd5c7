package deploy_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/margaynet/margay/control/datastore"
)

// scriptDefaults returns the defaults of a shell script's `VAR=${VAR:-default}` lines.
func scriptDefaults(script string) map[string]string {
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\w+)=\$\{(\w+):-([^}]*)\}$`).FindAllStringSubmatch(script, -1) {
		if m[1] == m[2] {
			out[m[1]] = m[3]
		}
	}
	return out
}

// validateConflist runs margay-cni STATUS on each margay-cni plugin of a conflist, host paths
// mapped to where a test installed them: the plugin must accept the config. Connecting to etcd
// may fail (code 50, 11), a config error (code 7) or a missing variable (4) fails the test.
func validateConflist(tb testing.TB, path string, hostToTest map[string]string) {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if bytes.Contains(data, []byte("__")) {
		tb.Errorf("%s: a placeholder was not replaced:\n%s", path, data)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	if list.CNIVersion == "" || list.Name == "" || len(list.Plugins) == 0 {
		tb.Fatalf("%s: not a conflist: %s", path, data)
	}
	found := false
	for _, p := range list.Plugins {
		if p["type"] != "margay-cni" {
			continue
		}
		found = true
		p["cniVersion"], p["name"] = list.CNIVersion, list.Name
		p["logFile"] = filepath.Join(tb.TempDir(), "cni.log")
		var remap func(v any) any
		remap = func(v any) any {
			switch v := v.(type) {
			case string:
				for host, test := range hostToTest {
					if rest, ok := strings.CutPrefix(v, host+"/"); ok {
						mapped := filepath.Join(test, rest)
						if _, err := os.Stat(mapped); err != nil {
							tb.Errorf("%s: %s names %s, which was not installed: %v", path, list.Name, v, err)
						}
						return mapped
					}
				}
			case map[string]any:
				for k, x := range v {
					v[k] = remap(x)
				}
			}
			return v
		}
		remap(p)
		conf, _ := json.Marshal(p)
		cmd := exec.Command(filepath.Join(binaries, "margay-cni"))
		cmd.Env = []string{"CNI_COMMAND=STATUS", "CNI_PATH=" + binaries, "PATH=" + os.Getenv("PATH")}
		cmd.Stdin = bytes.NewReader(conf)
		out, _ := cmd.Output()
		var res struct {
			Code    int    `json:"code"`
			Msg     string `json:"msg"`
			Details string `json:"details"`
		}
		if len(bytes.TrimSpace(out)) > 0 {
			if err := json.Unmarshal(out, &res); err != nil {
				tb.Fatalf("margay-cni STATUS: %v: %s", err, out)
			}
		}
		tb.Logf("margay-cni STATUS with %s: code %d %s", path, res.Code, res.Msg)
		if res.Code == 2 || res.Code == 4 || res.Code == 7 { // unsupported field, bad environment, bad config
			tb.Errorf("margay-cni rejects the plugin config of %s (code %d): %s %s\n%s", path, res.Code, res.Msg, res.Details, conf)
		}
	}
	if !found {
		tb.Errorf("%s has no margay-cni plugin", path)
	}
}

func TestShippedConflist(t *testing.T) {
	dir := t.TempDir()
	ds := filepath.Join(dir, "datastore.yaml")
	if err := os.WriteFile(ds, []byte("endpoints: [http://127.0.0.1:2379]\ndialTimeout: 300ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// What install.sh installs (and the image's default), with its datastore file.
	conf := readRepoFile(t, "deploy/cni/10-margay.conflist")
	if !strings.Contains(conf, `"/etc/margay/datastore.yaml"`) {
		t.Fatal("deploy/cni/10-margay.conflist does not read /etc/margay/datastore.yaml, which install.sh and install-cni.sh write")
	}
	validateConflist(t, repoPath("deploy/cni/10-margay.conflist"), map[string]string{"/etc/margay": dir})
}

// writeTLS writes a CA and a client certificate and key signed by it.
func writeTLS(tb testing.TB, dir string) (ca, cert, key string) {
	tb.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "margay"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &k.PublicKey, caKey)
	if err != nil {
		tb.Fatal(err)
	}
	kDER, _ := x509.MarshalECPrivateKey(k)
	ca, cert, key = filepath.Join(dir, "etcd-ca"), filepath.Join(dir, "etcd-cert"), filepath.Join(dir, "etcd-key")
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{ca, "CERTIFICATE", caDER}, {cert, "CERTIFICATE", der}, {key, "EC PRIVATE KEY", kDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	return ca, cert, key
}

// TestInstallCNI runs install-cni.sh as the init container does, with the ConfigMap's values and
// the host directories in a temporary directory, then checks what it installed and that
// margay-cni accepts the network config it wrote.
func TestInstallCNI(t *testing.T) {
	m := loadManifest(t)
	pod := &m.daemonSet(t).Spec.Template.Spec
	install := container(t, pod.InitContainers, "install-cni")
	cm := m.configMaps[configName]
	if cm == nil {
		t.Fatalf("no ConfigMap %s", configName)
	}
	const script = "deploy/k8s/install-cni.sh"
	defs := scriptDefaults(readRepoFile(t, script))

	// The script's defaults are the init container's mounts.
	im := hostMounts(pod, install)
	dirs := map[string]string{"CNI_BIN_DIR": "/opt/cni/bin", "CNI_NET_DIR": "/etc/cni/net.d", "MARGAY_CONF_DIR": "/etc/margay"}
	for v, host := range dirs {
		if mnt, ok := im[host]; !ok || mnt.MountPath != defs[v] {
			t.Errorf("%s writes %s to %s, but install-cni mounts the host's %s at %q", script, v, defs[v], host, mnt.MountPath)
		}
	}
	tokenMounted := false
	for _, v := range pod.Volumes {
		if v.Secret == nil || m.secrets[v.Secret.SecretName] == nil || m.secrets[v.Secret.SecretName].Type != corev1.SecretTypeServiceAccountToken {
			continue
		}
		for _, vm := range install.VolumeMounts {
			if vm.Name == v.Name && vm.MountPath == defs["CNI_TOKEN_DIR"] {
				tokenMounted = true
			}
		}
	}
	if !tokenMounted {
		t.Errorf("install-cni does not mount a service account token Secret at %s, where %s reads it", defs["CNI_TOKEN_DIR"], script)
	}

	for _, tc := range []struct {
		name       string
		tls, token bool
	}{{"plain", false, true}, {"tls", true, true}, {"no token", false, false}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			host := func(p string) string { return filepath.Join(root, "host", p) }
			env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root}
			var ca, cert, key string
			if tc.tls {
				ca, cert, key = writeTLS(t, t.TempDir())
			}
			endpoints := ""
			for _, e := range install.Env {
				val := e.Value
				switch {
				case e.ValueFrom == nil:
				case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName":
					val = "node-1"
				case e.ValueFrom.ConfigMapKeyRef != nil:
					val = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
				default:
					t.Fatalf("install-cni: variable %s: unexpected source %+v", e.Name, e.ValueFrom)
				}
				if tc.tls {
					switch e.Name {
					case "MARGAY_ETCD_ENDPOINTS":
						val = strings.ReplaceAll(val, "http://", "https://")
					case "MARGAY_ETCD_CA":
						val = ca
					case "MARGAY_ETCD_CERT":
						val = cert
					case "MARGAY_ETCD_KEY":
						val = key
					}
				}
				if e.Name == "MARGAY_ETCD_ENDPOINTS" {
					endpoints = val
				}
				env = append(env, e.Name+"="+val)
			}
			share := t.TempDir()
			if err := os.WriteFile(filepath.Join(share, "10-margay.conflist"), []byte(readRepoFile(t, "deploy/cni/10-margay.conflist")), 0o644); err != nil {
				t.Fatal(err)
			}
			tokenDir := filepath.Join(root, "no-token")
			if tc.token {
				tokenDir = t.TempDir()
				_ = os.WriteFile(filepath.Join(tokenDir, "token"), []byte("tok3n"), 0o600)
				_ = os.WriteFile(filepath.Join(tokenDir, "ca.crt"), []byte("cluster CA"), 0o600)
				env = append(env, "KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=443")
			}
			env = append(env, "CNI_BIN_DIR="+host("opt/cni/bin"), "CNI_NET_DIR="+host("etc/cni/net.d"),
				"MARGAY_CONF_DIR="+host("etc/margay"), "MARGAY_BIN_DIR="+binaries, "MARGAY_SHARE_DIR="+share,
				"CNI_TOKEN_DIR="+tokenDir, "MARGAY_ETCD_DIAL_TIMEOUT=300ms")
			cmd := exec.Command("sh", repoPath(script))
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			conflist := host("etc/cni/net.d/10-margay.conflist")
			if !tc.token && strings.Contains(cm.Data["cni_network_config"], "margay-kubeconfig") {
				// The Secret's token is not there yet: fail, so that the kubelet runs it again.
				if _, serr := os.Stat(conflist); err == nil || serr == nil {
					t.Fatalf("%s without a token: %v, and it wrote the network config that needs one:\n%s", script, err, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v\n%s", script, err, out)
			}

			for _, b := range []string{"margay-cni", "margay-cni-direct"} {
				plugin, err := os.ReadFile(host("opt/cni/bin/" + b))
				want, _ := os.ReadFile(filepath.Join(binaries, b))
				if err != nil || !bytes.Equal(plugin, want) {
					t.Errorf("%s not installed in the host's /opt/cni/bin: %v", b, err)
				}
				if st, err := os.Stat(host("opt/cni/bin/" + b)); err == nil && st.Mode().Perm()&0o111 == 0 {
					t.Errorf("%s installed with mode %v", b, st.Mode())
				}
			}
			_ = filepath.WalkDir(filepath.Join(root, "host"), func(p string, d os.DirEntry, _ error) error {
				if strings.Contains(d.Name(), ".tmp") {
					t.Errorf("temporary file left behind: %s", p)
				}
				return nil
			})

			dsPath := host("etc/margay/datastore.yaml")
			cfg, err := datastore.LoadConfigFile(dsPath)
			if err != nil {
				t.Fatalf("the datastore config install-cni wrote: %v", err)
			}
			var wantEP []string
			for _, ep := range strings.Split(endpoints, ",") {
				wantEP = append(wantEP, strings.TrimSpace(ep))
			}
			if !slices.Equal(cfg.Endpoints, wantEP) {
				t.Errorf("datastore.yaml endpoints %v, want %v (etcd_endpoints)", cfg.Endpoints, wantEP)
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("datastore.yaml: %v", err)
			}
			if tc.tls {
				for src, got := range map[string]string{ca: cfg.CAFile, cert: cfg.CertFile, key: cfg.KeyFile} {
					a, _ := os.ReadFile(src)
					b, err := os.ReadFile(got)
					if err != nil || !bytes.Equal(a, b) || !strings.HasPrefix(got, host("etc/margay")+"/") {
						t.Errorf("TLS file %s: datastore.yaml names %q, not a copy on the host: %v", filepath.Base(src), got, err)
					}
				}
			}

			kubeconfig := host("etc/cni/net.d/margay-kubeconfig")
			if tc.token {
				data, err := os.ReadFile(kubeconfig)
				if err != nil {
					t.Fatal(err)
				}
				var kc struct {
					Kind     string `json:"kind"`
					Clusters []struct {
						Cluster struct {
							Server string `json:"server"`
							CAData string `json:"certificate-authority-data"`
						} `json:"cluster"`
					} `json:"clusters"`
					Users []struct {
						User struct {
							Token string `json:"token"`
						} `json:"user"`
					} `json:"users"`
					CurrentContext string `json:"current-context"`
				}
				if err := yaml.Unmarshal(data, &kc); err != nil || len(kc.Clusters) != 1 || len(kc.Users) != 1 {
					t.Fatalf("margay-kubeconfig: %v\n%s", err, data)
				}
				ca, _ := base64.StdEncoding.DecodeString(kc.Clusters[0].Cluster.CAData)
				if kc.Kind != "Config" || kc.Clusters[0].Cluster.Server != "https://10.96.0.1:443" || string(ca) != "cluster CA" ||
					kc.Users[0].User.Token != "tok3n" || kc.CurrentContext == "" {
					t.Errorf("margay-kubeconfig:\n%s", data)
				}
			} else if _, err := os.Stat(kubeconfig); err == nil {
				t.Error("margay-kubeconfig written without a token")
			}

			validateConflist(t, conflist,
				map[string]string{"/etc/margay": host("etc/margay"), "/etc/cni/net.d": host("etc/cni/net.d")})
		})
	}
}
