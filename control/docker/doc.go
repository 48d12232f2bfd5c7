// Package docker is Margay's Docker plugin: the libnetwork remote network driver ("margay") and
// IPAM driver ("margay-ipam") over HTTP, backed by Margay's IPAM, workloads and datastore, so that
// a container on a margay network becomes a workload as a CNI pod does. docs/docker.md is the
// design.
package docker
