//! Generated protobuf messages and gRPC stubs of Vow's public API (`vow.v1`),
//! plus the encoded descriptor set that the server's reflection serves.
//!
//! `proto/` is the one source of truth for every language; this crate only
//! compiles it.

/// Messages and services of package `vow.v1`.
pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("vow.v1");
    pub use crate::watch_response::WatchResponse;
}

pub mod codec;
pub mod json;
mod watch_response;

/// Encoded `FileDescriptorSet` of everything in `proto/`, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vow_descriptor");
