package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"
)

// Orders records the first order placed for each cart. It is how the shop
// tells a checkout that ran twice for one cart (a duplicate order: a
// request repeated after its answer was lost, with no Idempotency-Key to
// tell it was the same one) from a retry it may answer with the order
// already placed (the same key), even when both ran at once on two
// backends. MemoryOrders sees the orders of one process; RedisOrders those
// of every backend sharing a Redis.
type Orders interface {
	// Place records o as the order of its cart, unless the cart already
	// has one: then it returns that first order and false. Of two Places
	// racing for a cart, exactly one wins. An order of no cart (Cart
	// empty) is placed without being recorded.
	Place(ctx context.Context, o Order) (first Order, placed bool, err error)
	Close() error
}

// MemoryOrders keeps the carts ordered in this process, the most recent
// DefaultMaxSessions of them.
type MemoryOrders struct {
	carts *lru.Cache[string, Order]
}

// NewMemoryOrders returns an empty MemoryOrders.
func NewMemoryOrders() *MemoryOrders {
	// lru.New fails only for a size below 1.
	carts, _ := lru.New[string, Order](DefaultMaxSessions)
	return &MemoryOrders{carts: carts}
}

// Place records o unless its cart has an order; PeekOrAdd makes the check
// and the record one step.
func (m *MemoryOrders) Place(_ context.Context, o Order) (Order, bool, error) {
	if o.Cart == "" {
		return o, true, nil
	}
	if first, found, _ := m.carts.PeekOrAdd(o.Cart, o); found {
		return first, false, nil
	}
	return o, true, nil
}

// Close does nothing: the orders live in this process.
func (*MemoryOrders) Close() error { return nil }

// orderKeyPrefix prefixes the key of a cart's first order in Redis.
const orderKeyPrefix = "shop:order:"

// placeScript records ARGV[1], an order, under KEYS[1] for ARGV[2]
// milliseconds unless the key holds one, and returns the order held
// before, or nil: the check and the record in one round trip, atomic.
const placeScript = `
local first = redis.call('GET', KEYS[1])
if first then
	return first
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false`

// RedisOrders keeps the first order of each cart in Redis, under
// shop:order:<cart>, for SessionTTL: what every backend of a pool sees.
type RedisOrders struct {
	client *redis.Client
}

// NewRedisOrders returns orders kept in the Redis server at addr
// (host:port), with the session stores' timeouts. It connects lazily.
func NewRedisOrders(addr string) *RedisOrders {
	return &RedisOrders{client: newRedisSessions(addr).client}
}

// Place records o unless its cart has an order: one round trip, which the
// request's usage counts.
func (r *RedisOrders) Place(ctx context.Context, o Order) (Order, bool, error) {
	if o.Cart == "" {
		return o, true, nil
	}
	data, err := json.Marshal(o)
	if err != nil {
		return Order{}, false, fmt.Errorf("orders: encode: %w", err)
	}
	usageOf(ctx).addOp()
	prev, err := r.client.Eval(ctx, placeScript, []string{orderKeyPrefix + o.Cart}, data, SessionTTL.Milliseconds()).Text()
	switch {
	case errors.Is(err, redis.Nil):
		return o, true, nil
	case err != nil:
		return Order{}, false, fmt.Errorf("orders: place the order of cart %q: %w", o.Cart, err)
	}
	var first Order
	if err := json.Unmarshal([]byte(prev), &first); err != nil {
		return Order{}, false, fmt.Errorf("orders: cart %q: decode its order: %w", o.Cart, err)
	}
	return first, false, nil
}

// Close closes the connections to Redis.
func (r *RedisOrders) Close() error {
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("orders: close: %w", err)
	}
	return nil
}
