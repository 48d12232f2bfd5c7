// Package cluster runs hosts as network namespaces on one L2 segment, each with a real
// margay-agent process, against one etcd: the ground of the end-to-end tests.
package cluster
