//! Rust bindings for the berth API (`berth.workspace.v1`): message types, tonic clients and
//! server traits, generated at build time from the protos in `proto/`.

/// The `berth.workspace.v1` package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.workspace.v1");
}

/// The encoded `FileDescriptorSet` of every berth proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("berth_descriptor");

/// The `google.rpc.ErrorInfo` domain of every berth error.
pub const ERROR_DOMAIN: &str = "berth.dev";
