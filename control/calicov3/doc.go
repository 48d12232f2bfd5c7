// Package calicov3 is what margayctl apply, create, replace, delete and get do with Calico's
// projectcalico.org/v3 resources: every document of an input read and converted before any is
// written, and checked against the datastore (a policy's tier exists; a tier to delete holds no
// policies) before any is written; each written by compare-and-swap; and the stored records
// read back as resources.
package calicov3
