// Package docker holds the Docker plugin's end-to-end tests (issue 21): hosts of tests/cluster,
// each with its in-process agent, its own dockerd (control/lab.DockerHost) and the real
// margay-docker binary, running busybox containers on `--driver margay --ipam-driver margay-ipam`
// networks with real traffic between them, and checking after every step that each host's state
// (etcd records, IPAM, BPF maps, kernel routes, links) is exactly that of its running containers.
// docs/docker.md ("Lab and tests") lists the cases.
package docker
