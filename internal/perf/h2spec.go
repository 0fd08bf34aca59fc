package main

import (
	"context"
	"debug/buildinfo"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
)

// knownH2Failures are the h2spec cases the proxy fails, by the ID h2spec
// runs a case by, each for a behaviour of net/http's HTTP/2 server that no
// setting changes; docs/security.md says why each is kept.
var knownH2Failures = map[string]string{
	"http2/6.5.3/1":   "a SETTINGS frame repeating a setting closes the connection (PROTOCOL_ERROR)",
	"http2/8.1.2.2/1": "a connection-specific field is answered 400, the stream not reset",
	"http2/8.1.2.2/2": "a TE other than trailers is answered 400, the stream not reset",
}

// h2specPage is what the backends answer: h2spec skips its cases of flow
// control unless a response has a body of 5 bytes or more.
const h2specPage = "a page for h2spec\n"

// h2specOptions are the h2spec command's flags.
type h2specOptions struct {
	h2spec    string // the h2spec binary
	cert, key string // the proxy's certificate and key
	timeout   int    // h2spec's wait for each answer, in seconds
}

// h2specCase is one case h2spec ran.
type h2specCase struct {
	id, desc string
	failed   bool
	skipped  bool
}

// h2specRun runs h2spec against the TLS listener of the proxy over three
// backends, and writes the count of cases passed and every failure, known
// or not. It fails when h2spec cannot run, or a case fails that is not
// one of knownH2Failures.
func h2specRun(ctx context.Context, bin string, o h2specOptions, out io.Writer) error {
	bs, err := startBackends(h2specPage)
	if err != nil {
		return err
	}
	defer bs.close()
	p, err := startProxy(ctx, bin, bs, proxyOptions{cert: o.cert, key: o.key})
	if err != nil {
		return err
	}
	defer p.stop()
	host, port, err := net.SplitHostPort(p.addr)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "affinity-h2spec")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	report := filepath.Join(dir, "report.xml")
	cmd := exec.CommandContext(ctx, o.h2spec, "--tls", "--insecure", "--host", host, "--port", port,
		"--timeout", strconv.Itoa(o.timeout), "--junit-report", report)
	output, err := cmd.CombinedOutput()
	// h2spec exits 1 when a case fails, and writes its report first.
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		return fmt.Errorf("%s: %w\n%s", o.h2spec, err, output)
	}
	xmlReport, err := os.ReadFile(report)
	if err != nil {
		return fmt.Errorf("%s wrote no report: %w\n%s", o.h2spec, err, output)
	}
	cases, err := parseH2spec(xmlReport)
	if err != nil {
		return err
	}
	return summarise(out, h2specVersion(o.h2spec), cases)
}

// summarise writes the count of cases passed and the failures, and
// returns an error naming the failures that are not known.
func summarise(out io.Writer, version string, cases []h2specCase) error {
	passed, skipped := 0, 0
	var failed []h2specCase
	for _, c := range cases {
		switch {
		case c.skipped:
			skipped++
		case c.failed:
			failed = append(failed, c)
		default:
			passed++
		}
	}
	fmt.Fprintf(out, "h2spec %s: %d cases, %d passed, %d skipped, %d failed\n", version, len(cases), passed, skipped, len(failed))
	var unknown []string
	for _, c := range failed {
		why, ok := knownH2Failures[c.id]
		if !ok {
			unknown = append(unknown, c.id)
			why = "not among the known failures"
		}
		fmt.Fprintf(out, "  %s %s: %s\n", c.id, c.desc, why)
	}
	if len(cases) == 0 {
		return errors.New("h2spec ran no case")
	}
	if len(unknown) > 0 {
		return fmt.Errorf("h2spec: cases failed that are not known failures: %s", strings.Join(unknown, ", "))
	}
	return nil
}

// parseH2spec reads the cases of h2spec's JUnit report. A case's ID is its
// group's and its place in the group, counted from 1, as h2spec names the
// cases to run.
func parseH2spec(report []byte) ([]h2specCase, error) {
	var r struct {
		Suites []struct {
			Package string `xml:"package,attr"`
			Cases   []struct {
				Desc    string    `xml:"classname,attr"`
				Failure *struct{} `xml:"failure"`
				Error   *struct{} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(report, &r); err != nil {
		return nil, fmt.Errorf("h2spec report: %w", err)
	}
	var cases []h2specCase
	for _, s := range r.Suites {
		for i, c := range s.Cases {
			cases = append(cases, h2specCase{
				id:      fmt.Sprintf("%s/%d", s.Package, i+1),
				desc:    c.Desc,
				failed:  c.Failure != nil || c.Error != nil,
				skipped: c.Skipped != nil,
			})
		}
	}
	return cases, nil
}

// h2specVersion is the version of h2spec's module the binary was built
// from, as go.mod pins it.
func h2specVersion(bin string) string {
	const path = "github.com/summerwind/h2spec"
	info, err := buildinfo.ReadFile(bin)
	switch {
	case err != nil:
		return "(version unknown)"
	case info.Main.Path == path:
		return info.Main.Version
	}
	if i := slices.IndexFunc(info.Deps, func(m *debug.Module) bool { return m.Path == path }); i >= 0 {
		return info.Deps[i].Version
	}
	return "(version unknown)"
}
