package berth_test

import (
	"context"
	"fmt"
	"log"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	berth "github.com/berth-dev/berth/sdk/go"
	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

func ExampleDial() {
	ctx := context.Background()
	client, err := berth.Dial(ctx, "http://127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	resp, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: "bot-1"})
	if berth.IsReason(err, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND) {
		fmt.Println("bot-1 does not exist yet")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetWorkspace().GetState())
}

func ExampleClient_CreateWorkspace() {
	ctx := context.Background()
	client, err := berth.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ws, err := client.CreateWorkspace(ctx, &workspacev1.CreateWorkspaceRequest{
		WorkspaceId: "bot-1",
		Image:       "docker.io/library/debian:bookworm",
	}, func(ev *workspacev1.CreateWorkspaceResponse) {
		if p := ev.GetPullProgress(); p != nil {
			fmt.Printf("%s %d/%d bytes\n", berth.Phase(ev), p.GetOffsetBytes(), p.GetTotalBytes())
			return
		}
		fmt.Println(berth.Phase(ev))
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ws.GetWorkspaceId(), ws.GetState())
}

func ExampleClient_WriteFile() {
	ctx := context.Background()
	client, err := berth.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	entry, err := client.WriteFile(ctx, "bot-1", "/data/notes.md", []byte("# notes\n"), berth.WithCreateParents())
	if err != nil {
		log.Fatal(err)
	}
	notes, err := client.ReadFile(ctx, "bot-1", "/data/notes.md")
	if err != nil {
		log.Fatal(err)
	}
	// Append a line, unless the file changed since it was written.
	_, err = client.WriteFile(ctx, "bot-1", "/data/notes.md", append(notes, "- more\n"...),
		berth.WithExpectedRevision(entry.GetRevision()))
	if berth.IsReason(err, workspacev1.ErrorReason_REVISION_MISMATCH) {
		fmt.Println("someone else changed /data/notes.md: read it again")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
}

func ExampleAsError() {
	// What a berth server sends for an unknown workspace id.
	st, _ := status.New(codes.NotFound, `workspace "bot-1" does not exist`).WithDetails(
		&errdetails.ErrorInfo{Domain: berth.ErrorDomain, Reason: "WORKSPACE_NOT_FOUND"})
	err := st.Err()

	if e, ok := berth.AsError(err); ok {
		fmt.Println(e.Code, e.Reason)
		fmt.Println(e.ErrorReason() == workspacev1.ErrorReason_WORKSPACE_NOT_FOUND)
		fmt.Println(e)
	}
	code, reason, _ := berth.ErrorReason(err)
	fmt.Println(code, reason)
	// Output:
	// NotFound WORKSPACE_NOT_FOUND
	// true
	// NotFound WORKSPACE_NOT_FOUND: workspace "bot-1" does not exist
	// NotFound WORKSPACE_NOT_FOUND
}
