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
        | Reason::UserNotFound
        | Reason::InvalidNetworkPolicy => Code::InvalidArgument,
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
        // Retrying unchanged fails again: an operator or the caller has to fix something first.
        Reason::RegistryAuthFailed
        | Reason::ImagePullFailed
        | Reason::DataArchiveFailed
        | Reason::WorkspaceDeleting
        | Reason::InvalidStateTransition
        | Reason::WorkspaceNotRunning
        | Reason::UploadOffsetMismatch
        | Reason::SnapshotInUse
        | Reason::NotADirectory
        | Reason::IsADirectory
        | Reason::DirectoryNotEmpty
        | Reason::NotARegularFile
        | Reason::MemoryLimitBelowUsage
        | Reason::NetworkDisabled
        | Reason::ProcessExited
        | Reason::StdinNotOpen
        | Reason::PtyNotAllocated => Code::FailedPrecondition,
        Reason::WorkspaceBusy | Reason::RevisionMismatch => Code::Aborted,
        Reason::ResourceLimitExceeded => Code::ResourceExhausted,
        // Only causes a retry can cure: clients retry UNAVAILABLE on their own.
        Reason::RegistryUnavailable | Reason::ContainerdUnavailable | Reason::ServerShuttingDown => Code::Unavailable,
        Reason::NotImplemented => Code::Unimplemented,
        Reason::RuntimeError | Reason::StoreError | Reason::NetworkSetupFailed | Reason::Internal => Code::Internal,
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
    fn only_causes_a_retry_cures_are_unavailable() {
        let unavailable: Vec<_> = Reason::ALL.into_iter().filter(|reason| code(*reason) == Code::Unavailable).collect();
        assert_eq!(
            unavailable,
            [Reason::RegistryUnavailable, Reason::ContainerdUnavailable, Reason::ServerShuttingDown]
        );
    }

    #[test]
    fn a_broken_image_and_a_failed_archive_are_failed_precondition() {
        for reason in [Reason::ImagePullFailed, Reason::DataArchiveFailed] {
            let status = Status::from(Error::new(reason, "the image is broken in the registry"));
            assert_eq!(status.code(), Code::FailedPrecondition, "{reason}");
            assert_eq!(status.get_details_error_info().unwrap().reason, reason.as_str());
        }
    }

    #[test]
    fn every_reason_has_the_code_its_proto_comment_names() {
        let proto = include_str!("../../../proto/berth/workspace/v1/error_reason.proto");
        for reason in Reason::ALL {
            let name = reason.as_str();
            let comment = proto_comment(proto, name).unwrap_or_else(|| panic!("{name} has no comment in the proto"));
            let expected = format!("{:?}", code(reason));
            let documented = screaming_to_camel(comment.split([':', ' ']).next().unwrap_or_default());
            assert_eq!(documented, expected, "{name}: the proto comment names another code than the mapping");
        }
    }

    /// The comment lines right above `NAME = n;` in the proto, joined.
    fn proto_comment<'a>(proto: &'a str, name: &str) -> Option<String> {
        let lines: Vec<&'a str> = proto.lines().collect();
        let at = lines.iter().position(|line| line.trim_start().starts_with(&format!("{name} =")))?;
        let mut comment: Vec<&str> = lines[..at]
            .iter()
            .rev()
            .map(|line| line.trim())
            .take_while(|line| line.starts_with("//"))
            .map(|line| line.trim_start_matches('/').trim())
            .collect();
        comment.reverse();
        Some(comment.join(" "))
    }

    /// `FAILED_PRECONDITION` → `FailedPrecondition`, as `tonic::Code`'s Debug writes it.
    fn screaming_to_camel(word: &str) -> String {
        word.split('_')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map(|first| first.to_string() + &chars.as_str().to_lowercase()).unwrap_or_default()
            })
            .collect()
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
