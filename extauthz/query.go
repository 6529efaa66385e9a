package extauthz

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"kubegate.dev/kubegate/policy"
)

// The canonical query.
//
// Three parties read a request's query, each its own way:
//   - kubegate (Go's url.ParseQuery) decodes %XX and '+' in names and values;
//   - Envoy, applying the OK response's query_parameters_to_remove, splits the raw
//     query on '&' and the first '=' WITHOUT decoding, erases the named keys by
//     exact byte match, and re-serialises the rest sorted by raw name, values in
//     their order, a name without '=' as "name=" (ext_authz.cc onComplete;
//     Http::Utility::QueryParamsMulti::parseQueryString, parseParameters, remove,
//     replaceQueryString in source/common/http/utility.cc, an absl::btree_map);
//   - the API server (Go's url.ParseQuery again) takes the first value of a
//     repeated name for every single-valued option (RequestInfoFactory,
//     runtime.Convert_Slice_string_To_*).
//
// They agree exactly when every parameter name is spelled as it decodes (no '%',
// no '+') and is not empty: then Envoy's erase matches what kubegate read as a
// credential, its re-sorting moves whole names (the API server's url.Values does
// not care about the order of names) and keeps each name's values in order. So the
// gateway forwards only such queries, and decides on the query Envoy will send:
// the client's minus the two credential parameters. Anything else is refused as
// ambiguous rather than guessed at. Values are not restricted: Envoy passes them
// through byte for byte and both Go parsers decode them alike.
//
// On top of that, a repeated single-valued parameter (watch=false&watch=true) is
// refused: no reader needs it, and it is the classic way to make two parsers
// disagree; and a name that is a credential parameter in another case
// (Gitlab-Csrf-Token) is refused, because Envoy's erase is case-sensitive and would
// let it through to the cluster.

// APIRequest parses a request target as the API server will receive it through the
// gateway (path without /k8s-proxy, the client's query): the query must be
// canonical, and the request is parsed with the query Envoy will forward. It is the
// pipeline's own step, for `kubegate explain`.
func APIRequest(method, target string) (policy.Request, error) {
	path, rawQuery, _ := strings.Cut(target, "?")
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return policy.Request{}, fmt.Errorf("the query string is malformed: %v", err)
	}
	if rest, ok := strings.CutPrefix(path, "/"); ok {
		if msg := uncleanPath(rest); msg != "" {
			return policy.Request{}, fmt.Errorf("the gateway refuses this path (%s): %s", ReasonBadRequest, msg)
		}
	}
	upstream, msg := upstreamQuery(rawQuery, query)
	if msg != "" {
		return policy.Request{}, fmt.Errorf("the gateway refuses this query (%s): %s", ReasonAmbiguousQuery, msg)
	}
	if upstream != "" {
		path += "?" + upstream
	}
	return policy.ParseRequest(method, path)
}

// credentialQuery (response.go) is what the OK response asks Envoy to remove.

// queryParam is one raw name=value pair of a query, nothing decoded.
type queryParam struct{ name, value string }

// upstreamQuery checks that rawQuery (the client's, not decoded) is canonical and
// returns the query string Envoy will forward to the API server. decoded is the
// same query parsed by url.ParseQuery. A non-empty msg is the refusal, for the
// client; it never repeats a value, which may be a credential.
func upstreamQuery(rawQuery string, decoded url.Values) (upstream, msg string) {
	if rawQuery == "" {
		return "", ""
	}
	if strings.Contains(rawQuery, "#") {
		return "", "the query contains '#': a fragment is never sent to a server; remove it"
	}
	var params []queryParam
	for i, p := range strings.Split(rawQuery, "&") {
		name, value, _ := strings.Cut(p, "=")
		switch {
		case name == "":
			return "", fmt.Sprintf("query parameter %d has no name (an empty or leading '=' or a doubled '&'): send name=value pairs joined by single '&'", i+1)
		case strings.ContainsAny(name, "%+"):
			// The position, not the name: the name may hold a credential.
			return "", fmt.Sprintf("the name of query parameter %d is percent-encoded or contains '+': spell query parameter names plainly (kubectl does); the gateway and the API server would read such a name differently", i+1)
		}
		for _, c := range credentialQuery {
			if name != c && strings.EqualFold(name, c) {
				return "", fmt.Sprintf("query parameter %d is %s in another spelling: write it exactly %q (lower case) or leave it out", i+1, c, c)
			}
		}
		params = append(params, queryParam{name, value})
	}
	for name, values := range decoded {
		if len(values) > 1 && policy.SingleValuedParameter(name) {
			return "", fmt.Sprintf("the query parameter %s appears %d times: the API server reads only the first; send it once", name, len(values))
		}
	}
	params = slices.DeleteFunc(params, func(p queryParam) bool { return slices.Contains(credentialQuery, p.name) })
	// Envoy's map sorts by name (bytewise) and keeps each name's values in order:
	// a stable sort by name is the same.
	slices.SortStableFunc(params, func(a, b queryParam) int { return strings.Compare(a.name, b.name) })
	var b strings.Builder
	for i, p := range params {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.name)
		b.WriteByte('=')
		b.WriteString(p.value)
	}
	return b.String(), ""
}
