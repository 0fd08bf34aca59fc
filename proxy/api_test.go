package proxy

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
)

// TestStateWriteDuringReload: a state write answered 200 is in effect,
// however reloads overlap it: each write lands either before a reload,
// which carries it over, or on the configuration that reload put in
// service, never on one being replaced.
func TestStateWriteDuringReload(t *testing.T) {
	bs := startBackends(t, "b0", "b1")
	var cfgs [2]*config.Config
	for i := range cfgs {
		p := poolOf("web", "cookie", cookieOptions(), bs...)
		p.Retries = config.Retries{Count: i} // a real change, and none of any state
		cfgs[i] = catchAll(p)
	}
	s, _, admin := startWithAdmin(t, cfgs[0], nil)

	stop, reloaded := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				reloaded <- n
				return
			default:
			}
			n++
			if err := s.Reload(cfgs[n%2]); err != nil {
				t.Error(err)
			}
		}
	}()
	const writes = 400
	states := []config.State{config.StateDrain, config.StateMaint}
	lost, sent := 0, 0
	for deadline := time.Now().Add(waitFor); sent < writes && time.Now().Before(deadline); sent++ {
		want := states[sent%2]
		mustSetState(t, admin, "web", "b1", want)
		// Once the reload that may be under way is done.
		s.reloadMu.Lock()
		got := s.state.Load().pools[0].view()[1].state
		s.reloadMu.Unlock()
		if got != want {
			lost++
		}
	}
	close(stop)
	n := <-reloaded
	if n == 0 {
		t.Fatal("no reload ran during the writes")
	}
	if lost > 0 {
		t.Errorf("%d of %d writes answered 200 were lost to %d reloads", lost, sent, n)
	}
}

// FuzzDecodeState: a state write's body is accepted only as one JSON
// object holding "state" alone, once, with a state for its value, and
// nothing makes the decoder panic.
func FuzzDecodeState(f *testing.F) {
	for _, seed := range []string{
		`{"state": "drain"}`, ` {"state":"ready"} `, `{"STATE":"maint"}`, `{"state":"ready","state":"maint"}`,
		`{"state":"drain"}{}`, `{"st\u0061te":"drain"}`, `{"state":null}`, `[]`, `"drain"`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		st, err := decodeState(bytes.NewReader(body))
		if err != nil {
			return
		}
		if _, perr := config.ParseState(string(st)); perr != nil {
			t.Fatalf("%q: accepted state %q", body, st)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("%q accepted, but it is not one JSON object: %v", body, err)
		}
		var got string
		if len(fields) != 1 || json.Unmarshal(fields["state"], &got) != nil || got != string(st) {
			t.Fatalf("%q accepted as %q, but it holds %v", body, st, fields)
		}
		if n := bytes.Count(body, []byte(`"`)); n > 4 && !bytes.Contains(body, []byte(`\`)) {
			t.Fatalf("%q accepted, with more strings than a key and its value", body)
		}
	})
}
