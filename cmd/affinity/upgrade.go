package main

import (
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
// upgrade.Upgrader, taking over those of the process it replaces if any,
// and tell it, and systemd, once they are bound. It returns nil, logged,
// where the process cannot have one (a second serve in one process, as in
// tests): srv then binds its own, and SIGUSR2 is ignored.
func startUpgrader(srv *proxy.Server, log *zap.Logger, pidFile string, timeout time.Duration) *upgrade.Upgrader {
	up, err := upgrade.New(pidFile, timeout)
	if err != nil {
		log.Warn("in-place upgrade unavailable: SIGUSR2 will be ignored, and no PID file written", zap.Error(err))
		return nil
	}
	srv.UseListen(up.Listen, func() error {
		// A process that cannot say it is ready exits, unready: serve
		// returns the error.
		if err := up.Ready(); err != nil {
			return fmt.Errorf("signalling readiness: %w", err)
		}
		log.Info("ready", zap.Int("pid", os.Getpid()), zap.Bool("upgraded", up.HasParent()))
		return nil
	})
	return up
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
