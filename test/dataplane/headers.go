package dataplane

import (
	"strings"
)

// headerMap is Envoy's HeaderMapImpl as far as kubegate's filters can observe it:
// an ordered list of (lower-case key, value) entries in which pseudo-headers come
// first, a second line of an "inline" header is folded into the first with a comma,
// and every other repeated header stays a separate entry
// (source/common/http/header_map_impl.cc: HeaderMapImpl::insertByKey, HeaderList::insert).
type headerMap struct {
	entries []headerEntry
}

type headerEntry struct {
	key   string // always lower-case
	value string
}

// inlineRequestHeaders are the request headers Envoy keeps in O(1) "inline" slots
// (source/common/http/header_map_impl.h: INLINE_REQ_STRING_HEADERS,
// INLINE_REQ_NUMERIC_HEADERS, INLINE_REQ_RESP_STRING_HEADERS,
// INLINE_REQ_RESP_NUMERIC_HEADERS), plus "authorization", which extensions linked
// into the standard Envoy image register as a custom inline header
// (Http::RegisterCustomInlineHeader, e.g. the oauth2 and cache filters). When the
// codec adds a second line of one of these, insertByKey appends it to the first
// entry with "," (delimiterByHeader) instead of adding an entry: ext_authz then
// sees ONE comma-joined Authorization value even with encode_raw_headers.
var inlineRequestHeaders = map[string]bool{
	// INLINE_REQ_STRING_HEADERS
	"x-client-trace-id": true, "x-envoy-downstream-service-cluster": true,
	"x-envoy-downstream-service-node": true, "x-envoy-external-address": true,
	"x-envoy-force-trace": true, "x-envoy-hedge-on-per-try-timeout": true,
	"x-envoy-internal": true, "x-envoy-ip-tags": true, "x-envoy-retry-on": true,
	"x-envoy-retry-grpc-on": true, "x-envoy-retriable-status-codes": true,
	"x-envoy-retriable-header-names": true, "x-envoy-original-path": true,
	"x-envoy-original-url": true, "x-envoy-upstream-alt-stat-name": true,
	"x-envoy-upstream-rq-timeout-alt-response": true, "expect": true,
	"x-forwarded-client-cert": true, "x-forwarded-for": true, "x-forwarded-host": true,
	"x-forwarded-proto": true, "grpc-timeout": true, ":authority": true, ":method": true,
	":path": true, ":protocol": true, ":scheme": true, "te": true, "user-agent": true,
	// INLINE_REQ_NUMERIC_HEADERS
	"x-envoy-expected-rq-timeout-ms": true, "x-envoy-max-retries": true,
	"x-envoy-upstream-rq-timeout-ms": true, "x-envoy-upstream-rq-per-try-timeout-ms": true,
	"x-envoy-upstream-stream-duration-ms": true,
	// INLINE_REQ_RESP_STRING_HEADERS and INLINE_REQ_RESP_NUMERIC_HEADERS
	"connection": true, "content-type": true, "x-envoy-decorator-operation": true,
	"keep-alive": true, "proxy-connection": true, "proxy-status": true, "x-request-id": true,
	"transfer-encoding": true, "upgrade": true, "via": true, "content-length": true,
	"x-envoy-attempt-count": true,
	// custom inline (see above)
	"authorization": true,
}

// addFromCodec adds a header line as Envoy's codecs do (addViaMove → insertByKey).
func (h *headerMap) addFromCodec(key, value string) {
	key = strings.ToLower(key)
	if inlineRequestHeaders[key] {
		for i := range h.entries {
			if h.entries[i].key == key {
				h.entries[i].value += "," + value
				return
			}
		}
	}
	h.insert(key, value)
}

// add appends a new entry (HeaderMap::addCopy): never folded, even for inline
// headers, because filters add through addCopy, not the codec path.
func (h *headerMap) add(key, value string) {
	h.insert(strings.ToLower(key), value)
}

// insert keeps pseudo-headers ahead of regular ones (HeaderList::insert).
func (h *headerMap) insert(key, value string) {
	e := headerEntry{key, value}
	if strings.HasPrefix(key, ":") {
		i := 0
		for i < len(h.entries) && strings.HasPrefix(h.entries[i].key, ":") {
			i++
		}
		h.entries = append(h.entries, headerEntry{})
		copy(h.entries[i+1:], h.entries[i:])
		h.entries[i] = e
		return
	}
	h.entries = append(h.entries, e)
}

// set replaces every entry of key by one, at the position of the first
// (HeaderMap::setCopy), or adds it.
func (h *headerMap) set(key, value string) {
	key = strings.ToLower(key)
	for i := range h.entries {
		if h.entries[i].key == key {
			h.entries[i].value = value
			h.removeFrom(key, i+1)
			return
		}
	}
	h.insert(key, value)
}

// appendValue appends to an existing entry with a delimiter (HeaderMap::appendCopy),
// or adds the header.
func (h *headerMap) appendValue(key, value, delimiter string) {
	key = strings.ToLower(key)
	for i := range h.entries {
		if h.entries[i].key == key {
			if h.entries[i].value == "" {
				h.entries[i].value = value
			} else {
				h.entries[i].value += delimiter + value
			}
			return
		}
	}
	h.insert(key, value)
}

func (h *headerMap) remove(key string) {
	h.removeFrom(strings.ToLower(key), 0)
}

func (h *headerMap) removeFrom(key string, start int) {
	out := h.entries[:start]
	for _, e := range h.entries[start:] {
		if e.key != key {
			out = append(out, e)
		}
	}
	h.entries = out
}

// get returns every value of key, in order.
func (h *headerMap) get(key string) []string {
	key = strings.ToLower(key)
	var out []string
	for _, e := range h.entries {
		if e.key == key {
			out = append(out, e.value)
		}
	}
	return out
}

// first is the value of the first entry of key, "" if there is none.
func (h *headerMap) first(key string) string {
	key = strings.ToLower(key)
	for _, e := range h.entries {
		if e.key == key {
			return e.value
		}
	}
	return ""
}

func (h *headerMap) has(key string) bool {
	key = strings.ToLower(key)
	for _, e := range h.entries {
		if e.key == key {
			return true
		}
	}
	return false
}

// size is the number of entries, pseudo-headers included (HeaderMap::size), which
// Envoy compares with max_headers_count after a mutation.
func (h *headerMap) size() int { return len(h.entries) }

// byteSize is the sum of key and value lengths (HeaderMap::byteSize), compared
// with max_request_headers_kb after a mutation.
func (h *headerMap) byteSize() int {
	n := 0
	for _, e := range h.entries {
		n += len(e.key) + len(e.value)
	}
	return n
}

// validHeaderName is Envoy's HeaderUtility::headerNameIsValid: RFC 7230 token
// characters; upper case is allowed except in pseudo-headers, which follow HTTP/2's
// lower-case rule (nghttp2_check_header_name).
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	s, pseudo := name, name[0] == ':'
	if pseudo {
		s = s[1:]
		if s == "" {
			return false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c >= 'A' && c <= 'Z' && !pseudo:
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// validHeaderValue is HeaderUtility::headerValueIsValid (nghttp2_check_header_value):
// no NUL, CR or LF.
func validHeaderValue(v string) bool {
	return !strings.ContainsAny(v, "\x00\r\n")
}
