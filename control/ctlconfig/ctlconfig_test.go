package ctlconfig_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/ctlconfig"
	"github.com/margaynet/margay/control/datastore"
)

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	inline := write(t, dir, "inline.cfg", "nodeName: vm7\nbpffsRoot: /sys/fs/bpf/margay-lab/vm7\nendpoints: [http://198.18.0.2:2379]\ndialTimeout: 2s\ncaFile: ca.pem\n")
	f, err := ctlconfig.Read(inline)
	if err != nil {
		t.Fatal(err)
	}
	if f.Path != inline || f.NodeName != "vm7" || f.BPFFSRoot != "/sys/fs/bpf/margay-lab/vm7" ||
		!slices.Equal(f.Datastore.Endpoints, []string{"http://198.18.0.2:2379"}) || f.Datastore.DialTimeout != 2*time.Second ||
		f.Datastore.CAFile != filepath.Join(dir, "ca.pem") {
		t.Errorf("Read(inline) = %+v", f)
	}

	// datastoreConfig, relative to the file, fills what the file leaves out.
	write(t, dir, "datastore.yaml", "endpoints: [http://198.18.0.9:2379]\nprefix: /other/\n")
	indirect := write(t, dir, "indirect.cfg", "datastoreConfig: datastore.yaml\nendpoints: [http://198.18.0.2:2379]\n")
	if f, err := ctlconfig.Read(indirect); err != nil || !slices.Equal(f.Datastore.Endpoints, []string{"http://198.18.0.2:2379"}) ||
		f.Datastore.Prefix != "/other/" || f.NodeName != "" {
		t.Errorf("Read(indirect) = %+v, %v; want its own endpoints and datastore.yaml's prefix", f, err)
	}

	for _, bad := range []struct{ body, want string }{
		{"nodeName: vm7\nnode: x\n", `unknown field "node"`},
		{"nodeName: vm/7\n", "nodeName: "},
		{"bpffsRoot: sys/fs/bpf\n", `bpffsRoot "sys/fs/bpf": want an absolute path`},
		{"datastoreConfig: missing.yaml\n", "datastoreConfig: "},
		{"dialTimeout: soon\n", "dialTimeout"},
	} {
		path := write(t, dir, "bad.cfg", bad.body)
		if _, err := ctlconfig.Read(path); err == nil || !strings.Contains(err.Error(), bad.want) || !strings.HasPrefix(err.Error(), "read margayctl config") {
			t.Errorf("Read(%q) = %v; want an error with %q", bad.body, err, bad.want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	flag := write(t, dir, "flag.cfg", "nodeName: from-flag\n")
	env := write(t, dir, "env.cfg", "nodeName: from-env\n")
	getenv := func(v string) func(string) string {
		return func(name string) string {
			if name == ctlconfig.Env {
				return v
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name, path, env, want string
	}{
		{"--config over the variable", flag, env, "from-flag"},
		{"the variable", "", env, "from-env"},
	} {
		if f, err := ctlconfig.Load(tc.path, getenv(tc.env)); err != nil || f.NodeName != tc.want {
			t.Errorf("%s: Load = %+v, %v; want nodeName %s", tc.name, f, err, tc.want)
		}
	}
	// A file named must exist.
	for _, named := range []struct{ path, env string }{{filepath.Join(dir, "none.cfg"), ""}, {"", filepath.Join(dir, "none.cfg")}} {
		if _, err := ctlconfig.Load(named.path, getenv(named.env)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Load of a missing file named by %+v: %v; want it not found", named, err)
		}
	}
	// None named and none at the default path: no settings.
	if _, err := os.Stat(ctlconfig.DefaultPath); errors.Is(err, fs.ErrNotExist) {
		if f, err := ctlconfig.Load("", getenv("")); err != nil || !reflect.DeepEqual(f, ctlconfig.File{}) {
			t.Errorf("Load with no file = %+v, %v; want an empty File", f, err)
		}
	}
}

// Write writes what Read reads back.
func TestWriteRoundTrip(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []ctlconfig.File{
		{NodeName: "vm100", BPFFSRoot: "/sys/fs/bpf/margay-lab/vm100", Datastore: datastore.Config{Endpoints: []string{"http://198.18.0.2:2379"}}},
		{NodeName: "vm7", Datastore: datastore.Config{Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"},
			CAFile: "/etc/margay/ca.pem", CertFile: "/etc/margay/cert.pem", KeyFile: "/etc/margay/key.pem",
			Username: "margay", Password: "secret", Prefix: "/other/", DialTimeout: 2 * time.Second}},
		{},
	} {
		path := filepath.Join(dir, "margayctl.cfg")
		_ = os.Remove(path)
		if err := ctlconfig.Write(path, f, "margayctl's settings\ninside a lab host"); err != nil {
			t.Fatal(err)
		}
		got, err := ctlconfig.Read(path)
		f.Path = path
		if err != nil || !reflect.DeepEqual(got, f) {
			body, _ := os.ReadFile(path)
			t.Errorf("Read(Write(%+v)) = %+v, %v; file:\n%s", f, got, err, body)
		}
		want := fs.FileMode(0o644)
		if f.Datastore.Password != "" {
			want = 0o600
		}
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("mode of the file of %+v = %v, %v; want %v", f, st, err, want)
		}
	}

	b, err := ctlconfig.Marshal(ctlconfig.File{NodeName: "vm100", Datastore: datastore.Config{Endpoints: []string{"http://198.18.0.2:2379"}}}, "a comment\n\nof lines")
	if want := "# a comment\n#\n# of lines\nendpoints:\n- http://198.18.0.2:2379\nnodeName: vm100\n"; err != nil || string(b) != want {
		t.Errorf("Marshal = %q, %v; want %q", b, err, want)
	}
	// What Read refuses, Marshal and Write refuse.
	for _, bad := range []struct {
		f    ctlconfig.File
		want string
	}{
		{ctlconfig.File{NodeName: "vm/7"}, "nodeName: "},
		{ctlconfig.File{BPFFSRoot: "sys/fs/bpf"}, `bpffsRoot "sys/fs/bpf": want an absolute path`},
	} {
		if _, err := ctlconfig.Marshal(bad.f, ""); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Marshal(%+v) = %v; want an error with %q", bad.f, err, bad.want)
		}
		path := filepath.Join(dir, "bad.cfg")
		if err := ctlconfig.Write(path, bad.f, ""); err == nil {
			t.Errorf("Write(%+v) succeeded", bad.f)
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Write(%+v) left a file: %v", bad.f, err)
		}
	}
}
