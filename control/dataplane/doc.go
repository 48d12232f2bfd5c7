// Package dataplane keeps a host's kernel routes, interface settings, program attachments and BPF
// maps equal to a desired state: an idempotent reconciler that removes what is stale and restores
// what was changed by hand.
package dataplane
