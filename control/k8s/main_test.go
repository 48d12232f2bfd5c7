//go:build k8s

package k8s

import (
	"testing"

	"github.com/margaynet/margay/control/k8s/k8stest"
)

// The tests under the k8s build tag share one real kube-apiserver (make test-k8s).
func TestMain(m *testing.M) { k8stest.Main(m) }
