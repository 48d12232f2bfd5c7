// Package etcdembed runs a single-member etcd inside the process, for the lab and for tests; kept
// apart from the datastore client so that binaries which only talk to etcd do not link its server.
package etcdembed
