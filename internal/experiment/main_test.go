package experiment

import (
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { testutil.RemoveAffinityBinary() }))
}
