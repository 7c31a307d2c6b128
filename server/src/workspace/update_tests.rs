//! UpdateWorkspace's live paths over the fake runtime: labels and limits reach the running task
//! without a restart and persist, a memory limit below the working set is refused, an env
//! change re-creates the container and restarts it, and a mask that changes nothing changes
//! nothing. `tests/tests/update.rs` runs them against containerd.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::WorkspaceUpdate;
use super::tests::{Harness, create, harness, request};
use crate::error::{Error, Reason};
use crate::model::{Resources, WorkspaceId, WorkspaceState};

const ID: &str = "bot-1";

async fn created() -> Harness {
    let harness = harness().await;
    create(&harness.manager, request(ID)).await.unwrap();
    harness
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

fn stops(harness: &Harness) -> u32 {
    harness.runtime.stop_calls.load(Ordering::SeqCst)
}

#[tokio::test]
async fn labels_and_limits_reach_the_running_task_without_a_restart_and_persist() {
    let harness = created().await;
    let limits = Resources { cpu_millis: 1500, memory_bytes: 512 << 20, pids_limit: 64 };
    let update =
        WorkspaceUpdate { labels: Some(labels(&[("team", "red")])), resources: Some(limits), ..Default::default() };
    let updated = harness.manager.update(ID, update).await.unwrap();
    assert!(!updated.restarted && updated.version.is_none());
    assert_eq!(updated.workspace.record.spec.resources, limits);
    assert_eq!(updated.workspace.record.state, WorkspaceState::Running);
    assert_eq!(stops(&harness), 0, "nothing was stopped");
    {
        let state = harness.runtime.state.lock().unwrap();
        assert_eq!(state.task_resources.get(ID), Some(&limits), "the running task has the limits");
        assert_eq!(state.container_resources.get(ID), Some(&limits), "so does the stored spec");
        assert_eq!(state.container_labels.get(ID), Some(&labels(&[("team", "red")])));
    }
    let selected = harness.manager.list(0, "", "team=red").await.unwrap();
    assert_eq!(selected.workspaces.len(), 1, "the label index follows");
    assert!(harness.manager.list(0, "", "team=blue").await.unwrap().workspaces.is_empty());

    // After a stop and start the limits are still there.
    harness.manager.stop(ID, None).await.unwrap();
    harness.manager.start(ID).await.unwrap();
    assert_eq!(harness.runtime.state.lock().unwrap().task_resources.get(ID), Some(&limits));
    let stored = harness.store.get_workspace(&WorkspaceId::parse(ID).unwrap()).await.unwrap().unwrap();
    assert_eq!((stored.spec.resources, stored.spec.labels), (limits, labels(&[("team", "red")])));
}

#[tokio::test]
async fn a_memory_limit_below_the_working_set_is_refused_and_changes_nothing() {
    let harness = created().await;
    let memory = crate::runtime::MemoryStats { working_set_bytes: 300 << 20, ..Default::default() };
    let stats = crate::runtime::CgroupStats { memory: Some(memory), ..Default::default() };
    harness.runtime.state.lock().unwrap().cgroups.insert(ID.to_owned(), stats);
    let update = WorkspaceUpdate {
        resources: Some(Resources { memory_bytes: 256 << 20, ..Resources::default() }),
        labels: Some(labels(&[("x", "y")])),
        ..Default::default()
    };
    let err = harness.manager.update(ID, update).await.unwrap_err();
    assert_eq!(err.reason(), Reason::MemoryLimitBelowUsage);
    assert!(err.message().contains(&(300u64 << 20).to_string()), "{err}");
    let record = harness.store.get_workspace(&WorkspaceId::parse(ID).unwrap()).await.unwrap().unwrap();
    assert_eq!((record.spec.resources, record.spec.labels.len()), (Resources::default(), 0), "nothing changed");

    let fits = WorkspaceUpdate {
        resources: Some(Resources { memory_bytes: 512 << 20, ..Resources::default() }),
        ..Default::default()
    };
    harness.manager.update(ID, fits).await.unwrap();
    let bad = WorkspaceUpdate {
        resources: Some(Resources { memory_bytes: -1, ..Resources::default() }),
        ..Default::default()
    };
    assert_eq!(harness.manager.update(ID, bad).await.unwrap_err().reason(), Reason::InvalidResources);
}

#[tokio::test]
async fn an_env_change_recreates_the_container_and_restarts_it_once() {
    let harness = created().await;
    let env = labels(&[("GREETING", "hello")]);
    let updated =
        harness.manager.update(ID, WorkspaceUpdate { env: Some(env.clone()), ..Default::default() }).await.unwrap();
    assert!(updated.restarted);
    assert_eq!(updated.workspace.record.spec.env, env);
    assert_eq!(updated.workspace.record.state, WorkspaceState::Running);
    assert_eq!(stops(&harness), 1);
    assert_eq!(harness.runtime.state.lock().unwrap().container_env.get(ID), Some(&env));

    // The same env again changes nothing and restarts nothing.
    let again = harness.manager.update(ID, WorkspaceUpdate { env: Some(env), ..Default::default() }).await.unwrap();
    assert!(!again.restarted);
    assert_eq!(stops(&harness), 1);
}

#[tokio::test]
async fn a_failed_recreate_keeps_the_old_env_and_the_workspace_running() {
    let harness = created().await;
    harness.runtime.fail("create_container", Error::new(Reason::RuntimeError, "no (fake)"), 1);
    let update = WorkspaceUpdate { env: Some(labels(&[("A", "1")])), ..Default::default() };
    let err = harness.manager.update(ID, update).await.unwrap_err();
    assert_eq!(err.reason(), Reason::RuntimeError);
    let record = harness.store.get_workspace(&WorkspaceId::parse(ID).unwrap()).await.unwrap().unwrap();
    assert!(record.spec.env.is_empty(), "the record keeps its old env");
    // The container was deleted before the failed create: the next start rebuilds it.
    harness.manager.start(ID).await.unwrap();
    assert_eq!(harness.runtime.state.lock().unwrap().tasks.get(ID), Some(&true));
    assert_eq!(harness.runtime.state.lock().unwrap().container_env.get(ID), Some(&BTreeMap::new()));
}

#[tokio::test]
async fn invalid_fields_fail_before_anything_changes() {
    let harness = created().await;
    for update in [
        WorkspaceUpdate { labels: Some(labels(&[("berth.owner", "x")])), ..Default::default() },
        WorkspaceUpdate { env: Some(labels(&[("A=B", "x")])), ..Default::default() },
    ] {
        assert_eq!(harness.manager.update(ID, update).await.unwrap_err().reason(), Reason::InvalidArgument);
    }
    let unknown = WorkspaceUpdate { labels: Some(BTreeMap::new()), ..Default::default() };
    assert_eq!(harness.manager.update("nobody", unknown).await.unwrap_err().reason(), Reason::WorkspaceNotFound);
    assert_eq!(stops(&harness), 0);
}
