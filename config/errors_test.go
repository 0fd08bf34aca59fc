package config

import (
	"errors"
	"testing"
)

func TestErrorString(t *testing.T) {
	tests := []struct {
		name string
		err  *Error
		want string
	}{
		{"position", &Error{File: "a.yaml", Line: 3, Col: 7, Msg: "bad"}, "a.yaml:3:7: bad"},
		{"whole file", &Error{File: "a.yaml", Msg: "too big"}, "a.yaml: too big"},
		{"no file name", &Error{Line: 1, Col: 2, Msg: "bad"}, "1:2: bad"},
		{"nothing but a message", &Error{Msg: "bad"}, "bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestErrorList(t *testing.T) {
	second := &Error{File: "f", Line: 2, Col: 1, Msg: "second"}
	l := ErrorList{
		second,
		{File: "f", Line: 1, Col: 5, Msg: "first, later column"},
		{File: "f", Line: 1, Col: 1, Msg: "first"},
		{File: "f", Line: 1, Col: 5, Msg: "first, later column, found last"},
	}
	l.sort()
	want := "f:1:1: first\nf:1:5: first, later column\nf:1:5: first, later column, found last\nf:2:1: second"
	if got := l.Error(); got != want {
		t.Errorf("sorted list renders\n%s\nwant\n%s", got, want)
	}
	var err error = l
	var e *Error
	if !errors.As(err, &e) || e.Msg != "first" {
		t.Errorf("errors.As found %v, want the first entry", e)
	}
	if !errors.Is(err, second) {
		t.Error("errors.Is does not find an entry of the list")
	}
}
