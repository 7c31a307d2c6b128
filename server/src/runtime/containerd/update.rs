//! Live changes of a container: its limits (the stored spec patched, and the running task's
//! cgroup through `Tasks.Update`, so neither a restart loses them nor do they wait for one) and
//! its caller labels.

use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{GetContainerRequest, UpdateContainerRequest, UpdateTaskRequest};
use tonic::Code;

use super::client::request;
use super::container::{LABEL_ID, LABEL_MANAGED};
use super::{Containerd, spec};
use crate::error::{Error, Result};
use crate::model::Resources;

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

impl Containerd {
    pub(super) async fn update_resources_of(&self, id: &str, limits: Resources, running: bool) -> Result<()> {
        let mut containers = ContainersClient::new(self.channel.clone());
        let container = match containers.get(request(&self.namespace, GetContainerRequest { id: id.to_owned() })).await
        {
            Ok(response) => response.into_inner().container,
            // Rebuilt from the record (which holds the limits) at the next start.
            Err(status) if status.code() == Code::NotFound => return Ok(()),
            Err(status) => return Err(self.map_status("container get", status)),
        };
        let Some(mut container) = container else { return Ok(()) };
        let stored = container.spec.take().map(|any| any.value).unwrap_or_default();
        let mut spec_json: serde_json::Value = serde_json::from_slice(&stored)
            .map_err(|err| Error::internal(format!("the stored spec of container {id} is unreadable: {err}")))?;
        let Some(resources) = spec_json.pointer_mut("/linux/resources").and_then(serde_json::Value::as_object_mut)
        else {
            return Err(Error::internal(format!("the stored spec of container {id} has no linux.resources")));
        };
        resources.retain(|key, _| !spec::LIMIT_KEYS.contains(&key.as_str()));
        resources.extend(spec::limit_fields(limits)?);
        let value = serde_json::to_vec(&spec_json)
            .map_err(|err| Error::internal(format!("cannot encode the runtime spec: {err}")))?;
        container.spec = Some(prost_types::Any { type_url: SPEC_TYPE.to_owned(), value });
        let update = UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask { paths: vec!["spec".to_owned()] }),
        };
        containers
            .update(request(&self.namespace, update))
            .await
            .map_err(|status| self.map_status("container update", status))?;
        if !running {
            return Ok(());
        }
        let value = serde_json::to_vec(&spec::live_limits(limits))
            .map_err(|err| Error::internal(format!("cannot encode the task's limits: {err}")))?;
        let update = UpdateTaskRequest {
            container_id: id.to_owned(),
            resources: Some(prost_types::Any { type_url: RESOURCES_TYPE.to_owned(), value }),
            annotations: HashMap::new(),
        };
        TasksClient::new(self.channel.clone())
            .update(request(&self.namespace, update))
            .await
            .map(|_| ())
            .map_err(|status| self.map_status("task update", status))
    }

    pub(super) async fn set_container_labels_of(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let mut labels: HashMap<String, String> = labels.clone().into_iter().collect();
        labels.insert(LABEL_MANAGED.to_owned(), "v1".to_owned());
        labels.insert(LABEL_ID.to_owned(), id.to_owned());
        let container = containerd_client::services::v1::Container { id: id.to_owned(), labels, ..Default::default() };
        let update = UpdateContainerRequest {
            container: Some(container),
            update_mask: Some(prost_types::FieldMask { paths: vec!["labels".to_owned()] }),
        };
        match ContainersClient::new(self.channel.clone()).update(request(&self.namespace, update)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(self.map_status("container update", status)),
        }
    }
}
