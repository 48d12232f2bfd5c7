package etcdembed_test

import (
	"net"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/datastore/etcdembed"
)

func TestEmbeddedErrors(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	busy := "http://" + l.Addr().String()
	for _, tt := range []struct {
		name string
		opts []etcdembed.Option
		want string
	}{
		{"port in use", []etcdembed.Option{etcdembed.WithClientURL(busy)}, "address already in use"},
		{"https without certificate", []etcdembed.Option{etcdembed.WithClientURL("https://127.0.0.1:0")}, "no certificate"},
		{"bad url", []etcdembed.Option{etcdembed.WithClientURL("http://[::1")}, "client URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, err := etcdembed.Start(t.Context(), t.TempDir(), tt.opts...)
			if err == nil {
				e.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestEmbeddedParallel starts several etcds at once, as parallel test packages do.
func TestEmbeddedParallel(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 2 {
		e := datastoretest.Start(t)
		ep := e.Endpoints()[0]
		if seen[ep] || !strings.HasPrefix(ep, "http://127.0.0.1:") || strings.HasSuffix(ep, ":0") {
			t.Fatalf("endpoint %q repeats or is no bound loopback port", ep)
		}
		seen[ep] = true
	}
}
