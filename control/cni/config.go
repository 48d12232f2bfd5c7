package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/margaynet/margay/control/cni/wire"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
)

// netConf is the network configuration margay-cni reads on stdin. Unknown fields are an error, so
// a misspelt setting is reported instead of silently ignored.
type netConf struct {
	// Standard fields of the CNI specification, and what runtimes inject.
	CNIVersion       string                `json:"cniVersion"`
	Name             string                `json:"name"`
	Type             string                `json:"type"`
	Capabilities     map[string]bool       `json:"capabilities,omitempty"`
	RuntimeConfig    json.RawMessage       `json:"runtimeConfig,omitempty"`
	Args             json.RawMessage       `json:"args,omitempty"`
	DNS              *types.DNS            `json:"dns,omitempty"`
	IPAM             json.RawMessage       `json:"ipam,omitempty"`
	RawPrevResult    json.RawMessage       `json:"prevResult,omitempty"`
	ValidAttachments []types.GCAttachment  `json:"cni.dev/valid-attachments,omitempty"`
	Attachments      []types.GCAttachment  `json:"cni.dev/attachments,omitempty"` // older name of the same list
	NodeName         string                `json:"nodeName,omitempty"`
	MTU              int                   `json:"mtu,omitempty"`
	Datastore        *datastore.FileConfig `json:"datastore,omitempty"` // how to reach etcd, as in a datastore config file
	DatastoreConfig  string                `json:"datastoreConfig,omitempty"`
	LogLevel         string                `json:"logLevel,omitempty"`
	LogFile          string                `json:"logFile,omitempty"`
	// PolicySetupTimeout makes ADD wait, up to this long, until this host's agent has
	// programmed the workload (endpoint with its policy programs, then its programs attached),
	// so that no packet of it passes before its policy does. Empty or "0": do not wait.
	PolicySetupTimeout string `json:"policySetupTimeout,omitempty"`
	// BPFFSRoot is where the agent pins its maps and links (default /sys/fs/bpf/margay).
	BPFFSRoot string `json:"bpffsRoot,omitempty"`
	// Kubernetes, when set, makes ADD of a pod (K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS)
	// read the pod, its namespace and its service account from the API server into the
	// workload's labels and named ports (podlabels.Read). Calico's plugin takes the same key.
	Kubernetes *kubernetesConf `json:"kubernetes,omitempty"`
	// AgentSocket is where this host's margay-agent serves CNI calls (wire.DefaultSocket when
	// empty); "off" makes margay-cni run every call in its own process.
	AgentSocket   string           `json:"agentSocket,omitempty"`
	nodeFromHost  bool             `json:"-"` // nodeName was not set: the hostname stands in
	ds            datastore.Config `json:"-"`
	policyTimeout time.Duration    `json:"-"`
	level         slog.Level       `json:"-"`
}

// kubernetesConf is the "kubernetes" object: how to reach the Kubernetes API server.
type kubernetesConf struct {
	Kubeconfig string `json:"kubeconfig,omitempty"` // absolute path of a kubeconfig file
}

func invalidConf(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "margay-cni: invalid network config: "+fmt.Sprintf(format, args...), "")
}

// parseConf decodes and checks the network configuration; every problem is a code-7 error that
// says which field to fix.
func parseConf(data []byte, hostname func() (string, error)) (*netConf, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c netConf
	if err := dec.Decode(&c); err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			// Code 2, "unsupported field": the spec's code for a field the plugin does not know.
			return nil, types.NewError(types.ErrUnsupportedField, fmt.Sprintf("margay-cni: invalid network config: unknown field %s (margay-cni knows nodeName, mtu, datastore, datastoreConfig, logLevel, "+
				"logFile, policySetupTimeout, bpffsRoot, kubernetes, agentSocket and the standard CNI fields; in datastore: endpoints, caFile, certFile, keyFile, username, password, prefix, dialTimeout; "+
				"in kubernetes: kubeconfig)", f), "")
		}
		return nil, invalidConf("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, invalidConf("data after the JSON object")
	}
	if err := datastore.ValidateName(c.Name); err != nil {
		// Workload records carry it, so that GC of a network touches only that network's.
		return nil, invalidConf("name: %v", err)
	}
	if len(c.IPAM) > 0 && string(c.IPAM) != "null" && string(c.IPAM) != "{}" {
		return nil, invalidConf(`"ipam" is not used: margay-cni assigns addresses itself from Margay's IP pools (margayctl pool); remove it`)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return nil, invalidConf("mtu %d outside 68..65535 (0 or absent: the MTU of the host's default-route interface)", c.MTU)
	}
	if c.NodeName == "" {
		h, err := hostname()
		if err != nil {
			return nil, invalidConf("nodeName is not set and the hostname is unknown: %v", err)
		}
		c.NodeName, c.nodeFromHost = h, true
	}
	if err := datastore.ValidateName(c.NodeName); err != nil {
		return nil, invalidConf("nodeName: %v", err)
	}
	switch strings.ToLower(c.LogLevel) {
	case "", "info":
		c.level = slog.LevelInfo
	case "debug":
		c.level = slog.LevelDebug
	case "warn", "warning":
		c.level = slog.LevelWarn
	case "error":
		c.level = slog.LevelError
	default:
		return nil, invalidConf("logLevel %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.PolicySetupTimeout != "" {
		t, err := time.ParseDuration(c.PolicySetupTimeout)
		if err != nil || t < 0 || t > 50*time.Second {
			return nil, invalidConf("policySetupTimeout %q: want a Go duration from 0 to 50s such as \"5s\"", c.PolicySetupTimeout)
		}
		c.policyTimeout = t
	}
	if c.BPFFSRoot == "" {
		c.BPFFSRoot = loader.DefaultRoot
	} else if !filepath.IsAbs(c.BPFFSRoot) {
		return nil, invalidConf("bpffsRoot %q: want an absolute path", c.BPFFSRoot)
	}
	if k := c.Kubernetes; k != nil && (k.Kubeconfig == "" || !filepath.IsAbs(k.Kubeconfig)) {
		return nil, invalidConf("kubernetes.kubeconfig %q: want the absolute path of a kubeconfig file", k.Kubeconfig)
	}
	if a := c.AgentSocket; a != "" && a != wire.Off && !strings.HasPrefix(a, "@") && !filepath.IsAbs(a) {
		return nil, invalidConf("agentSocket %q: want an absolute path, an abstract socket name such as %q, or %q", a, wire.DefaultSocket, wire.Off)
	}
	if c.Datastore == nil && c.DatastoreConfig == "" {
		return nil, invalidConf(`no datastore: set "datastore": {"endpoints": ["https://<etcd>:2379"], ...} or "datastoreConfig": "/etc/margay/datastore.yaml"`)
	}
	if d := c.Datastore; d != nil {
		if t, err := time.ParseDuration(d.DialTimeout); d.DialTimeout != "" && (err != nil || t <= 0) {
			return nil, invalidConf("datastore.dialTimeout %q: want a positive Go duration such as \"2s\"", d.DialTimeout)
		}
		var err error
		if c.ds, err = d.Config(""); err != nil { // relative TLS file names stay as they are
			return nil, invalidConf("datastore: %v", err)
		}
	}
	if c.DatastoreConfig != "" {
		file, err := datastore.LoadConfigFile(c.DatastoreConfig)
		if err != nil {
			return nil, invalidConf("datastoreConfig: %v", err)
		}
		c.ds.FillFrom(file)
	}
	if err := c.ds.Validate(); err != nil {
		return nil, invalidConf("%v", err) // "datastore: invalid config: …"
	}
	return &c, nil
}

// logger returns the plugin's logger: text to logFile (appended) or stderr, at logLevel.
func (c *netConf) logger() (*slog.Logger, func(), error) {
	w, closeFn := io.Writer(os.Stderr), func() {}
	if c.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogFile), 0o755); err != nil {
			return nil, nil, invalidConf("logFile: %v", err)
		}
		f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, nil, invalidConf("logFile: %v", err)
		}
		w, closeFn = f, func() { _ = f.Close() }
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: c.level})), closeFn, nil
}

// validAttachments returns the container IDs of the attachments GC must keep.
func (c *netConf) validAttachments() map[string]bool {
	keep := map[string]bool{}
	for _, a := range append(c.ValidAttachments, c.Attachments...) {
		keep[a.ContainerID] = true
	}
	return keep
}

// parseCNIArgs splits CNI_ARGS ("K1=V1;K2=V2"). Keys margay-cni does not use are ignored, as if
// IgnoreUnknown were always set.
func parseCNIArgs(s string) (map[string]string, error) {
	m := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
				fmt.Sprintf("margay-cni: CNI_ARGS: %q is not KEY=VALUE", kv), "")
		}
		m[k] = v
	}
	return m, nil
}
