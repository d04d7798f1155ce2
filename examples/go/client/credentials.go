package client

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// bearerToken sends a vowd API key or JWT with every call, streams included.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

// WithToken is the dial option of a vowd started with --auth-file: every
// call carries the token as "authorization: Bearer …". grpc-go refuses to
// send it over plaintext unless allowPlaintext is set (a local vowd, or a
// mesh sidecar that adds TLS).
//
//	vow, err := client.Dial(ctx, "vow.internal:50051",
//		grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, "")),
//		client.WithToken(os.Getenv("VOW_TOKEN"), false))
func WithToken(token string, allowPlaintext bool) grpc.DialOption {
	return grpc.WithPerRPCCredentials(bearerToken{token: token, requireTLS: !allowPlaintext})
}

var _ credentials.PerRPCCredentials = bearerToken{}
