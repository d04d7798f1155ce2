//! The protobuf codec of Vow's stubs: prost, with a small initial encode
//! buffer.
//!
//! tonic's default codec gives every response stream an 8 KiB encode buffer
//! that it keeps for the stream's whole life. A `Watch` stream idles for
//! minutes between messages of a few hundred bytes, so with thousands of
//! watchers that buffer was most of the server's memory per watcher. Larger
//! messages still encode: the buffer grows as needed.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial encode buffer per RPC: most task messages fit; a larger one grows it.
const ENCODE_BUFFER_BYTES: usize = 512;
/// Bytes a stream encodes before handing them to HTTP/2 (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with an [`ENCODE_BUFFER_BYTES`] encode buffer.
#[derive(Debug, Clone)]
pub struct VowCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for VowCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for VowCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(
            ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.0.decoder()
    }
}
