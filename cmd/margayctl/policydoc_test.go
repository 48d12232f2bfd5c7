package main

import "github.com/margaynet/margay/control/manifest"

// policyDoc and splitPolicyDocs let TestSplitPolicyDocs, written when margayctl split its input
// itself, run against manifest.Split, which does it now (control/manifest has its own tests).
type policyDoc struct {
	index, line int
	name        string
	err         error
}

func splitPolicyDocs(input []byte) ([]policyDoc, error) {
	docs, err := manifest.Split(input)
	out := make([]policyDoc, len(docs))
	for i, d := range docs {
		out[i] = policyDoc{index: d.Index, line: d.Line, name: d.Name, err: d.Err}
	}
	return out, err
}
