//go:build !linux

package upgrade

import "time"

// adoptOrphans does nothing: only Linux lets a process reap its
// descendants' orphans.
func adoptOrphans() error { return nil }

// killStrays does nothing where adoptOrphans does not.
func killStrays(time.Duration) {}
