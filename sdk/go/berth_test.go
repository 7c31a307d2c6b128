package berth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// Unit tests: they need no berth server.

func TestParseAddress(t *testing.T) {
	tests := []struct {
		addr    string
		target  string
		useTLS  bool
		wantErr bool
	}{
		{addr: "127.0.0.1:50051", target: "127.0.0.1:50051"},
		{addr: "  localhost:50051 ", target: "localhost:50051"},
		{addr: "http://127.0.0.1:50051", target: "127.0.0.1:50051"},
		{addr: "http://127.0.0.1:50051/", target: "127.0.0.1:50051"},
		{addr: "HTTP://berth.internal:8080", target: "berth.internal:8080"},
		{addr: "http://berth.internal", target: "berth.internal:80"},
		{addr: "https://berth.example.com", target: "berth.example.com:443", useTLS: true},
		{addr: "https://berth.example.com:8443", target: "berth.example.com:8443", useTLS: true},
		{addr: "http://[::1]:50051", target: "[::1]:50051"},
		{addr: "http://[::1]", target: "[::1]:80"},
		{addr: "unix:///run/berth.sock", target: "unix:///run/berth.sock"},
		{addr: "unix:berth.sock", target: "unix:berth.sock"},
		{addr: "dns:///berth.internal:50051", target: "dns:///berth.internal:50051"},
		{addr: "", wantErr: true},
		{addr: "http://", wantErr: true},
		{addr: "http://127.0.0.1:50051/api", wantErr: true},
		{addr: "http://127.0.0.1:50051?x=1", wantErr: true},
		{addr: "http://user@127.0.0.1:50051", wantErr: true},
	}
	for _, tt := range tests {
		target, useTLS, err := parseAddress(tt.addr)
		if tt.wantErr {
			if err == nil {
				t.Errorf("parseAddress(%q) = %q, %v; want an error", tt.addr, target, useTLS)
			}
			continue
		}
		if err != nil || target != tt.target || useTLS != tt.useTLS {
			t.Errorf("parseAddress(%q) = %q, %v, %v; want %q, %v, nil", tt.addr, target, useTLS, err, tt.target, tt.useTLS)
		}
	}
}

func notFoundStatus(t *testing.T, domain string) *status.Status {
	t.Helper()
	st, err := status.New(codes.NotFound, `workspace "bot-1" does not exist`).WithDetails(
		&errdetails.ErrorInfo{
			Domain:   domain,
			Reason:   "WORKSPACE_NOT_FOUND",
			Metadata: map[string]string{"workspace_id": "bot-1"},
		})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestAsErrorDecodesErrorInfo(t *testing.T) {
	err := notFoundStatus(t, ErrorDomain).Err()
	for _, e := range []error{err, fmt.Errorf("get workspace: %w", err)} {
		be, ok := AsError(e)
		if !ok {
			t.Fatalf("AsError(%v) not ok", e)
		}
		if be.Code != codes.NotFound || be.Reason != "WORKSPACE_NOT_FOUND" {
			t.Errorf("AsError(%v) = %v, %q", e, be.Code, be.Reason)
		}
		if be.Metadata["workspace_id"] != "bot-1" {
			t.Errorf("metadata = %v", be.Metadata)
		}
		if be.ErrorReason() != workspacev1.ErrorReason_WORKSPACE_NOT_FOUND {
			t.Errorf("ErrorReason() = %v", be.ErrorReason())
		}
		if !IsReason(e, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND) || IsReason(e, workspacev1.ErrorReason_INVALID_WORKSPACE_ID) {
			t.Errorf("IsReason wrong for %v", e)
		}
		code, reason, ok := ErrorReason(e)
		if !ok || code != codes.NotFound || reason != "WORKSPACE_NOT_FOUND" {
			t.Errorf("ErrorReason(%v) = %v, %q, %v", e, code, reason, ok)
		}
	}
	be, _ := AsError(err)
	if got, want := be.Error(), `NotFound WORKSPACE_NOT_FOUND: workspace "bot-1" does not exist`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if status.Code(be) != codes.NotFound {
		t.Errorf("status.Code(*Error) = %v", status.Code(be))
	}
	again, ok := AsError(fmt.Errorf("wrapped: %w", be))
	if !ok || again != be {
		t.Errorf("AsError of a wrapped *Error = %v, %v", again, ok)
	}
}

func TestAsErrorWithoutBerthErrorInfo(t *testing.T) {
	// An ErrorInfo of another domain is not a berth reason.
	be, ok := AsError(notFoundStatus(t, "example.com").Err())
	if !ok || be.Code != codes.NotFound || be.Reason != "" || be.Metadata != nil {
		t.Errorf("foreign domain: %+v, %v", be, ok)
	}
	if be.ErrorReason() != workspacev1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		t.Errorf("ErrorReason() = %v", be.ErrorReason())
	}
	if got := be.Error(); got != `NotFound: workspace "bot-1" does not exist` {
		t.Errorf("Error() = %q", got)
	}
	// A status without details, as grpc-go produces for transport failures.
	code, reason, ok := ErrorReason(status.Error(codes.Unavailable, "connection refused"))
	if !ok || code != codes.Unavailable || reason != "" {
		t.Errorf("no details: %v, %q, %v", code, reason, ok)
	}
	// Errors that are not gRPC errors, and nil.
	for _, err := range []error{nil, io.EOF, errors.New("boom")} {
		if be, ok := AsError(err); ok || be != nil {
			t.Errorf("AsError(%v) = %v, %v; want nil, false", err, be, ok)
		}
		if code, reason, ok := ErrorReason(err); ok || code != codes.OK || reason != "" {
			t.Errorf("ErrorReason(%v) = %v, %q, %v", err, code, reason, ok)
		}
		if IsReason(err, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND) {
			t.Errorf("IsReason(%v) = true", err)
		}
	}
}

func TestPhase(t *testing.T) {
	type R = workspacev1.CreateWorkspaceResponse
	tests := map[string]*R{
		PhasePulling:      {Event: &workspacev1.CreateWorkspaceResponse_Pulling_{Pulling: &workspacev1.CreateWorkspaceResponse_Pulling{}}},
		PhasePullProgress: {Event: &workspacev1.CreateWorkspaceResponse_PullProgress_{PullProgress: &workspacev1.CreateWorkspaceResponse_PullProgress{}}},
		PhaseUnpacking:    {Event: &workspacev1.CreateWorkspaceResponse_Unpacking_{Unpacking: &workspacev1.CreateWorkspaceResponse_Unpacking{}}},
		PhaseCreating:     {Event: &workspacev1.CreateWorkspaceResponse_Creating_{Creating: &workspacev1.CreateWorkspaceResponse_Creating{}}},
		PhaseRestoring:    {Event: &workspacev1.CreateWorkspaceResponse_Restoring_{Restoring: &workspacev1.CreateWorkspaceResponse_Restoring{}}},
		PhaseReady:        {Event: &workspacev1.CreateWorkspaceResponse_Ready_{Ready: &workspacev1.CreateWorkspaceResponse_Ready{}}},
		"":                {},
	}
	for want, ev := range tests {
		if got := Phase(ev); got != want {
			t.Errorf("Phase(%v) = %q, want %q", ev, got, want)
		}
	}
	if got := Phase(nil); got != "" {
		t.Errorf("Phase(nil) = %q", got)
	}
}

func TestDialErrors(t *testing.T) {
	if _, err := Dial(context.Background(), ""); err == nil {
		t.Error("Dial of an empty address succeeded")
	}
	// Dial is lazy by default: an address nobody listens on still gives a client.
	client, err := Dial(context.Background(), "http://127.0.0.1:1")
	if err != nil {
		t.Fatalf("lazy Dial: %v", err)
	}
	_, err = client.Workspaces.GetWorkspace(context.Background(), &workspacev1.GetWorkspaceRequest{WorkspaceId: "x"})
	if code, reason, ok := ErrorReason(err); !ok || code != codes.Unavailable || reason != "" {
		t.Errorf("call to a closed port: %v, %q, %v (%v)", code, reason, ok, err)
	}
	if err := client.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	// WithBlock waits for the connection and gives up with ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, "127.0.0.1:1", WithBlock()); err == nil {
		t.Error("Dial WithBlock to a closed port succeeded")
	}
}

// fakeWorkspaces serves canned answers over an in-memory connection.
type fakeWorkspaces struct {
	workspacev1.UnimplementedWorkspaceServiceServer
	st     *status.Status
	events []*workspacev1.CreateWorkspaceResponse
}

func (f *fakeWorkspaces) GetWorkspace(context.Context, *workspacev1.GetWorkspaceRequest) (*workspacev1.GetWorkspaceResponse, error) {
	return nil, f.st.Err()
}

func (f *fakeWorkspaces) CreateWorkspace(_ *workspacev1.CreateWorkspaceRequest, stream grpc.ServerStreamingServer[workspacev1.CreateWorkspaceResponse]) error {
	for _, ev := range f.events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	return nil
}

func dialFake(t *testing.T, f *fakeWorkspaces) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	workspacev1.RegisterWorkspaceServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err := Dial(ctx, "passthrough:///bufnet", WithBlock(), WithDialOptions(
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestErrorsSurviveTheWire(t *testing.T) {
	client := dialFake(t, &fakeWorkspaces{st: notFoundStatus(t, ErrorDomain)})
	_, err := client.Workspaces.GetWorkspace(context.Background(), &workspacev1.GetWorkspaceRequest{WorkspaceId: "bot-1"})
	be, ok := AsError(err)
	if !ok || be.Code != codes.NotFound || be.Reason != "WORKSPACE_NOT_FOUND" || be.Metadata["workspace_id"] != "bot-1" {
		t.Fatalf("AsError(%v) = %+v, %v", err, be, ok)
	}
}

func TestCreateWorkspaceHelper(t *testing.T) {
	ready := &workspacev1.CreateWorkspaceResponse{Event: &workspacev1.CreateWorkspaceResponse_Ready_{
		Ready: &workspacev1.CreateWorkspaceResponse_Ready{Workspace: &workspacev1.Workspace{WorkspaceId: "bot-1"}}}}
	creating := &workspacev1.CreateWorkspaceResponse{Event: &workspacev1.CreateWorkspaceResponse_Creating_{
		Creating: &workspacev1.CreateWorkspaceResponse_Creating{}}}

	client := dialFake(t, &fakeWorkspaces{events: []*workspacev1.CreateWorkspaceResponse{creating, ready}})
	var phases []string
	ws, err := client.CreateWorkspace(context.Background(), &workspacev1.CreateWorkspaceRequest{WorkspaceId: "bot-1"},
		func(ev *workspacev1.CreateWorkspaceResponse) { phases = append(phases, Phase(ev)) })
	if err != nil || ws.GetWorkspaceId() != "bot-1" || fmt.Sprint(phases) != "[creating ready]" {
		t.Fatalf("CreateWorkspace = %v, %v; phases %v", ws, err, phases)
	}

	client = dialFake(t, &fakeWorkspaces{events: []*workspacev1.CreateWorkspaceResponse{creating}})
	if _, err := client.CreateWorkspace(context.Background(), &workspacev1.CreateWorkspaceRequest{WorkspaceId: "bot-1"}, nil); err == nil {
		t.Fatal("CreateWorkspace of a stream without ready succeeded")
	}
}
