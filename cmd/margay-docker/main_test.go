package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
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

// With etcd down, a call fails after --call-timeout with an error that names etcd, instead of
// "context deadline exceeded" after a minute (dockerd waits for the plugin as long as it takes).
func TestCallTimeoutEtcdDown(t *testing.T) {
	etcd := datastoretest.Start(t)
	ds := datastoretest.Connect(t, datastore.Config{Endpoints: etcd.Endpoints()})
	if _, err := ds.Pools().Create(t.Context(), "p", datastore.Pool{Name: "p", CIDR: netip.MustParsePrefix("198.19.0.0/16"), BlockSize: 26}); err != nil {
		t.Fatal(err)
	}
	datastoretest.RegisterNodes(t, ds, "node-1")
	dir := t.TempDir()
	o := options{node: "node-1", listen: "unix", pluginDir: dir, dockerSock: filepath.Join(dir, "none.sock"),
		callTimeout: time.Second, ds: datastore.Config{Endpoints: etcd.Endpoints()}}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() { cancel(); <-done })
	sock := filepath.Join(dir, "margay-ipam.sock")
	c := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	request := func() (int, string, time.Duration, error) {
		start := time.Now()
		resp, err := c.Post("http://plugin/IpamDriver.RequestAddress", "application/json", strings.NewReader(`{"PoolID": "margay-any"}`))
		if err != nil {
			return 0, "", 0, err
		}
		defer resp.Body.Close()
		var out struct{ Address, Err string }
		err = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.Err + out.Address, time.Since(start), err
	}
	poll.Until(t, "the plugin serves", 10*time.Second, func() error {
		status, out, _, err := request()
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("%d %s", status, out)
		}
		return err
	})

	etcd.Close()
	status, msg, took, err := request()
	if err != nil {
		t.Fatal(err)
	}
	if status == http.StatusOK || !strings.Contains(msg, "gave up after 1s") || !strings.Contains(msg, "is etcd up and reachable") || took > 10*time.Second {
		t.Errorf("RequestAddress with etcd down: %d %q after %s; want an error naming etcd after about 1s", status, msg, took)
	}
}
