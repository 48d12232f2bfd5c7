// Package wire is what margay-cni, the small binary a container runtime executes, shares with
// the agent that serves its calls: the request and answer on the agent's CNI socket, and the
// plugin's main around skel. It imports nothing but the standard library and the CNI
// specification's types, because every ADD pays the start-up of what margay-cni links.
package wire

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// DefaultSocket is where margay-agent serves CNI calls unless --cni-socket says otherwise, and
// where margay-cni looks unless the network config's "agentSocket" says otherwise: an abstract
// Unix socket, which belongs to the network namespace it was made in, so a host's plugin finds
// the agent of that host's network namespace and no other.
const DefaultSocket = "@margay-cni"

// Off, as the network config's "agentSocket", makes margay-cni run every call itself
// (margay-cni-direct) without asking the agent.
const Off = "off"

// Request is one CNI call as margay-cni received it, forwarded to the agent: one per
// connection, as a JSON object, answered by one Response.
type Request struct {
	Command     string `json:"command"` // ADD, DEL, CHECK, GC or STATUS
	ContainerID string `json:"containerID,omitempty"`
	Netns       string `json:"netns,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	Args        string `json:"args,omitempty"`
	Path        string `json:"path,omitempty"`
	StdinData   []byte `json:"stdinData"`
	// Started is when margay-cni began: the ADD's duration in the workload record counts from
	// there, as it does in margay-cni-direct.
	Started time.Time `json:"started,omitzero"`
}

// CmdArgs returns the call as skel hands it to a plugin.
func (r *Request) CmdArgs() *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: r.ContainerID, Netns: r.Netns, IfName: r.IfName, Args: r.Args, Path: r.Path, StdinData: r.StdinData}
}

// NewRequest is the request of a call skel dispatched as cmd, in a margay-cni that began at
// started.
func NewRequest(cmd string, a *skel.CmdArgs, started time.Time) Request {
	return Request{Command: cmd, ContainerID: a.ContainerID, Netns: a.Netns, IfName: a.IfName, Args: a.Args, Path: a.Path,
		StdinData: a.StdinData, Started: started}
}

// Response is the agent's answer: what the plugin prints on success (Output, the ADD result),
// or the CNI error. NotMine says that this agent does not serve the call's network config (it
// names another node or another etcd), so margay-cni runs the call itself.
type Response struct {
	Output  json.RawMessage `json:"output,omitempty"`
	Error   *types.Error    `json:"error,omitempty"`
	NotMine string          `json:"notMine,omitempty"`
}

// MaxMessage bounds a request or response: a network config with a previous result is a few
// KiB, GC's list of valid attachments grows with the containers of a node.
const MaxMessage = 16 << 20

// SocketOf returns the config's "agentSocket" (DefaultSocket when absent). A config that does
// not parse gets DefaultSocket, and the agent reports what is wrong with it.
func SocketOf(conf []byte) string {
	var c struct {
		AgentSocket string `json:"agentSocket"`
	}
	if json.Unmarshal(conf, &c) != nil || c.AgentSocket == "" {
		return DefaultSocket
	}
	return c.AgentSocket
}

// SupportedVersions are the CNI specification versions margay-cni speaks, oldest first.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Main is the plugin's main around skel: it reads the network config from stdin first, so that an
// error result carries the config's cniVersion (the specification's error object has it), hands
// the call to skel, and prints skel's or the command's error as the error result. before, when
// set, runs once the config is read, before skel.
func Main(funcs skel.CNIFuncs, before func(conf []byte)) {
	var conf []byte
	if os.Getenv("CNI_COMMAND") != "" { // without a command skel prints its help and reads nothing
		var err error
		conf, err = io.ReadAll(os.Stdin)
		var r, w *os.File
		if err == nil {
			r, w, err = os.Pipe()
		}
		if err != nil {
			_ = PrintError(os.Stdout, types.NewError(types.ErrIOFailure, "margay-cni: read the network config from stdin", err.Error()), conf)
			os.Exit(1)
		}
		if before != nil {
			before(conf)
		}
		go func() { _, _ = w.Write(conf); _ = w.Close() }()
		os.Stdin = r
	}
	if e := skel.PluginMainFuncsWithError(funcs, version.PluginSupports(SupportedVersions...),
		"margay-cni: Margay's CNI plugin (pure L3, eBPF dataplane)"); e != nil {
		if err := PrintError(os.Stdout, e, conf); err != nil {
			slog.Error("write the error result", "err", err)
		}
		os.Exit(1)
	}
}

// errorResult is the specification's error object: the config's cniVersion, code, msg, details.
type errorResult struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// PrintError writes e as the error result: with the cniVersion of conf, or the newest version
// margay-cni speaks when conf names none it can read.
func PrintError(w io.Writer, e *types.Error, conf []byte) error {
	v := SupportedVersions[len(SupportedVersions)-1]
	var c struct {
		CNIVersion string `json:"cniVersion"`
	}
	if json.Unmarshal(conf, &c) == nil && c.CNIVersion != "" {
		v = c.CNIVersion
	}
	data, err := json.MarshalIndent(errorResult{CNIVersion: v, Code: e.Code, Msg: e.Msg, Details: e.Details}, "", "    ")
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// Errorf is a CNI error of margay-cni's own.
func Errorf(code uint, details, format string, args ...any) *types.Error {
	return types.NewError(code, "margay-cni: "+fmt.Sprintf(format, args...), details)
}
