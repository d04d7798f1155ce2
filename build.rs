//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed), writes the descriptor set that server reflection serves,
//! and generates the prost messages and tonic stubs from it.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO_FILES: &[&str] = &[
    "vow/v1/task.proto",
    "vow/v1/task_service.proto",
    "vow/v1/worker_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // compile_fds prints no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed=proto");

    let file_descriptors = protox::compile(PROTO_FILES, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("vow_descriptor.bin"),
        file_descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .extern_path(".google.rpc", "::tonic_types::pb")
        // Written out so that a server can send a task encoded once to many
        // watchers (see proto/watch_response.rs).
        .extern_path(
            ".vow.v1.WatchResponse",
            "crate::watch_response::WatchResponse",
        )
        .codec_path("crate::codec::VowCodec")
        .compile_fds(file_descriptors)?;
    Ok(())
}
