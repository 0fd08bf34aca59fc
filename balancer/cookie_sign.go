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

// signedValue returns a cookie policy's value function that names a backend
// and a variant by HMAC-SHA256(secret, variant digit + ID), truncated.
// Unlike hashValue, nobody without the secret can compute a value, so a
// client can neither choose its backend by writing the cookie, nor its
// variant, which chooses where it goes when its backend is unavailable,
// nor enumerate the backends by trying the hashes of likely names. A
// forged or altered value matches nothing and is treated as no cookie at
// all. The value is still deterministic, so every replica sharing the
// secret agrees on it. The variant goes first and is one byte, so no two
// (variant, ID) pairs sign the same bytes.
func signedValue(secret string) (func(id string, variant int) string, error) {
	if len(secret) < MinCookieSecret {
		return nil, fmt.Errorf("%w: secret is %d bytes; at least %d are needed", ErrInvalidCookie, len(secret), MinCookieSecret)
	}
	key := []byte(secret)
	return func(id string, variant int) string {
		m := hmac.New(sha256.New, key)
		m.Write([]byte{hexDigits[variant]})
		m.Write([]byte(id))
		return hex.EncodeToString(m.Sum(nil)[:signedTokenBytes])
	}, nil
}
