//! `ProcessService`: validate, call the Manager, turn a process's events into the stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_api::v1 as pb;
use berth_api::v1::process_service_server::ProcessService;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::grant;
use super::authorize::Authorizer;
use super::{convert, record_workspace_id};
use crate::error::{Error, Reason};
use crate::process::{self, Event, Input, MAX_REPLAY_BYTES, Process, Selector, StartOptions, Subscription};
use crate::runtime::PtySize;
use crate::workspace::Manager;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);
const MIN_KEEPALIVE: Duration = Duration::from_secs(1);
const MAX_KEEPALIVE: Duration = Duration::from_secs(5 * 60);
/// Events queued per stream before it waits for the client (then the process's backlog bound
/// applies).
const STREAM_QUEUE: usize = 16;

/// The ProcessService implementation.
pub struct ProcessApi {
    manager: Arc<Manager>,
    authorizer: Authorizer,
}

impl ProcessApi {
    /// Serves ProcessService over the Manager.
    pub fn new(manager: Arc<Manager>, authorizer: Authorizer) -> Self {
        Self { manager, authorizer }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(Reason::InvalidArgument, message)
}

fn selector(selector: Option<pb::ProcessSelector>) -> Result<Selector, Error> {
    match selector.and_then(|selector| selector.selector) {
        Some(pb::process_selector::Selector::Pid(0)) => {
            Err(invalid("pid 0 names no process; pass the pid from the start event or List, or a tag"))
        }
        Some(pb::process_selector::Selector::Pid(pid)) => Ok(Selector::Pid(pid)),
        Some(pb::process_selector::Selector::Tag(tag)) if !tag.is_empty() => Ok(Selector::Tag(tag)),
        _ => Err(invalid("process is required; name it by pid or tag")),
    }
}

fn pty_size(cols: u32, rows: u32) -> Result<PtySize, Error> {
    match (u16::try_from(cols), u16::try_from(rows)) {
        (Ok(cols), Ok(rows)) if cols > 0 && rows > 0 => Ok(PtySize { cols, rows }),
        _ => Err(invalid(format!("pty size {cols}x{rows} is out of range; cols and rows are between 1 and 65535"))),
    }
}

fn keepalive(interval: Option<prost_types::Duration>) -> Result<Duration, Error> {
    match interval {
        None => Ok(DEFAULT_KEEPALIVE),
        Some(interval) => Ok(convert::duration(interval)?.clamp(MIN_KEEPALIVE, MAX_KEEPALIVE)),
    }
}

fn input(input: Option<pb::ProcessInput>) -> Result<Input, Error> {
    match input.and_then(|input| input.input) {
        Some(pb::process_input::Input::Stdin(bytes)) => Ok(Input::Stdin(bytes)),
        Some(pb::process_input::Input::Pty(bytes)) => Ok(Input::Pty(bytes)),
        None => Err(invalid("input is required; set stdin or pty bytes")),
    }
}

fn config_to_domain(config: pb::ProcessConfig) -> process::ProcessConfig {
    process::ProcessConfig {
        cmd: config.cmd,
        args: config.args,
        env: config.env.into_iter().collect(),
        cwd: config.cwd,
        user: config.user,
    }
}

fn config_from_domain(config: process::ProcessConfig) -> pb::ProcessConfig {
    pb::ProcessConfig {
        cmd: config.cmd,
        args: config.args,
        env: config.env.into_iter().collect(),
        cwd: config.cwd,
        user: config.user,
    }
}

fn start_options(request: pb::StartRequest) -> Result<StartOptions, Error> {
    let config = request.process.ok_or_else(|| invalid("process is required; say what to run in process.cmd"))?;
    let pty = request.pty.map(|pty| pty_size(pty.cols, pty.rows)).transpose()?;
    let timeout = request.timeout.map(convert::duration).transpose()?;
    Ok(StartOptions { config: config_to_domain(config), pty, tag: request.tag, stdin: request.stdin, timeout })
}

fn event(event: pb::process_event::Event) -> pb::ProcessEvent {
    pb::ProcessEvent { event: Some(event) }
}

/// The most output bytes one message carries: chunks already queued are merged up to this, so
/// heavy output costs few messages (gRPC's default limit is 4 MiB a message).
const MESSAGE_BYTES: usize = 256 << 10;

/// A process's events as a response stream: `start`, then output, then `end`, with keepalives
/// while it is quiet. The stream holds the subscription only: a client that goes away leaves the
/// process running.
fn events<T: Send + 'static>(
    pid: u32,
    mut subscription: Subscription,
    keepalive: Duration,
    wrap: fn(pb::ProcessEvent) -> T,
) -> ResponseStream<T> {
    use pb::process_event::{Data, End, Event as E, Keepalive, Start, data::Output};
    let (sender, receiver) = mpsc::channel::<Result<T, Status>>(STREAM_QUEUE);
    tokio::spawn(async move {
        if sender.send(Ok(wrap(event(E::Start(Start { pid }))))).await.is_err() {
            return;
        }
        // One timer, pushed back by every event, instead of a new one per message.
        let quiet = tokio::time::sleep(keepalive);
        tokio::pin!(quiet);
        loop {
            let next = tokio::select! {
                next = subscription.next_batch(MESSAGE_BYTES) => next,
                () = &mut quiet => {
                    quiet.as_mut().reset(tokio::time::Instant::now() + keepalive);
                    if sender.send(Ok(wrap(event(E::Keepalive(Keepalive {}))))).await.is_err() {
                        return;
                    }
                    continue;
                }
                () = sender.closed() => return,
            };
            quiet.as_mut().reset(tokio::time::Instant::now() + keepalive);
            let last = !matches!(next, Some(Event::Data(_)));
            let item = match next {
                Some(Event::Data(chunk)) => {
                    let bytes = chunk.bytes;
                    let output = match chunk.stream {
                        process::Stream::Stdout => Output::Stdout(bytes),
                        process::Stream::Stderr => Output::Stderr(bytes),
                        process::Stream::Pty => Output::Pty(bytes),
                    };
                    Ok(wrap(event(E::Data(Data { output: Some(output) }))))
                }
                Some(Event::End(exit)) => Ok(wrap(event(E::End(End {
                    exit_code: exit.code,
                    signal: exit.signal,
                    error: exit.error,
                    end_time: Some(convert::timestamp(exit.time)),
                })))),
                Some(Event::Overflow) => Err(Status::from(Error::new(
                    Reason::ResourceLimitExceeded,
                    format!(
                        "this client fell more than 4 MiB behind the output of process {pid} and was detached; \
                         read faster, then Connect again (with replay_bytes to catch up)"
                    ),
                ))),
                None => return,
            };
            if sender.send(item).await.is_err() || last {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

#[tonic::async_trait]
impl ProcessService for ProcessApi {
    type StartStream = ResponseStream<pb::StartResponse>;
    type ConnectStream = ResponseStream<pb::ConnectResponse>;

    async fn start(&self, request: Request<pb::StartRequest>) -> Result<Response<Self::StartStream>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let workspace_id = request.workspace_id.clone();
        let keepalive = keepalive(request.keepalive_interval)?;
        let options = start_options(request)?;
        let (process, subscription) = self.manager.start_process(&workspace_id, options).await?;
        Ok(Response::new(events(process.pid, subscription, keepalive, |event| pb::StartResponse {
            event: Some(event),
        })))
    }

    async fn connect(&self, request: Request<pb::ConnectRequest>) -> Result<Response<Self::ConnectStream>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let keepalive = keepalive(request.keepalive_interval)?;
        let replay = usize::try_from(request.replay_bytes).unwrap_or(usize::MAX);
        if replay > MAX_REPLAY_BYTES {
            return Err(invalid(format!(
                "replay_bytes {} is more than the most a Connect replays ({MAX_REPLAY_BYTES}); ask for less",
                request.replay_bytes
            ))
            .into());
        }
        let process = self.process(&request.workspace_id, request.process).await?;
        let subscription = process.subscribe(replay);
        Ok(Response::new(events(process.pid, subscription, keepalive, |event| pb::ConnectResponse {
            event: Some(event),
        })))
    }

    async fn send_input(
        &self,
        request: Request<pb::SendInputRequest>,
    ) -> Result<Response<pb::SendInputResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let input = input(request.input)?;
        let process = self.process(&request.workspace_id, request.process).await?;
        process.send_input(input).await?;
        Ok(Response::new(pb::SendInputResponse {}))
    }

    async fn stream_input(
        &self,
        request: Request<Streaming<pb::StreamInputRequest>>,
    ) -> Result<Response<pb::StreamInputResponse>, Status> {
        use pb::stream_input_request::Event as E;
        let grant = grant(&request)?;
        let mut stream = request.into_inner();
        let first = stream.next().await.transpose()?.and_then(|message| message.event);
        let Some(E::Start(start)) = first else {
            return Err(invalid("the first StreamInput message must be start, naming the process").into());
        };
        record_workspace_id(&start.workspace_id);
        self.authorizer.workspace(&grant, &start.workspace_id).await?;
        let process = self.process(&start.workspace_id, start.process).await?;
        while let Some(message) = stream.next().await {
            match message?.event {
                Some(E::Data(data)) => process.send_input(input(Some(data))?).await?,
                Some(E::Keepalive(_)) | None => {}
                Some(E::Start(_)) => return Err(invalid("start may only be the first StreamInput message").into()),
            }
        }
        Ok(Response::new(pb::StreamInputResponse {}))
    }

    async fn close_stdin(
        &self,
        request: Request<pb::CloseStdinRequest>,
    ) -> Result<Response<pb::CloseStdinResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let process = self.process(&request.workspace_id, request.process).await?;
        process.close_stdin().await?;
        Ok(Response::new(pb::CloseStdinResponse {}))
    }

    async fn send_signal(
        &self,
        request: Request<pb::SendSignalRequest>,
    ) -> Result<Response<pb::SendSignalResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let signal = match u32::try_from(request.signal) {
            Ok(signal @ 1..=64) => signal,
            _ => {
                return Err(invalid(format!(
                    "signal {} is not a signal; pass one of the Signal values, e.g. SIGNAL_SIGTERM",
                    request.signal
                ))
                .into());
            }
        };
        let process = self.process(&request.workspace_id, request.process).await?;
        process.signal(signal).await?;
        Ok(Response::new(pb::SendSignalResponse {}))
    }

    async fn resize_pty(
        &self,
        request: Request<pb::ResizePtyRequest>,
    ) -> Result<Response<pb::ResizePtyResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let size = pty_size(request.cols, request.rows)?;
        let process = self.process(&request.workspace_id, request.process).await?;
        process.resize(size).await?;
        Ok(Response::new(pb::ResizePtyResponse {}))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        record_workspace_id(&request.workspace_id);
        self.authorizer.workspace(&grant, &request.workspace_id).await?;
        let processes = self.manager.list_processes(&request.workspace_id).await?;
        let processes = processes
            .into_iter()
            .map(|info| pb::ProcessInfo {
                pid: info.pid,
                tag: info.tag,
                config: Some(config_from_domain(info.config)),
                pty: info.pty.map(|size| pb::PtyConfig { cols: u32::from(size.cols), rows: u32::from(size.rows) }),
                stdin: info.stdin,
                start_time: Some(convert::timestamp(info.start_time)),
            })
            .collect();
        Ok(Response::new(pb::ListResponse { processes }))
    }
}

impl ProcessApi {
    async fn process(&self, workspace_id: &str, process: Option<pb::ProcessSelector>) -> Result<Arc<Process>, Status> {
        let selector = selector(process)?;
        Ok(self.manager.process(workspace_id, &selector).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_sizes_and_keepalives_are_checked() {
        assert_eq!(pty_size(80, 24).unwrap(), PtySize { cols: 80, rows: 24 });
        for (cols, rows) in [(0, 24), (80, 0), (65536, 24)] {
            assert_eq!(pty_size(cols, rows).unwrap_err().reason(), Reason::InvalidArgument);
        }
        assert_eq!(keepalive(None).unwrap(), DEFAULT_KEEPALIVE);
        assert_eq!(keepalive(Some(prost_types::Duration { seconds: 0, nanos: 1 })).unwrap(), MIN_KEEPALIVE);
        assert_eq!(keepalive(Some(prost_types::Duration { seconds: 3600, nanos: 0 })).unwrap(), MAX_KEEPALIVE);
    }
}
