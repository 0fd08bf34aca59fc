//go:build !unix

package proxy

// fileLimit reports no limit where there is no RLIMIT_NOFILE.
func fileLimit() (int64, bool) { return 0, false }
