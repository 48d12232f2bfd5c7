// Package workload creates and removes a workload's network — veth pair, /32, routes, neighbour, host sysctls, IPAM address and endpoint record — the one code path behind margay-cni and margayctl workload.
package workload
