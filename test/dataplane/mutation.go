package dataplane

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
)

// checkOp is Filters::Common::MutationRules::CheckOperation.
type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

// checkResult is Filters::Common::MutationRules::CheckResult.
type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

// envoyHeaderPrefix is Http::Headers::get().prefix(): "x-envoy" unless the
// bootstrap's header_prefix changes it (which the stand-in refuses).
const envoyHeaderPrefix = "x-envoy"

// mutationChecker is Envoy's Checker (source/extensions/filters/common/mutation_rules/
// mutation_rules.cc) for a HeaderMutationRules message.
type mutationChecker struct {
	allow, disallow *regexp.Regexp
	allowAllRouting bool
	allowEnvoy      bool
	disallowSystem  bool
	disallowAll     bool
	disallowIsError bool
}

// newMutationChecker compiles the rules. A nil message is the default rules (every
// field false), which is what ext_proc uses when mutation_rules is unset.
func newMutationChecker(r *mutationrulesv3.HeaderMutationRules) (*mutationChecker, error) {
	c := &mutationChecker{
		allowAllRouting: r.GetAllowAllRouting().GetValue(),
		allowEnvoy:      r.GetAllowEnvoy().GetValue(),
		disallowSystem:  r.GetDisallowSystem().GetValue(),
		disallowAll:     r.GetDisallowAll().GetValue(),
		disallowIsError: r.GetDisallowIsError().GetValue(),
	}
	// Envoy's RE2 matchers match the whole string (CompiledGoogleReMatcher::match
	// calls re2::RE2::FullMatch, source/common/common/regex.h); Go's regexp is RE2.
	compile := func(expr, field string) (*regexp.Regexp, error) {
		re, err := regexp.Compile(`\A(?:` + expr + `)\z`)
		if err != nil {
			return nil, fmt.Errorf("%s %q is not a valid RE2 expression: %v", field, expr, err)
		}
		return re, nil
	}
	var err error
	if r.GetAllowExpression() != nil {
		if c.allow, err = compile(r.GetAllowExpression().GetRegex(), "allow_expression"); err != nil {
			return nil, err
		}
	}
	if r.GetDisallowExpression() != nil {
		if c.disallow, err = compile(r.GetDisallowExpression().GetRegex(), "disallow_expression"); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// routingHeaders are ExtraRoutingHeaders in mutation_rules.cc.
var routingHeaders = map[string]bool{"host": true, ":authority": true, ":method": true, ":scheme": true}

// check is Checker::check: allowed and (for set/append) a valid value → OK;
// otherwise FAIL with disallow_is_error, IGNORE without.
func (c *mutationChecker) check(op checkOp, name, value string) checkResult {
	name = strings.ToLower(name)
	if c.allowed(op, name) && (op == opRemove || validMutationValue(name, value)) {
		return checkOK
	}
	if c.disallowIsError {
		return checkFail
	}
	return checkIgnore
}

// allowed is Checker::isAllowed, in its order.
func (c *mutationChecker) allowed(op checkOp, name string) bool {
	if op == opRemove && !modifiableHeader(name) {
		return false // "No matter what, you can't remove the host or any : headers."
	}
	if c.disallow != nil && c.disallow.MatchString(name) {
		return false
	}
	if c.allow != nil && c.allow.MatchString(name) {
		return true
	}
	if c.disallowAll {
		return false
	}
	if !c.allowAllRouting && routingHeaders[name] {
		return false
	}
	if strings.HasPrefix(name, ":") && (op == opAppend || c.disallowSystem) {
		return false
	}
	if !c.allowEnvoy && strings.HasPrefix(name, envoyHeaderPrefix) {
		return false
	}
	return true
}

// modifiableHeader is HeaderUtility::isModifiableHeader: not ":"-prefixed, not host.
func modifiableHeader(name string) bool {
	return name != "" && name[0] != ':' && name != "host"
}

// validMutationValue is Checker::isValidValue.
func validMutationValue(name, value string) bool {
	if !strings.HasPrefix(name, ":") && !validHeaderValue(value) {
		return false
	}
	switch name {
	case "host", ":authority":
		return validAuthority(value)
	case ":scheme":
		return value == "http" || value == "https"
	case ":status":
		n, err := strconv.Atoi(value)
		return err == nil && n >= 200
	}
	return true
}

// validAuthority approximates HeaderUtility::authorityIsValid (nghttp2_check_authority):
// RFC 3986 authority characters only.
func validAuthority(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:@[]%", c) >= 0:
		default:
			return false
		}
	}
	return true
}
