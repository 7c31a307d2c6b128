package berth_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	berth "github.com/berth-dev/berth/sdk/go"
	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// TestTokensOverTLS runs against the berth with a tokens file and TLS that scripts/test-sdks.sh
// starts beside the plain one:
//
//	BERTH_TEST_TLS_SERVER  https://localhost:PORT
//	BERTH_TEST_CA_FILE     the PEM of the CA that signed its certificate
//	BERTH_TEST_TOKEN       an admin token
//	BERTH_TEST_READ_TOKEN  a token that may read workspace sdk-tls-reader only
func TestTokensOverTLS(t *testing.T) {
	server := requireEnv(t, "BERTH_TEST_TLS_SERVER")
	caFile := requireEnv(t, "BERTH_TEST_CA_FILE")
	token := requireEnv(t, "BERTH_TEST_TOKEN")
	readToken := requireEnv(t, "BERTH_TEST_READ_TOKEN")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(t *testing.T, opts ...berth.Option) *berth.Client {
		t.Helper()
		client, err := berth.Dial(ctx, server, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		return client
	}
	expectReason := func(t *testing.T, err error, code codes.Code, reason string) {
		t.Helper()
		gotCode, gotReason, _ := berth.ErrorReason(err)
		if gotCode != code || gotReason != reason {
			t.Fatalf("got %v %q (%v), want %v %q", gotCode, gotReason, err, code, reason)
		}
	}

	t.Run("a token over TLS authenticates", func(t *testing.T) {
		client := dial(t, berth.WithCAFile(caFile), berth.WithToken(token))
		if _, err := client.Workspaces.ListWorkspaces(ctx, &workspacev1.ListWorkspacesRequest{}); err != nil {
			t.Fatal(err)
		}
		_, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: "sdk-tls-missing"})
		expectReason(t, err, codes.NotFound, "WORKSPACE_NOT_FOUND")
	})
	t.Run("no token is UNAUTHENTICATED", func(t *testing.T) {
		client := dial(t, berth.WithCAFile(caFile))
		_, err := client.Workspaces.ListWorkspaces(ctx, &workspacev1.ListWorkspacesRequest{})
		expectReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")
	})
	t.Run("a read token outside its scope is PERMISSION_DENIED", func(t *testing.T) {
		asked := 0
		client := dial(t, berth.WithCAFile(caFile), berth.WithTokenSource(func(context.Context) (string, error) {
			asked++
			return readToken, nil
		}))
		_, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: "sdk-tls-elsewhere"})
		expectReason(t, err, codes.PermissionDenied, "PERMISSION_DENIED")
		_, err = client.Workspaces.StopWorkspace(ctx, &workspacev1.StopWorkspaceRequest{WorkspaceId: "sdk-tls-reader"})
		expectReason(t, err, codes.PermissionDenied, "PERMISSION_DENIED")
		if asked != 2 {
			t.Fatalf("the token source was asked %d times for 2 calls", asked)
		}
	})
	t.Run("the system roots do not trust the test CA", func(t *testing.T) {
		client := dial(t, berth.WithToken(token))
		_, err := client.Workspaces.ListWorkspaces(ctx, &workspacev1.ListWorkspacesRequest{})
		if code, _, _ := berth.ErrorReason(err); code != codes.Unavailable {
			t.Fatalf("got %v (%v), want Unavailable: a certificate the client does not trust", code, err)
		}
	})
	t.Run("a CA file that holds no certificate fails Dial", func(t *testing.T) {
		if _, err := berth.Dial(ctx, server, berth.WithCAFile("auth.go")); err == nil {
			t.Fatal("Dial accepted a CA file without certificates")
		}
	})
}
