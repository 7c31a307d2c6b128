package berth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
)

// WithToken sends "authorization: Bearer <token>" with every call, for a berth that checks
// tokens (berth serve --tokens-file; berth token create makes them). An empty token sends
// nothing. The token travels in clear over a plaintext connection: use TLS beyond loopback.
func WithToken(token string) Option {
	return WithTokenSource(func(context.Context) (string, error) { return token, nil })
}

// WithTokenSource is WithToken with a function asked before every call, for tokens that are
// rotated while the client lives. An error fails the call with codes.Unavailable before it is
// sent; an empty token sends nothing.
func WithTokenSource(source func(ctx context.Context) (string, error)) Option {
	return func(c *dialConfig) { c.token = bearerToken{source: source} }
}

// WithCAFile makes the connection use TLS and trust the CA certificates (PEM) in path instead of
// the system's roots: for a berth whose certificate a private CA signed. It applies to any
// address form ("host:port", "https://host:port", ...), and is overridden by
// WithTransportCredentials. A file that cannot be read or holds no certificate fails Dial.
func WithCAFile(path string) Option {
	return func(c *dialConfig) { c.caFile = path }
}

// bearerToken is the per-RPC credential of WithToken and WithTokenSource.
type bearerToken struct {
	source func(ctx context.Context) (string, error)
}

func (b bearerToken) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	token, err := b.source(ctx)
	if err != nil {
		return nil, fmt.Errorf("berth: token source: %w", err)
	}
	if token == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity is false: berth accepts tokens over plaintext on loopback (and behind
// a TLS-terminating proxy), so grpc-go must not refuse to send them there.
func (bearerToken) RequireTransportSecurity() bool { return false }

var _ credentials.PerRPCCredentials = bearerToken{}

// tlsWithCA is the TLS configuration of WithCAFile.
func tlsWithCA(path string) (credentials.TransportCredentials, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("berth: CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("berth: CA file %s holds no PEM certificate", path)
	}
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}), nil
}
