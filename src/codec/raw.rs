//! Raw bytes, passed through untouched.

use bytes::{Bytes, BytesMut};

use super::Codec;
use crate::wire::error::Error;

/// Raw bytes: the frame is the value. Not binary in the framing sense (it
/// gets raw delimited framing by default, as in the Go original).
///
/// Decoding into [`Bytes`] copies nothing.
///
/// # Examples
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use chitchat_net::{Codec, Raw};
///
/// let mut buf = BytesMut::new();
/// Raw.encode(&Bytes::from_static(b"hi"), &mut buf).unwrap();
/// let back: Bytes = Raw.decode(buf.freeze()).unwrap();
/// assert_eq!(back, &b"hi"[..]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec<Bytes> for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn is_binary(&self) -> bool {
        false
    }

    fn encode(&self, item: &Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(item);
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<Bytes, Error> {
        Ok(frame)
    }
}

impl Codec<Vec<u8>> for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn is_binary(&self) -> bool {
        false
    }

    fn encode(&self, item: &Vec<u8>, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(item);
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<Vec<u8>, Error> {
        Ok(frame.to_vec())
    }

    fn copies_out(&self) -> bool {
        true
    }

    fn decode_slice(&self, frame: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(frame.to_vec())
    }
}
