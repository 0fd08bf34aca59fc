package balancer

import (
	"testing"

	"go.uber.org/goleak"
)

// The learn policy's Redis store starts a writer goroutine; every test must
// leave none behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
