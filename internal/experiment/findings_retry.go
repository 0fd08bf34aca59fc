package experiment

// The findings of the presets that take a backend away while users do
// things that matter: retried checkouts (claim 13) and a rolling deploy
// (claim 11).

import (
	"fmt"
	"strings"
)

// retryCell returns the cell of the run with the retry policy and client
// given, or nil.
func retryCell(res *Results, retry, client string) *CellResult {
	for i := range res.Cells {
		if c := &res.Cells[i]; c.option("retry", retrySafe) == retry && c.Variant["client"] == client {
			return c
		}
	}
	return nil
}

// findRetrySafety: a frozen backend's checkouts, retried by a proxy that
// retries every method, order carts twice when the clients send no key;
// the proxy's own policy orders none but fails those checkouts; a key
// makes the retry safe.
func findRetrySafety(res *Results) Finding {
	allNoKey, safeNoKey := retryCell(res, retryAll, clientNoKey), retryCell(res, retrySafe, clientNoKey)
	if allNoKey == nil || safeNoKey == nil {
		return notMeasured("retry=all client=nokey and retry=safe client=nokey")
	}
	var figures, extra []string
	for _, c := range res.Cells {
		if c.Variant["client"] == "" {
			continue
		}
		figures = append(figures, fmt.Sprintf("%s: %d checkouts, %d duplicate orders, %d failed, checkout p99 %.0f ms",
			c.RunEntry(), c.Checkouts, c.DuplicateOrders, c.FailedCheckouts, c.CheckoutP99Ms))
		if c.Variant["client"] == clientKey || c.option("retry", retrySafe) == retrySafe {
			if c.DuplicateOrders > 0 {
				extra = append(extra, fmt.Sprintf("%s ordered %d carts twice", c.RunEntry(), c.DuplicateOrders))
			}
		}
	}
	hang := strings.Join(res.Settings.Faults, ", ")
	s := fmt.Sprintf("Measured (%s, the proxy waiting %.0f ms for an answer, a checkout taking %.0f ms on the backends): %s. "+
		"A duplicate order is a cart ordered twice, counted by the shop; a failed checkout, a cart whose checkout never got an order back.",
		hang, res.Settings.ResponseTimeoutMs, res.Settings.CheckoutWorkMs, strings.Join(figures, "; "))
	f := Finding{
		Band: "agrees when retrying every method without keys ordered at least one cart twice and no cell that retries only " +
			"idempotent requests, or whose clients send an Idempotency-Key, ordered any twice",
		Headline: fmt.Sprintf("retry every method, no key: %d carts ordered twice; idempotent-only or keyed: %d",
			allNoKey.DuplicateOrders, duplicatesElsewhere(res)),
	}
	f.ForYou = fmt.Sprintf("when a backend froze, retrying every method (as nginx's non_idempotent does) ordered %d of %d carts twice; "+
		"retrying only idempotent requests ordered none but failed %d checkouts", allNoKey.DuplicateOrders, allNoKey.Checkouts, safeNoKey.FailedCheckouts)
	if k := retryCell(res, retrySafe, clientKey); k != nil {
		f.ForYou += fmt.Sprintf("; with an Idempotency-Key, %d duplicates and %d failures, at a checkout p99 of %.0f ms", k.DuplicateOrders, k.FailedCheckouts, k.CheckoutP99Ms)
	}
	switch {
	case allNoKey.DuplicateOrders == 0:
		s += " Disagrees: retrying every method ordered no cart twice in this run."
	case len(extra) > 0:
		s += " Disagrees: " + strings.Join(extra, "; ") + "."
	default:
		s += fmt.Sprintf(" Agrees: only the retry of a POST without a key ordered carts twice; retrying idempotent requests only "+
			"was safe but left %d checkouts failed", safeNoKey.FailedCheckouts)
		if failed := keyedFailures(res); failed == 0 {
			s += ", and the key made the retry both safe and successful."
		} else {
			s += fmt.Sprintf("; with the key, the retries ordered no cart twice, and %d checkouts failed (errors by kind in the tables).", failed)
		}
	}
	f.Text = s
	return f
}

// keyedFailures counts the failed checkouts of the cells whose clients send
// keys.
func keyedFailures(res *Results) int {
	n := 0
	for _, c := range res.Cells {
		if c.Variant["client"] == clientKey {
			n += c.FailedCheckouts
		}
	}
	return n
}

// duplicatesElsewhere counts the duplicate orders of the cells that retry
// only idempotent requests or whose clients send keys.
func duplicatesElsewhere(res *Results) int {
	n := 0
	for _, c := range res.Cells {
		if c.Variant["client"] == clientKey || c.option("retry", retrySafe) == retrySafe {
			n += c.DuplicateOrders
		}
	}
	return n
}
