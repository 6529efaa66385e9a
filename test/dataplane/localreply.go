package dataplane

import (
	"fmt"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// responseMapper is one local_reply_config mapper (source/common/local_reply/
// local_reply.cc ResponseMapper): an access-log filter, and what a match
// rewrites. body_format and body_format_override are not emulated (refused by
// the emulated table), so the body formatter is the default %LOCAL_REPLY_BODY%
// with content type text/plain.
type responseMapper struct {
	filter     replyFilter
	statusCode int    // 0: keep
	body       []byte // nil: keep
	headers    []headerMutation
}

// replyFilter is AccessLog::Filter::evaluate on a local reply.
type replyFilter func(status int, metadata map[string]*structpb.Struct) bool

// localReplyMappers reads local_reply_config (nil: none).
func (p *parser) localReplyMappers(c *hcmv3.LocalReplyConfig, path string) []responseMapper {
	var out []responseMapper
	for i, m := range c.GetMappers() {
		mp := fmt.Sprintf("%s.mappers[%d]", path, i)
		rm := responseMapper{filter: p.replyFilter(m.GetFilter(), mp+".filter")}
		if sc := m.GetStatusCode(); sc != nil {
			rm.statusCode = int(sc.GetValue())
		}
		if m.GetBody() != nil {
			b, err := readDataSource(m.GetBody())
			if err != nil {
				p.fail(mp+".body", "%v", err)
			}
			rm.body = b
		}
		for j, h := range m.GetHeadersToAdd() {
			rm.headers = append(rm.headers, p.headerToAdd(h, fmt.Sprintf("%s.headers_to_add[%d]", mp, j)))
		}
		out = append(out, rm)
	}
	return out
}

// headerToAdd is a Router::HeaderParser entry: append_action decides (the
// deprecated append is refused by the emulated table); values are literal here
// (a "%" would be a formatter command, which the stand-in does not evaluate).
func (p *parser) headerToAdd(h *corev3.HeaderValueOption, path string) headerMutation {
	m := headerMutation{key: strings.ToLower(h.GetHeader().GetKey()), value: h.GetHeader().GetValue()}
	if strings.Contains(m.value, "%") {
		p.fail(path+".header.value", "substitution commands in header values are not emulated")
	}
	switch h.GetAppendAction() {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
		m.action = actionAdd // HeaderParser::evaluateHeaders: addReferenceKey, a new line
	case corev3.HeaderValueOption_ADD_IF_ABSENT:
		m.action = actionAddIfAbsent
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		m.action = actionSet
	case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		m.action = actionOverwriteIfExists
	}
	return m
}

// replyFilter compiles the access-log filters kubegate's mapper uses
// (source/common/access_log/access_log_impl.cc): and_filter (all match),
// status_code_filter (the reply's status compared with the runtime value's
// default: no runtime layer is emulated) and metadata_filter on the stream's
// dynamic metadata with present_match.
func (p *parser) replyFilter(f *accesslogv3.AccessLogFilter, path string) replyFilter {
	switch s := f.GetFilterSpecifier().(type) {
	case *accesslogv3.AccessLogFilter_AndFilter:
		var fs []replyFilter
		for i, sub := range s.AndFilter.GetFilters() {
			fs = append(fs, p.replyFilter(sub, fmt.Sprintf("%s.and_filter.filters[%d]", path, i)))
		}
		return func(status int, md map[string]*structpb.Struct) bool {
			for _, f := range fs {
				if !f(status, md) {
					return false
				}
			}
			return true
		}
	case *accesslogv3.AccessLogFilter_StatusCodeFilter:
		c := s.StatusCodeFilter.GetComparison()
		want := int(c.GetValue().GetDefaultValue())
		op := c.GetOp()
		return func(status int, _ map[string]*structpb.Struct) bool {
			switch op {
			case accesslogv3.ComparisonFilter_GE:
				return status >= want
			case accesslogv3.ComparisonFilter_LE:
				return status <= want
			case accesslogv3.ComparisonFilter_NE:
				return status != want
			}
			return status == want
		}
	case *accesslogv3.AccessLogFilter_MetadataFilter:
		m := s.MetadataFilter.GetMatcher()
		if _, ok := m.GetValue().GetMatchPattern().(*matcherv3.ValueMatcher_PresentMatch); !ok || !m.GetValue().GetPresentMatch() {
			p.fail(path+".metadata_filter.matcher.value", "only present_match: true is emulated")
		}
		ns := m.GetFilter()
		var keys []string
		for _, seg := range m.GetPath() {
			keys = append(keys, seg.GetKey())
		}
		// MetadataFilter: "match_if_key_not_found ... if unset or true, then log".
		ifMissing := s.MetadataFilter.GetMatchIfKeyNotFound() == nil || s.MetadataFilter.GetMatchIfKeyNotFound().GetValue()
		return func(_ int, md map[string]*structpb.Struct) bool {
			if metadataValue(md[ns], keys) != nil {
				return true // present, and present_match is the value matcher
			}
			return ifMissing
		}
	case nil:
		// ResponseMapper.filter is required (validate: message.required), so
		// Validate has refused this already.
		p.fail(path, "a mapper needs a filter")
	default:
		p.fail(path, "only and_filter, status_code_filter and metadata_filter are emulated")
	}
	return func(int, map[string]*structpb.Struct) bool { return false }
}

// metadataValue is Config::Metadata::metadataValue: the value at keys inside one
// namespace's struct, nil when any step is missing or not a struct.
func metadataValue(s *structpb.Struct, keys []string) *structpb.Value {
	if s == nil || len(keys) == 0 {
		return nil
	}
	v := s.GetFields()[keys[0]]
	for _, k := range keys[1:] {
		next := v.GetStructValue()
		if next == nil {
			return nil
		}
		v = next.GetFields()[k]
	}
	return v
}

// rewriteLocalReply is LocalReplyImpl::rewrite followed by prepareLocalReply's
// content-type rule: the first mapper whose filter matches adds its headers and
// replaces status and body; then a reply with a body gets content-type text/plain
// if it has none, or if the rewrite changed the body without setting a
// content-type of its own.
func rewriteLocalReply(mappers []responseMapper, s *stream, r *localReply, h *headerMap) (status int, body string) {
	status, body = r.status, r.body
	before := h.first("content-type")
	for _, m := range mappers {
		if !m.filter(status, s.metadata) {
			continue
		}
		for _, hm := range m.headers {
			hm.apply(h)
		}
		if m.statusCode != 0 {
			status = m.statusCode
		}
		if m.body != nil {
			body = string(m.body)
		}
		break
	}
	customType := h.first("content-type") != before
	if body != "" {
		if !h.has("content-type") || (body != r.body && !customType) {
			h.set("content-type", "text/plain")
		}
	} else {
		h.remove("content-type")
	}
	return status, body
}
