package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/upgrade"
	"github.com/affinityproxy/affinity/internal/watch"
	"github.com/affinityproxy/affinity/proxy"
)

// startUpgrader makes srv bind its listeners through the process's
// upgrade.Upgrader, taking over those of the process it replaces, or those
// systemd passed, if any, and tell it, and systemd, once they are bound. It
// returns nil, logged, where the process cannot have one (a second serve in
// one process, as in tests): srv then binds its own, and SIGUSR2 is
// ignored. Sockets from systemd that cannot be taken are an error: the
// proxy does not start without them.
func startUpgrader(srv *proxy.Server, log *zap.Logger, pidFile string, timeout time.Duration) (*upgrade.Upgrader, error) {
	up, err := upgrade.New(pidFile, timeout)
	var aerr *upgrade.ActivationError
	if errors.As(err, &aerr) {
		return nil, err
	}
	if err != nil {
		log.Warn("in-place upgrade unavailable: SIGUSR2 will be ignored, and no PID file written", zap.Error(err))
		return nil, nil
	}
	logActivation(log, up.Activation())
	srv.UseListen(up.Listen, func() error {
		// A process that cannot say it is ready exits, unready: serve
		// returns the error.
		if err := up.Ready(); err != nil {
			return fmt.Errorf("signalling readiness: %w", err)
		}
		for _, s := range up.Unclaimed() {
			log.Warn("socket from systemd closed: no configured address (listen, admin.listen) is its address",
				zap.Int("fd", s.FD), zap.String("name", s.Name), zap.String("addr", s.Addr))
		}
		log.Info("ready", zap.Int("pid", os.Getpid()), zap.Bool("upgraded", up.HasParent()))
		return nil
	})
	return up, nil
}

// logActivation logs what socket activation gave the process.
func logActivation(log *zap.Logger, act upgrade.Activation) {
	if act.Ignored {
		log.Warn("LISTEN_FDS ignored: LISTEN_PID does not name this process (a wrapper that does not exec the proxy?)",
			zap.String("listen_pid", act.OtherPID), zap.Int("pid", os.Getpid()))
	}
	if !act.Activated {
		return
	}
	var addrs []string
	for _, s := range act.Sockets {
		if s.Skipped != "" {
			log.Warn("socket from systemd skipped", zap.Int("fd", s.FD), zap.String("name", s.Name), zap.String("reason", s.Skipped))
			continue
		}
		addrs = append(addrs, s.Addr)
	}
	log.Info("sockets from systemd (socket activation)", zap.Int("passed", len(act.Sockets)), zap.Strings("listening", addrs))
}

// certWatch watches the TLS listener's certificate and key files, those the
// configuration in use names, for serve to reload them as it reloads its
// config. The zero value watches nothing; its channels are nil.
type certWatch struct {
	log       *zap.Logger
	files     config.TLS // watched now
	ws        [2]*watch.Watcher
	cert, key <-chan struct{}
}

// follow watches the files t names, unless they are those watched already;
// nil (TLS turned off, which takes a restart) changes nothing.
func (c *certWatch) follow(t *config.TLS) {
	if t == nil || *t == c.files {
		return
	}
	c.close()
	c.files = *t
	for i, path := range []string{t.Cert, t.Key} {
		if i == 1 && t.Key == t.Cert {
			break
		}
		w, err := watch.New(path, reloadQuiet, c.log)
		if err != nil {
			c.log.Warn("not watching a TLS file: reload with SIGHUP", zap.String("file", path), zap.Error(err))
			continue
		}
		c.ws[i] = w
	}
	if c.ws[0] != nil {
		c.cert = c.ws[0].C
	}
	if c.ws[1] != nil {
		c.key = c.ws[1].C
	}
}

// close stops watching.
func (c *certWatch) close() {
	for i, w := range c.ws {
		if w != nil {
			_ = w.Close()
			c.ws[i] = nil
		}
	}
	c.cert, c.key, c.files = nil, nil, config.TLS{}
}
