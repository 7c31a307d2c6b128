package berth

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// fakeFiles keeps files in memory and records the WriteFile messages it received, to check what
// the helpers send without a berth server.
type fakeFiles struct {
	workspacev1.UnimplementedFilesystemServiceServer
	mu         sync.Mutex
	files      map[string][]byte
	revisions  map[string]int
	header     *workspacev1.WriteFileRequest_Header
	chunkSizes []int
}

func (f *fakeFiles) entry(path string) *workspacev1.EntryInfo {
	return &workspacev1.EntryInfo{
		Path:      path,
		Type:      workspacev1.FileType_FILE_TYPE_FILE,
		SizeBytes: int64(len(f.files[path])),
		Revision:  strconv.Itoa(f.revisions[path]),
	}
}

func (f *fakeFiles) ReadFile(req *workspacev1.ReadFileRequest, stream grpc.ServerStreamingServer[workspacev1.ReadFileResponse]) error {
	f.mu.Lock()
	content, ok := f.files[req.GetPath()]
	entry := f.entry(req.GetPath())
	f.mu.Unlock()
	if !ok {
		return status.Error(codes.NotFound, "no such file")
	}
	if err := stream.Send(&workspacev1.ReadFileResponse{Event: &workspacev1.ReadFileResponse_Entry{Entry: entry}}); err != nil {
		return err
	}
	for len(content) > 0 {
		n := min(len(content), 1<<20)
		if err := stream.Send(&workspacev1.ReadFileResponse{Event: &workspacev1.ReadFileResponse_Chunk{Chunk: content[:n]}}); err != nil {
			return err
		}
		content = content[n:]
	}
	return nil
}

func (f *fakeFiles) WriteFile(stream grpc.ClientStreamingServer[workspacev1.WriteFileRequest, workspacev1.WriteFileResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	header := first.GetHeader()
	if header == nil {
		return status.Error(codes.InvalidArgument, "the first message is not a header")
	}
	if header.GetPath() == "/data/missing-parent/file" {
		// Fail at once, before reading the content, as berth does for a missing parent.
		st, _ := status.New(codes.NotFound, "no such directory").WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: "PATH_NOT_FOUND"})
		return st.Err()
	}
	var content bytes.Buffer
	var sizes []int
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		sizes = append(sizes, len(msg.GetChunk()))
		content.Write(msg.GetChunk())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.header, f.chunkSizes = header, sizes
	if rev := header.GetExpectedRevision(); rev != "" && rev != strconv.Itoa(f.revisions[header.GetPath()]) {
		st, _ := status.New(codes.Aborted, "revision mismatch").WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: "REVISION_MISMATCH"})
		return st.Err()
	}
	f.files[header.GetPath()] = content.Bytes()
	f.revisions[header.GetPath()]++
	return stream.SendAndClose(&workspacev1.WriteFileResponse{Entry: f.entry(header.GetPath())})
}

func dialFakeFiles(t *testing.T, f *fakeFiles) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	workspacev1.RegisterFilesystemServiceServer(srv, f)
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

func TestWriteFileAndReadFileHelpers(t *testing.T) {
	ctx := context.Background()
	fake := &fakeFiles{files: map[string][]byte{}, revisions: map[string]int{}}
	client := dialFakeFiles(t, fake)

	payload := make([]byte, 3<<20+12345)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	entry, err := client.WriteFile(ctx, "bot-1", "/data/payload.bin", payload,
		WithFileMode(0o640|fs.ModeSetgid), WithCreateParents(), WithExpectedRevision("0"))
	if err != nil {
		t.Fatal(err)
	}
	if entry.GetSizeBytes() != int64(len(payload)) || entry.GetRevision() != "1" {
		t.Errorf("entry = %v", entry)
	}
	h := fake.header
	if h.GetWorkspaceId() != "bot-1" || h.GetPath() != "/data/payload.bin" || h.GetMode() != 0o2640 ||
		!h.GetCreateParents() || h.GetExpectedRevision() != "0" {
		t.Errorf("header = %v", h)
	}
	if want := []int{1 << 20, 1 << 20, 1 << 20, 12345}; !slices.Equal(fake.chunkSizes, want) {
		t.Errorf("chunk sizes = %v, want %v", fake.chunkSizes, want)
	}
	back, err := client.ReadFile(ctx, "bot-1", "/data/payload.bin")
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("ReadFile = %d bytes, %v; want the %d bytes written", len(back), err, len(payload))
	}

	// An empty file is a header alone, and reads back as an empty, non-nil slice.
	if _, err := client.WriteFile(ctx, "bot-1", "/data/empty", nil); err != nil {
		t.Fatal(err)
	}
	if len(fake.chunkSizes) != 0 || fake.header.GetMode() != 0 || fake.header.GetCreateParents() {
		t.Errorf("empty write: chunks %v, header %v", fake.chunkSizes, fake.header)
	}
	if back, err := client.ReadFile(ctx, "bot-1", "/data/empty"); err != nil || back == nil || len(back) != 0 {
		t.Errorf("ReadFile of an empty file = %v, %v", back, err)
	}

	// Errors keep their code and reason.
	_, err = client.WriteFile(ctx, "bot-1", "/data/payload.bin", []byte("stale"), WithExpectedRevision("0"))
	if code, reason, _ := ErrorReason(err); code != codes.Aborted || reason != "REVISION_MISMATCH" {
		t.Errorf("stale write: %v", err)
	}
	// A server that fails before reading the content: the helper reports its status, not io.EOF.
	_, err = client.WriteFile(ctx, "bot-1", "/data/missing-parent/file", payload)
	if code, reason, _ := ErrorReason(err); code != codes.NotFound || reason != "PATH_NOT_FOUND" {
		t.Errorf("write into a missing directory: %v", err)
	}
	if _, err := client.ReadFile(ctx, "bot-1", "/data/missing"); status.Code(err) != codes.NotFound {
		t.Errorf("missing file: %v", err)
	}
}
