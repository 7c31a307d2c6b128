package berth_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	berth "github.com/berth-dev/berth/sdk/go"
	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// The integration test runs against a live berth server:
//
//	BERTH_TEST_SERVER            server address, for example http://127.0.0.1:50700 (required)
//	BERTH_TEST_IMAGE_MULTILAYER  image to create workspaces from (required)
//	BERTH_TEST_SDK_NAMESPACE     containerd namespace of that server, for forget-image.sh (required)
//	TESTBED_DIR                  testbed whose containerd forget-image.sh talks to
//
// It fails, never skips, when they are missing.

// phaseRank is the order in which CreateWorkspace progress phases must arrive.
var phaseRank = map[string]int{
	berth.PhasePulling:      0,
	berth.PhasePullProgress: 1,
	berth.PhaseUnpacking:    2,
	berth.PhaseCreating:     3,
	berth.PhaseRestoring:    4,
	berth.PhaseReady:        5,
}

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: the Go SDK tests need a live berth server (run them through sdk/go/test.sh with the testbed's environment, see README.md)", name)
	}
	return v
}

func randomSuffix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// step runs fn as a subtest and stops the whole test when it fails, since later steps depend on it.
func step(t *testing.T, name string, fn func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, fn) {
		t.FailNow()
	}
}

// createAndCheck creates a workspace, asserting that the progress phases arrive in order, and
// returns the phases seen, the pull_progress events and the ready workspace.
func createAndCheck(ctx context.Context, t *testing.T, client *berth.Client, req *workspacev1.CreateWorkspaceRequest) ([]string, []*workspacev1.CreateWorkspaceResponse_PullProgress, *workspacev1.Workspace) {
	t.Helper()
	var (
		phases   []string
		progress []*workspacev1.CreateWorkspaceResponse_PullProgress
		last     = -1
	)
	ws, err := client.CreateWorkspace(ctx, req, func(ev *workspacev1.CreateWorkspaceResponse) {
		phase := berth.Phase(ev)
		rank, known := phaseRank[phase]
		if !known {
			t.Errorf("unknown progress event %v", ev)
			return
		}
		if rank < last {
			t.Errorf("phase %s arrived after %s", phase, phases[len(phases)-1])
		}
		last = rank
		if len(phases) == 0 || phases[len(phases)-1] != phase {
			phases = append(phases, phase)
		}
		if p := ev.GetPullProgress(); p != nil {
			progress = append(progress, p)
		}
		if p := ev.GetPulling(); p != nil && p.GetImage() == "" {
			t.Errorf("pulling event without an image: %v", p)
		}
	})
	if err != nil {
		code, reason, _ := berth.ErrorReason(err)
		t.Fatalf("CreateWorkspace(%s): %v (code %v, reason %q)", req.GetWorkspaceId(), err, code, reason)
	}
	t.Logf("CreateWorkspace(%s) phases %v, %d pull_progress events", req.GetWorkspaceId(), phases, len(progress))
	if ws.GetWorkspaceId() != req.GetWorkspaceId() || ws.GetState() != workspacev1.WorkspaceState_WORKSPACE_STATE_RUNNING {
		t.Fatalf("ready workspace = %s %v, want %s RUNNING", ws.GetWorkspaceId(), ws.GetState(), req.GetWorkspaceId())
	}
	return phases, progress, ws
}

func TestWorkspaceLifecycle(t *testing.T) {
	server := requireEnv(t, "BERTH_TEST_SERVER")
	image := requireEnv(t, "BERTH_TEST_IMAGE_MULTILAYER")
	namespace := requireEnv(t, "BERTH_TEST_SDK_NAMESPACE")

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	client, err := berth.Dial(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last registered first: the deletion below runs before the connection closes.
	t.Cleanup(func() { _ = client.Close() })

	suffix := randomSuffix(t)
	id := "go-" + suffix
	labels := map[string]string{"sdk": "go", "run": suffix}
	t.Cleanup(func() {
		// Leave nothing behind, whatever failed.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := client.Workspaces.DeleteWorkspace(ctx, &workspacev1.DeleteWorkspaceRequest{WorkspaceId: id})
		if err != nil && !berth.IsReason(err, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND) {
			t.Errorf("cleanup: DeleteWorkspace(%s): %v", id, err)
		}
	})

	step(t, "create", func(t *testing.T) {
		// Remove the image from the server's containerd so the pull really downloads.
		out, err := exec.CommandContext(ctx, "../../tests/testbed/forget-image.sh", namespace, image).CombinedOutput()
		if err != nil {
			t.Fatalf("forget-image.sh %s %s: %v\n%s", namespace, image, err, out)
		}
		phases, progress, ws := createAndCheck(ctx, t, client, &workspacev1.CreateWorkspaceRequest{
			WorkspaceId: id,
			Image:       image,
			Labels:      labels,
		})
		want := []string{berth.PhasePulling, berth.PhasePullProgress, berth.PhaseUnpacking, berth.PhaseCreating, berth.PhaseReady}
		if !slices.Equal(phases, want) {
			t.Errorf("phases = %v, want %v", phases, want)
		}
		if len(progress) < 2 {
			t.Fatalf("%d pull_progress events, want at least 2", len(progress))
		}
		layerOffsets := map[string]uint64{}
		for i, p := range progress {
			if i > 0 && p.GetOffsetBytes() < progress[i-1].GetOffsetBytes() {
				t.Errorf("offset_bytes went back from %d to %d", progress[i-1].GetOffsetBytes(), p.GetOffsetBytes())
			}
			for _, l := range p.GetLayers() {
				if l.GetOffset() < layerOffsets[l.GetDigest()] {
					t.Errorf("layer %s offset went back from %d to %d", l.GetDigest(), layerOffsets[l.GetDigest()], l.GetOffset())
				}
				layerOffsets[l.GetDigest()] = l.GetOffset()
			}
		}
		first, last := progress[0], progress[len(progress)-1]
		if last.GetTotalBytes() == 0 || last.GetOffsetBytes() != last.GetTotalBytes() {
			t.Errorf("last pull_progress = %d/%d bytes, want all of a non-zero total", last.GetOffsetBytes(), last.GetTotalBytes())
		}
		if first.GetOffsetBytes() >= last.GetOffsetBytes() {
			t.Errorf("pull bytes did not grow: first %d, last %d of %d", first.GetOffsetBytes(), last.GetOffsetBytes(), last.GetTotalBytes())
		}
		t.Logf("pull bytes %d -> %d of %d over %d events", first.GetOffsetBytes(), last.GetOffsetBytes(), last.GetTotalBytes(), len(progress))
		if ws.GetImageDigest() == "" || ws.GetLabels()["run"] != suffix {
			t.Errorf("ready workspace: digest %q labels %v", ws.GetImageDigest(), ws.GetLabels())
		}
	})

	step(t, "run a command", func(t *testing.T) {
		result, err := client.Run(ctx, id, "sh", "-c", "echo out; echo err >&2; exit 3")
		if err != nil {
			t.Fatal(err)
		}
		if string(result.Stdout) != "out\n" || string(result.Stderr) != "err\n" || result.ExitCode != 3 {
			t.Errorf("Run = stdout %q stderr %q exit %d, want \"out\\n\", \"err\\n\", 3", result.Stdout, result.Stderr, result.ExitCode)
		}
		var streamed bytes.Buffer
		req := &workspacev1.StartRequest{
			WorkspaceId: id,
			Process:     &workspacev1.ProcessConfig{Cmd: "sh", Args: []string{"-c", "kill -TERM $$"}},
		}
		end, err := client.Stream(ctx, req, &streamed, nil)
		if err != nil {
			t.Fatal(err)
		}
		if end.GetExitCode() != 143 || end.GetSignal() != workspacev1.Signal_SIGNAL_SIGTERM {
			t.Errorf("Stream end = exit %d signal %v, want 143 SIGTERM", end.GetExitCode(), end.GetSignal())
		}
		_, err = client.Run(ctx, id, "no-such-command")
		if !berth.IsReason(err, workspacev1.ErrorReason_EXECUTABLE_NOT_FOUND) {
			t.Errorf("Run of a missing command: %v, want EXECUTABLE_NOT_FOUND", err)
		}
	})

	step(t, "write and read files", func(t *testing.T) {
		notes := "héllo from the Go SDK\nline two\n"
		entry, err := client.WriteFile(ctx, id, "/data/sdk/notes.txt", []byte(notes), berth.WithCreateParents(), berth.WithFileMode(0o600))
		if err != nil {
			t.Fatal(err)
		}
		if entry.GetPath() != "/data/sdk/notes.txt" || entry.GetSizeBytes() != int64(len(notes)) || entry.GetMode() != 0o600 || entry.GetRevision() == "" {
			t.Errorf("WriteFile entry = %v", entry)
		}
		back, err := client.ReadFile(ctx, id, "/data/sdk/notes.txt")
		if err != nil || string(back) != notes {
			t.Errorf("ReadFile = %q, %v; want %q", back, err, notes)
		}
		// What a process inside the workspace sees.
		if res, err := client.Run(ctx, id, "cat", "/data/sdk/notes.txt"); err != nil || string(res.Stdout) != notes {
			t.Errorf("cat inside = %v, %v", res, err)
		}

		// Several 1 MiB WriteFile and ReadFile chunks.
		payload := make([]byte, 3<<20+123457)
		if _, err := rand.Read(payload); err != nil {
			t.Fatal(err)
		}
		if entry, err := client.WriteFile(ctx, id, "/data/sdk/payload.bin", payload); err != nil || entry.GetSizeBytes() != int64(len(payload)) {
			t.Fatalf("WriteFile of %d bytes = %v, %v", len(payload), entry, err)
		}
		back, err = client.ReadFile(ctx, id, "/data/sdk/payload.bin")
		if err != nil || !bytes.Equal(back, payload) {
			t.Fatalf("ReadFile = %d bytes, %v; want the %d bytes written", len(back), err, len(payload))
		}
		sum := sha256.Sum256(payload)
		if res, err := client.Run(ctx, id, "sha256sum", "/data/sdk/payload.bin"); err != nil || !strings.HasPrefix(string(res.Stdout), hex.EncodeToString(sum[:])+" ") {
			t.Errorf("sha256sum inside = %v, %v; want %x", res, err, sum)
		}

		// Missing files and directories.
		_, err = client.ReadFile(ctx, id, "/data/sdk/no-such-file")
		if code, reason, _ := berth.ErrorReason(err); code != codes.NotFound || reason != "PATH_NOT_FOUND" {
			t.Errorf("ReadFile of a missing file: %v, want NotFound PATH_NOT_FOUND", err)
		}
		_, err = client.WriteFile(ctx, id, "/data/no-such-dir/file.txt", []byte("x"))
		if code, reason, _ := berth.ErrorReason(err); code != codes.NotFound || reason != "PATH_NOT_FOUND" {
			t.Errorf("WriteFile into a missing directory: %v, want NotFound PATH_NOT_FOUND", err)
		}
	})

	step(t, "write with an expected revision", func(t *testing.T) {
		path := "/data/sdk/edited.txt"
		first, err := client.WriteFile(ctx, id, path, []byte("one\n"))
		if err != nil {
			t.Fatal(err)
		}
		second, err := client.WriteFile(ctx, id, path, []byte("two\n"), berth.WithExpectedRevision(first.GetRevision()))
		if err != nil {
			t.Fatal(err)
		}
		if second.GetRevision() == first.GetRevision() {
			t.Errorf("the revision did not change: %q", second.GetRevision())
		}
		_, err = client.WriteFile(ctx, id, path, []byte("stale\n"), berth.WithExpectedRevision(first.GetRevision()))
		if code, reason, _ := berth.ErrorReason(err); code != codes.Aborted || reason != "REVISION_MISMATCH" {
			t.Errorf("WriteFile with a stale revision: %v, want Aborted REVISION_MISMATCH", err)
		}
		// A change made inside the workspace changes the revision too.
		if res, err := client.Run(ctx, id, "sh", "-c", "echo three >> "+path); err != nil || res.ExitCode != 0 {
			t.Fatalf("append inside: %v, %v", res, err)
		}
		_, err = client.WriteFile(ctx, id, path, []byte("stale\n"), berth.WithExpectedRevision(second.GetRevision()))
		if !berth.IsReason(err, workspacev1.ErrorReason_REVISION_MISMATCH) {
			t.Errorf("WriteFile after a change inside: %v, want REVISION_MISMATCH", err)
		}
		if back, err := client.ReadFile(ctx, id, path); err != nil || string(back) != "two\nthree\n" {
			t.Errorf("after the refused writes: %q, %v; want \"two\\nthree\\n\"", back, err)
		}
	})

	step(t, "export and import data", func(t *testing.T) {
		shell := func(script string) string {
			t.Helper()
			res, err := client.Run(ctx, id, "sh", "-c", script)
			if err != nil || res.ExitCode != 0 {
				t.Fatalf("sh -c %q: %v, %+v", script, err, res)
			}
			return string(res.Stdout)
		}
		// A small tree made inside the workspace: a file with its own mode, a symlink, and in a
		// subdirectory 1.5 MB of random bytes (they do not compress: more than one 1 MiB chunk).
		shell("rm -rf /data/tree /data/copy && mkdir -p /data/tree/sub && printf 'hello\\n' > /data/tree/a.txt && " +
			"chmod 640 /data/tree/a.txt && ln -s a.txt /data/tree/link && head -c 1500000 /dev/urandom > /data/tree/sub/r.bin")
		// What a directory holds, as seen inside: names, types, modes, link targets and contents.
		manifest := func(dir string) string {
			return shell("cd " + dir + " && find . | sort && stat -c '%n %F %a' a.txt link sub sub/r.bin && readlink link && sha256sum a.txt sub/r.bin")
		}
		treeManifest := manifest("/data/tree")

		var archive bytes.Buffer
		trailer, err := client.ExportData(ctx, id, &archive, berth.WithDataPath("/data/tree"))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(archive.Bytes())
		if trailer.GetSizeBytes() != int64(archive.Len()) || trailer.GetSha256() != hex.EncodeToString(sum[:]) || trailer.GetEntryCount() != 4 {
			t.Errorf("trailer = %v; received %d bytes with sha256 %x, want 4 entries", trailer, archive.Len(), sum)
		}
		// The archive decodes: names relative to the directory, the symlink kept as a link.
		gz, err := gzip.NewReader(bytes.NewReader(archive.Bytes()))
		if err != nil {
			t.Fatalf("the export is not gzip: %v", err)
		}
		entries := map[string]*tar.Header{}
		contents := map[string][]byte{}
		for tr := tar.NewReader(gz); ; {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("reading the exported tar: %v", err)
			}
			name := strings.TrimSuffix(hdr.Name, "/")
			entries[name] = hdr
			if contents[name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
		if len(entries) != 4 {
			t.Errorf("the archive holds %v, want a.txt, link, sub, sub/r.bin", slices.Sorted(maps.Keys(entries)))
		}
		if h := entries["a.txt"]; h == nil || h.Typeflag != tar.TypeReg || h.Mode&0o7777 != 0o640 || string(contents["a.txt"]) != "hello\n" {
			t.Errorf("a.txt in the archive: %+v %q", h, contents["a.txt"])
		}
		if h := entries["link"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "a.txt" {
			t.Errorf("link in the archive: %+v, want a symlink to a.txt", h)
		}
		if h := entries["sub"]; h == nil || h.Typeflag != tar.TypeDir {
			t.Errorf("sub in the archive: %+v, want a directory", h)
		}
		binSum := sha256.Sum256(contents["sub/r.bin"])
		if inside := shell("sha256sum /data/tree/sub/r.bin"); !strings.HasPrefix(inside, hex.EncodeToString(binSum[:])+" ") {
			t.Errorf("sub/r.bin in the archive has sha256 %x, inside %s", binSum, inside)
		}

		// Import into another directory (created by the import): the same tree inside.
		resp, err := client.ImportData(ctx, id, bytes.NewReader(archive.Bytes()), berth.WithDataPath("/data/copy"), berth.WithExpectedSHA256(trailer.GetSha256()))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetSizeBytes() != int64(archive.Len()) || resp.GetSha256() != trailer.GetSha256() || resp.GetEntryCount() != 4 {
			t.Errorf("ImportData = %v, want the archive's size and sha256 and 4 entries", resp)
		}
		if got := manifest("/data/copy"); got != treeManifest {
			t.Errorf("the imported tree differs:\n%s\nwant\n%s", got, treeManifest)
		}

		// zstd both ways, with replace: the directory ends up holding exactly the archive.
		var zstdArchive bytes.Buffer
		zstdFormat := berth.WithArchiveFormat(workspacev1.ArchiveFormat_ARCHIVE_FORMAT_TAR_ZSTD)
		if _, err := client.ExportData(ctx, id, &zstdArchive, berth.WithDataPath("/data/tree"), zstdFormat); err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(zstdArchive.Bytes(), []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Errorf("the zstd export starts with % x, not a zstd frame", zstdArchive.Bytes()[:min(4, zstdArchive.Len())])
		}
		shell("echo stray > /data/copy/stray.txt && rm /data/copy/a.txt")
		// The format is read from the archive's first bytes.
		if _, err := client.ImportData(ctx, id, &zstdArchive, berth.WithDataPath("/data/copy"), berth.WithReplace()); err != nil {
			t.Fatal(err)
		}
		if got := manifest("/data/copy"); got != treeManifest {
			t.Errorf("after the import with replace:\n%s\nwant\n%s", got, treeManifest)
		}

		// A wrong sha256 fails before anything becomes visible.
		shell("echo marker > /data/copy/marker")
		_, err = client.ImportData(ctx, id, bytes.NewReader(archive.Bytes()), berth.WithDataPath("/data/copy"), berth.WithReplace(),
			berth.WithExpectedSHA256(strings.Repeat("0", 64)))
		if code, reason, _ := berth.ErrorReason(err); code != codes.InvalidArgument || reason != "CHECKSUM_MISMATCH" {
			t.Errorf("ImportData with a wrong sha256: %v, want InvalidArgument CHECKSUM_MISMATCH", err)
		}
		if got := shell("cat /data/copy/marker"); got != "marker\n" {
			t.Errorf("after the refused import the marker reads %q", got)
		}

		// Exporting a missing directory fails with its reason.
		_, err = client.ExportData(ctx, id, io.Discard, berth.WithDataPath("/data/no-such-dir"))
		if !berth.IsReason(err, workspacev1.ErrorReason_PATH_NOT_FOUND) {
			t.Errorf("ExportData of a missing directory: %v, want PATH_NOT_FOUND", err)
		}
	})

	step(t, "get", func(t *testing.T) {
		resp, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: id})
		if err != nil {
			t.Fatal(err)
		}
		ws := resp.GetWorkspace()
		if ws.GetWorkspaceId() != id || ws.GetState() != workspacev1.WorkspaceState_WORKSPACE_STATE_RUNNING ||
			ws.GetDesiredState() != workspacev1.DesiredState_DESIRED_STATE_RUNNING {
			t.Errorf("GetWorkspace = %s %v desired %v", ws.GetWorkspaceId(), ws.GetState(), ws.GetDesiredState())
		}
		if ws.GetLabels()["sdk"] != "go" || ws.GetLabels()["run"] != suffix {
			t.Errorf("labels = %v", ws.GetLabels())
		}
	})

	// The test server runs with --network none: the policy in force is NONE, there is no
	// address, and a policy that needs the network is refused, which shows the SDK sends it.
	step(t, "network", func(t *testing.T) {
		resp, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: id})
		if err != nil {
			t.Fatal(err)
		}
		net := resp.GetWorkspace().GetNetwork()
		if net.GetPolicy().GetMode() != workspacev1.NetworkMode_NETWORK_MODE_NONE || net.GetAddress() != "" {
			t.Errorf("network = %v %q, want NETWORK_MODE_NONE without an address", net.GetPolicy().GetMode(), net.GetAddress())
		}
		_, err = client.CreateWorkspace(ctx, &workspacev1.CreateWorkspaceRequest{
			WorkspaceId: id + "-net",
			Image:       image,
			NetworkPolicy: &workspacev1.NetworkPolicy{
				Mode:  workspacev1.NetworkMode_NETWORK_MODE_ALLOWLIST,
				Cidrs: []string{"203.0.113.0/24"},
			},
		}, nil)
		if code, reason, _ := berth.ErrorReason(err); code != codes.FailedPrecondition || reason != "NETWORK_DISABLED" {
			t.Errorf("create with an ALLOWLIST: %v, want FailedPrecondition NETWORK_DISABLED", err)
		}
	})

	step(t, "list by label", func(t *testing.T) {
		list := func(selector string) []string {
			var ids []string
			req := &workspacev1.ListWorkspacesRequest{LabelSelector: selector}
			for {
				resp, err := client.Workspaces.ListWorkspaces(ctx, req)
				if err != nil {
					t.Fatalf("ListWorkspaces(%q): %v", selector, err)
				}
				for _, ws := range resp.GetWorkspaces() {
					ids = append(ids, ws.GetWorkspaceId())
				}
				if resp.GetNextPageToken() == "" {
					return ids
				}
				req.PageToken = resp.GetNextPageToken()
			}
		}
		if got := list("sdk=go,run=" + suffix); !slices.Equal(got, []string{id}) {
			t.Errorf("list run=%s = %v, want [%s]", suffix, got, id)
		}
		if got := list("run=other-" + suffix); slices.Contains(got, id) {
			t.Errorf("list run=other-%s = %v, must not contain %s", suffix, got, id)
		}
	})

	step(t, "stop", func(t *testing.T) {
		resp, err := client.Workspaces.StopWorkspace(ctx, &workspacev1.StopWorkspaceRequest{WorkspaceId: id, Timeout: durationpb.New(0)})
		if err != nil {
			t.Fatal(err)
		}
		if s := resp.GetWorkspace().GetState(); s != workspacev1.WorkspaceState_WORKSPACE_STATE_STOPPED {
			t.Errorf("state after stop = %v", s)
		}
		get, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: id})
		if err != nil {
			t.Fatal(err)
		}
		if s := get.GetWorkspace().GetDesiredState(); s != workspacev1.DesiredState_DESIRED_STATE_STOPPED {
			t.Errorf("desired state after stop = %v", s)
		}
	})

	step(t, "start", func(t *testing.T) {
		resp, err := client.Workspaces.StartWorkspace(ctx, &workspacev1.StartWorkspaceRequest{WorkspaceId: id})
		if err != nil {
			t.Fatal(err)
		}
		if s := resp.GetWorkspace().GetState(); s != workspacev1.WorkspaceState_WORKSPACE_STATE_RUNNING {
			t.Errorf("state after start = %v", s)
		}
	})

	step(t, "delete with preserve_data then create with restore_data", func(t *testing.T) {
		if _, err := client.Workspaces.DeleteWorkspace(ctx, &workspacev1.DeleteWorkspaceRequest{WorkspaceId: id, PreserveData: true}); err != nil {
			t.Fatal(err)
		}
		_, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: id})
		if !berth.IsReason(err, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND) {
			t.Fatalf("GetWorkspace after delete: %v, want WORKSPACE_NOT_FOUND", err)
		}
		phases, _, ws := createAndCheck(ctx, t, client, &workspacev1.CreateWorkspaceRequest{
			WorkspaceId: id,
			Image:       image,
			Labels:      labels,
			RestoreData: true,
		})
		if !slices.Contains(phases, berth.PhaseRestoring) {
			t.Errorf("phases = %v, want a restoring event", phases)
		}
		if ws.GetHasPreservedData() {
			t.Error("ready workspace still has preserved data after restore_data")
		}
	})

	step(t, "delete", func(t *testing.T) {
		if _, err := client.Workspaces.DeleteWorkspace(ctx, &workspacev1.DeleteWorkspaceRequest{WorkspaceId: id}); err != nil {
			t.Fatal(err)
		}
	})

	step(t, "failing call", func(t *testing.T) {
		missing := "go-missing-" + suffix
		_, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: missing})
		if err == nil {
			t.Fatalf("GetWorkspace(%s) succeeded", missing)
		}
		code, reason, ok := berth.ErrorReason(err)
		if !ok || code != codes.NotFound || reason != "WORKSPACE_NOT_FOUND" {
			t.Fatalf("ErrorReason(%v) = %v, %q, %v; want NotFound, WORKSPACE_NOT_FOUND", err, code, reason, ok)
		}
		be, _ := berth.AsError(err)
		if be.ErrorReason() != workspacev1.ErrorReason_WORKSPACE_NOT_FOUND || be.Message == "" {
			t.Errorf("AsError = %+v", be)
		}
		t.Logf("failing call: %v (metadata %v)", be, be.Metadata)
	})
}
