// Package convert turns Calico's projectcalico.org/v3 resources into Margay's datastore records
// and back, refusing by field path what a record cannot hold yet.
package convert
