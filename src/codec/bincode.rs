//! bincode 2 over serde.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Codec;
use crate::Error;

/// The default decode limit of [`Bincode`]: 1 MiB, the default maximum frame
/// length.
pub const DEFAULT_BINCODE_LIMIT: usize = 1024 * 1024;

/// Serde types in bincode 2's standard configuration (little-endian,
/// variable-length integers).
///
/// Decoding runs with a limit of `LIMIT` bytes on what length fields may
/// claim, so a small frame cannot ask for a huge allocation; raise it with
/// `Bincode::<{ 16 << 20 }>` if you raise the maximum frame length. A frame
/// that fails to decode, or holds bytes after the value, is a decode error.
///
/// Beware: bincode writes an enum's variant as its declaration index, so
/// reordering variants changes the wire format. The `Message` derive gives
/// enums stable tags instead.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{Bincode, Codec};
///
/// let mut buf = BytesMut::new();
/// Bincode::default().encode(&(7u64, "seven".to_string()), &mut buf).unwrap();
/// let back: (u64, String) = Bincode::default().decode(buf.freeze()).unwrap();
/// assert_eq!(back, (7, "seven".to_string()));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode<const LIMIT: usize = DEFAULT_BINCODE_LIMIT>;

impl<const LIMIT: usize> Bincode<LIMIT> {
    fn config() -> impl bincode::config::Config {
        bincode::config::standard().with_limit::<LIMIT>()
    }

    /// Appends the bincode encoding of any serde value to `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if serde refuses the value.
    pub fn encode_value<T: Serialize + ?Sized>(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
        bincode::serde::encode_into_std_write(item, &mut dst.writer(), Self::config())
            .map(drop)
            .map_err(|e| Error::encode("bincode", e))
    }

    /// Decodes one serde value from the start of `bytes`; returns it and the
    /// number of bytes it took.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] if the bytes are not a valid encoding.
    pub fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
        bincode::serde::decode_from_slice(bytes, Self::config())
            .map_err(|e| Error::decode("bincode", e))
    }
}

impl<T, const LIMIT: usize> Codec<T> for Bincode<LIMIT>
where
    T: Serialize + DeserializeOwned,
{
    fn name(&self) -> &'static str {
        "bincode"
    }

    fn is_binary(&self) -> bool {
        true
    }

    fn encode(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_value(item, dst)
    }

    fn decode(&self, frame: Bytes) -> Result<T, Error> {
        let (value, used) = self.decode_prefix(&frame)?;
        super::expect_consumed("bincode", used, frame.len())?;
        Ok(value)
    }
}
