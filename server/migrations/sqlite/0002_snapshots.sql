-- Snapshots name their committed containerd snapshot: unique per commit, so a deleted name can be
-- taken again while containerd still holds the old one.
ALTER TABLE snapshots ADD COLUMN snapshot_key TEXT NOT NULL DEFAULT '';

-- A snapshot operation (create, restore, delete) in flight, written before it changes anything in
-- containerd: after a crash the next boot reads it to finish or undo the operation, so neither
-- the workspace's filesystem nor a snapshot is lost or leaked. At most one per workspace (its
-- operations are serialized).
CREATE TABLE snapshot_operations (
    workspace_id TEXT PRIMARY KEY NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    -- JSON of the operation and the containerd keys it touches.
    detail       TEXT NOT NULL,
    create_time  TEXT NOT NULL
);
