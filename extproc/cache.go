package extproc

import (
	"fmt"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/maypok86/otter/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// DefaultResponseCacheBytes bounds the memory of the answers the processor keeps
// (`kubegate extproc --response-cache-bytes`). At the real-size shape (243
// impersonated groups) one answer weighs about 26 KB (its key, the encoded
// identity, and the answer marshalled once), so the default holds some 2,500
// identities.
const DefaultResponseCacheBytes = 64 << 20

// MinResponseCacheBytes keeps a bound too small to hold a few real-size answers
// from turning the cache into a loop of evictions.
const MinResponseCacheBytes = 1 << 20

// responseKey identifies an answer: the exact compact identity ext_authz encoded
// (one string per identity and configuration version, package handoff) and the
// impersonate-* header names the request carried, which the answer removes. The key
// is the strings themselves, never a hash, so one user can never be handed an
// answer built for another.
type responseKey struct {
	identity string
	removes  string // lower-case names, each followed by "\n"
}

// cachedResponse is the answer to every request of one identity: immutable once
// built, shared by concurrent streams.
type cachedResponse struct {
	user   string // the decision's user, to check Impersonate-User against
	groups int    // for the debug log
	// reply is what the stream sends: an *encodedResponse when the server uses the
	// processor's codec (ServerOptions), else the *extprocv3.ProcessingResponse.
	reply  any
	weight uint32
}

// encodedResponse is a ProcessingResponse marshalled once. At real size the
// answer holds ~730 nested messages (243 header options, their values and append
// flags), and marshalling them cost more server CPU per request than gRPC's
// whole exchange with Envoy; the processor's codec sends these bytes as they are.
type encodedResponse struct{ bytes []byte }

// codec is gRPC's protobuf codec, except that an *encodedResponse is sent as its
// bytes. Receiving, and sending anything else, is the protobuf codec's.
type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(*encodedResponse); ok {
		// SliceBuffer is read-only for gRPC and its Free does nothing, so the
		// cached bytes are shared safely (google.golang.org/grpc/mem, buffers.go).
		return mem.BufferSlice{mem.SliceBuffer(e.bytes)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

// Name is the protobuf codec's: Envoy speaks application/grpc (protobuf).
func (c codec) Name() string { return grpcproto.Name }

// ServerOptions are the options of the gRPC server s is registered on: the codec
// that sends s's pre-encoded answers. Calling it switches s to pre-encoded
// answers, so a server built without these options must not be given s after the
// call (without the call, s sends ordinary messages through any gRPC server).
func (s *Server) ServerOptions() []grpc.ServerOption {
	s.preEncoded = true
	return []grpc.ServerOption{grpc.ForceServerCodecV2(codec{proto: encoding.GetCodecV2(grpcproto.Name)})}
}

func newResponseCache(maxBytes int64) (*otter.Cache[responseKey, *cachedResponse], error) {
	if maxBytes < MinResponseCacheBytes {
		return nil, fmt.Errorf("extproc: the response cache bound %d bytes is below the minimum of %d (1 MiB)", maxBytes, MinResponseCacheBytes)
	}
	return otter.New(&otter.Options[responseKey, *cachedResponse]{
		MaximumWeight: uint64(maxBytes),
		Weigher: func(k responseKey, r *cachedResponse) uint32 {
			return uint32(len(k.identity)+len(k.removes)) + r.weight
		},
	})
}

// newCachedResponse builds the answer for one identity: marshalled once when the
// codec is in use. Its weight estimates the bytes it keeps: the marshalled answer,
// or the message tree (~200 bytes per header option), plus the entry around it.
func (s *Server) newCachedResponse(user string, groups int, resp *extprocv3.ProcessingResponse) (*cachedResponse, error) {
	c := &cachedResponse{user: user, groups: groups, weight: uint32(256 + len(user))}
	if !s.preEncoded {
		c.reply = resp
		c.weight += uint32(200 * (1 + len(resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders())))
		return c, nil
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("extproc: encoding the answer: %w", err)
	}
	c.reply, c.weight = &encodedResponse{bytes: b}, c.weight+uint32(len(b))
	return c, nil
}
