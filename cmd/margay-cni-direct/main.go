// Command margay-cni-direct runs a CNI call of Margay's plugin in its own process: margay-cni
// executes it when no margay-agent on the host serves the call (see package cni).
package main

import "github.com/margaynet/margay/control/cni"

func main() { cni.Main() }
