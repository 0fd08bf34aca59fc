//go:build !unix

package experiment

import "os"

// Without job-control signals a process cannot be frozen: hang and resume
// fail with errors.ErrUnsupported.
var sigStop, sigCont os.Signal
