// Package netns builds throwaway network namespaces, veth pairs and bpffs mounts for privileged
// tests, and removes them again when the test ends, also when it fails.
package netns
