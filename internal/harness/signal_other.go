//go:build !unix

package harness

import "os"

// Without job-control signals a process cannot be frozen: hang and resume
// fail with errors.ErrUnsupported.
var sigStop, sigCont os.Signal

// Without SIGHUP the proxy is left to watch its config file, which it
// reloads once the file has been quiet for a moment.
var sigReload os.Signal
