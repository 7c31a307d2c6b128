package berth

import (
	"context"
	"errors"
	"fmt"
	"io"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// Phase names of the CreateWorkspace progress events, as returned by Phase. They are the names
// of the fields of the CreateWorkspaceResponse `event` oneof, and arrive in this order.
const (
	PhasePulling      = "pulling"
	PhasePullProgress = "pull_progress"
	PhaseUnpacking    = "unpacking"
	PhaseCreating     = "creating"
	PhaseRestoring    = "restoring"
	PhaseReady        = "ready"
)

// Phase returns the name of the event a CreateWorkspace progress message carries ("pulling",
// "pull_progress", "unpacking", "creating", "restoring" or "ready"), or "" when it carries none
// or one this SDK version does not know.
func Phase(ev *workspacev1.CreateWorkspaceResponse) string {
	switch ev.GetEvent().(type) {
	case *workspacev1.CreateWorkspaceResponse_Pulling_:
		return PhasePulling
	case *workspacev1.CreateWorkspaceResponse_PullProgress_:
		return PhasePullProgress
	case *workspacev1.CreateWorkspaceResponse_Unpacking_:
		return PhaseUnpacking
	case *workspacev1.CreateWorkspaceResponse_Creating_:
		return PhaseCreating
	case *workspacev1.CreateWorkspaceResponse_Restoring_:
		return PhaseRestoring
	case *workspacev1.CreateWorkspaceResponse_Ready_:
		return PhaseReady
	default:
		return ""
	}
}

// CreateWorkspace calls WorkspaceService.CreateWorkspace and consumes its progress stream until
// `ready`, calling progress (when not nil) with every event in the order it arrives, `ready`
// included. It returns the workspace of the `ready` event.
//
// A failure is returned as the stream's gRPC error (decode it with AsError). A stream that ends
// without `ready` fails with an error. Creation continues on the server even when ctx ends:
// calling again with the same request follows it.
func (c *Client) CreateWorkspace(ctx context.Context, req *workspacev1.CreateWorkspaceRequest, progress func(*workspacev1.CreateWorkspaceResponse)) (*workspacev1.Workspace, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Workspaces.CreateWorkspace(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("berth: CreateWorkspace %q: stream ended without ready", req.GetWorkspaceId())
		}
		if err != nil {
			return nil, err
		}
		if progress != nil {
			progress(ev)
		}
		if ready := ev.GetReady(); ready != nil {
			return ready.GetWorkspace(), nil
		}
	}
}
