package berth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// fakeData serves ExportData from archive (then a trailer made by trailer, none when it returns
// nil) and records what ImportData receives, to check the helpers without a berth server.
type fakeData struct {
	workspacev1.UnimplementedWorkspaceServiceServer
	archive []byte
	trailer func(real *workspacev1.ExportDataResponse_Trailer) *workspacev1.ExportDataResponse_Trailer

	mu            sync.Mutex
	exportRequest *workspacev1.ExportDataRequest
	header        *workspacev1.ImportDataRequest_Header
	chunkSizes    []int
	imported      []byte
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (f *fakeData) ExportData(req *workspacev1.ExportDataRequest, stream grpc.ServerStreamingServer[workspacev1.ExportDataResponse]) error {
	f.mu.Lock()
	f.exportRequest = req
	f.mu.Unlock()
	for rest := f.archive; len(rest) > 0; {
		n := min(len(rest), 1<<20)
		if err := stream.Send(&workspacev1.ExportDataResponse{Event: &workspacev1.ExportDataResponse_Chunk{Chunk: rest[:n]}}); err != nil {
			return err
		}
		rest = rest[n:]
	}
	real := &workspacev1.ExportDataResponse_Trailer{SizeBytes: int64(len(f.archive)), Sha256: sha256Hex(f.archive), EntryCount: 3}
	if trailer := f.trailer(real); trailer != nil {
		return stream.Send(&workspacev1.ExportDataResponse{Event: &workspacev1.ExportDataResponse_Trailer_{Trailer: trailer}})
	}
	return nil
}

func (f *fakeData) ImportData(stream grpc.ClientStreamingServer[workspacev1.ImportDataRequest, workspacev1.ImportDataResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	header := first.GetHeader()
	if header == nil {
		return status.Error(codes.InvalidArgument, "the first message is not a header")
	}
	var archive bytes.Buffer
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
		archive.Write(msg.GetChunk())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.header, f.chunkSizes, f.imported = header, sizes, archive.Bytes()
	if want := header.GetSha256(); want != "" && want != sha256Hex(archive.Bytes()) {
		st, _ := status.New(codes.InvalidArgument, "checksum mismatch").WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: "CHECKSUM_MISMATCH"})
		return st.Err()
	}
	return stream.SendAndClose(&workspacev1.ImportDataResponse{SizeBytes: int64(archive.Len()), Sha256: sha256Hex(archive.Bytes()), EntryCount: 9})
}

func dialFakeData(t *testing.T, f *fakeData) *Client {
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

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// trueTrailer sends the trailer of the archive sent.
func trueTrailer(real *workspacev1.ExportDataResponse_Trailer) *workspacev1.ExportDataResponse_Trailer {
	return real
}

func TestExportDataChecksTheTrailer(t *testing.T) {
	ctx := context.Background()
	archive := randomBytes(t, 2<<20+9)
	fake := &fakeData{archive: archive, trailer: trueTrailer}
	client := dialFakeData(t, fake)

	var out bytes.Buffer
	trailer, err := client.ExportData(ctx, "bot-1", &out, WithDataPath("/data/sub"), WithArchiveFormat(workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), archive) || trailer.GetSizeBytes() != int64(len(archive)) || trailer.GetEntryCount() != 3 {
		t.Errorf("ExportData wrote %d bytes, trailer %v; want the %d bytes of the archive", out.Len(), trailer, len(archive))
	}
	if r := fake.exportRequest; r.GetWorkspaceId() != "bot-1" || r.GetPath() != "/data/sub" || r.GetFormat() != workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD {
		t.Errorf("request = %v", r)
	}

	wrongHash := strings.Repeat("0", 64)
	for name, tamper := range map[string]func(real *workspacev1.ExportDataResponse_Trailer) *workspacev1.ExportDataResponse_Trailer{
		"another sha256": func(real *workspacev1.ExportDataResponse_Trailer) *workspacev1.ExportDataResponse_Trailer {
			real.Sha256 = wrongHash
			return real
		},
		"another size": func(real *workspacev1.ExportDataResponse_Trailer) *workspacev1.ExportDataResponse_Trailer {
			real.SizeBytes--
			return real
		},
		"no trailer": func(*workspacev1.ExportDataResponse_Trailer) *workspacev1.ExportDataResponse_Trailer { return nil },
	} {
		fake.trailer = tamper
		_, err := client.ExportData(ctx, "bot-1", io.Discard)
		if !errors.Is(err, ErrArchiveIntegrity) {
			t.Errorf("%s: ExportData error = %v, want ErrArchiveIntegrity", name, err)
		}
		if name == "another sha256" && !strings.Contains(err.Error(), "with sha256 "+sha256Hex(archive)+", the trailer says") {
			t.Errorf("%s: the error does not name the received sha256: %v", name, err)
		}
	}

	// A failing writer ends the export with its error.
	fake.trailer = trueTrailer
	diskFull := errors.New("disk full")
	if _, err := client.ExportData(ctx, "bot-1", errWriter{diskFull}); !errors.Is(err, diskFull) {
		t.Errorf("ExportData into a failing writer: %v, want %v", err, diskFull)
	}
}

type errWriter struct{ err error }

func (w errWriter) Write([]byte) (int, error) { return 0, w.err }

func TestImportDataStreamsAHeaderThenChunks(t *testing.T) {
	ctx := context.Background()
	fake := &fakeData{}
	client := dialFakeData(t, fake)
	archive := randomBytes(t, 3<<20+12345)

	// A reader that returns a few bytes at a time still makes full 1 MiB messages.
	resp, err := client.ImportData(ctx, "bot-1", iotest.HalfReader(bytes.NewReader(archive)),
		WithDataPath("/data/in"), WithArchiveFormat(workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD),
		WithReplace(), WithExpectedSHA256(sha256Hex(archive)))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSizeBytes() != int64(len(archive)) || resp.GetEntryCount() != 9 || resp.GetSha256() != sha256Hex(archive) {
		t.Errorf("response = %v", resp)
	}
	h := fake.header
	if h.GetWorkspaceId() != "bot-1" || h.GetPath() != "/data/in" || h.GetFormat() != workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD ||
		!h.GetReplace() || h.GetSha256() != sha256Hex(archive) {
		t.Errorf("header = %v", h)
	}
	if want := []int{1 << 20, 1 << 20, 1 << 20, 12345}; !slices.Equal(fake.chunkSizes, want) {
		t.Errorf("chunk sizes = %v, want %v", fake.chunkSizes, want)
	}
	if !bytes.Equal(fake.imported, archive) {
		t.Errorf("the server received %d bytes, not the archive's %d", len(fake.imported), len(archive))
	}

	// Defaults: no path, replace or sha256; the format from the first bytes.
	if _, err := client.ImportData(ctx, "bot-1", bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if h := fake.header; h.GetPath() != "" || h.GetReplace() || h.GetSha256() != "" || h.GetFormat() != workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_GZIP {
		t.Errorf("default header = %v", h)
	}
	zstdLike := append([]byte{0x28, 0xb5, 0x2f, 0xfd}, archive[:100]...)
	if _, err := client.ImportData(ctx, "bot-1", bytes.NewReader(zstdLike)); err != nil {
		t.Fatal(err)
	}
	if f := fake.header.GetFormat(); f != workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD {
		t.Errorf("format of an archive starting with zstd's magic number = %v, want TAR_ZSTD", f)
	}
	if !bytes.Equal(fake.imported, zstdLike) {
		t.Errorf("the server received % x, want % x", fake.imported, zstdLike)
	}
	if _, err := client.ImportData(ctx, "bot-1", bytes.NewReader(zstdLike), WithArchiveFormat(workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_GZIP)); err != nil {
		t.Fatal(err)
	}
	if f := fake.header.GetFormat(); f != workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_GZIP {
		t.Errorf("an explicit format = %v, want TAR_GZIP", f)
	}
	// An empty reader is a header alone.
	if _, err := client.ImportData(ctx, "bot-1", bytes.NewReader(nil)); err != nil || len(fake.chunkSizes) != 0 {
		t.Errorf("import of nothing: chunks %v, %v", fake.chunkSizes, err)
	}

	// The server's error keeps its code and reason.
	_, err = client.ImportData(ctx, "bot-1", bytes.NewReader(archive), WithExpectedSHA256(strings.Repeat("0", 64)))
	if code, reason, _ := ErrorReason(err); code != codes.InvalidArgument || reason != "CHECKSUM_MISMATCH" {
		t.Errorf("import with a wrong sha256: %v, want InvalidArgument CHECKSUM_MISMATCH", err)
	}

	// A reader error ends the import with that error.
	broken := errors.New("broken pipe")
	if _, err := client.ImportData(ctx, "bot-1", iotest.ErrReader(broken)); !errors.Is(err, broken) {
		t.Errorf("import from a failing reader: %v, want %v", err, broken)
	}
}
