//! ProcessService end to end, on the real containerd: pipes and exit codes, backgrounded
//! children, stdin, signals, timeouts, re-attaching by tag with replay, large output, users,
//! pseudo-terminals, and the errors a caller sees.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_api::v1::create_workspace_response::Event as CreateEvent;
use berth_api::v1::process_event::data::Output;
use berth_api::v1::process_event::{End, Event};
use berth_api::v1::process_service_client::ProcessServiceClient;
use berth_api::v1::workspace_service_client::WorkspaceServiceClient;
use berth_api::v1::{
    CloseStdinRequest, ConnectRequest, CreateWorkspaceRequest, ListRequest, ProcessConfig, ProcessEvent, ProcessInput,
    ProcessSelector, PtyConfig, ResizePtyRequest, SendInputRequest, SendSignalRequest, Signal, StartRequest,
    StopWorkspaceRequest, StreamInputRequest, process_input, process_selector, stream_input_request,
};
use berth_e2e::{BerthServer, ServerOptions, Testbed, error_reason};
use sha2::Digest as _;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

type Processes = ProcessServiceClient<Channel>;

async fn create_workspace(server: &BerthServer, id: &str, image: &str) {
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let request = CreateWorkspaceRequest { workspace_id: id.to_owned(), image: image.to_owned(), ..Default::default() };
    let mut stream = workspaces.create_workspace(request).await.unwrap().into_inner();
    let mut ready = false;
    while let Some(item) = stream.next().await {
        ready = matches!(item.unwrap().event, Some(CreateEvent::Ready(_)));
    }
    assert!(ready, "the create of {id} ended without ready");
}

fn start_request(id: &str, cmd: &str, args: &[&str]) -> StartRequest {
    StartRequest {
        workspace_id: id.to_owned(),
        process: Some(ProcessConfig {
            cmd: cmd.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tag(tag: &str) -> Option<ProcessSelector> {
    Some(ProcessSelector { selector: Some(process_selector::Selector::Tag(tag.to_owned())) })
}

fn pid(pid: u32) -> Option<ProcessSelector> {
    Some(ProcessSelector { selector: Some(process_selector::Selector::Pid(pid)) })
}

/// What a stream delivered.
#[derive(Debug, Default)]
struct Outcome {
    pid: u32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    pty: Vec<u8>,
    end: Option<End>,
    keepalives: usize,
    /// Events after `end` (must be none).
    after_end: usize,
}

impl Outcome {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn end(&self) -> &End {
        self.end.as_ref().expect("the stream ended with end")
    }
}

async fn collect<S>(mut stream: S) -> Outcome
where
    S: tokio_stream::Stream<Item = Result<ProcessEvent, tonic::Status>> + Unpin,
{
    let mut outcome = Outcome::default();
    while let Some(item) = stream.next().await {
        let event = item.expect("the stream ends with an end event, not an error");
        if outcome.end.is_some() {
            outcome.after_end += 1;
        }
        match event.event {
            Some(Event::Start(start)) => outcome.pid = start.pid,
            Some(Event::Data(data)) => match data.output {
                Some(Output::Stdout(bytes)) => outcome.stdout.extend(bytes),
                Some(Output::Stderr(bytes)) => outcome.stderr.extend(bytes),
                Some(Output::Pty(bytes)) => outcome.pty.extend(bytes),
                None => panic!("data without output"),
            },
            Some(Event::End(end)) => outcome.end = Some(end),
            Some(Event::Keepalive(_)) => outcome.keepalives += 1,
            None => {}
        }
    }
    assert_eq!(outcome.after_end, 0, "end is the last event");
    outcome
}

async fn run(processes: &mut Processes, request: StartRequest) -> Outcome {
    let stream = processes.start(request).await.unwrap().into_inner();
    collect(stream.map(|item| item.map(|response| response.event.expect("an event")))).await
}

/// Starts a process and returns its stream after its `start` event.
async fn start(
    processes: &mut Processes,
    request: StartRequest,
) -> (u32, impl tokio_stream::Stream<Item = Result<ProcessEvent, tonic::Status>> + Unpin + use<>) {
    let mut stream =
        processes.start(request).await.unwrap().into_inner().map(|item| item.map(|response| response.event.unwrap()));
    let first = stream.next().await.unwrap().unwrap();
    let Some(Event::Start(started)) = first.event else { panic!("the first event is start: {first:?}") };
    assert!(started.pid > 1, "the pid inside the workspace: {}", started.pid);
    (started.pid, stream)
}

async fn connect(
    processes: &mut Processes,
    id: &str,
    process: Option<ProcessSelector>,
    replay_bytes: u32,
) -> Result<Outcome, tonic::Status> {
    let request = ConnectRequest { workspace_id: id.to_owned(), process, replay_bytes, ..Default::default() };
    let stream = processes.connect(request).await?.into_inner();
    Ok(collect(stream.map(|item| item.map(|response| response.event.expect("an event")))).await)
}

fn stdin(bytes: &[u8]) -> Option<ProcessInput> {
    Some(ProcessInput { input: Some(process_input::Input::Stdin(bytes.to_vec().into())) })
}

fn assert_status(status: &tonic::Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(error_reason(status).as_deref(), Some(reason), "{status:?}");
}

#[tokio::test]
async fn pipes_exit_codes_background_children_stdin_and_signals() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "proc", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);

    // stdout and stderr apart, the exit code, the workspace's env plus the process's own.
    let mut request = start_request("proc", "sh", &["-c", "echo out; echo err >&2; echo $GREETING; exit 3"]);
    request.process.as_mut().unwrap().env = HashMap::from([("GREETING".to_owned(), "hi".to_owned())]);
    let outcome = run(&mut processes, request).await;
    assert_eq!(outcome.stdout_text(), "out\nhi\n");
    assert_eq!(String::from_utf8_lossy(&outcome.stderr), "err\n");
    assert_eq!(outcome.end().exit_code, 3);
    assert_eq!(outcome.end().signal, Signal::Unspecified as i32);
    assert!(outcome.end().error.is_empty(), "{:?}", outcome.end());
    assert!(outcome.end().end_time.is_some());

    // A backgrounded child holding the pipes does not keep the command running.
    let begun = Instant::now();
    let outcome = run(&mut processes, start_request("proc", "sh", &["-c", "sleep 300 & echo started"])).await;
    assert!(begun.elapsed() < Duration::from_secs(2), "took {:?}", begun.elapsed());
    assert_eq!(outcome.stdout_text(), "started\n");
    assert_eq!(outcome.end().exit_code, 0);
    let running = testbed.exec(&server.namespace, "proc", &["ps"]);
    assert!(running.contains("sleep 300"), "the background sleep keeps running: {running}");

    // Output after the exit is still delivered within the grace.
    let outcome = run(&mut processes, start_request("proc", "sh", &["-c", "(sleep 0.1; echo late) & exit 4"])).await;
    assert_eq!(outcome.stdout_text(), "late\n");
    assert_eq!(outcome.end().exit_code, 4);

    // cat echoes SendInput and StreamInput, then exits 0 after CloseStdin.
    let mut request = start_request("proc", "cat", &[]);
    request.stdin = true;
    request.tag = "cat".to_owned();
    let (cat_pid, stream) = start(&mut processes, request).await;
    processes
        .send_input(SendInputRequest { workspace_id: "proc".to_owned(), process: pid(cat_pid), input: stdin(b"one\n") })
        .await
        .unwrap();
    let messages = vec![
        StreamInputRequest {
            event: Some(stream_input_request::Event::Start(stream_input_request::Start {
                workspace_id: "proc".to_owned(),
                process: tag("cat"),
            })),
        },
        StreamInputRequest { event: Some(stream_input_request::Event::Data(stdin(b"two\n").unwrap())) },
    ];
    processes.stream_input(tokio_stream::iter(messages)).await.unwrap();
    let listed = processes.list(ListRequest { workspace_id: "proc".to_owned() }).await.unwrap().into_inner();
    let cat = listed.processes.iter().find(|process| process.tag == "cat").expect("List shows cat");
    assert_eq!(cat.pid, cat_pid);
    assert!(cat.stdin && cat.pty.is_none());
    processes.close_stdin(CloseStdinRequest { workspace_id: "proc".to_owned(), process: tag("cat") }).await.unwrap();
    let outcome = collect(stream).await;
    assert_eq!(outcome.stdout_text(), "one\ntwo\n");
    assert_eq!(outcome.end().exit_code, 0);
    let listed = processes.list(ListRequest { workspace_id: "proc".to_owned() }).await.unwrap().into_inner();
    assert!(listed.processes.iter().all(|process| process.tag != "cat"), "ended processes are not listed");

    // After CloseStdin, List says stdin is closed.
    let mut request = start_request("proc", "sh", &["-c", "cat >/dev/null; sleep 300"]);
    request.stdin = true;
    request.tag = "closer".to_owned();
    let (closer_pid, closer) = start(&mut processes, request).await;
    processes.close_stdin(CloseStdinRequest { workspace_id: "proc".to_owned(), process: tag("closer") }).await.unwrap();
    let listed = processes.list(ListRequest { workspace_id: "proc".to_owned() }).await.unwrap().into_inner();
    let closer_info = listed.processes.iter().find(|process| process.pid == closer_pid).expect("listed");
    assert!(!closer_info.stdin, "{closer_info:?}");
    let status = processes
        .close_stdin(CloseStdinRequest { workspace_id: "proc".to_owned(), process: tag("closer") })
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "STDIN_NOT_OPEN");
    processes
        .send_signal(SendSignalRequest {
            workspace_id: "proc".to_owned(),
            process: tag("closer"),
            signal: Signal::Sigkill as i32,
        })
        .await
        .unwrap();
    assert_eq!(collect(closer).await.end().exit_code, 137);

    // SIGTERM ends sleep: signal SIGTERM, code 143.
    let (sleep_pid, stream) = start(&mut processes, start_request("proc", "sleep", &["300"])).await;
    processes
        .send_signal(SendSignalRequest {
            workspace_id: "proc".to_owned(),
            process: pid(sleep_pid),
            signal: Signal::Sigterm as i32,
        })
        .await
        .unwrap();
    let outcome = collect(stream).await;
    assert_eq!(outcome.end().signal, Signal::Sigterm as i32);
    assert_eq!(outcome.end().exit_code, 143);
    assert!(outcome.end().error.is_empty());

    // A timeout kills the whole group with SIGKILL and says so.
    let mut request = start_request("proc", "sh", &["-c", "sleep 301 & sleep 302"]);
    request.timeout = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    let begun = Instant::now();
    let outcome = run(&mut processes, request).await;
    assert!(begun.elapsed() < Duration::from_secs(5), "took {:?}", begun.elapsed());
    assert_eq!(outcome.end().signal, Signal::Sigkill as i32);
    assert_eq!(outcome.end().exit_code, 137);
    assert!(outcome.end().error.contains("timeout"), "{:?}", outcome.end());
    let running = testbed.exec(&server.namespace, "proc", &["ps"]);
    assert!(!running.contains("sleep 301"), "the group is gone: {running}");
    assert!(running.contains("sleep 300"), "another process's group is left alone: {running}");

    // Errors: missing executable, unknown pid and tag, input to a process without stdin,
    // resize of a pipe process, a signal of nothing.
    let status = processes.start(start_request("proc", "no-such-tool", &[])).await.unwrap_err();
    assert_status(&status, Code::NotFound, "EXECUTABLE_NOT_FOUND");
    assert!(status.message().contains("no-such-tool") && status.message().contains("/bin"), "{}", status.message());
    let status = connect(&mut processes, "proc", pid(999_999), 0).await.unwrap_err();
    assert_status(&status, Code::NotFound, "PROCESS_NOT_FOUND");
    let status = connect(&mut processes, "proc", tag("nobody-has-this"), 0).await.unwrap_err();
    assert_status(&status, Code::NotFound, "PROCESS_NOT_FOUND");
    let status = connect(&mut processes, "proc", tag("cat"), 2 << 20).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let (quiet_pid, quiet) = start(&mut processes, start_request("proc", "sleep", &["300"])).await;
    let status = processes
        .send_input(SendInputRequest { workspace_id: "proc".to_owned(), process: pid(quiet_pid), input: stdin(b"x") })
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "STDIN_NOT_OPEN");
    let status = processes
        .resize_pty(ResizePtyRequest { workspace_id: "proc".to_owned(), process: pid(quiet_pid), cols: 80, rows: 24 })
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "PTY_NOT_ALLOCATED");
    let status = processes
        .send_signal(SendSignalRequest { workspace_id: "proc".to_owned(), process: pid(quiet_pid), signal: 0 })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    drop(quiet);
    // The process outlives its stream; a signal through its pid ends it.
    processes
        .send_signal(SendSignalRequest {
            workspace_id: "proc".to_owned(),
            process: pid(quiet_pid),
            signal: Signal::Sigkill as i32,
        })
        .await
        .unwrap();
    let outcome = connect(&mut processes, "proc", pid(quiet_pid), 0).await.unwrap();
    assert_eq!(outcome.end().exit_code, 137);
    let status = processes
        .send_signal(SendSignalRequest {
            workspace_id: "proc".to_owned(),
            process: pid(quiet_pid),
            signal: Signal::Sigterm as i32,
        })
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "PROCESS_EXITED");
}

#[tokio::test]
async fn connect_by_tag_with_replay_and_after_the_end() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "attach", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);

    let mut request = start_request("attach", "sh", &["-c", "echo first; read line; echo \"got $line\"; exit 5"]);
    request.stdin = true;
    request.tag = "job".to_owned();
    let (job_pid, mut first_stream) = start(&mut processes, request.clone()).await;
    let first = first_stream.next().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Data(_))), "{first:?}");

    // A second Start with the same tag while the first runs fails.
    let status = processes.start(request).await.unwrap_err();
    assert_status(&status, Code::AlreadyExists, "PROCESS_TAG_IN_USE");

    // A second client attaches by tag with a replay of what it missed.
    let mut second = Processes::new(server.channel().await);
    let second_stream = second
        .connect(ConnectRequest {
            workspace_id: "attach".to_owned(),
            process: tag("job"),
            replay_bytes: 1024,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|item| item.map(|response| response.event.unwrap()));
    second
        .send_input(SendInputRequest { workspace_id: "attach".to_owned(), process: tag("job"), input: stdin(b"x\n") })
        .await
        .unwrap();
    let second_outcome = collect(second_stream).await;
    assert_eq!(second_outcome.pid, job_pid);
    assert_eq!(second_outcome.stdout_text(), "first\ngot x\n", "replay, then live output");
    assert_eq!(second_outcome.end().exit_code, 5);
    let first_outcome = collect(first_stream).await;
    assert_eq!(first_outcome.stdout_text(), "got x\n");
    assert_eq!(first_outcome.end().exit_code, 5);

    // After the end: start, replay (the last 6 bytes), end with the exit code.
    let after = connect(&mut processes, "attach", tag("job"), 6).await.unwrap();
    assert_eq!(after.pid, job_pid);
    assert_eq!(after.stdout_text(), "got x\n");
    assert_eq!(after.end().exit_code, 5);
    let after = connect(&mut processes, "attach", pid(job_pid), 0).await.unwrap();
    assert!(after.stdout.is_empty());
    assert_eq!(after.end().exit_code, 5);

    // A process that exits at once can still be named by its tag afterwards.
    let mut request = start_request("attach", "true", &[]);
    request.tag = "quick".to_owned();
    assert_eq!(run(&mut processes, request).await.end().exit_code, 0);
    let after = connect(&mut processes, "attach", tag("quick"), 0).await.unwrap();
    assert_eq!(after.end().exit_code, 0);
    let status = connect(&mut processes, "attach", pid(0), 0).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");

    // Keepalives while the process is quiet.
    let mut request = start_request("attach", "sleep", &["2.5"]);
    request.keepalive_interval = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    let outcome = run(&mut processes, request).await;
    assert!(outcome.keepalives >= 2, "{outcome:?}");
    assert_eq!(outcome.end().exit_code, 0);

    // 4 MiB of random output arrives byte-identical.
    let write = "head -c 4194304 /dev/urandom > /tmp/random && cat /tmp/random";
    let outcome = run(&mut processes, start_request("attach", "sh", &["-c", write])).await;
    assert_eq!(outcome.end().exit_code, 0);
    assert_eq!(outcome.stdout.len(), 4 << 20);
    let inside = run(&mut processes, start_request("attach", "sha256sum", &["/tmp/random"])).await;
    let expected = inside.stdout_text().split_whitespace().next().unwrap().to_owned();
    assert_eq!(hex::encode(sha2::Sha256::digest(&outcome.stdout)), expected);
}

#[tokio::test]
async fn users_by_name_on_debian() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "deb", &testbed.image("DEBIAN")).await;
    let mut processes = Processes::new(server.channel().await);

    let mut request = start_request("deb", "id", &[]);
    request.process.as_mut().unwrap().user = "nobody".to_owned();
    let outcome = run(&mut processes, request).await;
    assert_eq!(outcome.end().exit_code, 0, "{outcome:?}");
    assert!(outcome.stdout_text().starts_with("uid=65534(nobody) gid=65534(nogroup)"), "{}", outcome.stdout_text());

    let mut request = start_request("deb", "id", &["-u"]);
    request.process.as_mut().unwrap().user = "65534:65534".to_owned();
    assert_eq!(run(&mut processes, request).await.stdout_text(), "65534\n");

    let outcome = run(&mut processes, start_request("deb", "id", &["-u"])).await;
    assert_eq!(outcome.stdout_text(), "0\n", "empty means the image's user (root)");

    let mut request = start_request("deb", "id", &[]);
    request.process.as_mut().unwrap().user = "ghost".to_owned();
    let status = processes.start(request).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "USER_NOT_FOUND");
    assert!(status.message().contains("ghost"), "{}", status.message());

    let mut request = start_request("deb", "pwd", &[]);
    request.process.as_mut().unwrap().cwd = "/tmp".to_owned();
    assert_eq!(run(&mut processes, request).await.stdout_text(), "/tmp\n");
    let mut request = start_request("deb", "pwd", &[]);
    request.process.as_mut().unwrap().cwd = "/no/such/dir".to_owned();
    let status = processes.start(request).await.unwrap_err();
    assert_status(&status, Code::NotFound, "PATH_NOT_FOUND");
    assert!(status.message().contains("/no/such/dir"), "{}", status.message());
}

#[tokio::test]
async fn pty_reports_a_terminal_and_follows_resizes() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "term", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);

    let mut request = start_request("term", "sh", &["-c", "tty; echo $TERM; stty size"]);
    request.pty = Some(PtyConfig { cols: 100, rows: 30 });
    let outcome = run(&mut processes, request).await;
    let text = String::from_utf8_lossy(&outcome.pty).replace('\r', "");
    assert!(outcome.stdout.is_empty() && outcome.stderr.is_empty(), "a pty merges output");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{text:?}");
    assert_eq!(lines[1], "xterm-256color");
    assert_eq!(lines[2], "30 100");
    assert_eq!(outcome.end().exit_code, 0);

    // Keystrokes through the terminal; stdin bytes to a pty process are refused.
    let mut request = start_request("term", "sh", &["-c", "read line; echo \"typed $line\""]);
    request.pty = Some(PtyConfig { cols: 80, rows: 24 });
    let (typing_pid, stream) = start(&mut processes, request).await;
    let status = processes
        .send_input(SendInputRequest { workspace_id: "term".to_owned(), process: pid(typing_pid), input: stdin(b"x") })
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "STDIN_NOT_OPEN");
    let keys = Some(ProcessInput { input: Some(process_input::Input::Pty(b"hello\r".to_vec().into())) });
    processes
        .send_input(SendInputRequest { workspace_id: "term".to_owned(), process: pid(typing_pid), input: keys })
        .await
        .unwrap();
    let outcome = collect(stream).await;
    assert!(String::from_utf8_lossy(&outcome.pty).contains("typed hello"), "{outcome:?}");
    assert_eq!(outcome.end().exit_code, 0);

    let mut request = start_request("term", "sh", &[]);
    request.pty = Some(PtyConfig { cols: 0, rows: 24 });
    let status = processes.start(request).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");

    // Resize while running: the process sees the new size after SIGWINCH.
    let mut request =
        start_request("term", "sh", &["-c", "trap 'stty size; exit 0' WINCH; while :; do sleep 0.05; done"]);
    request.pty = Some(PtyConfig { cols: 80, rows: 24 });
    request.tag = "shell".to_owned();
    let (_, stream) = start(&mut processes, request).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    processes
        .resize_pty(ResizePtyRequest { workspace_id: "term".to_owned(), process: tag("shell"), cols: 132, rows: 43 })
        .await
        .unwrap();
    let outcome = collect(stream).await;
    let text = String::from_utf8_lossy(&outcome.pty).replace('\r', "");
    assert!(text.contains("43 132"), "{text:?}");
    let status = processes
        .resize_pty(ResizePtyRequest { workspace_id: "term".to_owned(), process: tag("shell"), cols: 0, rows: 43 })
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let status = processes
        .resize_pty(ResizePtyRequest { workspace_id: "term".to_owned(), process: tag("shell"), cols: 10, rows: 10 })
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "PROCESS_EXITED");
}

#[tokio::test]
async fn stopping_the_workspace_ends_attached_streams() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "halt", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);

    let (_, stream) = start(&mut processes, start_request("halt", "sleep", &["300"])).await;
    let stopper = tokio::spawn(async move {
        workspaces
            .stop_workspace(StopWorkspaceRequest {
                workspace_id: "halt".to_owned(),
                timeout: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            })
            .await
            .unwrap();
    });
    let outcome = tokio::time::timeout(Duration::from_secs(20), collect(stream)).await.expect("the stream ends");
    assert!(outcome.end().error.contains("stopped"), "{:?}", outcome.end());
    stopper.await.unwrap();

    let status = processes.start(start_request("halt", "true", &[])).await.unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "WORKSPACE_NOT_RUNNING");
    let status = processes.list(ListRequest { workspace_id: "halt".to_owned() }).await.unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "WORKSPACE_NOT_RUNNING");
    let status = processes.start(start_request("nowhere", "true", &[])).await.unwrap_err();
    assert_status(&status, Code::NotFound, "WORKSPACE_NOT_FOUND");
}

#[tokio::test]
async fn fifty_concurrent_processes_and_a_slow_reader_that_stalls_nobody() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "busy", &testbed.image("BUSYBOX")).await;
    let channel = server.channel().await;

    let runs = (0..50).map(|n| {
        let mut processes = Processes::new(channel.clone());
        async move {
            let script = format!("sleep 0.3; echo job-{n}; exit {}", n % 7);
            (n, run(&mut processes, start_request("busy", "sh", &["-c", &script])).await)
        }
    });
    for (n, outcome) in futures::future::join_all(runs).await {
        assert_eq!(outcome.stdout_text(), format!("job-{n}\n"));
        assert_eq!(outcome.end().exit_code, n % 7);
    }

    // A client that attaches and never reads is dropped with RESOURCE_EXHAUSTED once it is 4 MiB
    // behind; the process and a client on another connection get everything meanwhile.
    let mut fast = Processes::new(server.channel().await);
    let mut slow = Processes::new(server.channel().await);
    let mut request = start_request("busy", "sh", &["-c", "read go; head -c 33554432 /dev/zero"]);
    request.stdin = true;
    request.tag = "flood".to_owned();
    let (_, fast_stream) = start(&mut fast, request).await;
    let mut slow_stream = slow
        .connect(ConnectRequest { workspace_id: "busy".to_owned(), process: tag("flood"), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let first = slow_stream.next().await.unwrap().unwrap();
    assert!(matches!(first.event.unwrap().event, Some(Event::Start(_))));
    fast.send_input(SendInputRequest { workspace_id: "busy".to_owned(), process: tag("flood"), input: stdin(b"go\n") })
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), collect(fast_stream)).await.expect("not stalled");
    assert_eq!(outcome.stdout.len(), 32 << 20);
    assert_eq!(outcome.end().exit_code, 0);
    let mut slow_error = None;
    while let Some(item) = slow_stream.next().await {
        if let Err(status) = item {
            slow_error = Some(status);
            break;
        }
    }
    let status = slow_error.expect("the slow client was dropped with an error");
    assert_status(&status, Code::ResourceExhausted, "RESOURCE_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn processes_run_as_the_images_named_user_and_deletion_ends_streams() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "named", &testbed.image("USER_BOT")).await;
    let mut processes = Processes::new(server.channel().await);
    let outcome = run(&mut processes, start_request("named", "id", &["-un"])).await;
    assert_eq!(outcome.stdout_text(), "bot\n", "{outcome:?}");

    let (_, stream) = start(&mut processes, start_request("named", "sleep", &["300"])).await;
    let mut workspaces = WorkspaceServiceClient::new(server.channel().await);
    let deleter = tokio::spawn(async move {
        workspaces
            .delete_workspace(berth_api::v1::DeleteWorkspaceRequest {
                workspace_id: "named".to_owned(),
                preserve_data: false,
            })
            .await
            .unwrap();
    });
    let outcome = tokio::time::timeout(Duration::from_secs(20), collect(stream)).await.expect("the stream ends");
    assert!(outcome.end().error.contains("deleted"), "{:?}", outcome.end());
    deleter.await.unwrap();
    let status = connect(&mut processes, "named", tag("x"), 0).await.unwrap_err();
    assert_status(&status, Code::NotFound, "WORKSPACE_NOT_FOUND");
}

#[tokio::test]
async fn processes_survive_a_berth_restart() {
    let testbed = Testbed::from_env();
    let mut server = BerthServer::start(&testbed);
    create_workspace(&server, "survive", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);

    let mut request = start_request(
        "survive",
        "sh",
        &[
            "-c",
            "echo before; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo during; read line; echo \"after $line\"; exit 6",
        ],
    );
    request.stdin = true;
    request.tag = "long".to_owned();
    let (long_pid, mut long_stream) = start(&mut processes, request).await;
    let first = long_stream.next().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Data(_))), "{first:?}");
    let mut request =
        start_request("survive", "sh", &["-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo gone; exit 9"]);
    request.tag = "exits-while-down".to_owned();
    let (short_pid, short_stream) = start(&mut processes, request).await;
    drop(short_stream);
    drop(long_stream);

    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).success(), "{}", server.log_text());
    // While berth is down, one process exits and the other writes "during".
    testbed.exec(&server.namespace, "survive", &["touch", "/tmp/go"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let options =
        ServerOptions { reuse: Some((server.state_dir.clone(), server.namespace.clone())), ..Default::default() };
    let server = BerthServer::start_with(&testbed, options);
    server.wait_serving(Duration::from_secs(30)).await;
    let mut processes = Processes::new(server.channel().await);

    let listed = processes.list(ListRequest { workspace_id: "survive".to_owned() }).await.unwrap().into_inner();
    let tags: Vec<&str> = listed.processes.iter().map(|process| process.tag.as_str()).collect();
    assert_eq!(tags, ["long"], "{listed:?}");
    assert_eq!(listed.processes[0].pid, long_pid);

    let ended = connect(&mut processes, "survive", tag("exits-while-down"), 0).await.unwrap();
    assert_eq!(ended.pid, short_pid);
    assert_eq!(ended.end().exit_code, 9, "the exit status from containerd survives the restart");

    let stream = processes
        .connect(ConnectRequest {
            workspace_id: "survive".to_owned(),
            process: tag("long"),
            replay_bytes: 1024,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|item| item.map(|response| response.event.unwrap()));
    processes
        .send_input(SendInputRequest { workspace_id: "survive".to_owned(), process: tag("long"), input: stdin(b"x\n") })
        .await
        .unwrap();
    let outcome = collect(stream).await;
    assert_eq!(outcome.stdout_text(), "during\nafter x\n", "output written while berth was down is in the replay");
    assert_eq!(outcome.end().exit_code, 6);
}

#[tokio::test]
async fn processes_are_children_of_the_agent_which_comes_back_after_being_killed() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "agent", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);
    let parent_of_a_process = async |processes: &mut Processes| {
        let outcome = run(processes, start_request("agent", "sh", &["-c", "cat /proc/$PPID/comm"])).await;
        assert_eq!(outcome.end().exit_code, 0, "{outcome:?}");
        outcome.stdout_text()
    };
    assert_eq!(parent_of_a_process(&mut processes).await, "berth-agent\n");

    // Root inside the workspace kills the agent: its children end with it, and their ends say so.
    let mut request = start_request("agent", "sleep", &["300"]);
    request.tag = "sleeper".to_owned();
    let (_, sleeper) = start(&mut processes, request).await;
    let killer = run(&mut processes, start_request("agent", "sh", &["-c", "sleep 0.3; kill -9 $PPID; sleep 30"])).await;
    assert!(killer.end().error.contains("agent"), "{:?}", killer.end());
    assert_eq!(killer.end().exit_code, -1);
    let sleeper = tokio::time::timeout(Duration::from_secs(10), collect(sleeper)).await.expect("the sleeper's end");
    assert!(sleeper.end().error.contains("agent"), "{:?}", sleeper.end());

    // The next Start brings up a new agent; the old one's children are gone.
    assert_eq!(parent_of_a_process(&mut processes).await, "berth-agent\n");
    let survivors = run(&mut processes, start_request("agent", "sh", &["-c", "pidof sleep || echo none"])).await;
    assert_eq!(survivors.stdout_text(), "none\n");
}

/// Connects to a workspace's agent from the host, as berth does: the agent takes this
/// connection in place of berth's.
fn take_the_agents_connection(server: &BerthServer, id: &str) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd as _;
    let path = server.state_dir.join("workspaces").join(id).join("agent/agent.sock");
    let node = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .expect("the agent's socket");
    let socket = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    let address = UnixAddr::new(format!("/proc/self/fd/{}", node.as_raw_fd()).as_str()).unwrap();
    connect(socket.as_raw_fd(), &address).expect("connect to the agent");
    socket
}

#[tokio::test]
async fn a_broken_agent_connection_is_replaced_and_running_processes_keep_working() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "rewire", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);
    let mut request = start_request("rewire", "cat", &[]);
    request.stdin = true;
    let (cat, cat_stream) = start(&mut processes, request).await;
    let (sleeper, sleeper_stream) = start(&mut processes, start_request("rewire", "sleep", &["300"])).await;

    // Another host process connects: the agent drops berth's connection for it. berth connects
    // again at once to hand its processes over (which drops this one: it reads end-of-file).
    let intruder = take_the_agents_connection(&server, "rewire");
    let mut buffer = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&intruder),
            &mut buffer,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => break,
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("berth did not take the agent back within 10 s: {other:?}"),
        }
    }

    // Both processes go on: input, end of input and a signal reach them through the new
    // connection, and their exits come through it.
    processes
        .send_input(SendInputRequest {
            workspace_id: "rewire".to_owned(),
            process: pid(cat),
            input: stdin(b"still here\n"),
        })
        .await
        .unwrap();
    processes.close_stdin(CloseStdinRequest { workspace_id: "rewire".to_owned(), process: pid(cat) }).await.unwrap();
    let cat = tokio::time::timeout(Duration::from_secs(10), collect(cat_stream)).await.expect("cat's end");
    assert_eq!(cat.stdout_text(), "still here\n");
    assert_eq!((cat.end().exit_code, cat.end().error.as_str()), (0, ""), "{:?}", cat.end());
    processes
        .send_signal(SendSignalRequest {
            workspace_id: "rewire".to_owned(),
            process: pid(sleeper),
            signal: Signal::Sigterm as i32,
        })
        .await
        .unwrap();
    let sleeper =
        tokio::time::timeout(Duration::from_secs(10), collect(sleeper_stream)).await.expect("the sleeper's end");
    assert_eq!((sleeper.end().exit_code, sleeper.end().error.as_str()), (143, ""), "{:?}", sleeper.end());
}

#[tokio::test]
async fn without_the_agent_processes_are_containerd_execs() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start_with(&testbed, ServerOptions { without_agent: true, ..Default::default() });
    create_workspace(&server, "execs", &testbed.image("BUSYBOX")).await;
    let mut processes = Processes::new(server.channel().await);

    // runc exec'd processes have no parent inside the workspace.
    let outcome =
        run(&mut processes, start_request("execs", "sh", &["-c", "echo out; echo err >&2; echo ppid=$PPID; exit 3"]))
            .await;
    assert_eq!(outcome.stdout_text(), "out\nppid=0\n");
    assert_eq!(outcome.stderr, b"err\n");
    assert_eq!(outcome.end().exit_code, 3);

    let mut request = start_request("execs", "sh", &["-c", "tty; stty size"]);
    request.pty = Some(PtyConfig { cols: 90, rows: 20 });
    let outcome = run(&mut processes, request).await;
    let text = String::from_utf8_lossy(&outcome.pty).replace('\r', "");
    assert!(text.starts_with("/dev/pts/") && text.ends_with("20 90\n"), "{text:?}");

    let mut request = start_request("execs", "cat", &[]);
    request.stdin = true;
    let (cat_pid, stream) = start(&mut processes, request).await;
    processes
        .send_input(SendInputRequest {
            workspace_id: "execs".to_owned(),
            process: pid(cat_pid),
            input: stdin(b"typed"),
        })
        .await
        .unwrap();
    processes.close_stdin(CloseStdinRequest { workspace_id: "execs".to_owned(), process: pid(cat_pid) }).await.unwrap();
    let outcome = collect(stream).await;
    assert_eq!(outcome.stdout, b"typed");
    assert_eq!(outcome.end().exit_code, 0);
    assert!(server.log_text().contains("berth-agent is not installed"), "{}", server.log_text());
}

#[tokio::test]
async fn code_in_the_workspace_cannot_take_the_agents_socket() {
    let testbed = Testbed::from_env();
    let server = BerthServer::start(&testbed);
    create_workspace(&server, "socket", &testbed.image("DEBIAN")).await;
    let mut processes = Processes::new(server.channel().await);
    let mut request = start_request("socket", "sh", &["-c", "read line; echo \"got $line\"; exit 4"]);
    request.stdin = true;
    let (reader, stream) = start(&mut processes, request).await;

    // Root inside connects to the agent and says hello: the agent hangs up on it (its peer pid
    // is not 0), and berth's own connection is untouched.
    let hostile = r#"
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("/run/berth/agent.sock")
try:
    s.send(b'{"op":"hello","version":1}')
    print("answer", repr(s.recv(4096)))
except OSError as err:
    print("refused", err.errno)
"#;
    let outcome = run(&mut processes, start_request("socket", "python3", &["-c", hostile])).await;
    let text = outcome.stdout_text();
    assert!(text == "answer b''\n" || text.starts_with("refused"), "{text:?} {outcome:?}");
    processes
        .send_input(SendInputRequest { workspace_id: "socket".to_owned(), process: pid(reader), input: stdin(b"x\n") })
        .await
        .unwrap();
    let outcome = collect(stream).await;
    assert_eq!(outcome.stdout_text(), "got x\n");
    assert_eq!(outcome.end().exit_code, 4, "the exit still comes through berth's connection");

    // Other users cannot even look into the socket's directory.
    let mut request = start_request("socket", "ls", &["/run/berth"]);
    request.process.as_mut().unwrap().user = "nobody".to_owned();
    let outcome = run(&mut processes, request).await;
    assert_ne!(outcome.end().exit_code, 0);
    assert!(String::from_utf8_lossy(&outcome.stderr).contains("Permission denied"), "{outcome:?}");
}
