//go:build !linux

package h1

import "net"

// canPeek is false: without a way to ask an idle socket whether anything
// arrived, Client could not keep http.Transport's guarantee that a
// response goes only to the request it answers, so it sends nothing.
const canPeek = false

type idlePeek struct{ data bool }

func (*idlePeek) init(net.Conn) {}

func (*idlePeek) quiet() bool { return false }
