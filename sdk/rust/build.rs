//! Generates the berth.workspace.v1 types, clients and servers from `proto/`, plus the encoded
//! file descriptor set that server reflection serves.
//!
//! The protos are parsed by protox (a protobuf compiler in Rust that carries the well-known
//! types), so building this crate needs neither `protoc` nor the system's
//! `google/protobuf/*.proto` files (Debian ships those apart, in `libprotobuf-dev`).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let package_dir = proto_root.join("berth/workspace/v1");
    let mut protos: Vec<PathBuf> = std::fs::read_dir(&package_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    println!("cargo:rerun-if-changed={}", package_dir.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let descriptors = protox::compile(&protos, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("berth_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        // `bytes` fields (file chunks, process output) decode as `bytes::Bytes`: a slice of the
        // received buffer instead of a copy into a Vec.
        .bytes(".")
        // ProcessService has a `Connect` RPC, which would clash with the generated
        // `XxxClient::connect` constructor: clients are built with `XxxClient::new(channel)`.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
