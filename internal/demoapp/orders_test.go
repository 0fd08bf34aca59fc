package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// checkoutWork is the checkout's work in these tests; a pause hook stands
// in for it.
const checkoutWork = 50 * time.Millisecond

// checkoutReply is what a checkout sent outside the shopper tells.
type checkoutReply struct {
	status   int
	order    string
	replayed bool
	handle   *http.Cookie // the handle the response set, if any
}

// checkout sends a checkout of step items for user with the handle
// cookie, and an Idempotency-Key unless key is "". It reports failures as
// errors, so that it can run on any goroutine.
func checkout(ctx context.Context, c *http.Client, base, user string, handle *http.Cookie, step int, key string) (checkoutReply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/checkout", nil)
	if err != nil {
		return checkoutReply{}, err
	}
	req.Header.Set(HeaderUser, user)
	req.Header.Set(HeaderStep, strconv.Itoa(step))
	if key != "" {
		req.Header.Set(HeaderIdempotencyKey, key)
	}
	req.AddCookie(handle)
	resp, err := c.Do(req)
	if err != nil {
		return checkoutReply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return checkoutReply{}, err
	}
	var o orderReply
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &o); err != nil {
			return checkoutReply{}, err
		}
	}
	r := checkoutReply{status: resp.StatusCode, order: o.Order, replayed: resp.Header.Get(HeaderReplayed) == "true"}
	for _, c := range resp.Cookies() {
		if c.Name == SessionCookie || c.Name == TokenCookie {
			r.handle = c
		}
	}
	return r, nil
}

// TestCheckoutTwiceForOneCart: two checkouts of one cart that both read the
// cart before either placed its order (a request repeated on another
// backend while the first still ran) place two orders, counted as a
// duplicate, unless they carry the same Idempotency-Key: then the second
// answers with the first's order. With a shared store the two run on two
// backends; with memory and token, whose orders each process keeps, on one.
func TestCheckoutTwiceForOneCart(t *testing.T) {
	for _, kind := range append(storeKinds, "token-denylist") {
		for _, key := range []string{"", "key-1"} {
			name := kind + "/no key"
			if key != "" {
				name = kind + "/same key"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t, kind)
				// Each checkout waits in its work until both are there.
				var inWork sync.WaitGroup
				inWork.Add(2)
				startOne := func(name string) *backend {
					o := f.options(t)
					o.CheckoutWork = checkoutWork
					b := startApp(t, name, o)
					b.app.pause = func(_ context.Context, d time.Duration) {
						if d == checkoutWork {
							inWork.Done()
							inWork.Wait()
						}
					}
					return b
				}
				a := startOne("web-a")
				b := a
				if f.redis != nil {
					b = startOne("web-b")
				}
				s := newShopper(t, "alice")
				s.login(a.url).want(t, "login", http.StatusOK, "")
				s.add(a.url, 0, "x").want(t, "add", http.StatusOK, "1")
				s.add(a.url, 1, "y").want(t, "add", http.StatusOK, "2")

				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var wg sync.WaitGroup
				replies, errs := make([]checkoutReply, 2), make([]error, 2)
				for i, base := range []string{a.url, b.url} {
					wg.Go(func() { replies[i], errs[i] = checkout(ctx, s.c, base, s.user, s.handle, 2, key) })
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					t.Fatal(err)
				}
				for i, r := range replies {
					if r.status != http.StatusOK || r.order == "" {
						t.Fatalf("checkout %d: %+v, want 200 with an order", i, r)
					}
				}
				orders, dups := 0.0, 0.0
				for _, be := range uniq(a, b) {
					m := scrape(t, be.url)
					orders += m["demoapp_orders_total"]
					dups += m["demoapp_duplicate_orders_total"]
				}
				if key == "" {
					if replies[0].order == replies[1].order || replies[0].replayed || replies[1].replayed || orders != 2 || dups != 1 {
						t.Errorf("replies %+v, %v orders, %v duplicates; want two orders, one of them a duplicate", replies, orders, dups)
					}
				} else if replies[0].order != replies[1].order || replies[0].replayed == replies[1].replayed || orders != 1 || dups != 0 {
					t.Errorf("replies %+v, %v orders, %v duplicates; want one order, given twice, once replayed", replies, orders, dups)
				}
				// A token store hands out the emptied cart in a new token.
				for _, r := range replies {
					if r.handle != nil {
						s.handle = r.handle
					}
				}
				s.cart(a.url, 0).want(t, "cart after the checkouts", http.StatusOK, "[]")
			})
		}
	}
}

func uniq(a, b *backend) []*backend {
	if a == b {
		return []*backend{a}
	}
	return []*backend{a, b}
}

// TestCheckoutOutlivesItsClient: a checkout whose client leaves during its
// work still places the order and empties the cart, with its store in Redis
// too, whose calls would fail on the request's cancelled context.
func TestCheckoutOutlivesItsClient(t *testing.T) {
	f := newFixture(t, "redis")
	o := f.options(t)
	o.CheckoutWork = checkoutWork
	a := NewWithOptions("web-a", o).(*app)
	entered, release := make(chan struct{}), make(chan struct{})
	a.pause = func(_ context.Context, d time.Duration) {
		if d == checkoutWork {
			close(entered)
			<-release
		}
	}
	reqCtx := make(chan context.Context, 1)
	srv := start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/checkout" {
			reqCtx <- r.Context()
		}
		a.ServeHTTP(w, r)
	}))
	s := newShopper(t, "alice")
	s.login(srv.URL).want(t, "login", http.StatusOK, "")
	s.add(srv.URL, 0, "x").want(t, "add", http.StatusOK, "1")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := checkout(ctx, testutil.Client(t), srv.URL, s.user, s.handle, 1, "")
		done <- err
	}()
	<-entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the client's checkout: %v, want it cancelled", err)
	}
	select {
	case <-(<-reqCtx).Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not see the client leave")
	}
	close(release)
	testutil.Eventually(t, 10*time.Second, "the order placed", func() bool {
		return scrape(t, srv.URL)["demoapp_orders_total"] == 1
	})
	s.cart(srv.URL, 0).want(t, "cart after the checkout", http.StatusOK, "[]")
}

// TestOrdersPlaceOnce: of many Places racing for one cart exactly one wins,
// and every other gets its order; an order of no cart is never recorded.
func TestOrdersPlaceOnce(t *testing.T) {
	for _, kind := range []string{"memory", "redis"} {
		t.Run(kind, func(t *testing.T) {
			var orders Orders = NewMemoryOrders()
			if kind == "redis" {
				orders = NewRedisOrders(testutil.StartRedis(t).Addr)
				t.Cleanup(func() { _ = orders.Close() })
			}
			ctx := context.Background()
			const n = 8
			var wg sync.WaitGroup
			firsts, placed, errs := make([]Order, n), make([]bool, n), make([]error, n)
			for i := range n {
				wg.Go(func() {
					firsts[i], placed[i], errs[i] = orders.Place(ctx, Order{ID: "o" + strconv.Itoa(i), Cart: "cart-1", Items: i})
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			winners := 0
			for i := range n {
				if placed[i] {
					winners++
				}
			}
			for i := range n {
				if firsts[i] != firsts[0] {
					t.Errorf("Place %d got %+v as the cart's order, Place 0 %+v", i, firsts[i], firsts[0])
				}
			}
			if winners != 1 {
				t.Errorf("%d Places won the cart, want 1", winners)
			}
			for range 2 {
				if o, ok, err := orders.Place(ctx, Order{ID: "loose"}); err != nil || !ok || o.ID != "loose" {
					t.Errorf("an order of no cart: %+v, %v, %v; want it placed", o, ok, err)
				}
			}
		})
	}
}
