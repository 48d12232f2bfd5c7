// Package ipam hands out workload addresses from IP pools cut into blocks with host affinity, as
// Calico does: every change to a block is a compare-and-swap on its etcd revision, so no address
// is ever handed out twice, also when many hosts allocate at once.
package ipam
