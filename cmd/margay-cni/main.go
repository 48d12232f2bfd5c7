// Command margay-cni is Margay's CNI plugin, the binary a container runtime executes (spec 0.4.0,
// 1.0.0 and 1.1.0). It forwards each call to the agent of its host, which runs it with the
// connections it holds (package cni), and prints the agent's answer. When no agent answers, or
// the agent says the call's network config is not its own, it executes margay-cni-direct
// (installed beside it), which runs the call in its own process.
//
// It links only the standard library and the CNI specification's packages: a runtime waits for
// its start-up on every ADD.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/cni/wire"
)

// directName is the binary that runs a call in its own process.
const directName = "margay-cni-direct"

// dialTimeout bounds connecting to the agent's socket; an agent that does not accept within it
// is taken as absent.
const dialTimeout = 2 * time.Second

// answerTimeout bounds waiting for the agent's answer: longer than the agent's own bound on a
// call (60 s), so that its answer, also a timeout, arrives first.
const answerTimeout = 75 * time.Second

func main() {
	started := time.Now()
	var conn net.Conn
	fwd := func(cmd string) func(*skel.CmdArgs) error { return forward(cmd, &conn, started) }
	wire.Main(skel.CNIFuncs{Add: fwd("ADD"), Del: fwd("DEL"), Check: fwd("CHECK"), GC: fwd("GC"), Status: fwd("STATUS")}, func(conf []byte) {
		if os.Getenv("CNI_COMMAND") == "VERSION" {
			return // skel answers it
		}
		sock := wire.SocketOf(conf)
		if sock == wire.Off {
			direct(conf, "")
		}
		var err error
		if conn, err = net.DialTimeout("unix", sock, dialTimeout); err != nil {
			direct(conf, fmt.Sprintf("no margay-agent answers on %s (%v)", sock, err))
		}
	})
}

// forward returns skel's function for cmd: it sends the call on *conn and prints the answer.
func forward(cmd string, conn *net.Conn, started time.Time) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		c := *conn
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(answerTimeout))
		var resp wire.Response
		err := json.NewEncoder(c).Encode(wire.NewRequest(cmd, args, started))
		if err == nil {
			err = json.NewDecoder(io.LimitReader(c, wire.MaxMessage)).Decode(&resp)
		}
		if err != nil {
			// The agent stopped while serving the call: what it did is undone or finished by the
			// runtime's next call (ADD and DEL may be repeated).
			return wire.Errorf(types.ErrTryAgainLater, err.Error(), "margay-agent did not answer the %s call", cmd)
		}
		switch {
		case resp.NotMine != "":
			direct(args.StdinData, "margay-agent does not serve this network config: "+resp.NotMine)
		case resp.Error != nil:
			return resp.Error
		}
		_, err = os.Stdout.Write(resp.Output)
		return err
	}
}

// direct replaces this process with margay-cni-direct, with the same arguments, environment and
// network config on stdin, saying why on stderr (which runtimes log) when why is set. It returns
// only when that cannot be done, after printing the error result.
func direct(conf []byte, why string) {
	if why != "" {
		fmt.Fprintf(os.Stderr, "margay-cni: %s; running the call in margay-cni-direct\n", why)
	}
	path, err := findDirect()
	if err == nil {
		err = execWithStdin(path, conf)
	}
	msg := "cannot run " + directName
	if why != "" {
		msg = why + ", and " + msg
	}
	_ = wire.PrintError(os.Stdout, wire.Errorf(types.ErrTryAgainLater, err.Error(), "%s", msg), conf)
	os.Exit(1)
}

// findDirect looks for margay-cni-direct beside this binary, then in CNI_PATH.
func findDirect() (string, error) {
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	dirs = append(dirs, filepath.SplitList(os.Getenv("CNI_PATH"))...)
	for _, d := range dirs {
		p := filepath.Join(d, directName)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is neither beside margay-cni nor in CNI_PATH (%s)", directName, strings.Join(dirs, ":"))
}

// execWithStdin executes path with the config on stdin, from a memory file (a pipe could not hold
// a config larger than its buffer with nobody left to write it).
func execWithStdin(path string, conf []byte) error {
	fd, err := unix.MemfdCreate("margay-cni-config", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "margay-cni-config")
	if _, err := f.Write(conf); err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("memfd: %w", err)
	}
	if err := unix.Dup3(fd, 0, 0); err != nil { // stdin, without close-on-exec
		return fmt.Errorf("dup: %w", err)
	}
	err = syscall.Exec(path, []string{path}, os.Environ())
	return errors.Join(fmt.Errorf("exec %s", path), err)
}
