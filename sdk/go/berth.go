package berth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// DefaultAddress is the address a berth server listens on unless told otherwise.
const DefaultAddress = "127.0.0.1:50051"

// Client is a connection to a berth server and the clients of its three services. All three
// share one grpc.ClientConn; they are safe for concurrent use. Close releases the connection.
type Client struct {
	// Workspaces manages workspace lifecycles, data, snapshots, versions, metrics and events.
	Workspaces workspacev1.WorkspaceServiceClient
	// Files reads, writes and watches files inside workspaces.
	Files workspacev1.FilesystemServiceClient
	// Processes starts, observes and signals processes inside workspaces.
	Processes workspacev1.ProcessServiceClient

	conn *grpc.ClientConn
}

// Option configures Dial.
type Option func(*dialConfig)

type dialConfig struct {
	creds       credentials.TransportCredentials
	dialOptions []grpc.DialOption
	block       bool
	token       credentials.PerRPCCredentials
	caFile      string
}

// WithTransportCredentials sets the transport credentials of the connection, overriding the
// default chosen from the address (plaintext h2c for "host:port" and "http://", TLS with the
// system roots for "https://").
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *dialConfig) { c.creds = creds }
}

// WithInsecure makes the connection use plaintext HTTP/2 (h2c) whatever the address says. It is
// the default except for "https://" addresses.
func WithInsecure() Option {
	return WithTransportCredentials(insecure.NewCredentials())
}

// WithDialOptions adds grpc-go dial options, for example interceptors, keepalive parameters or
// per-RPC credentials. They are applied after the options Dial sets itself, so they win.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) { c.dialOptions = append(c.dialOptions, opts...) }
}

// WithBlock makes Dial wait until the connection is ready, failing when ctx ends first. Without
// it Dial returns at once and the connection is established by the first call.
func WithBlock() Option {
	return func(c *dialConfig) { c.block = true }
}

// Dial connects to the berth server at addr and returns a Client.
//
// addr is "host:port" (for example "127.0.0.1:50051"), an "http://host:port" or
// "https://host:port" URL (the port defaults to 80 and 443), or any gRPC target such as
// "unix:///run/berth.sock" or "dns:///berth.internal:50051". "host:port" and "http://" use
// plaintext HTTP/2 (h2c), "https://" uses TLS; WithTransportCredentials overrides either.
//
// ctx only bounds the wait of WithBlock; by default Dial does not contact the server and the
// connection is made lazily by the first call.
func Dial(ctx context.Context, addr string, opts ...Option) (*Client, error) {
	var cfg dialConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	target, useTLS, err := parseAddress(addr)
	if err != nil {
		return nil, err
	}
	creds := cfg.creds
	if creds == nil && cfg.caFile != "" {
		if creds, err = tlsWithCA(cfg.caFile); err != nil {
			return nil, err
		}
	}
	if creds == nil {
		if useTLS {
			creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
		} else {
			creds = insecure.NewCredentials()
		}
	}
	dialOptions := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if cfg.token != nil {
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(cfg.token))
	}
	dialOptions = append(dialOptions, cfg.dialOptions...)
	conn, err := grpc.NewClient(target, dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("berth: dial %q: %w", addr, err)
	}
	if cfg.block {
		if err := waitReady(ctx, conn); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("berth: dial %q: %w", addr, err)
		}
	}
	return NewClient(conn), nil
}

// NewClient wraps an existing connection, for callers that build their own grpc.ClientConn.
// Close on the returned Client closes conn.
func NewClient(conn *grpc.ClientConn) *Client {
	return &Client{
		Workspaces: workspacev1.NewWorkspaceServiceClient(conn),
		Files:      workspacev1.NewFilesystemServiceClient(conn),
		Processes:  workspacev1.NewProcessServiceClient(conn),
		conn:       conn,
	}
}

// Conn returns the underlying connection, for example to build clients of other services
// served on the same port.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection. Calls in progress fail with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		state := conn.GetState()
		if state == connectivity.Ready {
			return nil
		}
		if state == connectivity.Shutdown {
			return errors.New("connection closed")
		}
		if !conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("not ready (%s): %w", state, ctx.Err())
		}
	}
}

// parseAddress turns a Dial address into a grpc-go target and whether TLS is the default.
func parseAddress(addr string) (target string, useTLS bool, err error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", false, errors.New("berth: empty server address")
	}
	scheme, _, hasScheme := strings.Cut(addr, "://")
	if !hasScheme {
		// "host:port", or a scheme-only target such as "unix:relative/path.sock".
		return addr, false, nil
	}
	switch strings.ToLower(scheme) {
	case "http", "https":
	default:
		// Other gRPC target schemes (unix, dns, passthrough, ...) are handed to grpc-go as they are.
		return addr, false, nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", false, fmt.Errorf("berth: invalid server address %q: %w", addr, err)
	}
	if u.Host == "" {
		return "", false, fmt.Errorf("berth: invalid server address %q: no host", addr)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", false, fmt.Errorf("berth: invalid server address %q: only scheme://host[:port] is allowed", addr)
	}
	useTLS = strings.EqualFold(u.Scheme, "https")
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if useTLS {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	return host, useTLS, nil
}
