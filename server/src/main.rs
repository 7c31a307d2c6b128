//! The `berth` binary: `berth serve` runs the server.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth::cli::{ClientCommand, ServerArgs};
use berth::config::{Config, LogFormat, ServeArgs};
use berth::devices::Devices;
use berth::runtime::Runtime as _;
use berth::runtime::containerd::{Containerd, Namespace, RUNTIME_NAME, RegistryOptions, SNAPSHOTTER};
use berth::store::Store;
use berth::workspace::{Manager, ManagerConfig};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "berth", version, about = "Isolated, persistent Linux workspaces for bots")]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the serve settings does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the berth.workspace.v1 API over gRPC and grpc-web
    Serve(ServeArgs),
    /// Make bearer tokens for `berth serve --tokens-file`
    Token {
        #[command(subcommand)]
        command: berth::cli::token::TokenCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

fn main() -> ExitCode {
    return_large_buffers_to_the_system();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Token { command } => berth::cli::token::run(command),
        Command::Client(command) => runtime.block_on(berth::cli::run(cli.server, command)),
    }
}

/// File chunks and process output pass through 1 MiB buffers on many threads. glibc's dynamic
/// mmap threshold rises after the first such buffer is freed, so later ones come from per-thread
/// arenas that keep the freed memory: a 200 MiB file round trip left ~32 MiB resident. A fixed
/// threshold (which also turns the dynamic one off) maps buffers of 1 MiB and more on their own
/// and returns them when freed (growth ~10 MiB); the mapping costs less than the copy of the chunk.
fn return_large_buffers_to_the_system() {
    const THRESHOLD_BYTES: libc::c_int = 1 << 20;
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread starts.
    #[allow(unsafe_code)]
    let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD_BYTES) };
    if applied != 1 {
        eprintln!("berth: glibc refused a fixed mmap threshold; memory freed by large transfers may stay resident");
    }
}

/// Prints one line naming the cause and returns a failure exit code.
fn fail(message: &str) -> ExitCode {
    eprintln!("berth: {message}");
    ExitCode::FAILURE
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(args) {
        Ok(config) => config,
        Err(err) => return fail(&err.to_string()),
    };
    init_tracing(config.log_format);
    let state_dir = config.state_dir.clone();
    match tokio::task::spawn_blocking(move || berth::store::private::prepare_state_dir(&state_dir)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return fail(err.message()),
        Err(err) => return fail(&format!("cannot prepare the state directory: {err}")),
    }
    let network = match berth::network::Network::new(&config.network).await {
        Ok(network) => Arc::new(network),
        Err(message) => return fail(&message),
    };
    if config.cleanup_network {
        return match network.cleanup().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(err.message()),
        };
    }
    let protection = match load_protection(&config) {
        Ok(protection) => protection,
        Err(message) => return fail(&message),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            return fail(&format!(
                "cannot listen on {}: {err}; stop the process using it or pass another --listen",
                config.listen
            ));
        }
    };
    let registry = RegistryOptions {
        insecure_registries: config.insecure_registries.clone(),
        auth_file: config.registry_auth_file.clone(),
    };
    let devices = Arc::new(Devices::new(config.cdi_spec_dirs.clone()));
    let containerd = match Containerd::new(
        &config.containerd_socket,
        Namespace::new(&config.namespace, config.containerd_timeout),
        registry,
        &config.apparmor_profile,
        devices.clone(),
    ) {
        Ok(containerd) => containerd,
        Err(err) => return fail(err.message()),
    };
    if let Err(message) = wait_for_containerd(&containerd, &config).await {
        return fail(&message);
    }
    match run(config, listener, containerd, devices, network, protection).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&format!("{err:#}")),
    }
}

/// Checks containerd once, or until it answers with `--wait-for-containerd`.
async fn wait_for_containerd(containerd: &Containerd, config: &Config) -> Result<(), String> {
    let mut warned = false;
    loop {
        match containerd.ping().await {
            Ok(version) => {
                info!(socket = %config.containerd_socket.display(), version, "containerd answers");
                return Ok(());
            }
            Err(err) if !config.wait_for_containerd => {
                return Err(format!(
                    "containerd does not answer at {} ({}); start it (systemctl start containerd), \
                     pass the right --containerd-socket, or add --wait-for-containerd",
                    config.containerd_socket.display(),
                    err.message()
                ));
            }
            Err(err) => {
                if !warned {
                    warn!(socket = %config.containerd_socket.display(), error = %err, "waiting for containerd");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    containerd: Containerd,
    devices: Arc<Devices>,
    network: Arc<berth::network::Network>,
    protection: berth::api::Protection,
) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url).await.context("cannot open the store")?;
    report_devices(&devices).await;
    let manager = Arc::new(Manager::new(
        ManagerConfig {
            namespace: config.namespace.clone(),
            state_dir: config.state_dir.clone(),
            default_image: config.default_image.clone(),
            snapshotter: SNAPSHOTTER.to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            import_limits: berth::data::ExtractLimits {
                max_bytes: config.import_max_bytes,
                max_entries: config.import_max_entries,
            },
            max_snapshot_depth: config.max_snapshot_depth,
            event_retention_count: config.event_retention_count,
            event_retention_age: config.event_retention_age,
            devices,
            network,
        },
        store.clone(),
        Arc::new(containerd),
    ));
    let report = manager.reconcile_network().await.context("cannot set up workspace networks")?;
    if report.restored + report.removed > 0 {
        info!(restored = report.restored, removed = report.removed, "workspace networks reconciled");
    }
    // Serving starts at once; each workspace's calls wait for its own reconcile, and health is
    // NOT_SERVING until all are done.
    if let Err(err) = manager.start_reconcile().await {
        warn!(error = %err, "reconcile at boot failed (the store could not be read); restart berth to retry");
        manager.reconciled_without_store();
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // SIGHUP and changed files reload the tokens and the certificate.
    tokio::spawn(berth::auth::reload::run(
        protection.authenticator.clone(),
        protection.certificate.clone(),
        shutdown.clone(),
    ));
    // Task exits and OOM kills from containerd, and the event history's pruning.
    manager.start_background(shutdown.clone());
    if !protection.authenticator.is_on() {
        warn!(
            listen = %config.listen,
            "AUTHENTICATION IS OFF: every process that can reach this address may create, read, change and \
             delete every workspace; give berth a --tokens-file before anyone else can reach it"
        );
    }
    info!(
        listen = %config.listen,
        namespace = %config.namespace,
        state_dir = %config.state_dir.display(),
        cors_origins = ?config.cors_origins,
        auth = if protection.authenticator.is_on() { "tokens" } else { "none" },
        tls = protection.certificate.is_some(),
        "berth is serving"
    );
    let metrics = Arc::new(berth::metrics::Metrics::new(manager.clone(), config.storage_sample_interval));
    let served =
        berth::api::serve(listener, manager.clone(), metrics, &config.cors_origins, protection, shutdown).await;
    // Creates, stops and data operations still running finish before the store closes (a create
    // cut off here would only be rolled back at the next boot).
    if !manager.drain(SHUTDOWN_DRAIN).await {
        warn!(
            drain_secs = SHUTDOWN_DRAIN.as_secs(),
            "operations still running after the drain period; the next boot finishes or rolls them back"
        );
    }
    store.close().await;
    info!("berth stopped");
    served
}

/// Reads the tokens file and the TLS certificate (one line naming the problem if one cannot be
/// used).
fn load_protection(config: &Config) -> Result<berth::api::Protection, String> {
    let security = &config.security;
    let authenticator = match &security.tokens_file {
        Some(path) => berth::auth::Authenticator::from_file(path, security.auth_failure_limit)?,
        None => berth::auth::Authenticator::off(),
    };
    let certificate = security.tls.clone().map(berth::auth::tls::ServerCertificate::load).transpose()?;
    Ok(berth::api::Protection { authenticator: Arc::new(authenticator), certificate })
}

/// Logs what the CDI spec directories offer at start (and, through the scan, each spec file that
/// cannot be used).
async fn report_devices(devices: &Devices) {
    match devices.catalog().await {
        Ok(catalog) => info!(
            spec_dirs = ?devices.spec_dirs(),
            devices = catalog.devices.len(),
            spec_file_errors = catalog.spec_file_errors.len(),
            "CDI devices read"
        ),
        Err(err) => warn!(error = %err, "cannot read the CDI spec directories"),
    }
}

/// How long a shutdown waits for operations in flight.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        warn!("cannot install signal handlers; stop berth with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "shutting down: no new connections, open streams end with UNAVAILABLE");
    shutdown.cancel();
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,h2=warn,hyper=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
