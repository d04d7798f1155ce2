//! The wire fuzzer's parts: valid requests of every method, their
//! mutations, and raw HTTP/2 attacks.

pub mod http2;
pub mod mutate;
pub mod requests;
