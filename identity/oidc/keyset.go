package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
)

// maxJWKS bounds the issuer's key set document.
const maxJWKS = 1 << 20

// errUnknownKey is a token signed by a key the issuer does not (or no longer) publish.
var errUnknownKey = errors.New("the token's key is not in the issuer's key set")

// keySet is the issuer's JSON Web Key Set, fetched from jwks_uri. It implements
// go-oidc's KeySet. Unlike go-oidc's RemoteKeySet, which fetches the key set again for
// every token whose signature does not verify, it fetches again only for a key id it
// does not know (key rotation) and at most once per minRefresh: a stream of forged or
// tampered tokens cannot turn into a stream of requests to the issuer.
type keySet struct {
	url        string
	client     *http.Client
	algs       []jose.SignatureAlgorithm
	minRefresh time.Duration
	timeout    time.Duration
	now        func() time.Time

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	attempted time.Time // last fetch attempt, successful or not
	lastErr   error     // error of the last attempt, nil after a success
	fetches   singleflight.Group
}

// unavailableKey marks, in a verification's context, that the key set could not be
// fetched: the failure is the issuer's, not the token's (a 503, not a 401). go-oidc
// flattens KeySet errors into text, so the mark travels beside the error.
type unavailableKey struct{}

type unavailableMark struct{ err error }

// VerifySignature implements go-oidc's KeySet.
func (k *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	// An ID token is a JWT, which is always the JWS compact serialization (RFC 7519
	// section 1); the JSON serialization is refused here as well as by go-oidc.
	jws, err := jose.ParseSignedCompact(raw, k.algs)
	if err != nil {
		return nil, err
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("the token must carry exactly one signature")
	}
	hdr := jws.Signatures[0].Header
	payload, tried := verifyWith(jws, k.current(), hdr)
	if payload != nil {
		return payload, nil
	}
	// A known key id whose signature fails is a forged or tampered token: asking the
	// issuer again cannot help. An unknown key id (or none, with no key verifying) may
	// be a rotation: fetch again, at most once per minRefresh.
	if tried && hdr.KeyID != "" {
		return nil, errors.New("the signature does not verify")
	}
	keys, err := k.refresh(ctx)
	if err != nil {
		if m, ok := ctx.Value(unavailableKey{}).(*unavailableMark); ok {
			m.err = err
		}
		return nil, err
	}
	if payload, _ := verifyWith(jws, keys, hdr); payload != nil {
		return payload, nil
	}
	return nil, errUnknownKey
}

// verifyWith tries the keys that match the header's key id and algorithm. tried
// reports whether any key matched at all.
func verifyWith(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, hdr jose.Header) (payload []byte, tried bool) {
	for i := range keys {
		key := &keys[i]
		if hdr.KeyID != "" && key.KeyID != hdr.KeyID {
			continue
		}
		if key.Algorithm != "" && key.Algorithm != hdr.Algorithm {
			continue
		}
		tried = true
		if p, err := jws.Verify(key); err == nil {
			return p, true
		}
	}
	return nil, tried
}

func (k *keySet) current() []jose.JSONWebKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keys
}

// refresh fetches the key set unless one was fetched (or tried) less than minRefresh
// ago; then it returns what it has, or the last fetch's error when that failed.
// Concurrent refreshes share one request.
func (k *keySet) refresh(ctx context.Context) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	if !k.attempted.IsZero() && k.now().Sub(k.attempted) < k.minRefresh {
		keys, err := k.keys, k.lastErr
		k.mu.Unlock()
		if err != nil {
			// The issuer's key set cannot be read right now: whether the key is
			// unknown cannot be decided, so this is the issuer's failure.
			return nil, err
		}
		return keys, nil
	}
	k.mu.Unlock()
	ch := k.fetches.DoChan("", func() (any, error) {
		fctx, cancel := context.WithTimeout(context.Background(), k.timeout)
		defer cancel()
		keys, err := k.fetch(fctx)
		k.mu.Lock()
		defer k.mu.Unlock()
		k.attempted, k.lastErr = k.now(), err
		if err != nil {
			return nil, err
		}
		k.keys = keys
		return keys, nil
	})
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the issuer's key set: %w", ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.([]jose.JSONWebKey), nil
	}
}

// fetch reads jwks_uri. Keys of types go-jose does not support, private or symmetric
// keys, and keys not meant for signatures are skipped rather than failing the set.
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("the issuer's jwks_uri: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching the issuer's key set: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching the issuer's key set: %s answered %s", k.url, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKS+1))
	if err != nil {
		return nil, fmt.Errorf("reading the issuer's key set: %w", err)
	}
	if len(body) > maxJWKS {
		return nil, fmt.Errorf("the issuer's key set is larger than %d bytes", maxJWKS)
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("the issuer's key set is not a JWK Set: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range doc.Keys {
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(raw); err != nil {
			continue
		}
		if key.Use != "" && key.Use != "sig" {
			continue
		}
		if _, symmetric := key.Key.([]byte); symmetric || !key.Valid() {
			continue
		}
		if !key.IsPublic() {
			key = key.Public()
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("the issuer's key set has no usable signing key")
	}
	return keys, nil
}
