-- The image a snapshot was taken on (`reference@digest`, like versions.image): restoring a
-- snapshot taken before an image change moves the workspace back onto that image. Snapshots
-- taken before this column existed get the image of the version that took them.
ALTER TABLE snapshots ADD COLUMN image TEXT NOT NULL DEFAULT '';
UPDATE snapshots SET image = COALESCE(
    (SELECT versions.image FROM versions
     WHERE versions.workspace_id = snapshots.workspace_id AND versions.version = snapshots.version),
    '');
