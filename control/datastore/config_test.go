package datastore_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/margaynet/margay/control/datastore"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence: flags win over the environment, which wins over the file.
func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile(t, dir, "ca.pem", "x")
	path := writeFile(t, dir, "etcd.yaml", `
endpoints: ["https://file:2379"]
caFile: ca.pem
username: fileuser
password: filepass
prefix: /file/
dialTimeout: 7s
`)
	env := map[string]string{
		"MARGAY_ETCD_ENDPOINTS":   "https://env1:2379, https://env2:2379",
		"MARGAY_ETCD_USERNAME":    "envuser",
		"MARGAY_DATASTORE_PREFIX": "/env/",
	}

	var cfg datastore.Config
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	if err := fs.Parse([]string{"--etcd-endpoints=https://flag:2379", "--etcd-username=flaguser"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := cfg.Resolve(func(k string) string { return env[k] }, path)
	if err != nil {
		t.Fatal(err)
	}
	file, err := datastore.LoadConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}

	want := datastore.Config{
		Endpoints:   []string{"https://flag:2379"}, // flag
		CAFile:      filepath.Join(dir, "ca.pem"),  // file, relative to it
		Username:    "flaguser",                    // flag
		Password:    "filepass",                    // file
		Prefix:      "/env/",                       // env
		DialTimeout: 7 * time.Second,               // file
	}
	if !slices.Equal(cfg.Endpoints, want.Endpoints) || cfg.CAFile != want.CAFile || cfg.Username != want.Username ||
		cfg.Password != want.Password || cfg.Prefix != want.Prefix || cfg.DialTimeout != want.DialTimeout {
		t.Fatalf("config = %+v\nwant %+v", cfg, want)
	}
	if _, err := (datastore.Config{}).Resolve(func(string) string { return "" }, filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("Resolve with a missing config file: no error")
	}

	// Without the flag, the environment's list wins over the file's.
	var cfg2 datastore.Config
	if err := cfg2.ApplyEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	cfg2.FillFrom(file)
	if !slices.Equal(cfg2.Endpoints, []string{"https://env1:2379", "https://env2:2379"}) || cfg2.Username != "envuser" {
		t.Fatalf("env config = %+v, want env endpoints and user", cfg2)
	}

	if err := new(datastore.Config).ApplyEnv(func(k string) string {
		return map[string]string{"MARGAY_ETCD_ENDPOINTS": "http://a:1,,http://b:2"}[k]
	}); err == nil || !strings.Contains(err.Error(), "endpoint 2 is empty") {
		t.Fatalf("ApplyEnv with an empty endpoint = %v", err)
	}
	if err := new(datastore.Config).ApplyEnv(func(k string) string {
		return map[string]string{"MARGAY_ETCD_DIAL_TIMEOUT": "soon"}[k]
	}); err == nil || !strings.Contains(err.Error(), "MARGAY_ETCD_DIAL_TIMEOUT") {
		t.Fatalf("ApplyEnv with a bad timeout = %v", err)
	}
}

func TestLoadConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name    string
		content string
		want    string // error substring; "" = loads
	}{
		{"yaml", "endpoints:\n- http://127.0.0.1:2379\nprefix: /x/\n", ""},
		{"json", `{"endpoints":["http://127.0.0.1:2379"],"username":"u","password":"p","dialTimeout":"2s"}`, ""},
		{"empty", "", ""},
		{"unknown field", "endpoints: [http://127.0.0.1:2379]\nendpoint: http://x:1\n", `unknown field "endpoint"`},
		{"unknown json field", `{"prefix":"/x/","caCert":"ca.pem"}`, `unknown field "caCert"`},
		{"duplicate field", "prefix: /a/\nprefix: /b/\n", "already set"},
		{"wrong type", "endpoints: 5\n", "cannot unmarshal"},
		{"bad duration", "dialTimeout: 5\n", "dialTimeout"},
		{"not yaml", "endpoints: [\n", "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, dir, strings.ReplaceAll(tt.name, " ", "-")+".yaml", tt.content)
			_, err := datastore.LoadConfigFile(path)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("LoadConfigFile: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("LoadConfigFile = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := datastore.LoadConfigFile(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("LoadConfigFile of a missing file succeeded")
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := writeFile(t, dir, "ca.pem", "x")
	cert := writeFile(t, dir, "cert.pem", "x")
	key := writeFile(t, dir, "key.pem", "x")
	tests := []struct {
		name string
		cfg  datastore.Config
		want []string // error substrings; none = valid
	}{
		{"defaults", datastore.Config{}, nil},
		{"tls", datastore.Config{Endpoints: []string{"https://10.0.0.1:2379"}, CAFile: ca, CertFile: cert, KeyFile: key}, nil},
		{"https with system roots", datastore.Config{Endpoints: []string{"https://etcd.example:2379"}}, nil},
		{"not a url", datastore.Config{Endpoints: []string{"127.0.0.1:2379"}}, []string{`endpoint "127.0.0.1:2379"`}},
		{"no port", datastore.Config{Endpoints: []string{"http://etcd"}}, []string{"want host:port"}},
		{"bad scheme", datastore.Config{Endpoints: []string{"unix:///run/etcd.sock"}}, []string{"want an http:// or https:// URL"}},
		{"path", datastore.Config{Endpoints: []string{"http://etcd:2379/v3"}}, []string{"want only scheme://host:port"}},
		{"missing ca", datastore.Config{Endpoints: []string{"https://a:1"}, CAFile: filepath.Join(dir, "nope.pem")}, []string{"etcd-ca:", "no such file"}},
		{"ca is a dir", datastore.Config{Endpoints: []string{"https://a:1"}, CAFile: dir}, []string{"not a regular file"}},
		{"cert without key", datastore.Config{Endpoints: []string{"https://a:1"}, CertFile: cert}, []string{"etcd-cert and etcd-key must be given together"}},
		{"key without cert", datastore.Config{Endpoints: []string{"https://a:1"}, KeyFile: key}, []string{"etcd-cert and etcd-key must be given together"}},
		{"tls over http", datastore.Config{Endpoints: []string{"http://a:1"}, CAFile: ca}, []string{`endpoint "http://a:1" is plain http`}},
		{"password alone", datastore.Config{Password: "p"}, []string{"etcd-password given without etcd-username"}},
		{"prefix no slash", datastore.Config{Prefix: "margay"}, []string{`prefix "margay" must start and end with "/"`}},
		{"prefix no trailing slash", datastore.Config{Prefix: "/margay"}, []string{"must start and end"}},
		{"prefix empty segment", datastore.Config{Prefix: "/margay//v1/"}, []string{"empty"}},
		{"negative timeout", datastore.Config{DialTimeout: -time.Second}, []string{"negative"}},
		{"several", datastore.Config{Endpoints: []string{"x"}, Prefix: "y"}, []string{`endpoint "x"`, `prefix "y"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want an error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("Validate = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

// A config path that names a FIFO, a device or a huge file fails at once instead of hanging or
// filling memory.
func TestLoadConfigFileNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := writeFile(t, dir, "big.yaml", "# "+strings.Repeat("x", 2<<20)+"\nendpoints: [http://127.0.0.1:2379]\n")
	for _, c := range []struct{ path, want string }{
		{fifo, "not a regular file"},
		{"/dev/zero", "not a regular file"},
		{dir, "not a regular file"},
		{big, "larger than"},
	} {
		_, err := datastore.LoadConfigFile(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("LoadConfigFile(%s): %v, want an error saying %q", c.path, err, c.want)
		}
	}
}

// Config.FileConfig is the inverse of FileConfig.Config for absolute TLS file names.
func TestConfigFileConfig(t *testing.T) {
	t.Parallel()
	full := datastore.Config{Endpoints: []string{"https://198.18.0.2:2379", "https://198.18.0.3:2379"}, CAFile: "/etc/margay/ca.pem",
		CertFile: "/etc/margay/cert.pem", KeyFile: "/etc/margay/key.pem", Username: "u", Password: "p", Prefix: "/x/",
		DialTimeout: 1500 * time.Millisecond}
	for _, c := range []datastore.Config{full, {}} {
		got, err := c.FileConfig().Config("/etc/margay/datastore.yaml")
		if err != nil || !reflect.DeepEqual(got, c) {
			t.Errorf("FileConfig().Config = %+v, %v; want %+v", got, err, c)
		}
	}
	if f := (datastore.Config{}).FileConfig(); f.DialTimeout != "" {
		t.Errorf("dialTimeout of no timeout = %q, want none", f.DialTimeout)
	}
}
