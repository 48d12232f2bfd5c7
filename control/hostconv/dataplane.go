package hostconv

// What the BPF programs and the Go code that reads their maps must agree on. These are the one
// home of each value: `go generate ./loader` writes them into bpf/include/hostconv.h (see
// loader/internal/genconv), which the programs include.

// Conntrack's default timeouts, in seconds: how long an entry in each state lives without
// packets when the config map sets no timeout of its own (maps.Timeout, ct_timeout_ns in
// bpf/include/policy.h).
const (
	CTDefaultTCPSyn         = 60
	CTDefaultTCPEstablished = 6 * 3600
	CTDefaultTCPFin         = 30
	CTDefaultTCPClosed      = 10
	CTDefaultUDP            = 60
	CTDefaultICMP           = 30
	CTDefaultOther          = 60
)

// The programs' rate limit of events, per CPU and kind (drops, traces): at most EventsBurst at
// once, refilled at EventsRate a second (bpf/include/events.h). Two CPUs flooded with drops send
// 2,000 events a second, 96 KB/s into the ring buffer.
const (
	EventsRate  = 1000
	EventsBurst = 100
)
