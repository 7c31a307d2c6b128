// Command berth-example creates a berth workspace, prints its creation progress, its final
// state and its network, runs a command in it, writes a file into it and reads it back, takes a
// snapshot, changes the file and restores the snapshot (the file is back), exports /data to an
// archive file and imports it again into /data/roundtrip, and optionally deletes the workspace
// again.
//
//	go run . -server 127.0.0.1:50051 -id my-bot -image docker.io/library/debian:bookworm
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"time"

	berth "github.com/berth-dev/berth/sdk/go"
	workspacev1 "github.com/berth-dev/berth/sdk/go/berth/workspace/v1"
)

// labelFlags collects repeated -label key=value flags.
type labelFlags map[string]string

func (l labelFlags) String() string { return fmt.Sprint(map[string]string(l)) }

func (l labelFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	l[k] = v
	return nil
}

func main() {
	defaultServer := os.Getenv("BERTH_SERVER")
	if defaultServer == "" {
		defaultServer = berth.DefaultAddress
	}
	labels := labelFlags{}
	server := flag.String("server", defaultServer, "berth server address (host:port or http://host:port; env BERTH_SERVER)")
	id := flag.String("id", "", "workspace id (default: example-<random>)")
	image := flag.String("image", "", "image reference (default: the server's --default-image)")
	restore := flag.Bool("restore-data", false, "restore the /data preserved by an earlier delete")
	del := flag.Bool("delete", false, "delete the workspace again at the end")
	archive := flag.String("archive", "", "file to export /data into (default: <temp dir>/<id>-data.tar.gz)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Var(labels, "label", "label key=value (repeatable)")
	flag.Parse()

	if *id == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		*id = "example-" + hex.EncodeToString(b)
	}
	if *archive == "" {
		*archive = filepath.Join(os.TempDir(), *id+"-data.tar.gz")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	if err := run(ctx, *server, *id, *image, labels, *restore, *del, *archive); err != nil {
		if e, ok := berth.AsError(err); ok {
			// code, reason and message of a failed call, on one line
			fmt.Fprintf(os.Stderr, "error: code=%s reason=%s message=%s\n", e.Code, e.Reason, e.Message)
		} else {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, server, id, image string, labels map[string]string, restore, del bool, archive string) (err error) {
	client, err := berth.Dial(ctx, server)
	if err != nil {
		return err
	}
	defer client.Close()

	if del {
		// Delete even when creation failed half-way, so nothing is left behind.
		defer func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_, derr := client.Workspaces.DeleteWorkspace(ctx, &workspacev1.DeleteWorkspaceRequest{WorkspaceId: id})
			switch {
			case derr == nil:
				fmt.Printf("deleted %s\n", id)
			case berth.IsReason(derr, workspacev1.ErrorReason_WORKSPACE_NOT_FOUND):
			case err == nil:
				err = derr
			}
		}()
	}

	fmt.Printf("creating workspace %s on %s\n", id, server)
	ws, err := client.CreateWorkspace(ctx, &workspacev1.CreateWorkspaceRequest{
		WorkspaceId: id,
		Image:       image,
		Labels:      labels,
		RestoreData: restore,
	}, printProgress)
	if err != nil {
		return err
	}

	// The final state, as the server reports it now.
	resp, err := client.Workspaces.GetWorkspace(ctx, &workspacev1.GetWorkspaceRequest{WorkspaceId: ws.GetWorkspaceId()})
	if err != nil {
		return err
	}
	ws = resp.GetWorkspace()
	fmt.Printf("workspace %s: state=%s image=%s digest=%s init_pid=%d\n",
		ws.GetWorkspaceId(), stateName(ws.GetState()), ws.GetImage(), ws.GetImageDigest(), ws.GetInitPid())
	fmt.Printf("network: %s\n", describeNetwork(ws.GetNetwork()))

	// Run a command in it: its output and exit code.
	res, err := client.Run(ctx, ws.GetWorkspaceId(), "uname", "-s")
	if err != nil {
		return err
	}
	fmt.Printf("uname -s: %s (exit %d)\n", strings.TrimSpace(string(res.Stdout)), res.ExitCode)

	// Write a file into its /data and read it back.
	const path = "/data/hello.txt"
	entry, err := client.WriteFile(ctx, ws.GetWorkspaceId(), path, []byte("hello from "+ws.GetWorkspaceId()+"\n"))
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%d bytes, revision %s)\n", entry.GetPath(), entry.GetSizeBytes(), entry.GetRevision())
	content, err := client.ReadFile(ctx, ws.GetWorkspaceId(), path)
	if err != nil {
		return err
	}
	fmt.Printf("read %s: %s\n", path, strings.TrimSpace(string(content)))

	if err := snapshotAndRestore(ctx, client, ws.GetWorkspaceId(), path); err != nil {
		return err
	}
	return exportAndImport(ctx, client, ws.GetWorkspaceId(), path, archive)
}

// snapshotAndRestore takes a snapshot (the whole filesystem: installed software and /data),
// changes the file and restores the snapshot: the change is gone. A running workspace restarts
// for both.
func snapshotAndRestore(ctx context.Context, client *berth.Client, id, file string) error {
	snap, err := client.Workspaces.CreateSnapshot(ctx, &workspacev1.CreateSnapshotRequest{WorkspaceId: id, Name: "before-change"})
	if err != nil {
		return err
	}
	s := snap.GetSnapshot()
	fmt.Printf("snapshot %s: version %d, %d bytes\n", s.GetName(), s.GetVersion(), s.GetSizeBytes())
	if _, err := client.WriteFile(ctx, id, file, []byte("changed after the snapshot\n")); err != nil {
		return err
	}
	if err := printFile(ctx, client, id, "changed "+file, file); err != nil {
		return err
	}
	restored, err := client.Workspaces.RestoreSnapshot(ctx, &workspacev1.RestoreSnapshotRequest{
		WorkspaceId: id,
		Target:      &workspacev1.RestoreSnapshotRequest_SnapshotName{SnapshotName: s.GetName()},
	})
	if err != nil {
		return err
	}
	fmt.Printf("restored %s: version %d\n", s.GetName(), restored.GetVersion().GetVersion())
	return printFile(ctx, client, id, "after restore "+file, file)
}

// exportAndImport exports /data into the archive file (ExportData checks the bytes against the
// stream's trailer), then imports that file into /data/roundtrip, checked against the export's
// SHA-256.
func exportAndImport(ctx context.Context, client *berth.Client, id, file, archive string) error {
	out, err := os.Create(archive)
	if err != nil {
		return err
	}
	trailer, err := client.ExportData(ctx, id, out)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Printf("exported /data to %s: %d bytes, %d entries, sha256 %s\n",
		archive, trailer.GetSizeBytes(), trailer.GetEntryCount(), trailer.GetSha256())

	in, err := os.Open(archive)
	if err != nil {
		return err
	}
	defer in.Close()
	const target = "/data/roundtrip"
	imported, err := client.ImportData(ctx, id, in, berth.WithDataPath(target), berth.WithExpectedSHA256(trailer.GetSha256()))
	if err != nil {
		return err
	}
	fmt.Printf("imported %s into %s: %d bytes, %d entries, sha256 %s\n",
		archive, target, imported.GetSizeBytes(), imported.GetEntryCount(), imported.GetSha256())
	copied := path.Join(target, path.Base(file))
	return printFile(ctx, client, id, "read "+copied, copied)
}

// printFile prints "LABEL: CONTENT" with the file's content read from the workspace.
func printFile(ctx context.Context, client *berth.Client, id, label, file string) error {
	content, err := client.ReadFile(ctx, id, file)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", label, strings.TrimSpace(string(content)))
	return nil
}

// printProgress prints one line per progress event: the phase and, where it has them, bytes.
func printProgress(ev *workspacev1.CreateWorkspaceResponse) {
	phase := berth.Phase(ev)
	switch {
	case ev.GetPulling() != nil:
		p := ev.GetPulling()
		fmt.Printf("%-13s image=%s layers=%d total_bytes=%d\n", phase, p.GetImage(), p.GetTotalLayers(), p.GetTotalBytes())
	case ev.GetPullProgress() != nil:
		p := ev.GetPullProgress()
		fmt.Printf("%-13s %d/%d bytes (%s)\n", phase, p.GetOffsetBytes(), p.GetTotalBytes(), percent(p.GetOffsetBytes(), p.GetTotalBytes()))
	case ev.GetUnpacking() != nil:
		u := ev.GetUnpacking()
		fmt.Printf("%-13s %d/%d layers\n", phase, u.GetLayersDone(), u.GetTotalLayers())
	case ev.GetRestoring() != nil:
		r := ev.GetRestoring()
		fmt.Printf("%-13s %d/%d bytes\n", phase, r.GetBytesDone(), r.GetTotalBytes())
	case ev.GetReady() != nil:
		fmt.Printf("%-13s state=%s\n", phase, stateName(ev.GetReady().GetWorkspace().GetState()))
	default:
		fmt.Println(phase)
	}
}

func percent(done, total uint64) string {
	if total == 0 {
		return "?%"
	}
	return fmt.Sprintf("%d%%", done*100/total)
}

// describeNetwork says "OPEN, 10.231.0.2/16 via 10.231.0.1": the egress policy in force and the
// workspace's address on berth's bridge, or "NONE, loopback only" when it has no network
// interface but lo.
func describeNetwork(net *workspacev1.WorkspaceNetwork) string {
	mode := strings.TrimPrefix(net.GetPolicy().GetMode().String(), "NETWORK_MODE_")
	if net.GetAddress() == "" {
		return mode + ", loopback only"
	}
	return fmt.Sprintf("%s, %s/%d via %s", mode, net.GetAddress(), net.GetPrefixLength(), net.GetGateway())
}

// stateName turns WORKSPACE_STATE_RUNNING into RUNNING.
func stateName(s workspacev1.WorkspaceState) string {
	return strings.TrimPrefix(s.String(), "WORKSPACE_STATE_")
}
