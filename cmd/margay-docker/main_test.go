package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/tests/poll"
)

// activate calls Plugin.Activate through dial and returns what the plugin implements.
func activate(dial func() (net.Conn, error)) (string, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return dial() }}}
	resp, err := c.Post("http://plugin/Plugin.Activate", "application/json", strings.NewReader("{}"))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct{ Implements []string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", err
	}
	return strings.Join(out.Implements, ","), nil
}

// The plugin serves on both sockets (unix) or on TCP with both spec files (tcp), and removes
// the sockets when it stops; the spec files stay.
func TestServe(t *testing.T) {
	etcd := datastoretest.Start(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, mode := range []string{"unix", "tcp://127.0.0.1:0"} {
		t.Run(strings.TrimSuffix(mode, "://127.0.0.1:0"), func(t *testing.T) {
			dir := t.TempDir()
			o := options{node: "node-1", listen: mode, pluginDir: dir, dockerSock: filepath.Join(dir, "none.sock"),
				ds: datastore.Config{Endpoints: etcd.Endpoints()}}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- run(ctx, o, log) }()
			stopped := false
			t.Cleanup(func() {
				if !stopped {
					cancel()
					<-done
				}
			})
			for _, name := range []string{"margay", "margay-ipam"} {
				var dial func() (net.Conn, error)
				if mode == "unix" {
					path := filepath.Join(dir, name+".sock")
					dial = func() (net.Conn, error) { return net.Dial("unix", path) }
				} else {
					path := filepath.Join(dir, name+".spec")
					dial = func() (net.Conn, error) {
						b, err := os.ReadFile(path)
						if err != nil {
							return nil, err
						}
						return net.Dial("tcp", strings.TrimPrefix(strings.TrimSpace(string(b)), "tcp://"))
					}
				}
				poll.Until(t, name+" answers Plugin.Activate", 10*time.Second, func() error {
					got, err := activate(dial)
					if err == nil && got != "NetworkDriver,IpamDriver" {
						t.Fatalf("%s implements %q", name, got)
					}
					return err
				})
			}
			cancel()
			stopped = true
			if err := <-done; err != nil {
				t.Fatalf("run: %v", err)
			}
			// Sockets go; spec files stay (other namespaces' plugins may serve them).
			var left []string
			if entries, err := os.ReadDir(dir); err == nil {
				for _, e := range entries {
					left = append(left, e.Name())
				}
			}
			want := []string{}
			if mode != "unix" {
				want = []string{"margay-ipam.spec", "margay.spec"}
			}
			if !slices.Equal(left, want) && !(len(left) == 0 && len(want) == 0) {
				t.Errorf("left in the plugin directory: %v, want %v", left, want)
			}
		})
	}
}

func TestBadListen(t *testing.T) {
	_, _, err := listen(options{listen: "udp://x"})
	if err == nil || !strings.Contains(err.Error(), "want unix or tcp") {
		t.Errorf("got %v", err)
	}
	if err := run(t.Context(), options{node: "n", listen: "unix", ds: datastore.Config{Endpoints: []string{"not a url"}}}, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Errorf("bad datastore config accepted")
	} else if errors.Is(err, context.Canceled) {
		t.Errorf("got %v", err)
	}
}
