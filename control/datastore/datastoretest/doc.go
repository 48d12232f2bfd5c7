// Package datastoretest starts a private embedded etcd per test and connects a datastore.Client to it.
package datastoretest
