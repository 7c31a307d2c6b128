//! CDI devices through the Manager over the fake runtime: names normalized into the stored spec
//! and handed to every container made from it (create and rebuild), unresolvable names refused
//! before anything is pulled. `tests/tests/devices.rs` runs them against containerd with a
//! real device node.

use super::tests::{Harness, create, harness, request};
use crate::error::{Error, Reason};
use crate::model::WorkspaceId;
use crate::runtime::ContainerOwner;

const ID: &str = "bot-1";

/// Writes a spec offering `example.com/device=a` and `=b` into the harness's CDI directory.
fn install_spec(harness: &Harness) {
    let dir = &harness.manager.config.devices.spec_dirs()[0];
    std::fs::create_dir_all(dir).unwrap();
    let spec = serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "example.com/device",
        "devices": [
            { "name": "a", "containerEdits": { "env": ["DEVICE_A=1"] } },
            { "name": "b", "containerEdits": { "env": ["DEVICE_B=1"] } },
        ],
    });
    std::fs::write(dir.join("example.json"), spec.to_string()).unwrap();
}

fn with_devices(names: &[&str]) -> super::CreateRequest {
    super::CreateRequest { cdi_devices: names.iter().map(|name| (*name).to_owned()).collect(), ..request(ID) }
}

fn container_devices(harness: &Harness) -> Vec<String> {
    harness.runtime.state.lock().unwrap().container_devices.get(ID).cloned().unwrap_or_default()
}

#[tokio::test]
async fn devices_are_stored_normalized_and_given_to_every_container_made_from_the_spec() {
    let harness = harness().await;
    install_spec(&harness);
    let events = create(
        &harness.manager,
        with_devices(&[" example.com/device=b", "example.com/device=a", "example.com/device=a"]),
    )
    .await
    .unwrap();
    let Some(super::CreateEvent::Ready(ready)) = events.last() else { panic!("no ready: {events:?}") };
    let expected = ["example.com/device=a", "example.com/device=b"];
    assert_eq!(ready.record.spec.cdi_devices, expected);
    assert_eq!(container_devices(&harness), expected);

    // The same set in another order is the same spec: one ready, nothing made.
    let again =
        create(&harness.manager, with_devices(&["example.com/device=a", "example.com/device=b"])).await.unwrap();
    assert_eq!(again.len(), 1);

    // A container removed behind berth's back is rebuilt with the stored devices.
    {
        let mut state = harness.runtime.state.lock().unwrap();
        state.containers.remove(ID);
        state.container_devices.remove(ID);
        state.tasks.remove(ID);
    }
    let started = harness.manager.start(ID).await.unwrap();
    assert_eq!(started.record.spec.cdi_devices, expected);
    assert_eq!(harness.runtime.state.lock().unwrap().containers.get(ID), Some(&ContainerOwner::Berth));
    assert_eq!(container_devices(&harness), expected);
}

#[tokio::test]
async fn an_unresolvable_device_fails_the_create_before_anything_is_pulled_or_made() {
    let harness = harness().await;
    install_spec(&harness);
    // A create that got as far as the pull would end with this instead.
    harness.runtime.fail("pull_image", Error::new(Reason::ImagePullFailed, "pulled (fake)"), 0);

    let err =
        create(&harness.manager, with_devices(&["example.com/device=a", "example.com/device=nope"])).await.unwrap_err();

    assert_eq!(err.reason(), Reason::CdiDeviceNotFound, "{err}");
    assert!(err.message().starts_with("CDI devices \"example.com/device=nope\" do not resolve"), "{err}");
    assert!(err.message().contains("offers are example.com/device=a, example.com/device=b"), "{err}");
    assert!(harness.store.get_workspace(&WorkspaceId::parse(ID).unwrap()).await.unwrap().is_none());
    let state = harness.runtime.state.lock().unwrap();
    assert!(state.containers.is_empty() && state.snapshots.is_empty(), "nothing made");
}

#[tokio::test]
async fn resolve_devices_normalizes_checks_and_changes_nothing() {
    let harness = harness().await;
    install_spec(&harness);
    let resolved = harness
        .manager
        .resolve_devices(&["example.com/device=b ".to_owned(), "example.com/device=a".to_owned()])
        .await
        .unwrap();
    assert_eq!(resolved, ["example.com/device=a", "example.com/device=b"]);
    assert!(harness.manager.resolve_devices(&[]).await.unwrap().is_empty());
    let unknown = harness.manager.resolve_devices(&["example.com/device=c".to_owned()]).await.unwrap_err();
    assert_eq!(unknown.reason(), Reason::CdiDeviceNotFound);
    let malformed = harness.manager.resolve_devices(&[" ".to_owned()]).await.unwrap_err();
    assert_eq!(malformed.reason(), Reason::InvalidArgument);

    let catalog = harness.manager.list_devices().await.unwrap();
    let names: Vec<&str> = catalog.devices.iter().map(|device| device.name.as_str()).collect();
    assert_eq!(names, ["example.com/device=a", "example.com/device=b"]);
}
