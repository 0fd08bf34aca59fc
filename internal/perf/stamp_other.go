//go:build !linux

package main

import (
	"errors"
	"syscall"
	"time"
)

var errNoStamp = errors.New("receive timestamps are read on Linux only")

func rxStampOn(syscall.RawConn) error { return errNoStamp }

func rxStamp(syscall.RawConn) (time.Time, error) { return time.Time{}, errNoStamp }
