//! The domain error: a machine-readable [`Reason`] (mirroring `error_reason.proto`) and a
//! lowercase message that says what failed and what to do. `api/status.rs` turns it into a
//! gRPC status; nothing else does.

use std::fmt;

/// Why an operation failed. Each value is an `ErrorReason` of `error_reason.proto` with the same
/// name in SCREAMING_SNAKE_CASE; the gRPC code is chosen in `api/status.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidWorkspaceId,
    WorkspaceNotFound,
    WorkspaceAlreadyExists,
    InvalidArgument,
    InvalidImageReference,
    ImageNotFound,
    RegistryUnavailable,
    RegistryAuthFailed,
    NoMatchingPlatform,
    ImagePullFailed,
    InvalidResources,
    CdiDeviceNotFound,
    WorkspaceDeleting,
    InvalidStateTransition,
    WorkspaceNotRunning,
    WorkspaceBusy,
    RequestIdReused,
    PreservedDataNotFound,
    DataArchiveFailed,
    ChecksumMismatch,
    UploadNotFound,
    UploadOffsetMismatch,
    SnapshotNotFound,
    SnapshotAlreadyExists,
    SnapshotInUse,
    VersionNotFound,
    InvalidPath,
    PathNotFound,
    PathEscapesWorkspace,
    PathAlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    RevisionMismatch,
    ProcessNotFound,
    ProcessTagInUse,
    ProcessExited,
    StdinNotOpen,
    PtyNotAllocated,
    ExecutableNotFound,
    ResourceLimitExceeded,
    ContainerdUnavailable,
    RuntimeError,
    StoreError,
    NotImplemented,
    Internal,
    UserNotFound,
    ServerShuttingDown,
    NotARegularFile,
    MemoryLimitBelowUsage,
    InvalidNetworkPolicy,
    NetworkDisabled,
    NetworkSetupFailed,
}

impl Reason {
    /// Every reason, for exhaustive checks against the proto enum.
    pub const ALL: [Reason; 53] = [
        Reason::InvalidWorkspaceId,
        Reason::WorkspaceNotFound,
        Reason::WorkspaceAlreadyExists,
        Reason::InvalidArgument,
        Reason::InvalidImageReference,
        Reason::ImageNotFound,
        Reason::RegistryUnavailable,
        Reason::RegistryAuthFailed,
        Reason::NoMatchingPlatform,
        Reason::ImagePullFailed,
        Reason::InvalidResources,
        Reason::CdiDeviceNotFound,
        Reason::WorkspaceDeleting,
        Reason::InvalidStateTransition,
        Reason::WorkspaceNotRunning,
        Reason::WorkspaceBusy,
        Reason::RequestIdReused,
        Reason::PreservedDataNotFound,
        Reason::DataArchiveFailed,
        Reason::ChecksumMismatch,
        Reason::UploadNotFound,
        Reason::UploadOffsetMismatch,
        Reason::SnapshotNotFound,
        Reason::SnapshotAlreadyExists,
        Reason::SnapshotInUse,
        Reason::VersionNotFound,
        Reason::InvalidPath,
        Reason::PathNotFound,
        Reason::PathEscapesWorkspace,
        Reason::PathAlreadyExists,
        Reason::NotADirectory,
        Reason::IsADirectory,
        Reason::DirectoryNotEmpty,
        Reason::RevisionMismatch,
        Reason::ProcessNotFound,
        Reason::ProcessTagInUse,
        Reason::ProcessExited,
        Reason::StdinNotOpen,
        Reason::PtyNotAllocated,
        Reason::ExecutableNotFound,
        Reason::ResourceLimitExceeded,
        Reason::ContainerdUnavailable,
        Reason::RuntimeError,
        Reason::StoreError,
        Reason::NotImplemented,
        Reason::Internal,
        Reason::UserNotFound,
        Reason::ServerShuttingDown,
        Reason::NotARegularFile,
        Reason::MemoryLimitBelowUsage,
        Reason::InvalidNetworkPolicy,
        Reason::NetworkDisabled,
        Reason::NetworkSetupFailed,
    ];

    /// The `ErrorReason` value name, used verbatim as `google.rpc.ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidWorkspaceId => "INVALID_WORKSPACE_ID",
            Reason::WorkspaceNotFound => "WORKSPACE_NOT_FOUND",
            Reason::WorkspaceAlreadyExists => "WORKSPACE_ALREADY_EXISTS",
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::InvalidImageReference => "INVALID_IMAGE_REFERENCE",
            Reason::ImageNotFound => "IMAGE_NOT_FOUND",
            Reason::RegistryUnavailable => "REGISTRY_UNAVAILABLE",
            Reason::RegistryAuthFailed => "REGISTRY_AUTH_FAILED",
            Reason::NoMatchingPlatform => "NO_MATCHING_PLATFORM",
            Reason::ImagePullFailed => "IMAGE_PULL_FAILED",
            Reason::InvalidResources => "INVALID_RESOURCES",
            Reason::CdiDeviceNotFound => "CDI_DEVICE_NOT_FOUND",
            Reason::WorkspaceDeleting => "WORKSPACE_DELETING",
            Reason::InvalidStateTransition => "INVALID_STATE_TRANSITION",
            Reason::WorkspaceNotRunning => "WORKSPACE_NOT_RUNNING",
            Reason::WorkspaceBusy => "WORKSPACE_BUSY",
            Reason::RequestIdReused => "REQUEST_ID_REUSED",
            Reason::PreservedDataNotFound => "PRESERVED_DATA_NOT_FOUND",
            Reason::DataArchiveFailed => "DATA_ARCHIVE_FAILED",
            Reason::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Reason::UploadNotFound => "UPLOAD_NOT_FOUND",
            Reason::UploadOffsetMismatch => "UPLOAD_OFFSET_MISMATCH",
            Reason::SnapshotNotFound => "SNAPSHOT_NOT_FOUND",
            Reason::SnapshotAlreadyExists => "SNAPSHOT_ALREADY_EXISTS",
            Reason::SnapshotInUse => "SNAPSHOT_IN_USE",
            Reason::VersionNotFound => "VERSION_NOT_FOUND",
            Reason::InvalidPath => "INVALID_PATH",
            Reason::PathNotFound => "PATH_NOT_FOUND",
            Reason::PathEscapesWorkspace => "PATH_ESCAPES_WORKSPACE",
            Reason::PathAlreadyExists => "PATH_ALREADY_EXISTS",
            Reason::NotADirectory => "NOT_A_DIRECTORY",
            Reason::IsADirectory => "IS_A_DIRECTORY",
            Reason::DirectoryNotEmpty => "DIRECTORY_NOT_EMPTY",
            Reason::RevisionMismatch => "REVISION_MISMATCH",
            Reason::ProcessNotFound => "PROCESS_NOT_FOUND",
            Reason::ProcessTagInUse => "PROCESS_TAG_IN_USE",
            Reason::ProcessExited => "PROCESS_EXITED",
            Reason::StdinNotOpen => "STDIN_NOT_OPEN",
            Reason::PtyNotAllocated => "PTY_NOT_ALLOCATED",
            Reason::ExecutableNotFound => "EXECUTABLE_NOT_FOUND",
            Reason::ResourceLimitExceeded => "RESOURCE_LIMIT_EXCEEDED",
            Reason::ContainerdUnavailable => "CONTAINERD_UNAVAILABLE",
            Reason::RuntimeError => "RUNTIME_ERROR",
            Reason::StoreError => "STORE_ERROR",
            Reason::NotImplemented => "NOT_IMPLEMENTED",
            Reason::Internal => "INTERNAL",
            Reason::UserNotFound => "USER_NOT_FOUND",
            Reason::ServerShuttingDown => "SERVER_SHUTTING_DOWN",
            Reason::NotARegularFile => "NOT_A_REGULAR_FILE",
            Reason::MemoryLimitBelowUsage => "MEMORY_LIMIT_BELOW_USAGE",
            Reason::InvalidNetworkPolicy => "INVALID_NETWORK_POLICY",
            Reason::NetworkDisabled => "NETWORK_DISABLED",
            Reason::NetworkSetupFailed => "NETWORK_SETUP_FAILED",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed domain operation.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    reason: Reason,
    message: String,
    /// Context for `google.rpc.ErrorInfo.metadata`, such as `workspace_id`.
    metadata: Vec<(&'static str, String)>,
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a reason and a message saying what failed and what to do.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self { reason, message: message.into(), metadata: Vec::new() }
    }

    /// Adds a metadata entry (context for programs, e.g. `workspace_id`).
    pub fn with_metadata(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    /// The metadata entries.
    pub fn metadata(&self) -> &[(&'static str, String)] {
        &self.metadata
    }

    /// The machine-readable reason.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The workspace does not exist.
    pub fn workspace_not_found(workspace_id: &str) -> Self {
        Self::new(
            Reason::WorkspaceNotFound,
            format!(
                "workspace {workspace_id:?} does not exist; create it with CreateWorkspace or list existing ones with ListWorkspaces"
            ),
        )
        .with_metadata("workspace_id", workspace_id)
    }

    /// The RPC is part of the contract but its behaviour is not built yet.
    pub fn not_implemented(what: &str) -> Self {
        Self::new(Reason::NotImplemented, format!("{what} is not implemented in this berth version yet"))
    }

    /// An invariant broke inside berth.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::Internal, message)
    }
}
