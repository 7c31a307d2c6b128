-- Workspaces: what containerd cannot remember (desired state, spec, versions, history).
CREATE TABLE workspaces (
    id              TEXT PRIMARY KEY NOT NULL,
    state           TEXT NOT NULL,
    desired_state   TEXT NOT NULL,
    -- JSON of the create spec (image, labels, env, resources, cdi devices).
    spec            TEXT NOT NULL,
    image_digest    TEXT NOT NULL DEFAULT '',
    snapshot_key    TEXT NOT NULL DEFAULT '',
    current_version INTEGER NOT NULL DEFAULT 0,
    failure_reason  TEXT NOT NULL DEFAULT '',
    failure_message TEXT NOT NULL DEFAULT '',
    create_time     TEXT NOT NULL,
    update_time     TEXT NOT NULL,
    last_start_time TEXT,
    last_stop_time  TEXT
);

-- Labels duplicated as rows so label selectors filter in SQL.
CREATE TABLE workspace_labels (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    value        TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
);
CREATE INDEX workspace_labels_by_pair ON workspace_labels (key, value);

-- Versions: every change of a workspace's root filesystem lineage.
CREATE TABLE versions (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    snapshot_name TEXT NOT NULL DEFAULT '',
    image         TEXT NOT NULL DEFAULT '',
    create_time   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, version)
);

-- Snapshots: named, committed states of a workspace.
CREATE TABLE snapshots (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    parent       TEXT NOT NULL DEFAULT '',
    version      INTEGER NOT NULL,
    source       TEXT NOT NULL,
    labels       TEXT NOT NULL DEFAULT '{}',
    create_time  TEXT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

-- Events: lifecycle history, kept after the workspace is gone.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    kind         TEXT NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    detail       TEXT NOT NULL DEFAULT '{}',
    event_time   TEXT NOT NULL
);
CREATE INDEX events_by_workspace ON events (workspace_id, seq);

-- Request ids: make retried creates safe.
CREATE TABLE requests (
    request_id   TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT NOT NULL,
    method       TEXT NOT NULL,
    spec         TEXT NOT NULL,
    create_time  TEXT NOT NULL
);
