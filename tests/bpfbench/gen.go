package bpfbench

//go:generate go tool bpf2go -tags linux -target bpfel Bench ../../bpf/bench/baseline.c
//go:generate go tool bpf2go -tags linux -target bpfel Bare ../../bpf/bench/bare.c
