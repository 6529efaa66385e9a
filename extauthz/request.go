package extauthz

import (
	"errors"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"kubegate.dev/kubegate/identity"
)

// httpRequest is the part of Envoy's CheckRequest the pipeline reads.
type httpRequest struct {
	ID     string // Envoy's request id (x-request-id)
	Method string
	Target string // request target as sent by the client: path and query, not decoded
	Header identity.Header
}

var errNoRawHeaders = errors.New("the CheckRequest carries no header_map: set encode_raw_headers: true on Envoy's ext_authz filter (kubegate envoy render does), otherwise duplicate headers cannot be detected")

// requestFromCheck reads the HTTP request from a CheckRequest sent with
// encode_raw_headers: true. In that mode Envoy fills header_map with one entry per
// header line, key lower-cased and value in raw_value (AttributeContext.HttpRequest
// proto comments); the comma-joined headers map is left empty. A request without
// header_map is refused: with joined values a second Authorization or
// Impersonate-Group line would be invisible.
func requestFromCheck(req *authv3.CheckRequest) (*httpRequest, error) {
	h := req.GetAttributes().GetRequest().GetHttp()
	hm := h.GetHeaderMap()
	if hm == nil {
		return nil, errNoRawHeaders
	}
	header := make(identity.Header, len(hm.GetHeaders()))
	for _, hv := range hm.GetHeaders() {
		// Keys arrive lower-cased; lower again so a hand-built request cannot split a
		// header into two spellings.
		k := strings.ToLower(hv.GetKey())
		v := string(hv.GetRawValue())
		if v == "" {
			v = hv.GetValue()
		}
		header[k] = append(header[k], v)
	}
	return &httpRequest{ID: h.GetId(), Method: h.GetMethod(), Target: h.GetPath(), Header: header}, nil
}
