package dataplane

import (
	"container/list"
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	localratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
)

// The HTTP local rate limit filter (envoy.filters.http.local_ratelimit), as far as
// kubegate uses it: the filter's own rate_limits with remote_address actions, and
// descriptors keyed on remote_address, with or without a value. Sources:
// source/extensions/filters/http/local_ratelimit/local_ratelimit.cc (FilterConfig,
// Filter::decodeHeaders) and
// source/extensions/filters/common/local_ratelimit/local_ratelimit_impl.cc
// (LocalRateLimiterImpl: buckets start full, tokens_per_fill every fill_interval
// up to max_tokens, a request takes one token or is limited).

// localRateLimitDefaultDynamic is max_dynamic_descriptors' default
// (local_rate_limit.proto: "Minimum is 1. Default is 20.").
const localRateLimitDefaultDynamic = 20

type bucketSpec struct {
	maxTokens     int
	tokensPerFill int
	fillInterval  time.Duration
}

type rateLimitConfig struct {
	enabled, enforced bool
	status            int
	alwaysConsume     bool
	global            bucketSpec
	// descriptors by remote_address value; "" is the wildcard (a bucket per value).
	descriptors map[string]bucketSpec
	maxDynamic  int
}

// percentAll reads a RuntimeFractionalPercent that must be 0% or 100% (the
// stand-in does not sample): unset means disabled (FilterConfig::enabled and
// enforced return false without the field).
func (p *parser) percentAll(f *corev3.RuntimeFractionalPercent, path string) bool {
	if f == nil {
		return false
	}
	d := f.GetDefaultValue()
	denom := map[typev3.FractionalPercent_DenominatorType]uint32{typev3.FractionalPercent_HUNDRED: 100, typev3.FractionalPercent_TEN_THOUSAND: 10000, typev3.FractionalPercent_MILLION: 1000000}[d.GetDenominator()]
	switch {
	case d.GetNumerator() == 0:
		return false
	case d.GetNumerator() >= denom:
		return true
	}
	p.fail(path, "a fraction between 0%% and 100%% is not emulated")
	return false
}

func (p *parser) bucket(b *typev3.TokenBucket, path string) bucketSpec {
	if b == nil {
		p.fail(path, "a local rate limit without token_bucket is not emulated")
		return bucketSpec{}
	}
	s := bucketSpec{maxTokens: int(b.GetMaxTokens()), tokensPerFill: 1, fillInterval: b.GetFillInterval().AsDuration()}
	// token_bucket.proto: tokens_per_fill "If not specified, defaults to a single token".
	if v := b.GetTokensPerFill(); v != nil {
		s.tokensPerFill = int(v.GetValue())
	}
	// LocalRateLimiterImpl: "local rate limit token bucket fill timer must be >= 50ms".
	if s.fillInterval < 50*time.Millisecond {
		p.fail(path+".fill_interval", "Envoy refuses a fill interval under 50ms")
	}
	return s
}

func (p *parser) rateLimit(l *localratelimitv3.LocalRateLimit, path string) *rateLimitConfig {
	c := &rateLimitConfig{
		enabled:  p.percentAll(l.GetFilterEnabled(), path+".filter_enabled"),
		enforced: p.percentAll(l.GetFilterEnforced(), path+".filter_enforced"),
		// local_rate_limit.proto status: "Defaults to 429 ... If this is set to <
		// 400, 429 will be used instead."
		status: httpStatus(l.GetStatus(), http.StatusTooManyRequests),
		// always_consume_default_token_bucket: "Default is true."
		alwaysConsume: l.GetAlwaysConsumeDefaultTokenBucket() == nil || l.GetAlwaysConsumeDefaultTokenBucket().GetValue(),
		global:        p.bucket(l.GetTokenBucket(), path+".token_bucket"),
		descriptors:   map[string]bucketSpec{},
		maxDynamic:    localRateLimitDefaultDynamic,
	}
	if c.status < 400 {
		c.status = http.StatusTooManyRequests
	}
	if v := l.GetMaxDynamicDescriptors(); v != nil {
		c.maxDynamic = int(v.GetValue())
	}
	if l.GetLocalRateLimitPerDownstreamConnection() {
		p.fail(path+".local_rate_limit_per_downstream_connection", "per-connection buckets are not emulated")
	}
	// The allowlist admits only remote_address actions; each rate limit yields the
	// descriptor [remote_address=<client IP>].
	if len(l.GetRateLimits()) == 0 {
		p.fail(path+".rate_limits", "descriptors from the route's rate_limits are not emulated; put them in the filter's rate_limits")
	}
	for i, rl := range l.GetRateLimits() {
		if len(rl.GetActions()) != 1 {
			p.fail(fmt.Sprintf("%s.rate_limits[%d].actions", path, i), "exactly one remote_address action per rate limit is emulated")
		}
	}
	for i, d := range l.GetDescriptors() {
		dp := fmt.Sprintf("%s.descriptors[%d]", path, i)
		e := d.GetEntries()
		if len(e) != 1 || e[0].GetKey() != "remote_address" {
			p.fail(dp+".entries", "only a single remote_address entry is emulated")
			continue
		}
		b := p.bucket(d.GetTokenBucket(), dp+".token_bucket")
		// LocalRateLimiterImpl: a descriptor's fill interval must be a multiple of
		// the filter's.
		if c.global.fillInterval > 0 && b.fillInterval%c.global.fillInterval != 0 {
			p.fail(dp+".token_bucket.fill_interval", "Envoy refuses a descriptor fill interval that is not a multiple of the filter's")
		}
		c.descriptors[e[0].GetValue()] = b
	}
	return c
}

// tokenBucket is one bucket: full at creation, refilled by whole intervals.
type tokenBucket struct {
	spec     bucketSpec
	tokens   int
	lastFill time.Time
}

func newTokenBucket(s bucketSpec, now time.Time) *tokenBucket {
	return &tokenBucket{spec: s, tokens: s.maxTokens, lastFill: now}
}

func (b *tokenBucket) take(now time.Time) bool {
	if n := int(now.Sub(b.lastFill) / b.spec.fillInterval); n > 0 {
		b.tokens = min(b.spec.maxTokens, b.tokens+n*b.spec.tokensPerFill)
		b.lastFill = b.lastFill.Add(time.Duration(n) * b.spec.fillInterval)
	}
	if b.tokens == 0 {
		return false
	}
	b.tokens--
	return true
}

type rateLimitFilter struct {
	cfg *rateLimitConfig
	now func() time.Time

	mu      sync.Mutex
	global  *tokenBucket
	static  map[string]*tokenBucket
	dynamic map[string]*list.Element // value → element of lru holding *dynamicBucket
	lru     *list.List               // front: most recently used
}

type dynamicBucket struct {
	value  string
	bucket *tokenBucket
}

func newRateLimitFilter(cfg *rateLimitConfig) *rateLimitFilter {
	f := &rateLimitFilter{cfg: cfg, now: time.Now, static: map[string]*tokenBucket{}, dynamic: map[string]*list.Element{}, lru: list.New()}
	now := f.now()
	f.global = newTokenBucket(cfg.global, now)
	for v, s := range cfg.descriptors {
		if v != "" {
			f.static[v] = newTokenBucket(s, now)
		}
	}
	return f
}

// descriptorBucket finds the bucket of the client's descriptor: an exact value
// first, then the wildcard, whose per-value buckets live in an LRU of
// max_dynamic_descriptors (the least recently used is dropped, and comes back full).
func (f *rateLimitFilter) descriptorBucket(value string, now time.Time) *tokenBucket {
	if b, ok := f.static[value]; ok {
		return b
	}
	spec, ok := f.cfg.descriptors[""]
	if !ok {
		return nil
	}
	if e, ok := f.dynamic[value]; ok {
		f.lru.MoveToFront(e)
		return e.Value.(*dynamicBucket).bucket
	}
	if f.lru.Len() >= f.cfg.maxDynamic {
		old := f.lru.Back()
		f.lru.Remove(old)
		delete(f.dynamic, old.Value.(*dynamicBucket).value)
	}
	db := &dynamicBucket{value: value, bucket: newTokenBucket(spec, now)}
	f.dynamic[value] = f.lru.PushFront(db)
	return db.bucket
}

// decodeHeaders is Filter::decodeHeaders: with use_remote_address true the
// remote_address descriptor is the connection's peer IP.
func (f *rateLimitFilter) decodeHeaders(_ context.Context, s *stream) *localReply {
	if !f.cfg.enabled {
		return nil
	}
	allowed := true
	f.mu.Lock()
	now := f.now()
	var b *tokenBucket
	if s.remote != nil {
		b = f.descriptorBucket(s.remote.IP.String(), now)
	}
	if b != nil && !b.take(now) {
		allowed = false
	}
	if allowed && (b == nil || f.cfg.alwaysConsume) {
		allowed = f.global.take(now)
	}
	f.mu.Unlock()
	if allowed || !f.cfg.enforced {
		return nil
	}
	// sendLocalReply(status, "local_rate_limited", ..., "local_rate_limited") and
	// the RateLimited response flag (RL in the access log).
	return &localReply{status: f.cfg.status, body: "local_rate_limited", details: "local_rate_limited", flags: "RL"}
}
