package berth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"google.golang.org/grpc"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// writeChunkBytes is the size of the WriteFile messages WriteFile sends: the size of the
// server's own ReadFile chunks.
const writeChunkBytes = 1 << 20

// maxPreallocBytes bounds the buffer ReadFile reserves from the size the server announces, so a
// huge (or sparse) file fails on the bytes that really arrive rather than on one allocation.
const maxPreallocBytes = 64 << 20

// ReadFile reads a whole regular file of a workspace, running or stopped, into memory. For large
// files or byte ranges use Files.ReadFile directly.
//
// Errors are the gRPC errors of the call (decode them with AsError): a missing file is
// codes.NotFound with reason PATH_NOT_FOUND, a directory codes.FailedPrecondition with reason
// IS_A_DIRECTORY.
func (c *Client) ReadFile(ctx context.Context, workspaceID, path string) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Files.ReadFile(ctx, &workspacev1.ReadFileRequest{WorkspaceId: workspaceID, Path: path})
	if err != nil {
		return nil, err
	}
	var content []byte
	described := false
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch event := msg.GetEvent().(type) {
		case *workspacev1.ReadFileResponse_Entry:
			described = true
			if size := event.Entry.GetSizeBytes(); size > 0 {
				content = make([]byte, 0, min(size, maxPreallocBytes))
			}
		case *workspacev1.ReadFileResponse_Chunk:
			content = append(content, event.Chunk...)
		}
	}
	if !described {
		return nil, fmt.Errorf("berth: ReadFile %q in %q: stream ended without the file's description", path, workspaceID)
	}
	if content == nil {
		content = []byte{}
	}
	return content, nil
}

// WriteFileOption configures WriteFile.
type WriteFileOption func(*workspacev1.WriteFileRequest_Header)

// WithFileMode sets the permission bits of the written file (mode.Perm() plus fs.ModeSetuid,
// fs.ModeSetgid and fs.ModeSticky). Without it a replaced file keeps its mode and a new one gets
// 0644.
func WithFileMode(mode fs.FileMode) WriteFileOption {
	bits := uint32(mode.Perm())
	if mode&fs.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if mode&fs.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if mode&fs.ModeSticky != 0 {
		bits |= 0o1000
	}
	return func(h *workspacev1.WriteFileRequest_Header) { h.Mode = bits }
}

// WithExpectedRevision makes the write happen only if the file still has revision (the Revision
// of an EntryInfo from an earlier read or write). If the file changed since, or is gone,
// WriteFile fails with codes.Aborted and reason REVISION_MISMATCH and leaves it as it was.
func WithExpectedRevision(revision string) WriteFileOption {
	return func(h *workspacev1.WriteFileRequest_Header) { h.ExpectedRevision = revision }
}

// WithCreateParents makes WriteFile create missing parent directories (mode 0755) instead of
// failing with codes.NotFound and reason PATH_NOT_FOUND.
func WithCreateParents() WriteFileOption {
	return func(h *workspacev1.WriteFileRequest_Header) { h.CreateParents = true }
}

// WriteFile creates or replaces a file of a workspace, running or stopped, with data and returns
// the file as written, with its new Revision. The replace is atomic: readers inside the
// workspace see the old content or the new one, never a mix. The content is streamed in 1 MiB
// messages of one WriteFile call; when ctx ends before the server answers, the file is left as
// it was.
//
// Errors are the gRPC errors of the call (decode them with AsError), for example codes.Aborted
// with reason REVISION_MISMATCH for a WithExpectedRevision that no longer matches.
func (c *Client) WriteFile(ctx context.Context, workspaceID, path string, data []byte, opts ...WriteFileOption) (*workspacev1.EntryInfo, error) {
	header := &workspacev1.WriteFileRequest_Header{WorkspaceId: workspaceID, Path: path}
	for _, opt := range opts {
		opt(header)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Files.WriteFile(ctx)
	if err != nil {
		return nil, err
	}
	if err := sendFile(stream, header, data); err != nil {
		return nil, err
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	if resp.GetEntry() == nil {
		return nil, fmt.Errorf("berth: WriteFile %q in %q: the response describes no file", path, workspaceID)
	}
	return resp.GetEntry(), nil
}

// sendFile sends the header, then data in chunks of writeChunkBytes. It stops without an error
// when the server ends the call early (Send returns io.EOF): CloseAndRecv then returns its status.
func sendFile(stream grpc.ClientStreamingClient[workspacev1.WriteFileRequest, workspacev1.WriteFileResponse], header *workspacev1.WriteFileRequest_Header, data []byte) error {
	send := func(msg *workspacev1.WriteFileRequest) (ended bool, err error) {
		err = stream.Send(msg)
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		return false, err
	}
	if ended, err := send(&workspacev1.WriteFileRequest{Event: &workspacev1.WriteFileRequest_Header_{Header: header}}); ended || err != nil {
		return err
	}
	for offset := 0; offset < len(data); offset += writeChunkBytes {
		chunk := data[offset:min(offset+writeChunkBytes, len(data))]
		if ended, err := send(&workspacev1.WriteFileRequest{Event: &workspacev1.WriteFileRequest_Chunk{Chunk: chunk}}); ended || err != nil {
			return err
		}
	}
	return nil
}
