package berth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// CommandResult is what a command run to its end produced.
type CommandResult struct {
	// Stdout and Stderr hold everything the process wrote, in order.
	Stdout []byte
	Stderr []byte
	// ExitCode is the process's exit status; 128+n when signal n ended it, -1 when berth could
	// not learn it.
	ExitCode int32
	// Signal is the signal that ended the process, SIGNAL_UNSPECIFIED when it exited itself.
	Signal workspacev1.Signal
	// Error says why berth ended the process (its timeout passed, the workspace stopped); empty
	// when it ended on its own.
	Error string
}

// Run starts cmd with args in a running workspace on pipes and waits for it to end, collecting
// its output in memory. For large or long-running output use Stream. A non-zero exit code is
// not an error: read CommandResult.ExitCode. Errors are the gRPC errors of the call (decode them
// with AsError), or a stream that ended without an end event.
//
// The process runs detached on the server: when ctx ends, Run returns but the process goes on
// (use a StartRequest timeout to bound it).
func (c *Client) Run(ctx context.Context, workspaceID, cmd string, args ...string) (*CommandResult, error) {
	var stdout, stderr bytes.Buffer
	req := &workspacev1.StartRequest{
		WorkspaceId: workspaceID,
		Process:     &workspacev1.ProcessConfig{Cmd: cmd, Args: args},
	}
	end, err := c.Stream(ctx, req, &stdout, &stderr)
	if err != nil {
		return nil, err
	}
	return &CommandResult{
		Stdout:   stdout.Bytes(),
		Stderr:   stderr.Bytes(),
		ExitCode: end.GetExitCode(),
		Signal:   end.GetSignal(),
		Error:    end.GetError(),
	}, nil
}

// Stream starts the process req describes and copies its output as it arrives: stdout (and a
// pseudo-terminal's output) to stdout, stderr to stderr; either may be nil to drop it. It
// returns the end event once every byte was delivered.
func (c *Client) Stream(ctx context.Context, req *workspacev1.StartRequest, stdout, stderr io.Writer) (*workspacev1.ProcessEvent_End, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Processes.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("berth: Start %q in %q: stream ended without an end event", req.GetProcess().GetCmd(), req.GetWorkspaceId())
		}
		if err != nil {
			return nil, err
		}
		event := msg.GetEvent()
		if end := event.GetEnd(); end != nil {
			return end, nil
		}
		data := event.GetData()
		if data == nil {
			continue
		}
		var target io.Writer
		var chunk []byte
		switch output := data.GetOutput().(type) {
		case *workspacev1.ProcessEvent_Data_Stdout:
			target, chunk = stdout, output.Stdout
		case *workspacev1.ProcessEvent_Data_Pty:
			target, chunk = stdout, output.Pty
		case *workspacev1.ProcessEvent_Data_Stderr:
			target, chunk = stderr, output.Stderr
		}
		if target != nil {
			if _, err := target.Write(chunk); err != nil {
				return nil, fmt.Errorf("berth: writing the output of %q: %w", req.GetProcess().GetCmd(), err)
			}
		}
	}
}
