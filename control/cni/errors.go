package cni

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
)

// Plugin-specific error codes (the CNI specification leaves 100 and up to plugins).
const (
	// ErrCodePoolExhausted: every enabled IP pool is full.
	ErrCodePoolExhausted uint = 100
	// ErrCodeNoPool: there is no enabled IP pool.
	ErrCodeNoPool uint = 101
	// ErrCodeMismatch: CHECK found the workload's network different from its endpoint.
	ErrCodeMismatch uint = 102
)

// cniError turns an error of the workload code path into a CNI error with the code a runtime can
// act on and a message that says what to do.
func cniError(err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	msg := "margay-cni: " + err.Error()
	switch {
	case errors.Is(err, ipam.ErrPoolExhausted):
		return types.NewError(ErrCodePoolExhausted, msg, "add an IP pool (margayctl pool add) or delete unused workloads")
	case errors.Is(err, ipam.ErrNodeNotRegistered):
		return types.NewError(types.ErrTryAgainLater, msg, `start margay-agent on this host, or set "nodeName" in the network config to the node name its agent registered`)
	case errors.Is(err, ipam.ErrNoPool):
		return types.NewError(ErrCodeNoPool, msg, "create an IP pool with margayctl pool add, or enable one")
	case errors.Is(err, workload.ErrNetnsNotFound):
		return types.NewError(types.ErrUnknownContainer, msg, "CNI_NETNS must name the container's existing network namespace")
	case errors.Is(err, workload.ErrNotFound):
		return types.NewError(types.ErrUnknownContainer, msg, "")
	case errors.Is(err, workload.ErrInvalidSpec), errors.Is(err, workload.ErrInterfaceExists):
		return types.NewError(types.ErrInvalidEnvironmentVariables, msg, "")
	case errors.Is(err, workload.ErrMismatch):
		return types.NewError(ErrCodeMismatch, msg, "delete and add the container again, or let the agent repair the host side")
	case transient(err):
		return types.NewError(types.ErrTryAgainLater, msg, "etcd is unavailable or busy; try again")
	}
	return types.NewError(types.ErrInternal, msg, "")
}

// transient reports errors that go away by themselves: etcd unreachable, timed out, without a
// leader, compare-and-swap contention, or the agent that served the call stopping (its context
// cancelled).
func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, ipam.ErrContention) || errors.Is(err, datastore.ErrConflict) {
		return true
	}
	var coded interface{ Code() codes.Code } // etcd's rpctypes.EtcdError
	if errors.As(err, &coded) && retryable(coded.Code()) {
		return true
	}
	var grpcErr interface{ GRPCStatus() *status.Status }
	return errors.As(err, &grpcErr) && retryable(grpcErr.GRPCStatus().Code())
}

func retryable(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	return false
}

func badEnv(msg string) *types.Error {
	return types.NewError(types.ErrInvalidEnvironmentVariables, "margay-cni: "+msg, "")
}
