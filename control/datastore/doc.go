// Package datastore is Margay's etcd v3 layer: configuration, typed versioned resources, compare-and-swap writes, list-then-watch and an embedded etcd for the lab and tests.
package datastore
