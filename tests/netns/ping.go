package netns

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Ping is the ping(8) command running in a namespace against one address, with every reply
// recorded by sequence number.
type Ping struct {
	dst     netip.Addr
	cmd     *exec.Cmd
	mu      sync.Mutex
	replies map[int]bool
	maxSeq  int // highest sequence number answered, -1 before the first reply
	done    chan struct{}
	result  *PingResult
}

// PingResult is what a ping counted. Only requests up to the last one answered count: those
// sent after it were still in flight when the ping stopped.
type PingResult struct {
	Sent, Received int
	// Lost lists the sequence numbers, up to the last answered, that got no reply.
	Lost []int
}

func (r PingResult) String() string {
	return fmt.Sprintf("%d sent, %d answered, %d lost", r.Sent, r.Received, len(r.Lost))
}

var replyLine = regexp.MustCompile(`icmp_seq=(\d+) `)

// StartPing runs `ping -n -i <interval> dst` in n (as a client pinging every 10 ms does with
// -i 0.01) until Stop, which also runs at cleanup.
func StartPing(tb testing.TB, n *NS, dst netip.Addr, interval time.Duration) *Ping {
	tb.Helper()
	c := n.Command("ping", "-n", "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), dst.String())
	out, err := c.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	c.Stderr = LogWriter(tb, "ping "+dst.String()+": ")
	p := &Ping{dst: dst, cmd: c, replies: map[int]bool{}, maxSeq: -1, done: make(chan struct{})}
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("ping %s in %s: %v", dst, n.Name, err)
	}
	go p.read(out)
	tb.Cleanup(func() { p.Stop() })
	return p
}

func (p *Ping) read(out io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		m := replyLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		seq, err := strconv.Atoi(m[1])
		if err != nil {
			continue
		}
		p.mu.Lock()
		p.replies[seq] = true
		p.maxSeq = max(p.maxSeq, seq)
		p.mu.Unlock()
	}
}

// Received is how many distinct requests were answered so far.
func (p *Ping) Received() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.replies)
}

// Stop ends ping (SIGINT) and returns the count; calling it again returns the same.
func (p *Ping) Stop() PingResult {
	p.mu.Lock()
	if p.result != nil {
		defer p.mu.Unlock()
		return *p.result
	}
	p.mu.Unlock()
	_ = p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	_ = p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	// iputils' ping numbers its requests from 1.
	r := PingResult{Received: len(p.replies)}
	if p.maxSeq >= 1 {
		r.Sent = p.maxSeq
		for seq := 1; seq <= p.maxSeq; seq++ {
			if !p.replies[seq] {
				r.Lost = append(r.Lost, seq)
			}
		}
	}
	p.result = &r
	return r
}
