//! Plain old data, written as its bytes with no serialisation step.

use bytes::{Bytes, BytesMut};

use super::Codec;
use crate::wire::error::Error;

/// Any [`bytemuck::Pod`] type, written as its in-memory bytes.
///
/// Encoding appends [`bytemuck::bytes_of`] (no serialisation, no intermediate
/// buffer). Decoding checks the frame's size and copies the bytes out with an
/// unaligned read, so a frame at any address decodes correctly.
///
/// The bytes are in the machine's byte order and layout: both peers must
/// agree on them (use fixed-size integers and `#[repr(C)]`). This is the safe
/// successor of the Go original's raw struct writes: `Pod` rules out pointers
/// and padding at compile time.
///
/// # Examples
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use chitchat_net::{Codec, Error, PodCodec};
///
/// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
/// #[repr(C)]
/// struct Sample { id: u32, value: u32 }
///
/// let mut buf = BytesMut::new();
/// PodCodec.encode(&Sample { id: 1, value: 10 }, &mut buf).unwrap();
/// assert_eq!(buf.len(), 8);
/// let back: Sample = PodCodec.decode(buf.freeze()).unwrap();
/// assert_eq!(back, Sample { id: 1, value: 10 });
///
/// let short: Result<Sample, Error> = PodCodec.decode(Bytes::from_static(b"\0\0\0"));
/// assert!(matches!(short, Err(Error::Decode { codec: "pod", .. })));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PodCodec;

/// A `Pod` frame whose size is not the type's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {actual} bytes, expected {expected}")]
pub struct SizeMismatch {
    /// `size_of` the type.
    pub expected: usize,
    /// The frame's length.
    pub actual: usize,
}

impl<T: bytemuck::Pod + Send + Sync> Codec<T> for PodCodec {
    fn name(&self) -> &'static str {
        "pod"
    }

    fn is_binary(&self) -> bool {
        true
    }

    fn encode(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(bytemuck::bytes_of(item));
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<T, Error> {
        self.decode_slice(&frame)
    }

    fn copies_out(&self) -> bool {
        true
    }

    fn decode_slice(&self, frame: &[u8]) -> Result<T, Error> {
        let expected = std::mem::size_of::<T>();
        if frame.len() != expected {
            let mismatch = SizeMismatch {
                expected,
                actual: frame.len(),
            };
            return Err(Error::decode("pod", mismatch));
        }
        Ok(bytemuck::pod_read_unaligned(frame))
    }
}
