//! Preserve, restore and reset against a hostile /data over the real containerd: a 10 TiB
//! sparse file and a hard-link pair go through DeleteWorkspace(preserve_data) and
//! CreateWorkspace(restore_data) in seconds, still sparse and still linked; a tree deeper than
//! berth archives fails the preserve cleanly (berth keeps serving, the workspace keeps running)
//! and ResetData still empties it.

use std::time::{Duration, Instant};

use berth_api::v1::create_workspace_response::Event;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CreateWorkspaceRequest, CreateWorkspaceResponse, DeleteWorkspaceRequest, GetWorkspaceRequest, ResetDataRequest,
    WorkspaceState,
};
use berth_e2e::{BerthServer, Testbed, error_reason};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

type Client = WorkspaceServiceClient<Channel>;

const TIB: u64 = 1 << 40;

/// Runs a create to its end and checks it ended with Ready.
async fn create(client: &mut Client, id: &str, image: &str, restore_data: bool) {
    let request = CreateWorkspaceRequest {
        workspace_id: id.to_owned(),
        image: image.to_owned(),
        restore_data,
        ..Default::default()
    };
    let mut stream = client.create_workspace(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(item) = stream.next().await {
        let CreateWorkspaceResponse { event } = item.unwrap_or_else(|status| panic!("create {id}: {status:?}"));
        last = event;
    }
    assert!(matches!(last, Some(Event::Ready(_))), "create {id} ended with {last:?}");
}

async fn delete(client: &mut Client, id: &str, preserve_data: bool) -> Result<(), tonic::Status> {
    client.delete_workspace(DeleteWorkspaceRequest { workspace_id: id.to_owned(), preserve_data }).await.map(|_| ())
}

fn sh(testbed: &Testbed, server: &BerthServer, id: &str, script: &str) -> String {
    testbed.exec(&server.namespace, id, &["sh", "-c", script]).trim().to_owned()
}

/// Runs a read-only check that always prints something. `ctr task exec` now and then loses a
/// process's whole output: its deferred delete of the exec cancels the output copy still in
/// flight (fixed upstream by containerd/containerd#13931), so an empty output is retried; a real
/// answer is never empty here.
fn check(testbed: &Testbed, server: &BerthServer, id: &str, script: &str) -> String {
    for _ in 0..3 {
        let output = sh(testbed, server, id, script);
        if !output.is_empty() {
            return output;
        }
    }
    panic!("{script:?} printed nothing three times");
}

#[tokio::test]
async fn a_10_tib_sparse_file_and_hard_links_survive_preserve_and_restore_in_seconds() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let image = testbed.image("BUSYBOX");
    create(&mut client, "sparse", &image, false).await;
    sh(
        &testbed,
        &server,
        "sparse",
        "truncate -s 10995116277760 /data/huge \
         && printf head | dd of=/data/huge conv=notrunc 2>/dev/null \
         && printf middle | dd of=/data/huge bs=1048576 seek=5242880 conv=notrunc 2>/dev/null \
         && echo shared > /data/a && mkdir /data/sub && ln /data/a /data/sub/b",
    );

    let started = Instant::now();
    delete(&mut client, "sparse", true).await.unwrap();
    let preserve = started.elapsed();
    let archive = server.state_dir.join("preserved/sparse.tar.gz");
    let archive_len = std::fs::metadata(&archive).unwrap().len();
    let started = Instant::now();
    create(&mut client, "sparse", &image, true).await;
    let restore = started.elapsed();

    assert!(preserve < Duration::from_secs(10), "delete with preserve_data took {preserve:?}");
    assert!(restore < Duration::from_secs(10), "create with restore_data took {restore:?}");
    assert!(archive_len < 64 * 1024, "the preserved archive is {archive_len} bytes");
    // One exec for every check: size, KiB used, the data at 0 and at 5 TiB, both links' inodes,
    // the link count, and the content through the second link.
    let facts = check(
        &testbed,
        &server,
        "sparse",
        "stat -c %s /data/huge && du -k /data/huge | cut -f1 && head -c 4 /data/huge && echo \
         && dd if=/data/huge bs=1048576 skip=5242880 count=1 2>/dev/null | head -c 6 && echo \
         && stat -c %i /data/a /data/sub/b && stat -c %h /data/a && cat /data/sub/b",
    );
    let facts: Vec<&str> = facts.lines().collect();
    let [size, used_kib, head, middle, inode_a, inode_b, links, content] = facts[..] else {
        panic!("unexpected output: {facts:?}");
    };
    assert_eq!(size, (10 * TIB).to_string());
    let used_kib: u64 = used_kib.parse().unwrap();
    assert!(used_kib < 1024, "the restored file uses {used_kib} KiB: it is not sparse");
    assert_eq!((head, middle), ("head", "middle"));
    assert_eq!(inode_a, inode_b, "the hard links share an inode after restore");
    assert_eq!(links, "2");
    assert_eq!(content, "shared");
}

#[tokio::test]
async fn a_tree_too_deep_to_archive_fails_the_preserve_cleanly_and_reset_data_empties_it() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    let mut client = Client::new(server.channel().await);
    let image = testbed.image("BUSYBOX");
    create(&mut client, "deep", &image, false).await;
    // About 10,000 levels, built bottom-up 1,000 at a time and moved into each other, so no
    // path a command is given comes near PATH_MAX.
    let chunk = vec!["d"; 1000].join("/");
    let script = format!(
        "cd /data && echo kept > file && mkdir -p t0/{chunk} && echo bottom > t0/{chunk}/f \
         && i=1 && while [ $i -lt 10 ]; do mkdir -p t$i/{chunk} && mv t$((i-1)) t$i/{chunk}/ || exit 1; i=$((i+1)); done"
    );
    sh(&testbed, &server, "deep", &script);

    let status = delete(&mut client, "deep", true).await.unwrap_err();
    assert_eq!(error_reason(&status).as_deref(), Some("DATA_ARCHIVE_FAILED"), "{status:?}");
    assert!(status.message().contains("\"t9/d/d/d/"), "names the path: {}", status.message());
    assert!(status.message().contains("4096 bytes"), "names the limit: {}", status.message());
    let workspace = client
        .get_workspace(GetWorkspaceRequest { workspace_id: "deep".to_owned() })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!(workspace.state(), WorkspaceState::Running, "a failed preserve leaves the workspace running");
    assert!(!server.state_dir.join("preserved/deep.tar.gz").exists());
    assert_eq!(check(&testbed, &server, "deep", "cat /data/file"), "kept");

    client.reset_data(ResetDataRequest { workspace_id: "deep".to_owned() }).await.unwrap();
    assert_eq!(check(&testbed, &server, "deep", "ls -A /data | wc -l"), "0");
    delete(&mut client, "deep", true).await.unwrap();
    assert!(server.state_dir.join("preserved/deep.tar.gz").exists());
}
