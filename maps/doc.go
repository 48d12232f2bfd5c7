// Package maps gives typed access to Margay's BPF maps (routes, endpoints, counters) with net/netip
// types, for the agent and for margayctl; names of flags, hooks and reasons come from the BTF of
// the C enums.
package maps
