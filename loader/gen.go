package loader

//go:generate go tool bpf2go -tags linux -target bpfel -type hook -type reason -type route_flags -type route_key -type route_value -type endpoint -type counter_key -type counter_value Margay ../bpf/margay.c
