package bpfbench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// SKBContext is the head of struct __sk_buff (linux/bpf.h) up to and including ifindex. The
// kernel accepts a prefix and zeroes the rest; of these fields a test run lets the caller set
// only mark, priority, ingress_ifindex and ifindex (convert___skb_to_skb in net/bpf/test_run.c).
// With ifindex set, the skb arrives on that device of the caller's network namespace, as on the
// real hook; without it, on lo.
func SKBContext(ifindex uint32) []byte {
	var ctx struct {
		_              [9]uint32 // len, pkt_type, mark, queue_mapping, protocol, vlan_*, priority
		IngressIfindex uint32
		Ifindex        uint32
	}
	ctx.IngressIfindex, ctx.Ifindex = ifindex, ifindex
	b, err := binary.Append(nil, binary.NativeEndian, &ctx)
	if err != nil {
		panic(err) // fixed-size struct of uint32s
	}
	return b
}

// progTestRunAttr is the BPF_PROG_TEST_RUN member of union bpf_attr (linux/bpf.h).
type progTestRunAttr struct {
	progFD      uint32
	retval      uint32
	dataSizeIn  uint32
	dataSizeOut uint32
	dataIn      uint64
	dataOut     uint64
	repeat      uint32
	duration    uint32
	ctxSizeIn   uint32
	ctxSizeOut  uint32
	ctxIn       uint64
	ctxOut      uint64
	flags       uint32
	cpu         uint32
	batchSize   uint32
	_           uint32
}

// Run runs prog repeat times on one copy of pkt with the given __sk_buff context and
// returns the last run's verdict and the kernel's mean time per run in whole nanoseconds.
// cilium/ebpf offers no call with both: Program.Run takes a context but drops the duration,
// Program.Benchmark returns the duration but takes no context.
func Run(prog *ebpf.Program, pkt, ctx []byte, repeat uint32) (verdict, nsPerRun uint32, err error) {
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&pkt[0])
	pin.Pin(&ctx[0])
	attr := progTestRunAttr{
		progFD:     uint32(prog.FD()),
		dataSizeIn: uint32(len(pkt)),
		dataIn:     uint64(uintptr(unsafe.Pointer(&pkt[0]))),
		repeat:     repeat,
		ctxSizeIn:  uint32(len(ctx)),
		ctxIn:      uint64(uintptr(unsafe.Pointer(&ctx[0]))),
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		switch {
		case errno == 0:
			return attr.retval, attr.duration, nil
		case errors.Is(errno, unix.EINTR):
			continue // a signal cut the runs short; the kernel reports nothing, so run them again
		default:
			return 0, 0, fmt.Errorf("test run %v: %w", prog, errno)
		}
	}
}
