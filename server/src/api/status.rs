//! The one place where a domain [`Error`] becomes a `tonic::Status`, with a
//! `google.rpc.ErrorInfo{reason, domain: "berth.dev"}` detail.

use std::collections::HashMap;

use berth_api::ERROR_DOMAIN;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, Reason};

/// The gRPC code that goes with each reason.
fn code(reason: Reason) -> Code {
    match reason {
        Reason::InvalidWorkspaceId
        | Reason::InvalidArgument
        | Reason::InvalidImageReference
        | Reason::InvalidResources
        | Reason::RequestIdReused
        | Reason::ChecksumMismatch
        | Reason::InvalidPath
        | Reason::PathEscapesWorkspace
        | Reason::UserNotFound => Code::InvalidArgument,
        Reason::WorkspaceNotFound
        | Reason::ImageNotFound
        | Reason::NoMatchingPlatform
        | Reason::CdiDeviceNotFound
        | Reason::PreservedDataNotFound
        | Reason::UploadNotFound
        | Reason::SnapshotNotFound
        | Reason::VersionNotFound
        | Reason::PathNotFound
        | Reason::ProcessNotFound
        | Reason::ExecutableNotFound => Code::NotFound,
        Reason::WorkspaceAlreadyExists
        | Reason::SnapshotAlreadyExists
        | Reason::PathAlreadyExists
        | Reason::ProcessTagInUse => Code::AlreadyExists,
        Reason::RegistryAuthFailed
        | Reason::WorkspaceDeleting
        | Reason::InvalidStateTransition
        | Reason::WorkspaceNotRunning
        | Reason::UploadOffsetMismatch
        | Reason::SnapshotInUse
        | Reason::NotADirectory
        | Reason::IsADirectory
        | Reason::DirectoryNotEmpty
        | Reason::ProcessExited
        | Reason::StdinNotOpen
        | Reason::PtyNotAllocated => Code::FailedPrecondition,
        Reason::WorkspaceBusy | Reason::RevisionMismatch => Code::Aborted,
        Reason::ResourceLimitExceeded => Code::ResourceExhausted,
        Reason::RegistryUnavailable
        | Reason::ImagePullFailed
        | Reason::ContainerdUnavailable
        | Reason::ServerShuttingDown => Code::Unavailable,
        Reason::NotImplemented => Code::Unimplemented,
        Reason::DataArchiveFailed | Reason::RuntimeError | Reason::StoreError | Reason::Internal => Code::Internal,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let metadata: HashMap<String, String> =
            err.metadata().iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect();
        let details = ErrorDetails::with_error_info(err.reason().as_str(), ERROR_DOMAIN, metadata);
        Status::with_error_details(code(err.reason()), err.message(), details)
    }
}

#[cfg(test)]
mod tests {
    use berth_api::v1::ErrorReason;

    use super::*;

    #[test]
    fn every_reason_is_an_error_reason_of_the_proto() {
        for reason in Reason::ALL {
            assert!(ErrorReason::from_str_name(reason.as_str()).is_some(), "{reason} missing in error_reason.proto");
        }
    }

    #[test]
    fn every_error_reason_of_the_proto_is_a_reason() {
        let known: Vec<_> = Reason::ALL.iter().map(|reason| reason.as_str()).collect();
        let proto_values = (1..1000).filter_map(|value| ErrorReason::try_from(value).ok());
        for value in proto_values {
            assert!(known.contains(&value.as_str_name()), "{} has no domain Reason", value.as_str_name());
        }
    }

    #[test]
    fn status_carries_code_message_and_error_info() {
        let status = Status::from(Error::workspace_not_found("bot-1"));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("bot-1"));
        let info = status.get_details_error_info().expect("error info attached");
        assert_eq!(info.reason, "WORKSPACE_NOT_FOUND");
        assert_eq!(info.domain, "berth.dev");
        assert_eq!(info.metadata.get("workspace_id").map(String::as_str), Some("bot-1"));
    }
}
