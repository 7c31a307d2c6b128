"""Assertions shared by the synchronous and the asyncio tests."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from berth import workspace_pb2, workspace_service_pb2

LABEL_KEY = "berth-sdk-test"

# Phases of a CreateWorkspace stream, in the order the API promises.
PHASES = ("pulling", "pull_progress", "unpacking", "creating", "restoring", "ready")


def unique_id(prefix: str) -> str:
    """A workspace id no other test run uses, such as ``py-sync-1a2b3c4d``."""
    return f"{prefix}-{secrets.token_hex(4)}"


def check_create_progress(
    events: Sequence[workspace_service_pb2.CreateWorkspaceResponse],
    *,
    workspace_id: str,
    pulled: bool,
    restored: bool,
) -> workspace_pb2.Workspace:
    """Asserts that a CreateWorkspace stream is well-formed and returns the workspace of `ready`.

    Phases must come in API order and end with exactly one `ready`. With ``pulled``, all of
    pulling, pull_progress, unpacking and creating must appear, and pull bytes must grow to the
    image's total. With ``restored``, a `restoring` event must appear.
    """
    phases = [event.WhichOneof("event") for event in events]
    assert phases, "CreateWorkspace streamed no event"
    assert None not in phases, f"event without content in {phases}"
    ranks = [PHASES.index(str(phase)) for phase in phases]
    assert ranks == sorted(ranks), f"phases out of order: {phases}"
    assert phases[-1] == "ready" and phases.count("ready") == 1, f"not one final ready: {phases}"

    if pulled:
        for phase in ("pulling", "pull_progress", "unpacking", "creating"):
            assert phase in phases, f"no {phase} event in {phases}"
        pulling = next(event.pulling for event in events if event.HasField("pulling"))
        assert pulling.total_bytes > 0 and pulling.total_layers > 0, pulling
        progress = [event.pull_progress for event in events if event.HasField("pull_progress")]
        offsets = [p.offset_bytes for p in progress]
        assert offsets == sorted(offsets), f"pull bytes went backwards: {offsets}"
        assert offsets[0] < offsets[-1], f"pull bytes did not grow: {offsets}; {progress}"
        last = progress[-1]
        assert last.total_bytes > 0 and last.offset_bytes == last.total_bytes, last
        assert last.total_bytes == pulling.total_bytes, (last.total_bytes, pulling.total_bytes)
        for p in progress:
            assert p.offset_bytes == sum(layer.offset for layer in p.layers), p
            assert p.total_bytes == sum(layer.total for layer in p.layers), p
        assert len(last.layers) == pulling.total_layers
        assert all(
            layer.state in (workspace_pb2.LAYER_STATE_DONE, workspace_pb2.LAYER_STATE_EXISTS)
            for layer in last.layers
        ), last
        unpacked = [event.unpacking for event in events if event.HasField("unpacking")]
        done = [u.layers_done for u in unpacked]
        assert done == sorted(done) and done[-1] == unpacked[-1].total_layers, unpacked

    if restored:
        assert "restoring" in phases, f"no restoring event in {phases}"
    else:
        assert "restoring" not in phases, f"unexpected restoring event in {phases}"

    workspace = events[-1].ready.workspace
    assert workspace.workspace_id == workspace_id
    assert workspace.state == workspace_pb2.WORKSPACE_STATE_RUNNING, workspace
    return workspace
