// Package loader loads Margay's eBPF objects, pins their maps under a bpffs root, and attaches,
// adopts and detaches the programs on interfaces (tcx, clsact fallback, XDP).
package loader
