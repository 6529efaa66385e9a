// Package weborigin serializes a URL's origin the way browsers write it in the
// Origin header, for the two places that compare a browser's Origin with the
// gateway's public URL (the login form's same-origin check and ext_authz's
// cross-origin refusal of session cookies): both must serialize alike, or one of
// them would refuse what the other accepts.
package weborigin

import (
	"net/url"
	"strings"
)

// Of is u's origin as browsers serialize it (RFC 6454 §6.1 and the WHATWG URL
// standard's origin serialization): lower-case scheme and host, an IPv6 host in
// brackets, the port only when it is not the scheme's default.
func Of(u *url.URL) string {
	scheme, host, port := strings.ToLower(u.Scheme), strings.ToLower(u.Hostname()), u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		return scheme + "://" + host + ":" + port
	}
	return scheme + "://" + host
}
