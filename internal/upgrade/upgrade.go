// Package upgrade replaces the running process with a new one of the same
// program without closing its listening sockets: the in-place upgrade of
// `affinity serve` on SIGUSR2. It is a thin layer over
// github.com/cloudflare/tableflip, which starts the new process with the
// sockets passed as inherited descriptors and waits for it to say it is
// ready, and it tells systemd (sd_notify, notify.go) which process is the
// service's main one once a new one is ready.
//
// The new process is started from os.Args[0], looked up again at each
// upgrade, with the same arguments, environment and working directory: a
// binary replaced at that path (a package upgrade renames the new file
// over the old) is the one that runs. On Linux the process adopts the
// orphans of its successors (strays_linux.go), and kills those a failed
// successor left behind, which would otherwise hold the sockets unserved.
//
// A process that systemd started with sockets of its own (socket
// activation, activation.go) listens on those, and hands them over as
// any other.
package upgrade

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cloudflare/tableflip"
)

// Upgrader hands a process's listening sockets over to its successor.
type Upgrader struct {
	flip    *tableflip.Upgrader
	pidFile string
	act     Activation
	systemd activations // the listeners systemd passed, until taken
}

// New makes the process's Upgrader; there is at most one per process (the
// descriptors a predecessor passed are the process's), and a second call
// fails. pidFile, when not empty, is written with the process's PID, by
// renaming a new file over it, once it is ready. A successor that is not
// ready within timeout is killed, and the upgrade fails.
//
// A process not started by an upgrade takes the sockets systemd passed, if
// any (Activation); the environment's LISTEN_* variables are removed
// either way. Those that are wrong (a count of descriptors that were not
// all open, one that is not a socket) are an *ActivationError.
func New(pidFile string, timeout time.Duration) (*Upgrader, error) {
	if pidFile != "" {
		// Relative to the directory the process started in, as the
		// successor, started there too, reads it.
		abs, err := filepath.Abs(pidFile)
		if err != nil {
			return nil, fmt.Errorf("upgrade: PID file: %w", err)
		}
		pidFile = abs
	}
	// The PID file is ours to write, not tableflip's: tableflip writes it
	// in Ready after it has let go of the descriptors, and Ready must
	// fail before telling anyone anything.
	flip, err := tableflip.New(tableflip.Options{UpgradeTimeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	if err := adoptOrphans(); err != nil {
		flip.Stop()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	u := &Upgrader{flip: flip, pidFile: pidFile}
	act, lns, err := takeActivation(atStart, flip.HasParent())
	if err != nil {
		flip.Stop()
		return nil, &ActivationError{err}
	}
	u.act, u.systemd.pending = act, lns
	return u, nil
}

// ActivationError is New's error when the sockets systemd passed cannot be
// taken: the process should not start without them.
type ActivationError struct{ Err error }

func (e *ActivationError) Error() string { return "upgrade: " + e.Err.Error() }
func (e *ActivationError) Unwrap() error { return e.Err }

// Activation tells what socket activation gave the process, for its log.
func (u *Upgrader) Activation() Activation { return u.act }

// Listen returns the listener on addr that the predecessor passed, if
// any, else the one systemd passed for addr (matches), else a new one;
// whichever it is, it is passed on to the successor.
func (u *Upgrader) Listen(network, addr string) (net.Listener, error) {
	return u.flip.ListenWithCallback(network, addr, func(network, addr string) (net.Listener, error) {
		if ln := u.systemd.take(network, addr); ln != nil {
			return ln, nil
		}
		return net.Listen(network, addr)
	})
}

// Unclaimed returns the sockets systemd passed that no Listen took before
// Ready, which closed them.
func (u *Upgrader) Unclaimed() []Socket {
	u.systemd.mu.Lock()
	defer u.systemd.mu.Unlock()
	return append([]Socket(nil), u.systemd.unclaimed...)
}

// HasParent reports whether this process was started by an upgrade.
func (u *Upgrader) HasParent() bool { return u.flip.HasParent() }

// Ready tells that this process serves: it writes the PID file, tells
// systemd that the service is ready with this process as its main one, and
// tells the predecessor (which then stops accepting and drains). Listeners
// the predecessor passed that were not taken with Listen are closed, and
// so are those systemd passed (Unclaimed).
//
// When the PID file cannot be written, or systemd cannot be told, Ready
// tells no one else and returns the error (the PID file is put back as it
// was). The process must then exit without having accepted anything, and a
// predecessor, seeing it exit, goes on serving. A successor that served
// anyway would be killed at the upgrade's timeout with the connections it
// had accepted, while systemd, told it was the main one, saw it die.
func (u *Upgrader) Ready() error {
	u.systemd.closeUnclaimed()
	var prev []byte
	if u.pidFile != "" {
		prev, _ = os.ReadFile(u.pidFile)
		if err := writePIDFile(u.pidFile, strconv.Itoa(os.Getpid())+"\n"); err != nil {
			return fmt.Errorf("upgrade: PID file: %w", err)
		}
	}
	// systemd before the predecessor: once told, the predecessor may exit
	// at once, and systemd must by then know which process the service
	// lives on.
	if err := Notify("READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())); err != nil {
		switch {
		case u.pidFile == "":
		case prev != nil:
			err = errors.Join(err, writePIDFile(u.pidFile, string(prev)))
		default:
			err = errors.Join(err, os.Remove(u.pidFile))
		}
		return err
	}
	return u.flip.Ready()
}

// writePIDFile writes text to path by renaming a new file over it, so that
// a reader never sees it empty or half written.
func writePIDFile(path, text string) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// strayWait bounds how long a failed upgrade waits for the processes the
// successor left behind to be gone.
const strayWait = 5 * time.Second

// Upgrade starts the successor and waits until it is ready, or it exits,
// or the timeout passes (then it is killed): only in the first case does it
// return nil, and Exit is closed. One upgrade runs at a time, and a process
// that was itself started by an upgrade can upgrade once its predecessor
// has exited.
func (u *Upgrader) Upgrade() error {
	err := u.flip.Upgrade()
	if err != nil {
		// tableflip kills the successor it started, alone: what that
		// one started holds the sockets too, and goes as well.
		killStrays(strayWait)
		// A successor that told systemd it was the main process and
		// then failed must not stay the one systemd follows.
		_ = Notify("MAINPID=" + strconv.Itoa(os.Getpid()))
	}
	return err
}

// Exit is closed once a successor is ready (this process should then stop
// accepting and drain), or after Stop.
func (u *Upgrader) Exit() <-chan struct{} { return u.flip.Exit() }

// Stop ends upgrades, killing a successor that is not ready yet, at the
// process's stop. When no successor took over, it tells systemd that the
// service is stopping and removes the PID file if it still names this
// process.
func (u *Upgrader) Stop(handedOver bool) error {
	u.flip.Stop()
	if handedOver {
		return nil
	}
	err := Notify("STOPPING=1")
	if u.pidFile != "" {
		if b, rerr := os.ReadFile(u.pidFile); rerr == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
			err = errors.Join(err, os.Remove(u.pidFile))
		}
	}
	return err
}
