//! postcard over serde (feature `postcard`).

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Codec;
use crate::Error;

/// Serde types in postcard, a maintained compact serde format.
///
/// As with bincode, an enum's variant is written as its declaration index.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use chitchat_net::{Codec, Postcard};
///
/// let mut buf = BytesMut::new();
/// Postcard.encode(&(7u64, "seven".to_string()), &mut buf).unwrap();
/// let back: (u64, String) = Postcard.decode(buf.freeze()).unwrap();
/// assert_eq!(back.0, 7);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

/// A postcard output flavor that appends to a `BytesMut`.
struct Append<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.extend_from_slice(&[data]);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Postcard {
    /// Appends the postcard encoding of any serde value to `dst`.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if serde refuses the value.
    pub fn encode_value<T: Serialize + ?Sized>(
        &self,
        item: &T,
        dst: &mut BytesMut,
    ) -> Result<(), Error> {
        postcard::serialize_with_flavor(item, Append(dst)).map_err(|e| Error::encode("postcard", e))
    }

    /// Decodes one serde value from the start of `bytes`; returns it and the
    /// number of bytes it took.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] if the bytes are not a valid encoding.
    pub fn decode_prefix<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<(T, usize), Error> {
        let (value, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| Error::decode("postcard", e))?;
        Ok((value, bytes.len() - rest.len()))
    }
}

impl<T> Codec<T> for Postcard
where
    T: Serialize + DeserializeOwned,
{
    fn name(&self) -> &'static str {
        "postcard"
    }

    fn is_binary(&self) -> bool {
        true
    }

    fn in_format(&self, format: super::Format) -> Option<&'static dyn Codec<T>>
    where
        T: 'static,
    {
        Some(super::serde_codec::<T>(format))
    }

    fn encode(&self, item: &T, dst: &mut BytesMut) -> Result<(), Error> {
        self.encode_value(item, dst)
    }

    fn decode(&self, frame: Bytes) -> Result<T, Error> {
        let (value, used) = self.decode_prefix(&frame)?;
        super::expect_consumed("postcard", used, frame.len())?;
        Ok(value)
    }
}
