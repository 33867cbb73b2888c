//! UTF-8 text.

use bytes::{Bytes, BytesMut};

use super::Codec;
use crate::wire::error::Error;

/// UTF-8 text as [`String`]. Invalid UTF-8 is a decode error.
///
/// # Examples
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use chitchat_net::{Codec, Error, Text};
///
/// let mut buf = BytesMut::new();
/// Text.encode(&"heartbeat ping".to_string(), &mut buf).unwrap();
/// assert_eq!(&buf[..], b"heartbeat ping");
///
/// let bad: Result<String, Error> = Text.decode(Bytes::from_static(b"\xC3"));
/// assert!(matches!(bad, Err(Error::Decode { codec: "text", .. })));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Text;

impl Codec<String> for Text {
    fn name(&self) -> &'static str {
        "text"
    }

    fn is_binary(&self) -> bool {
        false
    }

    fn encode(&self, item: &String, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(item.as_bytes());
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<String, Error> {
        self.decode_slice(&frame)
    }

    fn copies_out(&self) -> bool {
        true
    }

    fn decode_slice(&self, frame: &[u8]) -> Result<String, Error> {
        match std::str::from_utf8(frame) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => Err(Error::decode("text", e)),
        }
    }
}
