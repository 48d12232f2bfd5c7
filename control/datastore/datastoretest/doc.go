// Package datastoretest starts a private embedded etcd per test and connects a datastore.Client to
// it; Reads counts the keys a Client reads and puts another writer right after a read.
package datastoretest
