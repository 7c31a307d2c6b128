// Package berth is the Go client of berth, a gRPC service that gives each bot a persistent Linux
// workspace backed by a containerd container.
//
// The API itself is generated from the berth protos into the package
// github.com/berth-dev/berth/sdk/go/berth/workspace/v1 (imported as workspacev1): it holds
// every request, response and enum type and the grpc-go clients. This package adds a thin entry
// point on top of it:
//
//   - [Dial] opens one connection and returns a [Client] whose Workspaces, Files and Processes
//     fields are the generated grpc-go clients sharing it;
//   - [AsError] and [ErrorReason] read the gRPC status code and the berth ErrorInfo reason of a
//     failed call;
//   - [Client.CreateWorkspace] and [Phase] help consume the CreateWorkspace progress stream;
//   - [Client.Run] and [Client.Stream] run commands, [Client.ReadFile] and [Client.WriteFile]
//     read and write whole files.
//
// A typical program:
//
//	client, err := berth.Dial(ctx, "127.0.0.1:50051")
//	if err != nil {
//		return err
//	}
//	defer client.Close()
//
//	resp, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: "bot-1"})
//	if code, reason, ok := berth.ErrorReason(err); ok {
//		return fmt.Errorf("get bot-1: %v %s", code, reason) // e.g. NotFound WORKSPACE_NOT_FOUND
//	}
//	fmt.Println(resp.GetWorkspace().GetState())
package berth
