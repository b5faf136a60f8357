package main

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Keeping secrets out of logs and /readyz: a token a client put in a URL
// (RFC 6750's access_token, a pasted ?token=) and a key in the sink's URL.

// redacted stands for a value that is not logged.
const redacted = "REDACTED"

// maxRedactDepth bounds how deep next (a request target in a query) is
// redacted in turn; deeper, its value is redacted whole.
const maxRedactDepth = 3

// logTarget is the request's target as logged: its path, and its query
// with the value of every parameter but the API's own redacted.
func logTarget(r *http.Request) string {
	return redactTarget(r.URL.RequestURI(), 0)
}

// redactTarget redacts the query of target, a request target.
func redactTarget(target string, depth int) string {
	path, query, ok := strings.Cut(target, "?")
	if !ok {
		return target
	}
	return path + "?" + redactQuery(query, depth)
}

// loggedParam reports whether a query parameter's value is logged: those
// of the API, which carry offsets and filters, never a secret. Any other
// parameter (a token, or a mistake the answer named) is logged by name.
func loggedParam(name string) bool {
	return slices.Contains(eventsParams(), name)
}

// redactQuery redacts the values of a raw query but those loggedParam
// allows, and next (the login form's, a request target itself) but for its
// own query. Semicolons separate too: a value must not smuggle a
// parameter past the check. A piece without "=" may be a bare secret: it
// is redacted whole.
func redactQuery(query string, depth int) string {
	var b strings.Builder
	for query != "" {
		end := strings.IndexAny(query, "&;")
		piece, sep := query, ""
		if end >= 0 {
			piece, sep, query = query[:end], query[end:end+1], query[end+1:]
		} else {
			query = ""
		}
		b.WriteString(redactParam(piece, depth))
		b.WriteString(sep)
	}
	return b.String()
}

// redactParam redacts one name=value piece of a query.
func redactParam(piece string, depth int) string {
	if piece == "" {
		return ""
	}
	key, value, ok := strings.Cut(piece, "=")
	if !ok {
		return redacted
	}
	name, err := url.QueryUnescape(key)
	switch {
	case err != nil:
		return redacted
	case loggedParam(name):
		return piece
	case name == paramNext && depth < maxRedactDepth:
		if v, err := url.QueryUnescape(value); err == nil {
			return key + "=" + url.QueryEscape(redactTarget(v, depth+1))
		}
	}
	return key + "=" + redacted
}

// redactedURL is u reduced to what may be shown to anyone: scheme, host
// and path, without user information, query or fragment.
func redactedURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}).String()
}

// urlRedactedError is an error whose text has URLs reduced by redactedURL;
// errors.Is and errors.As still see the original.
type urlRedactedError struct {
	msg string
	err error
}

func (e *urlRedactedError) Error() string { return e.msg }
func (e *urlRedactedError) Unwrap() error { return e.err }

// redactURLError returns err with sink (its whole URL, as configured or
// with the password masked) and the URL of any *url.Error in its chain
// reduced by redactedURL in its text: the sink's query may hold a key, and
// /readyz, which shows the last error, needs no token.
func redactURLError(err error, sink *url.URL) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var replace []string
	var ue *url.Error
	if errors.As(err, &ue) && ue.URL != "" {
		short := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			short = redactedURL(u)
		} else if i := strings.IndexAny(short, "?#"); i >= 0 {
			short = short[:i]
		}
		replace = append(replace, ue.URL, short)
	}
	if sink != nil {
		short := redactedURL(sink)
		replace = append(replace, sink.String(), short, sink.Redacted(), short)
	}
	for i := 0; i < len(replace); i += 2 {
		if replace[i] != replace[i+1] {
			msg = strings.ReplaceAll(msg, replace[i], replace[i+1])
		}
	}
	if msg == err.Error() {
		return err
	}
	return &urlRedactedError{msg: msg, err: err}
}
