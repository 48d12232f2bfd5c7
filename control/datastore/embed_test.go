package datastore_test

import (
	"net"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
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
		opts []datastore.EmbedOption
		want string
	}{
		{"port in use", []datastore.EmbedOption{datastore.WithClientURL(busy)}, "address already in use"},
		{"https without certificate", []datastore.EmbedOption{datastore.WithClientURL("https://127.0.0.1:0")}, "no certificate"},
		{"bad url", []datastore.EmbedOption{datastore.WithClientURL("http://[::1")}, "client URL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, err := datastore.StartEmbedded(t.Context(), t.TempDir(), tt.opts...)
			if err == nil {
				e.Close()
				t.Fatal("StartEmbedded succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("StartEmbedded = %v, want %q", err, tt.want)
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
