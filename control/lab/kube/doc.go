// Package kube is the Kubernetes side of Margay's lab: a control plane (kube-apiserver on the
// lab's etcd, controller manager, scheduler) and nodes on the lab hosts, each with its own
// containerd, kubelet and kube-proxy in the host's network namespace and a mount namespace of its
// own; the certificates and kubeconfigs they use; and the container images, built here, that the
// nodes run (Margay's node image from deploy/Dockerfile among them).
package kube
