// Package lab builds the reference multi-host network on one machine — hosts vm100, vm101, … as
// network namespaces on one segment, one etcd, a real margay-agent per host in a BGP mesh, one
// workload per host through the real margay-cni — for `margayctl lab` and the end-to-end tests.
// With Config.Docker the workloads are Docker containers instead: a real dockerd and
// margay-docker per host (DockerHost), the walkthrough's networks and containers.
package lab
