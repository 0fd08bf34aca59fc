package balancer

import "time"

// parseCookieDate reads an Expires attribute's value as a browser does:
// by the algorithm of RFC 6265 section 5.1.1, which takes the sane form
// servers should write (Thu, 01 Jan 1970 00:00:00 GMT), the other HTTP
// date forms (Thursday, 01-Jan-70 00:00:00 GMT; Thu Jan  1 00:00:00 1970),
// the Netscape form Java servlet containers write (Thu, 01-Jan-1970
// 00:00:00 GMT), and the many others servers have written (a day of one
// digit, no weekday, any case, any zone name, which is ignored: the date
// is UTC). The date is made of the first token that reads as a time, the
// first after it that reads as a day of the month, then a month, then a
// year, whatever their order; a two-digit year of 70 to 99 is in the 1900s,
// one below 70 in the 2000s. It fails when one of them is missing or out
// of range, the year is before 1601, or the date does not exist (Feb 30).
// It allocates nothing.
//
// Where net/http reads a date (http.ParseTime, the Expires of
// http.ParseSetCookie), this reads the same instant, but for a zone other
// than GMT or UTC (which net/http applies and browsers ignore), a year
// before 1601, and the two-digit year 69 (1969 for net/http, 2069 here);
// FuzzCookieDate checks it.
func parseCookieDate(s string) (time.Time, bool) {
	var (
		foundTime, foundDay, foundMonth, foundYear bool
		hour, minute, second, day, year            int
		month                                      time.Month
	)
	for {
		for len(s) > 0 && isDateDelimiter(s[0]) {
			s = s[1:]
		}
		if s == "" {
			break
		}
		n := 1
		for n < len(s) && !isDateDelimiter(s[n]) {
			n++
		}
		tok := s[:n]
		s = s[n:]
		// Each token counts for the first of these it reads as that
		// was not found yet.
		if !foundTime {
			if h, m, sec, ok := dateTime(tok); ok {
				foundTime, hour, minute, second = true, h, m, sec
				continue
			}
		}
		if !foundDay {
			if v, ok := dateDigits(tok, 1, 2); ok {
				foundDay, day = true, v
				continue
			}
		}
		if !foundMonth {
			if m, ok := dateMonth(tok); ok {
				foundMonth, month = true, m
				continue
			}
		}
		if !foundYear {
			if v, ok := dateDigits(tok, 2, 4); ok {
				foundYear, year = true, v
			}
		}
	}
	switch {
	case year >= 70 && year <= 99:
		year += 1900
	case year >= 0 && year <= 69:
		year += 2000
	}
	if !foundTime || !foundDay || !foundMonth || !foundYear ||
		day < 1 || day > 31 || year < 1601 || hour > 23 || minute > 59 || second > 59 {
		return time.Time{}, false
	}
	t := time.Date(year, month, day, hour, minute, second, 0, time.UTC)
	if t.Day() != day {
		// A day past the month's end, which time.Date carried into
		// the next month.
		return time.Time{}, false
	}
	return t, true
}

// isDateDelimiter reports whether c separates the tokens of a cookie date:
// controls but tab, and the symbols, but for ':' (of the time).
func isDateDelimiter(c byte) bool {
	return c == 0x09 || c >= 0x20 && c <= 0x2f || c >= 0x3b && c <= 0x40 ||
		c >= 0x5b && c <= 0x60 || c >= 0x7b && c <= 0x7e
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// leadingDigits returns the value and the count of the digits tok starts
// with, stopping at maxDigits+1: more than maxDigits is no match anyway.
func leadingDigits(tok string, maxDigits int) (v, n int) {
	for n < len(tok) && n <= maxDigits && isDigit(tok[n]) {
		v = v*10 + int(tok[n]-'0')
		n++
	}
	return v, n
}

// dateDigits reads the production of a day (1*2DIGIT) or a year (2*4DIGIT),
// each optionally followed by a non-digit and anything: minDigits to
// maxDigits digits, and no digit after them.
func dateDigits(tok string, minDigits, maxDigits int) (int, bool) {
	v, n := leadingDigits(tok, maxDigits)
	return v, n >= minDigits && n <= maxDigits
}

// dateTime reads hh:mm:ss, each field one or two digits, optionally
// followed by a non-digit and anything.
func dateTime(tok string) (h, m, s int, ok bool) {
	var fields [3]int
	for i := range fields {
		v, n := leadingDigits(tok, 2)
		if n < 1 || n > 2 {
			return 0, 0, 0, false
		}
		fields[i], tok = v, tok[n:]
		if i < 2 {
			if tok == "" || tok[0] != ':' {
				return 0, 0, 0, false
			}
			tok = tok[1:]
		}
	}
	return fields[0], fields[1], fields[2], true
}

// dateMonth reads a month: a token whose first three letters, in any case,
// name one.
func dateMonth(tok string) (time.Month, bool) {
	if len(tok) < 3 {
		return 0, false
	}
	var abbr [3]byte
	for i := range abbr {
		abbr[i] = tok[i] | 0x20 // lower case, for letters
	}
	const months = "janfebmaraprmayjunjulaugsepoctnovdec"
	for i := 0; i < len(months); i += 3 {
		if string(abbr[:]) == months[i:i+3] {
			return time.Month(i/3 + 1), true
		}
	}
	return 0, false
}
