// Package bgp runs the node's BGP speaker (embedded GoBGP behind the Speaker interface) and computes its peers.
package bgp
