// Package k8s connects Margay to Kubernetes, the way Calico does.
//
// WorkloadLabels gives a pod's workload the labels policies select on: the pod's own, plus
// projectcalico.org/namespace, projectcalico.org/orchestrator, projectcalico.org/serviceaccount,
// the namespace's labels as pcns.<key> and the service account's as pcsa.<key> (package
// podlabels, which margay-cni uses during ADD with its own API client, also for the pod's named
// ports).
//
// PolicyFromNetworkPolicy turns a Kubernetes NetworkPolicy into the Margay policy
// knp.default.<namespace>.<name> with order 1000, as Calico names and orders it; a Syncer keeps
// those policies in the datastore equal to the cluster's NetworkPolicies (margay-agent
// --k8s-policy-sync). Policies without the knp.default. prefix are never touched.
package k8s
