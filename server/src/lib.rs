//! berth: every bot gets an isolated, persistent Linux workspace (a containerd container),
//! managed over the `berth.workspace.v1` gRPC API.

pub mod api;
pub mod cli;
pub mod config;
pub mod data;
pub mod devices;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod metrics;
pub mod model;
pub mod network;
pub mod process;
pub mod runtime;
pub mod store;
pub mod workspace;
