//! The hello frame of the wire-peer handshake and the fingerprints it
//! carries (pure, no I/O): the public module [`handshake`](crate::handshake)
//! re-exports them and documents the wire format. Here, below the codecs and
//! the error type, because [`Error::Handshake`](crate::Error::Handshake) holds
//! a [`HandshakeError`] and [`Message::fingerprint`](crate::Message::fingerprint)
//! returns a [`Fingerprint`].

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;

/// A stable 64-bit hash of a message type's shape: see the
/// [module docs](crate::handshake) for what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// A fingerprint with this value (for a hand-written
    /// [`Message::fingerprint`](crate::Message::fingerprint), or from a hello frame).
    pub const fn from_u64(value: u64) -> Self {
        Fingerprint(value)
    }

    /// Its value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Builds a [`Fingerprint`] the way `#[derive(Message)]` does; use it for a
/// hand-written [`Message::fingerprint`](crate::Message::fingerprint) too.
///
/// Every piece is written with a kind byte and its length before it, so
/// that no two different sequences of pieces hash the same bytes.
///
/// # Examples
///
/// ```
/// use chitchat_net::handshake::FingerprintBuilder;
///
/// let a = FingerprintBuilder::new("struct", "Reading").codec("bincode").field("sensor", "u32", None).finish();
/// let b = FingerprintBuilder::new("struct", "Reading").codec("bincode").field("probe", "u32", None).finish();
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FingerprintBuilder {
    state: u64,
}

impl FingerprintBuilder {
    /// Starts the fingerprint of a `kind` (`"struct"` or `"enum"`) named
    /// `name`.
    pub fn new(kind: &str, name: &str) -> Self {
        FingerprintBuilder { state: FNV_OFFSET }
            .piece(b'k', kind.as_bytes())
            .piece(b'n', name.as_bytes())
    }

    /// Adds the codec's name.
    pub fn codec(self, codec: &str) -> Self {
        self.piece(b'c', codec.as_bytes())
    }

    /// Starts a variant with wire tag `tag`; the fields added next are its.
    pub fn variant(self, tag: u32) -> Self {
        self.piece(b'v', &tag.to_le_bytes())
    }

    /// Adds a field: its name, and its type's fingerprint if it has one,
    /// else its type as written.
    pub fn field(self, name: &str, ty: &str, nested: Option<Fingerprint>) -> Self {
        let this = self.piece(b'f', name.as_bytes());
        match nested {
            Some(nested) => this.piece(b'm', &nested.0.to_le_bytes()),
            None => this.piece(b't', ty.as_bytes()),
        }
    }

    /// The fingerprint.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.state)
    }

    fn piece(mut self, kind: u8, bytes: &[u8]) -> Self {
        // Lengths past 4 GiB wrap; no type name is that long.
        let len = (bytes.len() as u32).to_le_bytes();
        for byte in [kind].iter().chain(&len).chain(bytes) {
            self.state ^= u64::from(*byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
        self
    }
}

/// The magic and version at the start of a hello frame.
pub const HELLO_MAGIC: &[u8; 16] = b"chitchat-hello/1";

/// A hello frame's payload length.
pub const HELLO_LEN: usize = 50;

/// A hello frame: what one side sends and accepts (see the
/// [module docs](crate::handshake) for its wire format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The fingerprint of the type this side sends, if it declares one.
    pub sends: Option<Fingerprint>,
    /// The fingerprint of the type this side accepts, if it declares one.
    pub accepts: Option<Fingerprint>,
}

impl Hello {
    /// Appends the hello's payload (50 bytes) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.extend_from_slice(HELLO_MAGIC);
        for fingerprint in [self.sends, self.accepts] {
            dst.extend_from_slice(b" ");
            match fingerprint {
                Some(fingerprint) => dst.extend_from_slice(fingerprint.to_string().as_bytes()),
                None => dst.extend_from_slice(&[b'-'; 16]),
            }
        }
    }

    /// Reads a hello frame's payload.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::NotAHello`] for anything but exactly a hello.
    pub fn decode(frame: &[u8]) -> Result<Self, HandshakeError> {
        let not_a_hello = HandshakeError::NotAHello {
            len: frame.len(),
            start: frame
                .iter()
                .take(16)
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
                .collect(),
        };
        if frame.len() != HELLO_LEN || !frame.starts_with(HELLO_MAGIC) {
            return Err(not_a_hello);
        }
        let field = |at: usize| -> Result<Option<Fingerprint>, ()> {
            if frame[at - 1] != b' ' {
                return Err(());
            }
            let digits = &frame[at..at + 16];
            if digits == [b'-'; 16] {
                return Ok(None);
            }
            let mut value = 0u64;
            for &digit in digits {
                let nibble = match digit {
                    b'0'..=b'9' => digit - b'0',
                    b'a'..=b'f' => digit - b'a' + 10,
                    _ => return Err(()),
                };
                value = value << 4 | u64::from(nibble);
            }
            Ok(Some(Fingerprint(value)))
        };
        match (field(17), field(34)) {
            (Ok(sends), Ok(accepts)) => Ok(Hello { sends, accepts }),
            _ => Err(not_a_hello),
        }
    }

    /// Checks the peer's hello against ours: what it sends must be what we
    /// accept, and what we send what it accepts (an undeclared fingerprint
    /// matches anything).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Mismatch`].
    pub fn check(&self, peer: &Hello) -> Result<(), HandshakeError> {
        let differ = |a: Option<Fingerprint>, b: Option<Fingerprint>| matches!((a, b), (Some(a), Some(b)) if a != b);
        if differ(peer.sends, self.accepts) || differ(self.sends, peer.accepts) {
            return Err(HandshakeError::Mismatch {
                ours: *self,
                theirs: *peer,
            });
        }
        Ok(())
    }
}

/// Why a handshake failed: the source of an
/// [`Error::Handshake`](crate::Error::Handshake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's message types are not ours.
    #[error(
        "the peer speaks other message types: it sends {} and accepts {}, we send {} and accept {}",
        show(theirs.sends), show(theirs.accepts), show(ours.sends), show(ours.accepts)
    )]
    Mismatch {
        /// Our hello.
        ours: Hello,
        /// The peer's.
        theirs: Hello,
    },
    /// The peer's first frame is not a hello: it has no handshake on.
    #[error("the peer's first frame ({len} bytes, starting {start:?}) is not a handshake: switch `handshake()` on at both ends")]
    NotAHello {
        /// The frame's length.
        len: usize,
        /// Its first bytes, printable ones as they are, others as `.`.
        start: String,
    },
    /// No hello arrived within the handshake timeout: the peer has no
    /// handshake on, or is not a chitchat-net peer.
    #[error("no handshake from the peer within {0:?}: switch `handshake()` on at both ends")]
    Timeout(Duration),
    /// The peer ended the stream before its hello.
    #[error("the peer closed the connection before its handshake")]
    Closed,
}

fn show(fingerprint: Option<Fingerprint>) -> String {
    fingerprint.map_or_else(|| "any type".to_owned(), |f| f.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(v: u64) -> Option<Fingerprint> {
        Some(Fingerprint(v))
    }

    #[test]
    fn hellos_round_trip() {
        for (sends, accepts) in [
            (None, None),
            (fp(0), fp(u64::MAX)),
            (fp(0x0123_4567_89ab_cdef), None),
        ] {
            let hello = Hello { sends, accepts };
            let mut buf = BytesMut::new();
            hello.encode(&mut buf);
            assert_eq!(buf.len(), HELLO_LEN);
            assert_eq!(Hello::decode(&buf), Ok(hello));
        }
    }

    #[test]
    fn anything_else_is_not_a_hello() {
        let mut good = BytesMut::new();
        Hello {
            sends: fp(1),
            accepts: fp(2),
        }
        .encode(&mut good);
        let with = |at: usize, byte: u8| {
            let mut frame = good.to_vec();
            frame[at] = byte;
            frame
        };
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello".to_vec(),
            good[..49].to_vec(),
            [&good[..], b"x"].concat(),
            with(15, b'2'), // another version
            with(20, b'A'), // upper case
            with(33, b'_'), // no space
            with(40, b'-'), // half undeclared
        ];
        for case in cases {
            assert!(
                matches!(Hello::decode(&case), Err(HandshakeError::NotAHello { .. })),
                "{case:?}"
            );
        }
    }

    #[test]
    fn check_compares_each_direction_and_undeclared_matches_anything() {
        let client = Hello {
            sends: fp(1),
            accepts: fp(2),
        };
        let server = Hello {
            sends: fp(2),
            accepts: fp(1),
        };
        assert_eq!(client.check(&server), Ok(()));
        assert_eq!(server.check(&client), Ok(()));
        let wrong = Hello {
            sends: fp(3),
            accepts: fp(1),
        };
        assert!(wrong.check(&server).is_err());
        assert!(server.check(&wrong).is_err());
        let open = Hello {
            sends: None,
            accepts: None,
        };
        assert_eq!(open.check(&client), Ok(()));
        assert_eq!(client.check(&open), Ok(()));
        let half = Hello {
            sends: fp(2),
            accepts: None,
        };
        assert_eq!(half.check(&client), Ok(()));
        assert!(Hello {
            sends: fp(9),
            accepts: None
        }
        .check(&client)
        .is_err());
    }

    #[test]
    fn fingerprints_are_stable_and_tell_pieces_apart() {
        // FNV-1a of nothing is its offset basis: the hash is the standard one.
        assert_eq!(
            FingerprintBuilder { state: FNV_OFFSET }.finish().get(),
            0xcbf2_9ce4_8422_2325
        );
        let a = FingerprintBuilder::new("enum", "Command")
            .variant(1)
            .field("key", "String", None);
        // Pinned: a change in this hash breaks every deployed handshake.
        assert_eq!(a.finish().to_string(), format!("{:016x}", a.finish().get()));
        let b = FingerprintBuilder::new("enum", "Comman")
            .variant(1)
            .field("dkey", "String", None);
        assert_ne!(a.finish(), b.finish());
        let c = FingerprintBuilder::new("enum", "Command")
            .variant(1)
            .field("key", "String", fp(5));
        assert_ne!(a.finish(), c.finish());
    }
}
