package loader

// The values the programs share with Go first (bpf/include/hostconv.h), then the programs.
//go:generate go run ./internal/genconv ../bpf/include/hostconv.h
//go:generate go tool bpf2go -tags linux -target bpfel -type hook -type reason -type route_flags -type route_key -type route_value -type endpoint -type counter_key -type counter_value -type policy_action -type policy_key -type policy_value -type ct_state -type ct_timeouts -type ct_key -type ct_verdict -type ct_value -type config_value -type config_flags -type failsafe_flags -type failsafe_key -type frag_key -type frag_value -type event_kind -type event_flags -type event -type event_state -type monitor_flags -type monitor_value Margay ../bpf/margay.c
