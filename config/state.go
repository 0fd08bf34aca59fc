package config

import (
	"errors"
	"fmt"
	"strings"
)

// State is a backend's administrative state, which an operator sets apart
// from its health: in the config (backends[].state) or at run time, through
// the admin API.
type State string

// The states a backend can be set to.
const (
	// StateReady takes new clients and the clients pinned to it.
	StateReady State = "ready"
	// StateDrain takes the clients pinned to it (by a cookie, a learned
	// session, or a hash key it owns) while it is healthy, and no new one.
	StateDrain State = "drain"
	// StateMaint takes nothing: its pinned clients move as if it were
	// down.
	StateMaint State = "maint"
)

// States lists the states in the order messages name them.
var States = []State{StateReady, StateDrain, StateMaint}

// ErrUnknownState is wrapped by ParseState.
var ErrUnknownState = errors.New("unknown state")

// ParseState returns the State spelled s.
func ParseState(s string) (State, error) {
	for _, st := range States {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("%w %q: want ready, drain or maint", ErrUnknownState, s)
}

// MinAdminToken is the shortest admin token accepted, in bytes: a shorter
// one could be guessed.
const MinAdminToken = 16

// ReadToken returns the token that admin API writes must carry: Token, or
// the content of TokenFile without surrounding white space; "" when neither
// is set. The file is read on each call.
func (a Admin) ReadToken() (string, error) {
	if a.TokenFile == "" {
		return a.Token, nil
	}
	tok, err := readTokenFile(a.TokenFile)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	return tok, nil
}

// readTokenFile reads a token from the file at path.
func readTokenFile(path string) (string, error) {
	b, err := ReadSmallFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return tok, nil
}

// checkToken accepts a token of MinAdminToken bytes or more that fits in
// an Authorization header: printable ASCII without spaces.
func checkToken(tok string) error {
	if len(tok) < MinAdminToken {
		return fmt.Errorf("the token must be at least %d bytes long", MinAdminToken)
	}
	for _, c := range []byte(tok) {
		if c <= ' ' || c >= 0x7f {
			return errors.New("the token must be printable ASCII without spaces")
		}
	}
	return nil
}
