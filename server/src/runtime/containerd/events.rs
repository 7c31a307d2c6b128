//! containerd's event stream, narrowed to what the exit monitor needs: init exits and OOM kills
//! of this namespace's tasks.

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::SubscribeRequest;
use containerd_client::services::v1::events_client::EventsClient;
use futures::StreamExt as _;
use prost::Message as _;

use super::Containerd;
use super::client::streaming_request;
use crate::error::{Error, Reason, Result};
use crate::runtime::{TaskNotice, TaskNotices};

const TOPIC_EXIT: &str = "/tasks/exit";
const TOPIC_OOM: &str = "/tasks/oom";

impl Containerd {
    pub(super) async fn subscribe_task_notices(&self) -> Result<TaskNotices> {
        // Several filters are OR'ed, the comma-separated terms of one are AND'ed.
        let filters = [TOPIC_EXIT, TOPIC_OOM]
            .iter()
            .map(|topic| format!("namespace=={},topic==\"{topic}\"", self.namespace.name))
            .collect();
        let stream = EventsClient::new(self.channel.clone())
            .subscribe(streaming_request(&self.namespace, SubscribeRequest { filters }))
            .await
            .map_err(|status| self.map_status("events subscribe", status))?
            .into_inner();
        let socket = self.socket.clone();
        let notices = stream.filter_map(move |envelope| {
            let socket = socket.clone();
            async move {
                let envelope = match envelope {
                    Ok(envelope) => envelope,
                    Err(status) => return Some(Err(super::client::map_status(&socket, "event stream", status))),
                };
                let event = envelope.event?;
                decode(&envelope.topic, &event.value).transpose()
            }
        });
        Ok(Box::pin(notices))
    }
}

/// The notice an event's payload holds; None for exits of exec'd processes (only the init's end
/// the task).
fn decode(topic: &str, payload: &[u8]) -> Result<Option<TaskNotice>> {
    let undecodable = |err: prost::DecodeError| {
        Error::new(Reason::RuntimeError, format!("containerd sent an undecodable {topic} event: {err}"))
    };
    match topic {
        TOPIC_EXIT => {
            let exit = TaskExit::decode(payload).map_err(undecodable)?;
            // The init process's id is the container id; exec processes have their exec id.
            Ok((exit.id == exit.container_id)
                .then_some(TaskNotice::Exited { id: exit.container_id, exit_status: exit.exit_status }))
        }
        TOPIC_OOM => Ok(Some(TaskNotice::Oom { id: TaskOom::decode(payload).map_err(undecodable)?.container_id })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_init_exits_and_ooms_become_notices() {
        let init = TaskExit { container_id: "bot".into(), id: "bot".into(), exit_status: 137, ..Default::default() };
        assert_eq!(
            decode(TOPIC_EXIT, &init.encode_to_vec()).unwrap(),
            Some(TaskNotice::Exited { id: "bot".into(), exit_status: 137 })
        );
        let exec = TaskExit { container_id: "bot".into(), id: "exec-1".into(), exit_status: 1, ..Default::default() };
        assert_eq!(decode(TOPIC_EXIT, &exec.encode_to_vec()).unwrap(), None);
        let oom = TaskOom { container_id: "bot".into() };
        assert_eq!(decode(TOPIC_OOM, &oom.encode_to_vec()).unwrap(), Some(TaskNotice::Oom { id: "bot".into() }));
        assert!(decode(TOPIC_EXIT, b"\xff\xff").is_err());
    }
}
