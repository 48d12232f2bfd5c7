// Package manifest splits an input file of resources into its documents, whatever their kind:
// YAML documents separated by --- lines, or JSON objects one after another, or arrays of
// objects. Each document comes out as JSON, with what a message about it needs (its index, the
// line it starts on, its name); turning it into a resource is its kind's business.
package manifest
