// Package k8s tests Margay on a real Kubernetes (make test-k8s; its tests build with -tags k8s):
// the lab's hosts as nodes of a cluster built from the Go module proxy (package
// control/lab/kube), Margay's DaemonSet applied from deploy/k8s/margay.yaml with the node image
// built here from deploy/Dockerfile, then what a Kubernetes user does: pods across nodes,
// NetworkPolicy, Services through kube-proxy, a rolling update of the DaemonSet, its removal.
package k8s
