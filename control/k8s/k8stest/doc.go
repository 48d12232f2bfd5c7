// Package k8stest runs a real kube-apiserver, on an embedded etcd, on 127.0.0.1 for tests
// (built by make k8s-bins; MARGAY_K8S_BIN_DIR names another directory), with an admin client
// and the identities, kubeconfig files and RBAC roles that margay-cni and margay-agent use.
package k8stest
