package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

// maxBody bounds a request body; dockerd's largest (CreateNetwork with options) is a few KiB.
const maxBody = 1 << 20

// Server answers dockerd's calls of both drivers for one node.
type Server struct {
	ds   *datastore.Client
	ipam *ipam.IPAM
	node string
	log  *slog.Logger
	// do runs netlink work with the calling thread in the host's network namespace. The
	// plugin runs in the host namespace, so the default calls fn; tests run it in theirs.
	do func(fn func() error) error
	// networkName tells a network's name, which names its profile.
	networkName NetworkNamer
	// callTimeout bounds one call's work (WithCallTimeout).
	callTimeout time.Duration
	// bpffsRoot and policyTimeout: ProgramExternalConnectivity's wait for the agent
	// (WithPolicySetup).
	bpffsRoot     string
	policyTimeout time.Duration

	// bg is the context of the work a call leaves running (the neighbour entry written once
	// the container's namespace exists); Close cancels it and waits for that work.
	bg     context.Context
	stop   context.CancelFunc
	active sync.WaitGroup
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithNetns makes the server run its netlink work through do, which must call fn with the
// calling thread in the host's network namespace (tests use a namespace standing for the host).
func WithNetns(do func(fn func() error) error) Option { return func(s *Server) { s.do = do } }

// WithNetworkNamer sets how the server learns a network's name (default: it cannot, and
// CreateEndpoint fails); DockerAPINamer asks dockerd.
func WithNetworkNamer(n NetworkNamer) Option { return func(s *Server) { s.networkName = n } }

// New returns the server of node, working on ds and ipm.
func New(ds *datastore.Client, ipm *ipam.IPAM, node string, opts ...Option) *Server {
	s := &Server{ds: ds, ipam: ipm, node: node, log: slog.Default(), do: func(fn func() error) error { return fn() },
		callTimeout: DefaultCallTimeout}
	s.bg, s.stop = context.WithCancel(context.Background())
	s.networkName = func(context.Context, string) (string, error) {
		return "", errors.New("the plugin has no way to learn network names (no dockerd API socket given)")
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Close stops the work calls left running in the background and waits for it; calls answered
// after Close start none.
func (s *Server) Close() {
	s.stop()
	s.active.Wait()
}

// background runs fn in a goroutine under the server's background context, unless the server
// is closed.
func (s *Server) background(fn func(ctx context.Context)) {
	if s.bg.Err() != nil {
		return
	}
	s.active.Add(1)
	go func() {
		defer s.active.Done()
		fn(s.bg)
	}()
}

// Handler returns the HTTP handler of both APIs: every call is a POST of a JSON body to its path;
// every failure is answered with a non-200 status and {"Err": "..."}, which dockerd shows.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	noArgs := func(path string, fn func() any) {
		mux.Handle("POST "+path, s.wrap(path, func(_ context.Context, _ []byte) (any, error) { return fn(), nil }))
	}
	noArgs(pathActivate, func() any { return activateResponse{Implements: []string{"NetworkDriver", "IpamDriver"}} })
	noArgs(pathNetCapabilities, func() any { return capabilitiesResponse{Scope: "local", ConnectivityScope: "global"} })
	noArgs(pathIpamCapabilities, func() any { return ipamCapabilitiesResponse{} })
	noArgs(pathIpamAddressSpaces, func() any {
		return addressSpacesResponse{LocalDefaultAddressSpace: LocalAddressSpace, GlobalDefaultAddressSpace: GlobalAddressSpace}
	})

	call(s, mux, pathCreateNetwork, s.createNetwork)
	call(s, mux, pathDeleteNetwork, s.deleteNetwork)
	call(s, mux, pathAllocateNetwork, s.swarmOnly)
	call(s, mux, pathFreeNetwork, s.swarmOnly)
	call(s, mux, pathCreateEndpoint, s.createEndpoint)
	call(s, mux, pathEndpointOperInfo, s.endpointOperInfo)
	call(s, mux, pathDeleteEndpoint, s.deleteEndpoint)
	call(s, mux, pathJoin, s.join)
	call(s, mux, pathLeave, s.leave)
	call(s, mux, pathDiscoverNew, s.discover)
	call(s, mux, pathDiscoverDelete, s.discover)
	call(s, mux, pathProgramExternal, s.programExternal)
	call(s, mux, pathRevokeExternal, s.revokeExternal)

	call(s, mux, pathRequestPool, s.requestPool)
	call(s, mux, pathReleasePool, s.releasePool)
	call(s, mux, pathRequestAddress, s.requestAddress)
	call(s, mux, pathReleaseAddress, s.releaseAddress)

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.log.Warn("unknown docker plugin call", "method", r.Method, "path", r.URL.Path)
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeErr(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: the plugin API takes POST only", r.Method, r.URL.Path))
			return
		}
		writeErr(w, http.StatusNotFound, fmt.Errorf("%s: no such call (margay implements NetworkDriver and IpamDriver)", r.URL.Path))
	})
	return mux
}

// call registers a handler that decodes the body into Req and answers fn's result.
func call[Req, Resp any](s *Server, mux *http.ServeMux, path string, fn func(context.Context, Req) (Resp, error)) {
	mux.Handle("POST "+path, s.wrap(path, func(ctx context.Context, body []byte) (any, error) {
		var req Req
		if err := decode(body, &req); err != nil {
			return nil, err
		}
		return fn(ctx, req)
	}))
}

// wrap reads the body (bounded), runs fn and writes its answer; a panic becomes an error answer.
func (s *Server) wrap(path string, fn func(context.Context, []byte) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("docker plugin call panicked", "call", path, "panic", p)
				writeErr(w, http.StatusInternalServerError, fmt.Errorf("%s: internal error: %v", path, p))
			}
		}()
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("%s: read request: %w", path, err))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.callTimeout)
		defer cancel()
		resp, err := fn(ctx, body)
		if err != nil {
			err = s.explainTimeout(ctx, err)
			status := http.StatusInternalServerError
			var bad *badRequest
			if errors.As(err, &bad) {
				status = http.StatusBadRequest
			}
			s.log.Warn("docker plugin call failed", "call", path, "err", err, "duration", time.Since(start))
			writeErr(w, status, err) // dockerd prefixes the call's name itself
			return
		}
		s.log.Debug("docker plugin call", "call", path, "duration", time.Since(start))
		writeJSON(w, http.StatusOK, resp)
	})
}

// badRequest is a request that could never succeed: malformed or missing fields.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error { return &badRequest{fmt.Sprintf(format, args...)} }

// decode parses body as one JSON value of into's type (an object, or null or nothing, which leave
// into zero for the required-field checks to refuse) with nothing after it. Unknown fields are
// ignored: dockerd adds fields to its requests between versions.
func decode(body []byte, into any) error {
	if len(body) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(into); err != nil {
		return badf("malformed request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badf("malformed request body: data after the JSON value")
	}
	return nil
}

func writeErr(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, errorResponse{Err: err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(errorResponse{Err: "encode answer: " + err.Error()})
	}
	w.Header().Set("Content-Type", ContentType)
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
