package park

import (
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// A GET and a POST with a body, pipelined in one write, are both answered
// in full with ReadTimeout set: http.Server's own deadlines on a
// request already buffered are not the start of an idle period, and the
// body is never taken for an idle connection to park.
func TestParkPipelinedBodyWithReadTimeout(t *testing.T) {
	for _, readTimeout := range []time.Duration{0, 5 * time.Second} {
		for _, size := range []int{1000, 4500, 5000, 6000, 8000, 20000} {
			t.Run(fmt.Sprintf("read timeout %v, body %d", readTimeout, size), func(t *testing.T) {
				s := startServer(t, time.Minute, readTimeout)
				conn, br := testutil.DialRaw(t, s.addr, waitFor)
				reqs := []pipelined{getOf("/first"), postOf("/second", []byte(strings.Repeat("b", size)))}
				if _, err := io.WriteString(conn, reqs[0].raw+reqs[1].raw); err != nil {
					t.Fatal(err)
				}
				readAnswers(t, br, reqs)
				// Nothing more is answered, and the connection parks
				// once idle, and serves on.
				s.waitParked(t, 1)
				if n := br.Buffered(); n != 0 {
					t.Fatalf("%d bytes more than the two responses", n)
				}
				if _, err := io.WriteString(conn, reqs[0].raw); err != nil {
					t.Fatal(err)
				}
				readAnswers(t, br, reqs[:1])
			})
		}
	}
}

// Pipelined requests of many body sizes, the stream cut at random points
// around the moment the connection parks: sent at once, after a random
// pause across the parking delay, or (between two requests) once the
// answers are read and the connection has parked. Every request is
// answered in full, in order, on its connection, with ReadTimeout set.
// Bounded: 16 connections of at most 5 requests and 3 pauses each.
func TestParkPipelinedRandom(t *testing.T) {
	s := startServer(t, time.Minute, 5*time.Second)
	sizes := []int{0, 1, 100, 4095, 4096, 4097, 4500, 5000, 8000, 8192, 12000, 20000, 65543}
	for round := range 16 {
		rng := rand.New(rand.NewPCG(uint64(round), 6))
		var reqs []pipelined
		var stream strings.Builder
		var ends []int // where each request ends in stream
		for i := range 2 + rng.IntN(4) {
			path := fmt.Sprintf("/r%d-%d", round, i)
			if rng.IntN(4) == 0 {
				reqs = append(reqs, getOf(path))
			} else {
				size := sizes[rng.IntN(len(sizes))]
				if rng.IntN(3) == 0 {
					size = rng.IntN(70000)
				}
				body := make([]byte, size)
				for j := range body {
					body[j] = byte('a' + rng.IntN(26))
				}
				reqs = append(reqs, postOf(path, body))
			}
			stream.WriteString(reqs[i].raw)
			ends = append(ends, stream.Len())
		}
		cuts := make([]int, 1+rng.IntN(3))
		for i := range cuts {
			if rng.IntN(2) == 0 {
				cuts[i] = ends[rng.IntN(len(ends)-1)] // between two requests
			} else {
				cuts[i] = 1 + rng.IntN(stream.Len()-1)
			}
		}
		slices.Sort(cuts)
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			conn, br := testutil.DialRaw(t, s.addr, waitFor)
			raw, sent, answered := stream.String(), 0, 0
			for _, cut := range cuts {
				if _, err := io.WriteString(conn, raw[sent:cut]); err != nil {
					t.Fatal(err)
				}
				sent = cut
				if i := slices.Index(ends, cut); i >= 0 && rng.IntN(2) == 0 {
					// Every request sent is whole: once answered, the
					// connection parks.
					readAnswers(t, br, reqs[answered:i+1])
					answered = i + 1
					s.waitParked(t, 1)
					continue
				}
				// A pause across the moment the connection would park,
				// if it could: with part of a request unread, it must not.
				time.Sleep(time.Duration(rng.Int64N(int64(3 * testParkAfter))))
			}
			if _, err := io.WriteString(conn, raw[sent:]); err != nil {
				t.Fatal(err)
			}
			readAnswers(t, br, reqs[answered:])
			_ = conn.Close()
			s.waitGone(t)
		})
	}
}
