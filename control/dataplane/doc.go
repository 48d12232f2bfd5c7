// Package dataplane keeps a host's kernel routes, interface settings, program attachments and BPF
// maps equal to a desired state: an idempotent reconciler that removes what is stale and restores
// what was changed by hand.
//
// A State is the whole desired state; its owner keeps it from pass to pass and says in
// State.Changed which workloads and remote routes changed since the last pass. The reconciler
// resolves a State into a desired state of map entries and kernel routes entry by entry
// (desired.go): Apply does it for everything and compares with what the kernel and the maps
// hold; Update changes the last pass's desired state by what Changed names and writes the
// difference it noted (a plan), so that an event costs in proportion to what it changed.
package dataplane
