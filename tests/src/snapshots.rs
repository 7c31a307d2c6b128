//! Helpers for snapshot, version and image-change tests: the RPCs as one-liners, the state a
//! bot leaves (a program under /usr/local/bin and files in /data) written and read back, and
//! `ctr snapshots ls` compared with what berth lists.

use std::collections::{BTreeMap, BTreeSet};

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateSnapshotRequest, CreateWorkspaceRequest, DeleteSnapshotRequest, DeleteWorkspaceRequest, GetWorkspaceRequest,
    ListSnapshotsRequest, ListVersionsRequest, RestoreSnapshotRequest, Snapshot, SnapshotSource, Version, Workspace,
    restore_snapshot_request::Target,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::{BerthServer, Testbed};

pub type Client = WorkspaceServiceClient<Channel>;

pub async fn create_workspace(client: &mut Client, id: &str, image: &str) -> Workspace {
    let request = CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() };
    let mut stream = client.create_workspace(request).await.unwrap().into_inner();
    let mut ready = None;
    while let Some(item) = stream.next().await {
        if let Some(CreateEvent::Ready(event)) = item.unwrap().event {
            ready = event.workspace;
        }
    }
    ready.unwrap_or_else(|| panic!("the create of {id} ended without ready"))
}

pub async fn get(client: &mut Client, id: &str) -> Workspace {
    let request = GetWorkspaceRequest { workspace_id: id.to_owned() };
    client.get_workspace(request).await.unwrap().into_inner().workspace.unwrap()
}

pub async fn snapshot(client: &mut Client, id: &str, name: &str) -> Result<Snapshot, tonic::Status> {
    let request = CreateSnapshotRequest { workspace_id: id.to_owned(), name: name.to_owned(), ..Default::default() };
    Ok(client.create_snapshot(request).await?.into_inner().snapshot.unwrap())
}

pub async fn restore(client: &mut Client, id: &str, target: Target) -> Result<(Workspace, Version), tonic::Status> {
    let request = RestoreSnapshotRequest { workspace_id: id.to_owned(), target: Some(target) };
    let response = client.restore_snapshot(request).await?.into_inner();
    Ok((response.workspace.unwrap(), response.version.unwrap()))
}

pub async fn delete_snapshot(client: &mut Client, id: &str, name: &str) -> Result<(), tonic::Status> {
    let request = DeleteSnapshotRequest { workspace_id: id.to_owned(), name: name.to_owned() };
    client.delete_snapshot(request).await.map(|_| ())
}

/// The whole lineage, through pages of `page_size`.
pub async fn lineage(client: &mut Client, id: &str, page_size: i32) -> Vec<Snapshot> {
    let mut snapshots = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListSnapshotsRequest { workspace_id: id.to_owned(), page_size, page_token };
        let page = client.list_snapshots(request).await.unwrap().into_inner();
        assert!(page.snapshots.len() <= page_size as usize, "a page holds at most page_size entries");
        snapshots.extend(page.snapshots);
        if page.next_page_token.is_empty() {
            return snapshots;
        }
        page_token = page.next_page_token;
    }
}

pub fn user_names(snapshots: &[Snapshot]) -> Vec<&str> {
    snapshots
        .iter()
        .filter(|snapshot| snapshot.source() == SnapshotSource::User)
        .map(|snapshot| snapshot.name.as_str())
        .collect()
}

pub async fn versions(client: &mut Client, id: &str) -> (i64, Vec<Version>) {
    let request = ListVersionsRequest { workspace_id: id.to_owned(), page_size: 2, page_token: String::new() };
    let mut page = client.list_versions(request).await.unwrap().into_inner();
    let mut versions = std::mem::take(&mut page.versions);
    while !page.next_page_token.is_empty() {
        let request =
            ListVersionsRequest { workspace_id: id.to_owned(), page_size: 2, page_token: page.next_page_token };
        page = client.list_versions(request).await.unwrap().into_inner();
        versions.append(&mut page.versions);
    }
    (page.current_version, versions)
}

/// Installs `hello` under /usr/local/bin printing `tag`, and writes `tag` into /data/notes.txt.
pub fn write_state(testbed: &Testbed, namespace: &str, id: &str, tag: &str) {
    let script = format!(
        "mkdir -p /usr/local/bin && printf '#!/bin/sh\\necho hello {tag}\\n' >/usr/local/bin/hello && \
         chmod +x /usr/local/bin/hello && echo {tag} >/data/notes.txt && echo {tag} >/data/{tag}.only"
    );
    testbed.exec(namespace, id, &["sh", "-c", &script]);
}

/// What the installed program prints and /data holds: (hello's output, notes.txt, *.only files).
pub fn read_state(testbed: &Testbed, namespace: &str, id: &str) -> (String, String, String) {
    let hello = testbed.exec_output(namespace, id, None, &["/usr/local/bin/hello"]).stdout.trim().to_owned();
    let notes = testbed.exec(namespace, id, &["sh", "-c", "cat /data/notes.txt 2>/dev/null || true"]).trim().to_owned();
    let only = testbed.exec(namespace, id, &["sh", "-c", "cd /data && ls *.only 2>/dev/null | tr '\\n' ' '"]);
    (hello, notes, only.trim().to_owned())
}

pub fn expect_state(testbed: &Testbed, namespace: &str, id: &str, tag: &str, only: &str) {
    assert_eq!(
        read_state(testbed, namespace, id),
        (format!("hello {tag}"), tag.to_owned(), only.to_owned()),
        "software and /data of {id} are those of {tag}"
    );
}

/// One row of `ctr snapshots ls`.
#[derive(Debug)]
pub struct CtrSnapshot {
    pub key: String,
    pub parent: String,
    pub kind: String,
}

pub fn ctr_snapshots(testbed: &Testbed, namespace: &str) -> Vec<CtrSnapshot> {
    testbed
        .ctr(namespace, &["snapshots", "ls"])
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [key, parent, kind] => {
                    CtrSnapshot { key: (*key).to_owned(), parent: (*parent).to_owned(), kind: (*kind).to_owned() }
                }
                [key, kind] => CtrSnapshot { key: (*key).to_owned(), parent: String::new(), kind: (*kind).to_owned() },
                _ => panic!("unexpected ctr snapshots ls line {line:?}"),
            }
        })
        .collect()
}

pub fn ctr_labels(testbed: &Testbed, namespace: &str, key: &str) -> BTreeMap<String, String> {
    let info: serde_json::Value = serde_json::from_str(&testbed.ctr(namespace, &["snapshots", "info", key])).unwrap();
    info["Labels"]
        .as_object()
        .map(|labels| labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
        .unwrap_or_default()
}

/// `ctr snapshots ls` of the namespace holds exactly the image chain, the snapshots berth lists
/// and one writable layer per workspace, built on the snapshot (or image layer) berth says.
pub async fn assert_exact(testbed: &Testbed, server: &BerthServer, client: &mut Client, ids: &[&str]) {
    let rows = ctr_snapshots(testbed, &server.namespace);
    let mut image_layers = BTreeSet::new();
    let mut expected_user = BTreeSet::new();
    for id in ids {
        for snapshot in lineage(client, id, 1000).await {
            match snapshot.source() {
                SnapshotSource::Image => {
                    image_layers.insert(snapshot.name);
                }
                _ => assert!(expected_user.insert((id.to_string(), snapshot.name)), "listed twice"),
            }
        }
    }
    let mut found_user = BTreeSet::new();
    let mut layers = BTreeMap::new();
    for row in &rows {
        match row.kind.as_str() {
            "Committed" if image_layers.contains(&row.key) => {}
            "Committed" => {
                let labels = ctr_labels(testbed, &server.namespace, &row.key);
                if labels.is_empty() && row.key.starts_with("sha256:") {
                    // A layer of an image no workspace runs on any more (or one pulled for an
                    // image change that was undone): the image holds it, not berth.
                    continue;
                }
                let owner = labels.get("berth.workspace.id").cloned().unwrap_or_default();
                let name = labels.get("berth.snapshot").cloned().unwrap_or_default();
                assert!(found_user.insert((owner, name)), "{row:?} duplicates a snapshot; rows: {rows:?}");
                assert!(labels.contains_key("containerd.io/gc.root"), "{row:?} is protected from GC: {labels:?}");
            }
            "Active" => {
                let labels = ctr_labels(testbed, &server.namespace, &row.key);
                let owner = labels.get("berth.workspace.id").cloned().unwrap_or_default();
                assert!(layers.insert(owner, row).is_none(), "one writable layer per workspace: {rows:?}");
            }
            other => panic!("unexpected {other} snapshot {row:?}"),
        }
    }
    assert_eq!(found_user, expected_user, "committed snapshots in containerd = listed snapshots; rows {rows:?}");
    let committed_images: BTreeSet<_> =
        rows.iter().filter(|row| image_layers.contains(&row.key)).map(|row| row.key.clone()).collect();
    assert_eq!(committed_images, image_layers, "every listed image layer is in containerd");
    assert_eq!(layers.keys().map(String::as_str).collect::<Vec<_>>(), ids, "one writable layer per workspace");
    for id in ids {
        let layer = layers[*id];
        let base_labels = if image_layers.contains(&layer.parent) {
            BTreeMap::new()
        } else {
            ctr_labels(testbed, &server.namespace, &layer.parent)
        };
        assert_eq!(
            base_labels.get("berth.workspace.id").map(String::as_str).unwrap_or(id),
            *id,
            "the layer of {id} is built on its own snapshot"
        );
    }
    let leases = testbed.ctr(&server.namespace, &["leases", "ls", "-q"]);
    assert!(!leases.lines().any(|lease| lease.starts_with("berth-")), "no berth lease is left: {leases}");
}

pub async fn delete_workspace(client: &mut Client, id: &str) {
    let request = DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data: false };
    client.delete_workspace(request).await.unwrap();
}
