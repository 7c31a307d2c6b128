package berth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// importChunkBytes is the size of the ImportData messages ImportData sends: the size of the
// server's own ExportData chunks.
const importChunkBytes = 1 << 20

// ErrArchiveIntegrity reports an export whose bytes do not match its trailer (size or SHA-256),
// or that ended without a trailer: what was written is incomplete or corrupt and must be
// discarded. Test for it with errors.Is.
var ErrArchiveIntegrity = errors.New("berth: exported archive does not match its trailer")

// ExportOption configures ExportData.
type ExportOption interface {
	applyExport(*workspacev1.ExportDataRequest)
}

// ImportOption configures ImportData.
type ImportOption interface {
	applyImport(*workspacev1.ImportDataRequest_Header)
}

// DataOption configures both ExportData and ImportData.
type DataOption interface {
	ExportOption
	ImportOption
}

type dataPath string

func (p dataPath) applyExport(r *workspacev1.ExportDataRequest)        { r.Path = string(p) }
func (p dataPath) applyImport(h *workspacev1.ImportDataRequest_Header) { h.Path = string(p) }

// WithDataPath names the directory to export, or to extract into (created if missing): an
// absolute path inside the workspace. Without it both use /data.
func WithDataPath(path string) DataOption { return dataPath(path) }

type archiveFormat workspacev1.ArchiveFormat

func (f archiveFormat) applyExport(r *workspacev1.ExportDataRequest) {
	r.Format = workspacev1.ArchiveFormat(f)
}
func (f archiveFormat) applyImport(h *workspacev1.ImportDataRequest_Header) {
	h.Format = workspacev1.ArchiveFormat(f)
}

// WithArchiveFormat picks the archive's compression: workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_GZIP
// or workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD. Without it ExportData makes gzip and
// ImportData reads the format from the archive's first bytes (zstd's magic number, else gzip).
func WithArchiveFormat(format workspacev1.ArchiveFormat) DataOption { return archiveFormat(format) }

type importFunc func(*workspacev1.ImportDataRequest_Header)

func (f importFunc) applyImport(h *workspacev1.ImportDataRequest_Header) { f(h) }

// WithReplace makes the directory end up holding exactly the archive's contents, swapped in
// once the whole archive is extracted. Without it archive entries replace those of the same
// path and other files stay.
func WithReplace() ImportOption {
	return importFunc(func(h *workspacev1.ImportDataRequest_Header) { h.Replace = true })
}

// WithExpectedSHA256 makes the server check the archive's SHA-256 (64 lowercase hexadecimal
// characters, as an export's trailer has it) before anything becomes visible: a different
// archive fails with codes.InvalidArgument and reason CHECKSUM_MISMATCH and changes nothing.
func WithExpectedSHA256(sha256Hex string) ImportOption {
	return importFunc(func(h *workspacev1.ImportDataRequest_Header) { h.Sha256 = sha256Hex })
}

// ExportData exports a directory of a workspace, running or stopped (/data unless WithDataPath
// says otherwise), as a tar archive compressed with gzip (or zstd, WithArchiveFormat), writing
// the archive's bytes to w as they arrive. It returns the export's trailer (archive size,
// SHA-256, entry count) once the bytes written matched it.
//
// When the bytes received do not match the trailer, or the stream ends without one, the error
// wraps ErrArchiveIntegrity; w has then received an unusable archive. Errors of the call are
// gRPC errors (decode them with AsError): a missing directory is codes.NotFound with reason
// PATH_NOT_FOUND. An error of w ends the export and is returned as it is.
func (c *Client) ExportData(ctx context.Context, workspaceID string, w io.Writer, opts ...ExportOption) (*workspacev1.ExportDataResponse_Trailer, error) {
	req := &workspacev1.ExportDataRequest{WorkspaceId: workspaceID}
	for _, opt := range opts {
		opt.applyExport(req)
	}
	// Canceling ends the stream when w fails or the trailer check does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Workspaces.ExportData(ctx, req)
	if err != nil {
		return nil, err
	}
	hash := sha256.New()
	var received int64
	var trailer *workspacev1.ExportDataResponse_Trailer
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		switch event := msg.GetEvent().(type) {
		case *workspacev1.ExportDataResponse_Chunk:
			if trailer != nil {
				return nil, fmt.Errorf("%w: the export of %q sent archive bytes after its trailer; discard what was written and export again", ErrArchiveIntegrity, workspaceID)
			}
			hash.Write(event.Chunk)
			received += int64(len(event.Chunk))
			if _, err := w.Write(event.Chunk); err != nil {
				return nil, err
			}
		case *workspacev1.ExportDataResponse_Trailer_:
			trailer = event.Trailer
		}
	}
	if trailer == nil {
		return nil, fmt.Errorf("%w: the export of %q ended without its trailer after %d bytes; discard what was written and export again", ErrArchiveIntegrity, workspaceID, received)
	}
	actual := hex.EncodeToString(hash.Sum(nil))
	if trailer.GetSizeBytes() != received || trailer.GetSha256() != actual {
		return nil, fmt.Errorf("%w: the export of %q is corrupt: received %d bytes with sha256 %s, the trailer says %d bytes with sha256 %s; discard what was written and export again",
			ErrArchiveIntegrity, workspaceID, received, actual, trailer.GetSizeBytes(), trailer.GetSha256())
	}
	return trailer, nil
}

// ImportData extracts an archive read from r (tar + gzip or zstd, as ExportData makes it; unless
// WithArchiveFormat says which, the archive's first bytes do) into a directory of a workspace, running or stopped (/data unless
// WithDataPath says otherwise), and returns what the server received: the archive's size,
// SHA-256 and the number of entries extracted. The archive is streamed in 1 MiB messages of
// one ImportData call. Extraction is path-safe (no "..", absolute names or writes through
// symlinks; device nodes and FIFOs are refused) and nothing becomes visible before the whole
// archive arrived and checked out; when ctx ends first, the directory is left as it was.
//
// Errors are the gRPC errors of the call (decode them with AsError): a WithExpectedSHA256 that
// does not match is codes.InvalidArgument with reason CHECKSUM_MISMATCH, an archive with
// unsafe entries codes.FailedPrecondition with DATA_ARCHIVE_FAILED, one past the server's
// limits codes.ResourceExhausted with RESOURCE_LIMIT_EXCEEDED. An error reading r ends the import and is returned as it is.
func (c *Client) ImportData(ctx context.Context, workspaceID string, r io.Reader, opts ...ImportOption) (*workspacev1.ImportDataResponse, error) {
	header := &workspacev1.ImportDataRequest_Header{WorkspaceId: workspaceID}
	for _, opt := range opts {
		opt.applyImport(header)
	}
	// Canceling on a read error aborts the call, so the server discards what it received.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Workspaces.ImportData(ctx)
	if err != nil {
		return nil, err
	}
	if err := sendArchive(stream, header, r); err != nil {
		return nil, err
	}
	return stream.CloseAndRecv()
}

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// sendArchive sends the header, then r's bytes in chunks of importChunkBytes. The first chunk is
// read before the header, which names the format it shows when none was asked for. It stops
// without an error when the server ends the call early (Send returns io.EOF): CloseAndRecv then
// returns its status.
func sendArchive(stream grpc.ClientStreamingClient[workspacev1.ImportDataRequest, workspacev1.ImportDataResponse], header *workspacev1.ImportDataRequest_Header, r io.Reader) error {
	send := func(msg *workspacev1.ImportDataRequest) (ended bool, err error) {
		err = stream.Send(msg)
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		return false, err
	}
	chunk, readErr := readChunk(r)
	if header.GetFormat() == workspacev1.ArchiveFormat_ARCHIVE_FORMAT_UNSPECIFIED {
		header.Format = workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_GZIP
		if bytes.HasPrefix(chunk, zstdMagic) {
			header.Format = workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD
		}
	}
	if ended, err := send(&workspacev1.ImportDataRequest{Event: &workspacev1.ImportDataRequest_Header_{Header: header}}); ended || err != nil {
		return err
	}
	for {
		if len(chunk) > 0 {
			if ended, err := send(&workspacev1.ImportDataRequest{Event: &workspacev1.ImportDataRequest_Chunk{Chunk: chunk}}); ended || err != nil {
				return err
			}
		}
		if errors.Is(readErr, io.EOF) {
			return nil
		}
		if readErr != nil {
			return fmt.Errorf("berth: ImportData into %q: reading the archive: %w", header.GetWorkspaceId(), readErr)
		}
		chunk, readErr = readChunk(r)
	}
}

// readChunk reads the next importChunkBytes of r (fewer at its end, with io.EOF). Each chunk
// is a fresh buffer: grpc-go forbids changing a message once sent (stats handlers may read it
// later).
func readChunk(r io.Reader) ([]byte, error) {
	buf := make([]byte, importChunkBytes)
	n, err := io.ReadFull(r, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = io.EOF
	}
	return buf[:n], err
}
