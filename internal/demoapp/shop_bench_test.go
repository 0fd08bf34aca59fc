package demoapp

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// BenchmarkCart measures a read of a 3-item cart on the backend that holds
// the session, for each store: the cost of the session's home, without
// the simulated work.
func BenchmarkCart(b *testing.B) {
	for _, kind := range storeKinds {
		b.Run(kind, func(b *testing.B) {
			st := newFixture(b, kind).store(b)
			h := NewWithOptions("web-1", Options{Store: st})
			ctx := context.Background()
			handle, err := st.New(ctx, "alice")
			if err != nil {
				b.Fatal(err)
			}
			sess, err := st.Load(ctx, handle)
			if err != nil {
				b.Fatal(err)
			}
			sess.Items = []string{"sku-1", "sku-2", "sku-3"}
			if handle, err = st.Save(ctx, handle, sess); err != nil {
				b.Fatal(err)
			}
			req := httptest.NewRequest(http.MethodGet, "/cart", nil)
			req.Header.Set(HeaderUser, "alice")
			req.Header.Set(HeaderStep, "3")
			req.AddCookie(&http.Cookie{Name: st.Cookie(), Value: handle})
			var ops int
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("%d %s", rec.Code, rec.Body)
				}
				n, _ := strconv.Atoi(rec.Header().Get(HeaderStoreOps))
				ops += n
			}
			b.ReportMetric(float64(ops)/float64(b.N), "store-ops/op")
		})
	}
}
