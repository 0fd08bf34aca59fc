//go:build unix

package harness

import (
	"os"
	"syscall"
)

// The job-control signals behind the hang and resume faults.
var sigStop, sigCont os.Signal = syscall.SIGSTOP, syscall.SIGCONT

// sigReload has the proxy reload its config file.
var sigReload os.Signal = syscall.SIGHUP
