package balancer

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cookie dates are read as RFC 6265 section 5.1.1 reads them, and as
// browsers do: the forms servers write, and the others they have written.
func TestParseCookieDate(t *testing.T) {
	epoch := time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time // zero: not a date
	}{
		{"Thu, 01 Jan 1970 00:00:00 GMT", epoch},
		{"Thursday, 01-Jan-70 00:00:00 GMT", epoch},
		{"Thu, 01-Jan-1970 00:00:00 GMT", epoch},
		{"Thu Jan  1 00:00:00 1970", epoch},
		{"Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)", epoch},
		{"1 Jan 1970 00:00:00", epoch},
		{"THU, 01 JAN 1970 00:00:00 gmt", epoch},
		{"Thu, 01 January 1970 00:00:00 GMT", epoch},
		{"  \t,Thu,;01;Jan;1970;00:00:00;;", epoch},
		{"Jan 01 00:00:00 1970", epoch},
		{"Thu, 01 Jan 1970 0:0:0 GMT", epoch},
		{"Thu, 01 Jan 1970 00:00:00 PST", epoch}, // the zone is ignored
		{"Thu, 01 Jan 1970 00:00:00.999 GMT", epoch},
		{"Wed, 09 Jun 2021 10:18:14 GMT", time.Date(2021, 6, 9, 10, 18, 14, 0, time.UTC)},
		{"Sun, 31 Dec 2069 23:59:59 GMT", time.Date(2069, 12, 31, 23, 59, 59, 0, time.UTC)},
		{"Sun, 06-Nov-94 08:49:37 GMT", time.Date(1994, 11, 6, 8, 49, 37, 0, time.UTC)},
		{"Sun, 06-Nov-69 08:49:37 GMT", time.Date(2069, 11, 6, 8, 49, 37, 0, time.UTC)},
		{"Sun, 06-Nov-00 08:49:37 GMT", time.Date(2000, 11, 6, 8, 49, 37, 0, time.UTC)},
		{"Mon, 01 Jan 1601 00:00:00 GMT", time.Date(1601, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"Fri, 31 Dec 9999 23:59:59 GMT", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)},
		{"29 Feb 2024 12:00:00", time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)},
		// The first token that reads as a time is the time; the first
		// of two digits after it, the day.
		{"00:00:00 01 Jan 1970 12:34:56", epoch},

		{"", time.Time{}},
		{"yesterday", time.Time{}},
		{"Thu, 01 Jan 1970", time.Time{}},           // no time
		{"Thu, Jan 1970 00:00:00 GMT", time.Time{}}, // no day: 1970 is a year, not a day
		{"Thu, 01 1970 00:00:00 GMT", time.Time{}},  // no month
		{"Thu, 01 Jan 00:00:00 GMT", time.Time{}},   // no year
		{"Mon, 01 Jan 1600 00:00:00 GMT", time.Time{}},
		{"Thu, 00 Jan 1970 00:00:00 GMT", time.Time{}},
		{"Thu, 32 Jan 1970 00:00:00 GMT", time.Time{}},
		{"Mon, 30 Feb 1970 00:00:00 GMT", time.Time{}},
		{"Thu, 29 Feb 2023 00:00:00 GMT", time.Time{}},
		{"Thu, 01 Jan 1970 24:00:00 GMT", time.Time{}},
		{"Thu, 01 Jan 1970 00:60:00 GMT", time.Time{}},
		{"Thu, 01 Jan 1970 00:00:60 GMT", time.Time{}},
		{"Thu, 001 Jan 1970 00:00:00 GMT", time.Time{}},    // three digits: no day
		{"Thu, 01 Jan 19700 00:00:00 GMT", time.Time{}},    // five digits: no year
		{"Thu, 01 Jan 1970 000:00:00 GMT", time.Time{}},    // not a time
		{"Thu, 01 Ja 1970 00:00:00 GMT", time.Time{}},      // not a month
		{"Thu, 01 Jan 1970 00:00:00:00 GMT", epoch},        // a time, then anything
		{"Thu, 01x Jan 1970 00:00:00 GMT", epoch},          // a day, then a non-digit
		{"Thu, 1x1 Jan 1970 00:00:00 GMT", epoch},          // likewise
		{"Thu, 01 Jan 1970x 00:00:00 GMT", epoch},          // a year, then a non-digit
		{"Thu, 01 Jan 70 00:00:00 GMT 2000", epoch},        // the first year counts
		{"Thu, 01 Jan 1970 00:00:00 GMT 05 Feb", epoch},    // so do the first day and month
		{"Thu, 01 \x00Jan 1970 00:00:00 GMT", time.Time{}}, // NUL is no delimiter: no month
	}
	for _, tt := range tests {
		got, ok := parseCookieDate(tt.in)
		if ok != !tt.want.IsZero() || !got.Equal(tt.want) {
			t.Errorf("parseCookieDate(%q) = %v, %v; want %v", tt.in, got, ok, tt.want)
		}
	}
}

func TestParseCookieDateDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { parseCookieDate("Thursday, 01-Jan-70 00:00:00 GMT") }); n != 0 {
		t.Errorf("%.1f allocations per date, want 0", n)
	}
}

// stdlibDate is the instant net/http reads from s as an HTTP date or as a
// Set-Cookie's Expires, where it reads one that a browser reads alike: in
// GMT or UTC (net/http applies other zones, browsers ignore them), from
// 1601 (RFC 6265 ignores earlier dates), and not the two-digit year 69
// (1969 for net/http, 2069 for RFC 6265).
func stdlibDate(s string) (time.Time, bool) {
	t, err := http.ParseTime(s)
	if err != nil {
		c, cerr := http.ParseSetCookie("a=b; Expires=" + s)
		if cerr != nil || c.Expires.IsZero() || strings.ContainsAny(c.RawExpires, ";") {
			return time.Time{}, false
		}
		t = c.Expires
	}
	name, offset := t.Zone()
	if offset != 0 || name != "UTC" && name != "GMT" || t.Year() < 1601 || strings.Contains(s, "-69 ") {
		return time.Time{}, false
	}
	return t, true
}

// FuzzCookieDate reads any bytes without a panic; reads every date
// net/http reads as a browser would, to the same instant; and reads back
// every date it reads, written as servers should write it.
func FuzzCookieDate(f *testing.F) {
	for _, s := range []string{
		"Thu, 01 Jan 1970 00:00:00 GMT", "Thursday, 01-Jan-70 00:00:00 GMT", "Thu Jan  1 00:00:00 1970",
		"Thu, 01-Jan-1970 00:00:10 GMT", "Sun, 06-Nov-69 08:49:37 GMT", "1 jan 1970 0:0:0", "Mon, 30 Feb 1970 00:00:00 GMT",
		"Fri, 31 Dec 9999 23:59:59 UTC", "00:00:00 01 Jan 1970 12:34:56", "\x00\xff:",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := parseCookieDate(s)
		if want, std := stdlibDate(s); std && (!ok || !got.Equal(want)) {
			t.Fatalf("parseCookieDate(%q) = %v, %v; net/http reads %v", s, got, ok, want)
		}
		if !ok {
			return
		}
		if got.Location() != time.UTC || got.Nanosecond() != 0 {
			t.Fatalf("parseCookieDate(%q) = %v, not whole seconds in UTC", s, got)
		}
		written := got.Format(http.TimeFormat)
		if again, ok := parseCookieDate(written); !ok || !again.Equal(got) {
			t.Fatalf("parseCookieDate(%q) = %v, but %q, as written, reads %v, %v", s, got, written, again, ok)
		}
	})
}

// stdlibSessionCookie is what net/http reads from a Set-Cookie line for the
// cookie called name, where it reads it as RFC 6265 has browsers read it:
// the value set, or that the line deletes the cookie. It declines (ok
// false) where the two part on purpose: a value net/http refuses (browsers
// take any byte but ';'), an Expires net/http does not read or reads with
// a zone (see stdlibDate) or within a minute of now, a Max-Age with a
// leading zero or past an int (net/http ignores it, RFC 6265 does not),
// several of either attribute (net/http forgets an earlier Expires for a
// later invalid one), or a value with spaces around it (which RFC 6265
// removes, and net/http keeps).
func stdlibSessionCookie(line, name string) (value string, del, ok bool) {
	c, err := http.ParseSetCookie(line)
	if err != nil || c.Name != name || strings.ContainsAny(line, "\r\n\x00") || strings.Trim(c.Value, " \t") != c.Value {
		return "", false, false
	}
	var maxAges, expires int
	for _, a := range strings.Split(line, ";")[1:] {
		k, v, _ := strings.Cut(a, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "max-age":
			maxAges++
			digits := strings.TrimPrefix(v, "-")
			if n, err := strconv.Atoi(v); v != "" && (err != nil || len(digits) > 1 && digits[0] == '0' || n != 0 && v[0] == '0') {
				return "", false, false
			}
		case "expires":
			expires++
			t, ok := stdlibDate(v)
			if !ok || t.Sub(time.Now()).Abs() < time.Minute {
				return "", false, false
			}
		}
	}
	if maxAges > 1 || expires > 1 {
		return "", false, false
	}
	now := time.Now()
	del = c.MaxAge < 0 || c.MaxAge == 0 && !c.Expires.IsZero() && !c.Expires.After(now)
	return c.Value, del, true
}

// FuzzSessionCookie reads Set-Cookie lines with sessionCookie and with
// net/http, and where net/http reads them as browsers do, both agree on
// the session set or deleted.
func FuzzSessionCookie(f *testing.F) {
	for _, s := range []string{
		"JSESSIONID=abc; Path=/", `JSESSIONID="q"; Max-Age=0`, "JSESSIONID=x; Expires=Thu, 01-Jan-1970 00:00:10 GMT",
		"JSESSIONID=; max-age=-1", "JSESSIONID=deleted; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60",
		"JSESSIONID=a b; Max-Age=1800", " JSESSIONID = v ; Secure", "JSESSIONID=v; Expires=Fri, 01 Jan 2100 00:00:00 GMT",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		sid, del, ok := sessionCookie(line, testSessionCookie)
		want, wantDel, std := stdlibSessionCookie(line, testSessionCookie)
		switch {
		case !std:
		case !wantDel && (want == "" || len(want) > maxSessionID):
			// Sets nothing worth learning: no session.
			if ok && !del {
				t.Fatalf("sessionCookie(%q) = %q, set; net/http reads value %q", line, sid, want)
			}
		case !ok || del != wantDel || !del && sid != want:
			t.Fatalf("sessionCookie(%q) = %q, del %v, ok %v; net/http reads %q, del %v", line, sid, del, ok, want, wantDel)
		}
	})
}
