package cni

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
)

// Errors of the workload path become the codes a runtime acts on; a call the stopping agent cut
// short, like etcd's timeouts, is "try again".
func TestCNIErrorCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		code uint
	}{
		{fmt.Errorf("add: %w", context.Canceled), types.ErrTryAgainLater},
		{fmt.Errorf("add: %w", context.DeadlineExceeded), types.ErrTryAgainLater},
		{fmt.Errorf("add: %w", ipam.ErrContention), types.ErrTryAgainLater},
		{fmt.Errorf("add: %w", ipam.ErrNodeNotRegistered), types.ErrTryAgainLater},
		{fmt.Errorf("add: %w", ipam.ErrPoolExhausted), ErrCodePoolExhausted},
		{fmt.Errorf("add: %w", ipam.ErrNoPool), ErrCodeNoPool},
		{fmt.Errorf("add: %w", workload.ErrNetnsNotFound), types.ErrUnknownContainer},
		{fmt.Errorf("check: %w", workload.ErrMismatch), ErrCodeMismatch},
		{errors.New("something else"), types.ErrInternal},
	} {
		if got := cniError(c.err); got.Code != c.code {
			t.Errorf("%v: code %d, want %d", c.err, got.Code, c.code)
		}
	}
}
