package balancer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// MinCookieSecret is the shortest CookieOptions.Secret accepted, in bytes:
// 128 bits, below which guessing the key becomes thinkable.
const MinCookieSecret = 16

// signedTokenBytes is how much of the MAC a signed cookie carries: 128
// bits, as many as a forger would have to guess, in 32 hex digits.
const signedTokenBytes = 16

// signedToken returns a cookie policy's token function that names a backend
// by HMAC-SHA256(secret, ID), truncated. Unlike hashToken, nobody without the
// secret can compute the token of a backend, so a client can neither choose
// its backend by writing the cookie nor enumerate the backends by trying
// the hashes of likely names; a forged or altered value matches no backend
// and is treated as no cookie at all. The token is still deterministic, so
// every replica sharing the secret agrees on it.
func signedToken(secret string) (func(id string) string, error) {
	if len(secret) < MinCookieSecret {
		return nil, fmt.Errorf("%w: secret is %d bytes; at least %d are needed", ErrInvalidCookie, len(secret), MinCookieSecret)
	}
	key := []byte(secret)
	return func(id string) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(id))
		return hex.EncodeToString(m.Sum(nil)[:signedTokenBytes])
	}, nil
}
