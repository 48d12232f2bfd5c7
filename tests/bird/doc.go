// Package bird runs a real BIRD 2 routing daemon inside a test network namespace — the foreign
// BGP peer of interop tests and the lab's gateway router — and reads its state through birdc.
package bird
