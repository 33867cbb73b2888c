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
pub const HELLO_MAGIC: &[u8; 16] = b"chitchat-hello/2";

/// The magic of the first version of the hello (chitchat-net before the
/// handshake checked the protocol): recognised, to say that the peer is
/// older ([`HandshakeError::OldPeer`]).
pub const HELLO_V1_MAGIC: &[u8; 16] = b"chitchat-hello/1";

/// The payload of the frame a side with its handshake off answers a
/// hello with ([`HandshakeError::UnexpectedHello`]), before it closes the
/// connection: the peer fails at once with [`HandshakeError::NoHandshake`]
/// (a build older than this frame, with [`HandshakeError::NotAHello`],
/// whose words say the same), instead of waiting for a hello until its
/// handshake timeout. Sent in the refusing side's framing, like a hello.
pub const NO_HELLO_MAGIC: &[u8; 18] = b"chitchat-nohello/1";

/// What the first bytes of a connection are, whatever the peer's framing
/// (delimited, or length-prefixed: a big-endian `u32` length first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstBytes {
    /// Too few to tell (a start of a hello or a refusal, or of a length
    /// prefix that could be one's).
    Undecided,
    /// A hello (of any version).
    Hello,
    /// A refusal: the peer has its handshake off ([`NO_HELLO_MAGIC`]).
    NoHello,
    /// Neither.
    Other,
}

/// Classifies the first bytes a connection reads (see [`FirstBytes`]).
pub(crate) fn first_bytes(buf: &[u8]) -> FirstBytes {
    const HELLO: &[u8] = b"chitchat-hello/";
    // `Some(true)` if `text` starts with `magic`, `None` while it is a
    // shorter start of it.
    let starts = |text: &[u8], magic: &[u8]| {
        let n = text.len().min(magic.len());
        (text[..n] == magic[..n]).then_some(n == magic.len())
    };
    let classify = |text: &[u8]| match (starts(text, HELLO), starts(text, NO_HELLO_MAGIC)) {
        (Some(true), _) => FirstBytes::Hello,
        (_, Some(true)) => FirstBytes::NoHello,
        (None, None) => FirstBytes::Other,
        _ => FirstBytes::Undecided,
    };
    match classify(buf) {
        FirstBytes::Other => {}
        found => return found,
    }
    // A length prefix: at most MAX_HELLO_LEN (0x1000), so two zero bytes.
    let Some(prefix) = buf.get(..4) else {
        let could = buf.iter().take(2).all(|&b| b == 0) && buf.get(2).is_none_or(|&b| b <= 0x10);
        return if could {
            FirstBytes::Undecided
        } else {
            FirstBytes::Other
        };
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if !(NO_HELLO_MAGIC.len().min(HELLO.len())..=MAX_HELLO_LEN).contains(&len) {
        return FirstBytes::Other;
    }
    classify(&buf[4..])
}

/// A hello frame's payload is at most this long: longer ones are
/// [`HandshakeError::Malformed`], and a hello whose names would not fit
/// lists fewer variants.
pub const MAX_HELLO_LEN: usize = 4096;

/// Variants listed per message type, at the most: the fingerprint still
/// covers every one.
pub const MAX_LISTED_VARIANTS: usize = 64;

/// Names (of types, variants, codecs) are cut to this many characters.
pub const MAX_NAME_LEN: usize = 48;

/// The protocol versions this build speaks: the lowest and the highest.
pub const PROTOCOL_VERSIONS: (u16, u16) = (1, 1);

/// Optional protocol pieces, as bits of [`Hello::features`]: a piece is
/// used on a connection only if both sides set its bit, so a bit never
/// makes two peers refuse each other.
pub mod features {
    /// Error replies: a request that fails (a handler error, a request
    /// that does not decode, a `Replier` dropped unanswered) is answered
    /// with a typed error frame (envelope kind `0x03`). Every build of
    /// protocol version 1 sets it.
    pub const ERROR_REPLIES: u64 = 1 << 0;
    /// Deadlines travel: a request carries the time its caller still waits
    /// (envelope kind `0x04`), and one whose deadline passed before its
    /// handler started is answered with `DeadlineExceeded` instead of run.
    pub const DEADLINES: u64 = 1 << 1;
    /// Cancellation travels: a request its caller gives up (dropped, or
    /// timed out) is cancelled at the peer (envelope kind `0x05`), which
    /// stops its handler.
    pub const CANCELLATION: u64 = 1 << 2;
    /// Overload is an answer: past its bounds a server refuses a request
    /// at once with an `Overloaded` error reply instead of making it wait.
    pub const OVERLOAD: u64 = 1 << 3;
    /// Drain: a server that shuts down gracefully tells the client first
    /// (envelope kind `0x06`, see [`envelope`](crate::envelope)); the
    /// client answers it and sends no new request on that connection. Needs
    /// request ids (the envelope) on both ends.
    pub const DRAIN: u64 = 1 << 4;
    /// Reply streams: a request may be answered with a stream of items
    /// under credit-based flow control (envelope kinds `0x07` to `0x09`;
    /// see [`envelope`](crate::envelope)). Without it on both sides,
    /// `subscribe` fails at once and no stream frame is sent.
    pub const REPLY_STREAMS: u64 = 1 << 5;
    /// The bits this build sets in its hello (unless a builder announces
    /// fewer: `announce_features(..)`, `no_drain()`, `no_reply_streams()`).
    pub const SUPPORTED: u64 =
        ERROR_REPLIES | DEADLINES | CANCELLATION | OVERLOAD | DRAIN | REPLY_STREAMS;
}

/// How a side matches replies to requests: part of the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestMode {
    /// No requests: frames carry no envelope.
    None,
    /// Request ids: every frame carries the request envelope.
    Ids,
    /// Ordered replies: no envelope; the next frame answers the oldest
    /// request.
    Ordered,
}

impl RequestMode {
    fn token(self) -> &'static str {
        match self {
            RequestMode::None => "none",
            RequestMode::Ids => "ids",
            RequestMode::Ordered => "ordered",
        }
    }

    fn words(self) -> &'static str {
        match self {
            RequestMode::None => "no requests",
            RequestMode::Ids => "request ids",
            RequestMode::Ordered => "ordered replies",
        }
    }
}

/// One message type as a hello describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// The type's name, without its module path.
    pub name: String,
    /// The name of the codec it is written with on this connection (its
    /// own, or a builder's `.codec(..)` or `serde_format(..)`).
    pub codec: String,
    /// Its fingerprint with the codec's name mixed in: see
    /// [`effective_fingerprint`].
    pub fingerprint: Fingerprint,
    /// Its variants, in the order of the tags (none for a struct). At
    /// most [`MAX_LISTED_VARIANTS`].
    pub variants: Vec<VariantInfo>,
    /// Whether `variants` lists every variant.
    pub all_variants: bool,
    /// The effective fingerprints of the earlier versions of the type it
    /// still decodes (`#[message(also_decodes = ...)]`, see
    /// [`Message::also_decodes`](crate::Message::also_decodes)), at most
    /// [`MAX_ALSO_DECODES`]: a peer that sends one of them is accepted.
    pub also_decodes: Vec<Fingerprint>,
}

/// One variant of a message type, as a hello describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantInfo {
    /// Its wire tag.
    pub tag: u32,
    /// Its name.
    pub name: String,
    /// Its shape (the fingerprint of its fields, folded to 32 bits: see
    /// [`fold`]), if the type says
    /// ([`Message::variant_fingerprints`](crate::Message::variant_fingerprints)):
    /// a tag both peers have must have the same name and shape at both.
    pub shape: Option<u32>,
}

/// A variant's fingerprint as a hello carries it: its two halves xored
/// (32 bits, 8 hex digits, so that a hello lists many variants).
pub fn fold(fingerprint: Fingerprint) -> u32 {
    (fingerprint.0 ^ (fingerprint.0 >> 32)) as u32
}

/// Earlier versions a type declares it still decodes, at the most: a hello
/// carries no more.
pub const MAX_ALSO_DECODES: usize = 8;

/// The fingerprint a hello carries for a type: its shape's fingerprint
/// ([`Message::fingerprint`](crate::Message::fingerprint)) and the name of
/// the codec it is written with on the connection, hashed together.
pub fn effective_fingerprint(shape: Fingerprint, codec: &str) -> Fingerprint {
    FingerprintBuilder::new("effective", "")
        .field("shape", "", Some(shape))
        .codec(codec)
        .finish()
}

/// A hello frame: what one side speaks (see the
/// [module docs](crate::handshake) for its wire format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol versions it speaks: the lowest and the highest.
    pub protocol: (u16, u16),
    /// Its cluster label, if it has one.
    pub cluster: Option<String>,
    /// How it matches replies to requests.
    pub requests: RequestMode,
    /// The framing of what it sends (see [`framing_name`](crate::handshake::framing_name)); `None` if not
    /// declared (a server that does not say what it sends).
    pub send_framing: Option<String>,
    /// The framing it cuts received frames with.
    pub receive_framing: String,
    /// Optional protocol pieces it speaks (see [`features`]).
    pub features: u64,
    /// The type it sends, if it declares one.
    pub sends: Option<TypeInfo>,
    /// The type it accepts, if it declares one.
    pub accepts: Option<TypeInfo>,
}

/// Whether `byte` may appear in a hello's text: `[A-Za-z0-9]`, the space
/// and `-/=:,._+`. A delimited framing whose delimiter is one of them
/// cannot carry a hello.
pub(crate) fn in_hello_alphabet(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b" -/=:,._+".contains(&byte)
}

/// Where the peer's hello is at the start of `buf`, whatever the peer's
/// framing (so that a peer of another framing is told so, rather than
/// waited for): `Some((text, taken))`, the hello's text and the bytes it
/// takes with its framing; `None` while more bytes are needed.
///
/// A delimited hello is its text then one byte outside the
/// [alphabet](in_hello_alphabet) (the peer's delimiter); a length-prefixed
/// one, a big-endian `u32` length then the text.
///
/// # Errors
///
/// [`HandshakeError::NotAHello`] as soon as the bytes cannot start a hello,
/// [`HandshakeError::Malformed`] for one longer than [`MAX_HELLO_LEN`].
pub(crate) fn cut_hello(
    buf: &[u8],
) -> Result<Option<(std::ops::Range<usize>, usize)>, HandshakeError> {
    const PREFIX: &[u8] = b"chitchat-hello/";
    let not_a_hello = || HandshakeError::NotAHello {
        len: buf.len(),
        start: buf
            .iter()
            .take(16)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect(),
    };
    let too_long = HandshakeError::Malformed {
        why: "longer than 4096 bytes",
    };
    // Whether the bytes from `at` on (some at least) start the prefix.
    let starts = |at: usize| {
        let seen = buf.get(at..).unwrap_or_default();
        let n = seen.len().min(PREFIX.len());
        n > 0 && seen[..n] == PREFIX[..n]
    };
    if starts(0) {
        if buf.len() < PREFIX.len() {
            return Ok(None);
        }
        return match buf.iter().position(|&b| !in_hello_alphabet(b)) {
            Some(end) if end <= MAX_HELLO_LEN => Ok(Some((0..end, end + 1))),
            Some(_) => Err(too_long),
            None if buf.len() > MAX_HELLO_LEN => Err(too_long),
            None => Ok(None),
        };
    }
    if buf.len() < 4 {
        // The start of a length prefix, or of a delimited hello not yet
        // told apart.
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(PREFIX.len()..=MAX_HELLO_LEN).contains(&len) {
        return Err(not_a_hello());
    }
    if buf.len() == 4 {
        return Ok(None);
    }
    if !starts(4) {
        return Err(not_a_hello());
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((4..4 + len, 4 + len)))
}

/// Which side of the connection we are: for the words of a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialled.
    Client,
    /// We accepted.
    Server,
}

impl Role {
    fn peer(self) -> &'static str {
        match self {
            Role::Client => "the server",
            Role::Server => "the client",
        }
    }

    fn me(self) -> &'static str {
        match self {
            Role::Client => "this client",
            Role::Server => "this server",
        }
    }
}

/// The setting two peers differ in: see [`Mismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Setting {
    /// The protocol version ranges do not overlap.
    Protocol,
    /// The cluster labels differ.
    Cluster,
    /// The framings differ.
    Framing,
    /// One side uses request ids, the other not.
    RequestMode,
    /// One side sends another message type than the other accepts.
    MessageType,
    /// The same type, written with another codec.
    Codec,
    /// The same type with other variants.
    Variants,
    /// The same type with other fields (another fingerprint).
    Fields,
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setting::Protocol => "protocol version",
            Setting::Cluster => "cluster",
            Setting::Framing => "framing",
            Setting::RequestMode => "request mode",
            Setting::MessageType => "message type",
            Setting::Codec => "codec",
            Setting::Variants => "variants",
            Setting::Fields => "fields",
        })
    }
}

/// The first difference between two hellos, in words: "the server uses
/// request ids, this client ordered replies".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{words}")]
pub struct Mismatch {
    /// The setting that differs.
    pub setting: Setting,
    /// The difference, said from this side.
    pub words: String,
}

/// Keeps the characters a hello may carry in a name (`[A-Za-z0-9_.-]`),
/// others as `_`, and at most [`MAX_NAME_LEN`] of them.
fn clean(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME_LEN)
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

impl TypeInfo {
    /// A type named `name`, written with `codec`, with the shape
    /// `fingerprint` and the variants `variants` (tag, name): names are
    /// cleaned and cut, the list cut to [`MAX_LISTED_VARIANTS`].
    pub fn new(
        name: &str,
        codec: &str,
        fingerprint: Fingerprint,
        variants: &[(u32, &str)],
    ) -> Self {
        let mut sorted: Vec<VariantInfo> = variants
            .iter()
            .map(|(tag, name)| VariantInfo {
                tag: *tag,
                name: clean(name),
                shape: None,
            })
            .collect();
        sorted.sort_by_key(|variant| variant.tag);
        let all_variants = sorted.len() <= MAX_LISTED_VARIANTS;
        sorted.truncate(MAX_LISTED_VARIANTS);
        TypeInfo {
            name: clean(name),
            codec: clean(codec),
            fingerprint: effective_fingerprint(fingerprint, codec),
            variants: sorted,
            all_variants,
            also_decodes: Vec::new(),
        }
    }

    /// With the shapes of its variants (tag, fingerprint of the variant's
    /// fields: [`Message::variant_fingerprints`](crate::Message::variant_fingerprints)).
    pub fn with_variant_shapes(mut self, shapes: &[(u32, Fingerprint)]) -> Self {
        for variant in &mut self.variants {
            variant.shape = shapes
                .iter()
                .find(|(tag, _)| *tag == variant.tag)
                .map(|(_, shape)| fold(*shape));
        }
        self
    }

    /// With the earlier versions it still decodes (their shapes'
    /// fingerprints, [`Message::also_decodes`](crate::Message::also_decodes)),
    /// at most [`MAX_ALSO_DECODES`] of them.
    pub fn with_also_decodes(mut self, shapes: &[Fingerprint]) -> Self {
        self.also_decodes = shapes
            .iter()
            .take(MAX_ALSO_DECODES)
            .map(|shape| effective_fingerprint(*shape, &self.codec))
            .collect();
        self
    }

    fn encode(&self, out: &mut String, listed: usize) {
        use fmt::Write;
        let _ = write!(out, "{}:{}:{}:", self.name, self.codec, self.fingerprint);
        for (i, variant) in self.variants.iter().take(listed).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}.{}", variant.tag, variant.name);
        }
        if !self.all_variants || listed < self.variants.len() {
            out.push_str(if self.variants.is_empty() || listed == 0 {
                "+"
            } else {
                ",+"
            });
        }
    }

    /// The fields added after the first hello of version 2 shipped, as
    /// keys of their own (`{key}-shapes=tag/shape,..` and
    /// `{key}-also=fingerprint,..`) that a build without them skips: the
    /// value of `sends=` and `accepts=` keeps its first grammar, so builds
    /// of either kind read each other's hello.
    fn encode_extras(&self, key: &str, out: &mut String, listed: usize) {
        use fmt::Write;
        let shapes = self
            .variants
            .iter()
            .take(listed)
            .filter_map(|variant| variant.shape.map(|shape| (variant.tag, shape)));
        for (i, (tag, shape)) in shapes.enumerate() {
            if i == 0 {
                let _ = write!(out, " {key}-shapes=");
            } else {
                out.push(',');
            }
            let _ = write!(out, "{tag}/{shape:08x}");
        }
        for (i, also) in self.also_decodes.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, " {key}-also=");
            } else {
                out.push(',');
            }
            let _ = write!(out, "{also}");
        }
    }

    /// Reads a `{key}-shapes=` value into the listed variants.
    fn decode_shapes(&mut self, text: &str) -> Option<()> {
        for (i, item) in text.split(',').enumerate() {
            if i >= MAX_LISTED_VARIANTS {
                return None;
            }
            let (tag, shape) = item.split_once('/')?;
            if tag.is_empty() || tag.len() > 10 || shape.len() != 8 {
                return None;
            }
            let tag: u32 = tag.parse().ok()?;
            let shape = u32::from_str_radix(shape, 16).ok()?;
            if let Some(variant) = self.variants.iter_mut().find(|v| v.tag == tag) {
                variant.shape = Some(shape);
            }
        }
        Some(())
    }

    /// Reads a `{key}-also=` value.
    fn decode_also(&mut self, text: &str) -> Option<()> {
        for fingerprint in text.split(',') {
            if self.also_decodes.len() >= MAX_ALSO_DECODES {
                return None;
            }
            self.also_decodes.push(Fingerprint(parse_hex(fingerprint)?));
        }
        Some(())
    }

    /// The variant with `tag`, if listed.
    fn variant(&self, tag: u32) -> Option<&VariantInfo> {
        self.variants.iter().find(|variant| variant.tag == tag)
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(4, ':');
        let name = parts.next().filter(|n| valid_name(n))?.to_owned();
        let codec = parts.next().filter(|n| valid_name(n))?.to_owned();
        let fingerprint = parse_hex(parts.next()?)?;
        let list = parts.next()?;
        let mut variants = Vec::new();
        let mut all_variants = true;
        if !list.is_empty() {
            for item in list.split(',') {
                if item == "+" {
                    all_variants = false;
                    continue;
                }
                if !all_variants || variants.len() >= MAX_LISTED_VARIANTS {
                    return None;
                }
                let (tag, name) = item.split_once('.')?;
                if !valid_name(name) || tag.is_empty() || tag.len() > 10 {
                    return None;
                }
                let tag: u32 = tag.parse().ok()?;
                variants.push(VariantInfo {
                    tag,
                    name: name.to_owned(),
                    shape: None,
                });
            }
        }
        Some(TypeInfo {
            name,
            codec,
            fingerprint: Fingerprint(fingerprint),
            variants,
            all_variants,
            also_decodes: Vec::new(),
        })
    }

    fn variant_list(&self) -> String {
        let mut names: Vec<&str> = self.variants.iter().map(|v| v.name.as_str()).collect();
        if !self.all_variants {
            names.push("…");
        }
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn parse_hex(digits: &str) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    let mut value = 0u64;
    for digit in digits.bytes() {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        value = value << 4 | u64::from(nibble);
    }
    Some(value)
}

/// Whether `label` is a valid cluster label: 1 to 64 characters of
/// `[A-Za-z0-9_.-]`.
pub(crate) fn valid_cluster(label: &str) -> bool {
    label.len() <= 64 && valid_name(label)
}

/// Whether `framing` is a framing name a hello may carry.
fn valid_framing(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':')
}

impl Hello {
    /// Appends the hello's payload (ASCII text, at most
    /// [`MAX_HELLO_LEN`] bytes: variants are left out of the lists until
    /// it fits) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut listed = MAX_LISTED_VARIANTS;
        loop {
            let text = self.text(listed);
            if text.len() <= MAX_HELLO_LEN || listed == 0 {
                dst.extend_from_slice(text.as_bytes());
                return;
            }
            listed /= 2;
        }
    }

    fn text(&self, listed: usize) -> String {
        use fmt::Write;
        let mut out = String::with_capacity(256);
        out.push_str(std::str::from_utf8(HELLO_MAGIC).unwrap_or_default());
        let _ = write!(
            out,
            " proto={}-{} cluster={} requests={} send-framing={} receive-framing={} features={:016x}",
            self.protocol.0,
            self.protocol.1,
            self.cluster.as_deref().unwrap_or("-"),
            self.requests.token(),
            self.send_framing.as_deref().unwrap_or("-"),
            self.receive_framing,
            self.features,
        );
        for (key, info) in [("sends", &self.sends), ("accepts", &self.accepts)] {
            let _ = write!(out, " {key}=");
            match info {
                Some(info) => info.encode(&mut out, listed),
                None => out.push('-'),
            }
        }
        for (key, info) in [("sends", &self.sends), ("accepts", &self.accepts)] {
            if let Some(info) = info {
                info.encode_extras(key, &mut out, listed);
            }
        }
        out
    }

    /// Reads a hello frame's payload. Unknown `key=value` fields are
    /// skipped (a later version may add some).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::OldPeer`] for a version 1 hello,
    /// [`HandshakeError::NotAHello`] for a frame that is not a hello,
    /// [`HandshakeError::Malformed`] for a version 2 hello that does not
    /// parse.
    pub fn decode(frame: &[u8]) -> Result<Self, HandshakeError> {
        if frame.starts_with(HELLO_V1_MAGIC) {
            return Err(HandshakeError::OldPeer);
        }
        let rest = match frame.strip_prefix(&HELLO_MAGIC[..]) {
            Some(rest) if rest.is_empty() || rest[0] == b' ' => rest,
            _ => {
                return Err(HandshakeError::NotAHello {
                    len: frame.len(),
                    start: frame
                        .iter()
                        .take(16)
                        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
                        .collect(),
                })
            }
        };
        let malformed = |why: &'static str| HandshakeError::Malformed { why };
        if frame.len() > MAX_HELLO_LEN {
            return Err(malformed("longer than 4096 bytes"));
        }
        let text = std::str::from_utf8(rest)
            .ok()
            .filter(|t| t.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .ok_or(malformed("not printable ASCII text"))?;
        let (mut protocol, mut cluster, mut requests) = (None, None, None);
        let (mut send_framing, mut receive_framing, mut feature_bits) = (None, None, None);
        let (mut sends, mut accepts) = (None, None);
        let mut extras: Vec<(&str, &str)> = Vec::new();
        for field in text.split(' ').filter(|f| !f.is_empty()) {
            let Some((key, value)) = field.split_once('=') else {
                return Err(malformed("a field without `=`"));
            };
            match key {
                "proto" => {
                    let (min, max) = value.split_once('-').ok_or(malformed("proto"))?;
                    let min: u16 = min.parse().map_err(|_| malformed("proto"))?;
                    let max: u16 = max.parse().map_err(|_| malformed("proto"))?;
                    if min > max {
                        return Err(malformed("proto: min over max"));
                    }
                    protocol = Some((min, max));
                }
                "cluster" => {
                    cluster = Some(match value {
                        "-" => None,
                        label if valid_cluster(label) => Some(label.to_owned()),
                        _ => return Err(malformed("cluster")),
                    });
                }
                "requests" => {
                    requests = Some(match value {
                        "none" => RequestMode::None,
                        "ids" => RequestMode::Ids,
                        "ordered" => RequestMode::Ordered,
                        _ => return Err(malformed("requests")),
                    });
                }
                "send-framing" => {
                    send_framing = Some(match value {
                        "-" => None,
                        name if valid_framing(name) => Some(name.to_owned()),
                        _ => return Err(malformed("send-framing")),
                    });
                }
                "receive-framing" if valid_framing(value) => {
                    receive_framing = Some(value.to_owned());
                }
                "receive-framing" => return Err(malformed("receive-framing")),
                "features" => {
                    feature_bits = Some(parse_hex(value).ok_or(malformed("features"))?);
                }
                "sends" | "accepts" => {
                    let info = match value {
                        "-" => None,
                        text => Some(TypeInfo::decode(text).ok_or(malformed("a message type"))?),
                    };
                    if key == "sends" {
                        sends = Some(info);
                    } else {
                        accepts = Some(info);
                    }
                }
                "sends-shapes" | "accepts-shapes" | "sends-also" | "accepts-also" => {
                    if extras.len() >= 4 {
                        return Err(malformed("a repeated field"));
                    }
                    extras.push((key, value));
                }
                // A later version's field.
                _ => {}
            }
        }
        let mut sends: Option<TypeInfo> = sends.ok_or(malformed("no sends"))?;
        let mut accepts: Option<TypeInfo> = accepts.ok_or(malformed("no accepts"))?;
        for (key, value) in extras {
            let (info, why) = match key {
                "sends-shapes" | "sends-also" => (sends.as_mut(), "sends-shapes or sends-also"),
                _ => (accepts.as_mut(), "accepts-shapes or accepts-also"),
            };
            // Extras of an undeclared type (`-`) say nothing: skipped.
            if let Some(info) = info {
                let read = if key.ends_with("-shapes") {
                    info.decode_shapes(value)
                } else {
                    info.decode_also(value)
                };
                read.ok_or(malformed(why))?;
            }
        }
        Ok(Hello {
            protocol: protocol.ok_or(malformed("no proto"))?,
            cluster: cluster.ok_or(malformed("no cluster"))?,
            requests: requests.ok_or(malformed("no requests"))?,
            send_framing: send_framing.ok_or(malformed("no send-framing"))?,
            receive_framing: receive_framing.ok_or(malformed("no receive-framing"))?,
            features: feature_bits.ok_or(malformed("no features"))?,
            sends,
            accepts,
        })
    }

    /// Checks the peer's hello against ours, we being `we`; returns the
    /// feature bits both set. The settings are compared in this order, and
    /// the first difference is the error: the protocol versions (the
    /// ranges must overlap), the cluster label, the framing (of what each
    /// side sends against what the other cuts), request ids (on at both
    /// ends or at neither; ordered replies and none go together), then
    /// each direction's message type (an undeclared type matches
    /// anything): its name, its codec, its variants and its fingerprint.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Mismatch`].
    pub fn check(&self, peer: &Hello, we: Role) -> Result<u64, HandshakeError> {
        self.first_difference(peer, we)
            .map_or(Ok(self.features & peer.features), |m| {
                Err(HandshakeError::Mismatch(m))
            })
    }

    fn first_difference(&self, peer: &Hello, we: Role) -> Option<Mismatch> {
        let (them, me) = (we.peer(), we.me());
        let differ = |setting, words: String| Some(Mismatch { setting, words });
        let (pmin, pmax) = peer.protocol;
        let (min, max) = self.protocol;
        if pmin.max(min) > pmax.min(max) {
            return differ(
                Setting::Protocol,
                format!("{them} speaks protocol versions {pmin} to {pmax}, {me} {min} to {max}"),
            );
        }
        if peer.cluster != self.cluster {
            let words = match (&peer.cluster, &self.cluster) {
                (Some(a), Some(b)) => format!("{them}'s cluster is {a}, {me}'s {b}"),
                (Some(a), None) => format!("{them}'s cluster is {a}, {me} has no cluster label"),
                (None, Some(b)) => format!("{them} has no cluster label, {me}'s cluster is {b}"),
                (None, None) => String::new(),
            };
            return differ(Setting::Cluster, words);
        }
        if let Some(theirs) = &peer.send_framing {
            if *theirs != self.receive_framing {
                return differ(
                    Setting::Framing,
                    format!(
                        "{them} frames what it sends as {theirs}, {me} reads {}",
                        self.receive_framing
                    ),
                );
            }
        }
        if let Some(ours) = &self.send_framing {
            if *ours != peer.receive_framing {
                return differ(
                    Setting::Framing,
                    format!(
                        "{them} reads {}, {me} frames what it sends as {ours}",
                        peer.receive_framing
                    ),
                );
            }
        }
        if (peer.requests == RequestMode::Ids) != (self.requests == RequestMode::Ids) {
            return differ(
                Setting::RequestMode,
                format!(
                    "{them} uses {}, {me} {}",
                    peer.requests.words(),
                    self.requests.words()
                ),
            );
        }
        if let (Some(theirs), Some(ours)) = (&peer.sends, &self.accepts) {
            let words = |setting| match setting {
                Setting::MessageType => format!(
                    "{them} sends `{}`, {me} accepts `{}`",
                    theirs.name, ours.name
                ),
                Setting::Codec => format!(
                    "{them} encodes `{}` with {}, {me} decodes it with {}",
                    theirs.name, theirs.codec, ours.codec
                ),
                _ => String::new(),
            };
            if let Some(found) = type_difference(theirs, ours, true, them, me, words) {
                return Some(found);
            }
        }
        if let (Some(theirs), Some(ours)) = (&peer.accepts, &self.sends) {
            let words = |setting| match setting {
                Setting::MessageType => format!(
                    "{them} accepts `{}`, {me} sends `{}`",
                    theirs.name, ours.name
                ),
                Setting::Codec => format!(
                    "{them} decodes `{}` with {}, {me} encodes it with {}",
                    theirs.name, theirs.codec, ours.codec
                ),
                _ => String::new(),
            };
            if let Some(found) = type_difference(theirs, ours, false, them, me, words) {
                return Some(found);
            }
        }
        None
    }

    /// The variants one side sends that the other does not know, in words
    /// (one line per direction; none if every tag is shared, or a list is
    /// incomplete): after a successful [`check`](Self::check), what a
    /// rolling upgrade leaves one-sided. Such a variant sent to the side
    /// that lacks it is skipped there, as an
    /// [`Error::UnknownVariant`](crate::Error::UnknownVariant) event (or an
    /// error reply with [`ErrorCode::UnknownVariant`](crate::envelope::ErrorCode::UnknownVariant)
    /// to a request).
    pub fn one_sided(&self, peer: &Hello, we: Role) -> Vec<String> {
        let (them, me) = (we.peer(), we.me());
        let mut out = Vec::new();
        for (sender, receiver, from, to) in [
            (&peer.sends, &self.accepts, them, me),
            (&self.sends, &peer.accepts, me, them),
        ] {
            let (Some(sender), Some(receiver)) = (sender, receiver) else {
                continue;
            };
            if !(sender.all_variants && receiver.all_variants) || sender.variants.is_empty() {
                continue;
            }
            let unknown: Vec<String> = sender
                .variants
                .iter()
                .filter(|v| receiver.variant(v.tag).is_none())
                .map(|v| format!("{} (tag {})", v.name, v.tag))
                .collect();
            if !unknown.is_empty() {
                out.push(format!(
                    "{from} sends `{}` variants that {to} does not know: {}; {to} skips them \
                     (an UnknownVariant event, or an error reply to a request)",
                    sender.name,
                    unknown.join(", ")
                ));
            }
        }
        out
    }
}

/// The first difference between the peer's `theirs` and our `ours` (one
/// direction: we receive what they send if `we_receive`, else the other
/// way), if any; `words` says a name or codec difference.
///
/// The receiver accepts a sender whose fingerprint it declares it also
/// decodes; else the names and codecs must be equal, and then, if both
/// list every variant with its shape, each tag both have must have the
/// same name and shape (tags only one side has are fine, as long as one is
/// shared); else the fingerprints must be equal.
fn type_difference(
    theirs: &TypeInfo,
    ours: &TypeInfo,
    we_receive: bool,
    them: &str,
    me: &str,
    words: impl Fn(Setting) -> String,
) -> Option<Mismatch> {
    let differ = |setting, words: String| Some(Mismatch { setting, words });
    let (sender, receiver) = if we_receive {
        (theirs, ours)
    } else {
        (ours, theirs)
    };
    if receiver.also_decodes.contains(&sender.fingerprint) {
        return None;
    }
    if theirs.name != ours.name {
        return differ(Setting::MessageType, words(Setting::MessageType));
    }
    if theirs.codec != ours.codec {
        return differ(Setting::Codec, words(Setting::Codec));
    }
    let listed = theirs.all_variants && ours.all_variants;
    let shaped = |info: &TypeInfo| {
        !info.variants.is_empty() && info.variants.iter().all(|v| v.shape.is_some())
    };
    if listed && shaped(theirs) && shaped(ours) {
        let mut shared = 0;
        for variant in &theirs.variants {
            let Some(other) = ours.variant(variant.tag) else {
                continue;
            };
            shared += 1;
            if variant.name != other.name {
                return differ(
                    Setting::Variants,
                    format!(
                        "tag {} is `{}` in {them}'s `{}` and `{}` in {me}'s: a tag keeps its \
                         variant for good (give a new variant a new tag)",
                        variant.tag, variant.name, theirs.name, other.name
                    ),
                );
            }
            if variant.shape != other.shape {
                return differ(
                    Setting::Fields,
                    format!(
                        "`{}::{}` (tag {}) has other fields at {them} than at {me}: give the \
                         changed variant a new tag, or declare the earlier version \
                         (`also_decodes`) where it is received",
                        theirs.name, variant.name, variant.tag
                    ),
                );
            }
        }
        if shared > 0 {
            return None;
        }
        return differ(
            Setting::Variants,
            format!(
                "{them}'s `{}` has variants {}; {me}'s has {}: none in common",
                theirs.name,
                theirs.variant_list(),
                ours.variant_list()
            ),
        );
    }
    if theirs.fingerprint == ours.fingerprint {
        return None;
    }
    if listed && theirs.variants != ours.variants {
        return differ(
            Setting::Variants,
            format!(
                "{them}'s `{}` has variants {}; {me}'s has {}",
                theirs.name,
                theirs.variant_list(),
                ours.variant_list()
            ),
        );
    }
    differ(
        Setting::Fields,
        format!(
            "{them}'s `{}` has other fields than {me}'s (fingerprints {} and {})",
            theirs.name, theirs.fingerprint, ours.fingerprint
        ),
    )
}

/// Why a handshake failed: the source of an
/// [`Error::Handshake`](crate::Error::Handshake) and of a
/// [`ConnectError::Handshake`](crate::ConnectError::Handshake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol: the first difference, in words.
    #[error("{0}")]
    Mismatch(Mismatch),
    /// The peer's hello is of version 1: an older chitchat-net.
    #[error(
        "the peer is an older chitchat-net (its hello is version 1): upgrade it, \
         or switch the handshake off at both ends (`.no_handshake()`)"
    )]
    OldPeer,
    /// The peer's first frame is not a hello: its handshake is off.
    #[error(
        "the peer's first frame ({len} bytes, starting {start:?}) is not a handshake: the peer \
         has its handshake off (`.no_handshake()`, or message types without a fingerprint); \
         switch it on there (`.handshake()`) or off here (`.no_handshake()`)"
    )]
    NotAHello {
        /// The frame's length.
        len: usize,
        /// Its first bytes, printable ones as they are, others as `.`.
        start: String,
    },
    /// The peer's hello does not parse.
    #[error("the peer's handshake is malformed: {why}")]
    Malformed {
        /// What is wrong with it.
        why: &'static str,
    },
    /// The peer's first frame is a hello, and this side has its handshake
    /// off: the peer waits for a hello it will never get. This side
    /// answers with a refusal ([`NO_HELLO_MAGIC`]), which tells the peer
    /// at once ([`HandshakeError::NoHandshake`]).
    #[error(
        "{} does the handshake (its first frame is a hello), {} does not: declare message \
         types with a fingerprint on both sides or on neither, or switch the handshake off \
         there (`.no_handshake()`) or on here (`.handshake()`)",
        .we.peer(), .we.me()
    )]
    UnexpectedHello {
        /// Which side this is.
        we: Role,
    },
    /// The peer has its handshake off: it answered this side's hello with
    /// a refusal ([`NO_HELLO_MAGIC`]).
    #[error(
        "{} does not do the handshake (it refused {}'s hello): declare message types with a \
         fingerprint on both sides or on neither, or switch the handshake on there \
         (`.handshake()`) or off here (`.no_handshake()`)",
        .we.peer(), .we.me()
    )]
    NoHandshake {
        /// Which side this is.
        we: Role,
    },
    /// No hello arrived within the handshake timeout: the peer is not a
    /// chitchat-net peer that does the handshake or refuses it (those
    /// answer a hello at once).
    #[error(
        "no handshake from the peer within {0:?}: the peer has its handshake off and does not \
         say so (a Go peer, or a chitchat-net older than the refusal of hellos), or is not a \
         chitchat-net peer; switch it on there (`.handshake()`) or off here (`.no_handshake()`, \
         or message types without a fingerprint)"
    )]
    Timeout(Duration),
    /// The peer ended the stream before its hello.
    #[error("the peer closed the connection before its handshake")]
    Closed,
}

impl HandshakeError {
    /// Whether trying again cannot help: the peer speaks another protocol
    /// (a mismatch, an old or a malformed hello, no hello at all), as
    /// opposed to a timeout or a connection that ended.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, HandshakeError::Timeout(_) | HandshakeError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(variants: &[(u32, &str)]) -> TypeInfo {
        TypeInfo::new(
            "Command",
            "bincode",
            Fingerprint(variants.len() as u64),
            variants,
        )
    }

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSIONS,
            cluster: None,
            requests: RequestMode::Ids,
            send_framing: Some("delimited:0x0a:escaped".into()),
            receive_framing: "delimited:0x0a:escaped".into(),
            features: 0,
            sends: Some(command(&[(0, "Put"), (1, "Get")])),
            accepts: None,
        }
    }

    fn encoded(hello: &Hello) -> BytesMut {
        let mut buf = BytesMut::new();
        hello.encode(&mut buf);
        buf
    }

    #[test]
    fn first_bytes_tell_a_hello_a_refusal_and_anything_else_apart() {
        let mut framed = BytesMut::new();
        framed.extend_from_slice(&(NO_HELLO_MAGIC.len() as u32).to_be_bytes());
        framed.extend_from_slice(NO_HELLO_MAGIC);
        let hello = encoded(&hello());
        let mut long = BytesMut::new();
        long.extend_from_slice(&(hello.len() as u32).to_be_bytes());
        long.extend_from_slice(&hello);
        for (bytes, expected) in [
            (&b""[..], FirstBytes::Undecided),
            (b"chitchat-", FirstBytes::Undecided),
            (b"chitchat-hello/", FirstBytes::Hello),
            (b"chitchat-hello/1 x", FirstBytes::Hello),
            (&hello[..], FirstBytes::Hello),
            (b"chitchat-noh", FirstBytes::Undecided),
            (&NO_HELLO_MAGIC[..], FirstBytes::NoHello),
            (b"chitchat-nohello/1\n", FirstBytes::NoHello),
            (&framed[..], FirstBytes::NoHello),
            (&framed[..9], FirstBytes::Undecided),
            (&long[..], FirstBytes::Hello),
            (b"\0\0", FirstBytes::Undecided),
            (b"\0\0\0\x12", FirstBytes::Undecided),
            (b"\0\0\0\x12chitchat-x", FirstBytes::Other),
            (b"\0\0\0\x02hi", FirstBytes::Other),
            (b"\0\x01", FirstBytes::Other),
            (b"chitchat\n", FirstBytes::Other),
            (b"get key\n", FirstBytes::Other),
            (b"g", FirstBytes::Other),
        ] {
            assert_eq!(first_bytes(bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn hellos_round_trip() {
        let mut other = hello();
        other.cluster = Some("prod-eu".into());
        other.send_framing = None;
        other.requests = RequestMode::Ordered;
        other.features = u64::MAX;
        other.accepts = Some(command(&[]));
        for hello in [hello(), other] {
            assert_eq!(Hello::decode(&encoded(&hello)), Ok(hello));
        }
    }

    #[test]
    fn a_hello_stays_within_its_cap_and_says_what_it_left_out() {
        let names: Vec<String> = (0..300).map(|i| format!("{}{i}", "V".repeat(40))).collect();
        let variants: Vec<(u32, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u32, n.as_str()))
            .collect();
        let mut big = hello();
        big.sends = Some(command(&variants));
        big.accepts = big.sends.clone();
        let frame = encoded(&big);
        assert!(frame.len() <= MAX_HELLO_LEN, "{}", frame.len());
        let back = Hello::decode(&frame).unwrap();
        let sends = back.sends.unwrap();
        assert!(!sends.all_variants);
        assert!(sends.variants.len() < MAX_LISTED_VARIANTS);
        assert_eq!(sends.fingerprint, big.sends.unwrap().fingerprint);
    }

    #[test]
    fn anything_else_is_not_a_hello() {
        let good = encoded(&hello());
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello".to_vec(),
            good[..15].to_vec(),
            b"chitchat-hello/23".to_vec(),
        ];
        for case in cases {
            assert!(
                matches!(Hello::decode(&case), Err(HandshakeError::NotAHello { .. })),
                "{case:?}"
            );
        }
        let v1 = b"chitchat-hello/1 0000000000000abc ----------------";
        assert_eq!(Hello::decode(v1), Err(HandshakeError::OldPeer));
        let text = String::from_utf8(good.to_vec()).unwrap();
        let malformed = [
            text.replace("proto=1-1", "proto=2-1"),
            text.replace("requests=ids", "requests=maybe"),
            text.replace(" features=", " features=zz"),
            text.replace("sends=Command:", "sends=Command"),
            text.replace("0.Put", "x.Put"),
            text.replace("accepts=-", ""),
            format!("{text} \u{e9}"),
            format!("{text} {}", "x=y".repeat(2000)),
        ];
        for case in malformed {
            assert!(
                matches!(
                    Hello::decode(case.as_bytes()),
                    Err(HandshakeError::Malformed { .. })
                ),
                "{case}"
            );
        }
        // A later version's field is skipped.
        assert!(Hello::decode(format!("{text} later=1").as_bytes()).is_ok());
    }

    #[test]
    fn a_hello_is_cut_whatever_the_peers_framing() {
        let text = encoded(&hello());
        let n = text.len();
        let lines = [&text[..], b"\nnext"].concat();
        assert_eq!(cut_hello(&lines), Ok(Some((0..n, n + 1))));
        let nul = [&text[..], b"\0"].concat();
        assert_eq!(cut_hello(&nul), Ok(Some((0..n, n + 1))));
        let length = [&(n as u32).to_be_bytes()[..], &text[..], b"next"].concat();
        assert_eq!(cut_hello(&length), Ok(Some((4..4 + n, 4 + n))));
        // More is needed while every byte could still start one.
        for partial in [
            &lines[..10],
            &text[..],
            &length[..3],
            &length[..4],
            &length[..30],
        ] {
            assert_eq!(cut_hello(partial), Ok(None), "{partial:?}");
        }
        // Anything else is told at once, whatever its length.
        for other in [
            &b"\x00\x01a\n"[..],
            b"junk",
            b"\x00\x00\x00\x20junk",
            b"\xff\xff\xff\xff",
        ] {
            assert!(
                matches!(cut_hello(other), Err(HandshakeError::NotAHello { .. })),
                "{other:?}"
            );
        }
        let long = [&b"chitchat-hello/2 "[..], &[b'a'; MAX_HELLO_LEN][..]].concat();
        assert!(matches!(
            cut_hello(&long),
            Err(HandshakeError::Malformed { .. })
        ));
    }

    fn mismatch(ours: &Hello, theirs: &Hello, we: Role) -> Mismatch {
        match ours.check(theirs, we) {
            Err(HandshakeError::Mismatch(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn check_names_the_first_difference_in_words() {
        let client = hello();
        let mut server = hello();
        server.sends = None;
        server.accepts = Some(command(&[(0, "Put"), (1, "Get")]));
        assert_eq!(client.check(&server, Role::Client), Ok(0));
        assert_eq!(server.check(&client, Role::Server), Ok(0));

        let mut other = server.clone();
        other.cluster = Some("prod-eu".into());
        let m = mismatch(&client, &other, Role::Client);
        assert_eq!(m.setting, Setting::Cluster);
        assert_eq!(
            m.words,
            "the server's cluster is prod-eu, this client has no cluster label"
        );

        let mut other = server.clone();
        other.requests = RequestMode::Ordered;
        let m = mismatch(&other, &client, Role::Server);
        assert_eq!(
            m.words,
            "the client uses request ids, this server ordered replies"
        );
        let mut none = client.clone();
        none.requests = RequestMode::None;
        assert!(
            other.check(&none, Role::Server).is_ok(),
            "ordered and none agree"
        );

        let mut other = server.clone();
        other.accepts = Some(command(&[(0, "Put"), (1, "Get"), (2, "Delete")]));
        let m = mismatch(&client, &other, Role::Client);
        assert_eq!(m.setting, Setting::Variants);
        assert_eq!(
            m.words,
            "the server's `Command` has variants Put, Get, Delete; this client's has Put, Get"
        );

        let mut other = server.clone();
        other.accepts = Some(TypeInfo::new("Command", "postcard", Fingerprint(2), &[]));
        let m = mismatch(&client, &other, Role::Client);
        assert_eq!(
            m.words,
            "the server decodes `Command` with postcard, this client encodes it with bincode"
        );

        let mut other = server.clone();
        other.accepts = Some(TypeInfo::new("Reply", "bincode", Fingerprint(2), &[]));
        assert_eq!(
            mismatch(&client, &other, Role::Client).setting,
            Setting::MessageType
        );

        let mut other = server.clone();
        other.receive_framing = "length:u32be".into();
        assert_eq!(
            mismatch(&client, &other, Role::Client).setting,
            Setting::Framing
        );

        let mut other = server.clone();
        other.protocol = (2, 3);
        assert_eq!(
            mismatch(&client, &other, Role::Client).words,
            "the server speaks protocol versions 2 to 3, this client 1 to 1"
        );

        // Undeclared types match anything; features are the bits both set.
        let mut open = server.clone();
        open.accepts = None;
        open.features = 0b11;
        let mut ours = client.clone();
        ours.features = 0b10;
        assert_eq!(ours.check(&open, Role::Client), Ok(0b10));
    }

    /// A type whose variants carry shapes: (tag, name, shape).
    fn shaped(name: &str, variants: &[(u32, &str, u64)]) -> TypeInfo {
        let tags: Vec<(u32, &str)> = variants.iter().map(|(t, n, _)| (*t, *n)).collect();
        let shapes: Vec<(u32, Fingerprint)> = variants
            .iter()
            .map(|(t, _, s)| (*t, Fingerprint(*s)))
            .collect();
        let whole = variants
            .iter()
            .fold(0, |acc, (t, _, s)| acc ^ s ^ u64::from(*t));
        TypeInfo::new(name, "bincode", Fingerprint(whole), &tags).with_variant_shapes(&shapes)
    }

    #[test]
    fn shared_tags_must_agree_and_one_sided_tags_are_reported() {
        let client_of = |sends: TypeInfo| Hello {
            sends: Some(sends),
            ..hello()
        };
        let server_of = |accepts: TypeInfo| Hello {
            sends: None,
            accepts: Some(accepts),
            ..hello()
        };
        let old = shaped("Command", &[(1, "Put", 10), (2, "Get", 20)]);
        let new = shaped(
            "Command",
            &[(1, "Put", 10), (2, "Get", 20), (3, "Delete", 30)],
        );
        // Shapes and declarations survive the hello.
        let declared = new.clone().with_also_decodes(&[Fingerprint(99)]);
        let frame = encoded(&client_of(declared.clone()));
        let text = std::str::from_utf8(&frame).unwrap().to_owned();
        assert!(
            text.contains(&format!(" sends-shapes=1/{:08x},", fold(Fingerprint(10))))
                && text.contains(&format!(",3/{:08x} ", fold(Fingerprint(30))))
                && text.contains(" sends-also="),
            "{text}"
        );
        assert_eq!(Hello::decode(&frame).unwrap().sends, Some(declared.clone()));

        // A variant more, either way: accepted, and said.
        let (client, server) = (client_of(new.clone()), server_of(old.clone()));
        assert_eq!(client.check(&server, Role::Client), Ok(0));
        assert_eq!(server.check(&client, Role::Server), Ok(0));
        assert_eq!(
            server.one_sided(&client, Role::Server),
            ["the client sends `Command` variants that this server does not know: Delete (tag 3); \
              this server skips them (an UnknownVariant event, or an error reply to a request)"]
        );
        assert!(client_of(old.clone())
            .check(&server_of(new.clone()), Role::Client)
            .is_ok());

        // A renamed variant, a changed one, none in common: refused.
        let renamed = shaped("Command", &[(1, "Put", 10), (2, "Fetch", 20)]);
        let m = mismatch(&client_of(renamed), &server, Role::Client);
        assert_eq!(m.setting, Setting::Variants);
        assert!(
            m.words.starts_with(
                "tag 2 is `Get` in the server's `Command` and `Fetch` in this client's"
            ),
            "{}",
            m.words
        );
        let changed = shaped("Command", &[(1, "Put", 11), (2, "Get", 20)]);
        let m = mismatch(&server, &client_of(changed.clone()), Role::Server);
        assert_eq!(m.setting, Setting::Fields);
        assert!(
            m.words
                .starts_with("`Command::Put` (tag 1) has other fields"),
            "{}",
            m.words
        );
        let other = shaped("Command", &[(7, "Stop", 70)]);
        let m = mismatch(&client_of(other), &server, Role::Client);
        assert!(m.words.ends_with(": none in common"), "{}", m.words);

        // Declared where it is received: accepted that way only.
        let changed_declared = changed.clone().with_also_decodes(&[Fingerprint(30)]);
        let old_shape = Fingerprint(10 ^ 1 ^ 20 ^ 2);
        let receiving = server_of(changed.clone().with_also_decodes(&[old_shape]));
        assert_eq!(
            receiving.check(&client_of(old.clone()), Role::Server),
            Ok(0)
        );
        assert!(server
            .check(&client_of(changed_declared), Role::Server)
            .is_err());
    }

    /// The hello of the first builds of version 2 (before variant shapes
    /// and earlier versions), exactly as they wrote it: their `sends=`
    /// value allows no `/` after a variant name and no fifth `:` part, and
    /// they skip unknown keys, so the extras must stay in keys of their
    /// own. Checked both ways: this build reads that hello and agrees with
    /// it by fingerprint, and this build's hello, read with that grammar
    /// (the keys it did not know dropped), is the same hello.
    #[test]
    fn first_version_2_builds_and_this_one_read_each_other() {
        let first = "chitchat-hello/2 proto=1-1 cluster=- requests=ids \
                     send-framing=length:u32be receive-framing=length:u32be \
                     features=0000000000000001 sends=Command:bincode:00000000000000aa:1.Put,2.Get \
                     accepts=-";
        let theirs = Hello::decode(first.as_bytes()).unwrap();
        let sends = theirs.sends.clone().unwrap();
        assert!(sends.variants.iter().all(|v| v.shape.is_none()));

        let mut ours = hello();
        ours.requests = RequestMode::Ids;
        ours.send_framing = Some("length:u32be".into());
        ours.receive_framing = "length:u32be".into();
        ours.features = 1;
        ours.sends = None;
        let same = TypeInfo {
            fingerprint: Fingerprint(0xaa),
            ..shaped("Command", &[(1, "Put", 10), (2, "Get", 20)])
        }
        .with_also_decodes(&[Fingerprint(7)]);
        ours.accepts = Some(same.clone());
        // Same fingerprint: agreed, though only this side has shapes.
        assert_eq!(ours.check(&theirs, Role::Server), Ok(1));
        // A variant more on one side, without shapes on the other: the
        // fingerprints differ and the variants are named.
        ours.accepts = Some(TypeInfo {
            fingerprint: Fingerprint(0xbb),
            ..shaped(
                "Command",
                &[(1, "Put", 10), (2, "Get", 20), (3, "Delete", 30)],
            )
        });
        let refused = ours.check(&theirs, Role::Server).unwrap_err().to_string();
        assert!(refused.contains("Put, Get, Delete"), "{refused}");

        // This build's hello in the first grammar: the known keys only.
        ours.sends = Some(same);
        let frame = encoded(&ours);
        let text = std::str::from_utf8(&frame).unwrap();
        let known: Vec<&str> = text
            .split(' ')
            .filter(|field| !field.contains("-shapes=") && !field.contains("-also="))
            .collect();
        // sends-shapes, sends-also and accepts-shapes.
        assert_eq!(known.len() + 3, text.split(' ').count(), "{text}");
        let sends_value = known
            .iter()
            .find_map(|field| field.strip_prefix("sends="))
            .unwrap();
        assert_eq!(sends_value, "Command:bincode:00000000000000aa:1.Put,2.Get");
        let read = Hello::decode(known.join(" ").as_bytes()).unwrap();
        assert_eq!(read.sends.unwrap().fingerprint, Fingerprint(0xaa));
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
        assert_eq!(a.finish().to_string(), format!("{:016x}", a.finish().get()));
        let b = FingerprintBuilder::new("enum", "Comman")
            .variant(1)
            .field("dkey", "String", None);
        assert_ne!(a.finish(), b.finish());
        let c = FingerprintBuilder::new("enum", "Command").variant(1).field(
            "key",
            "String",
            Some(Fingerprint(5)),
        );
        assert_ne!(a.finish(), c.finish());
        // The codec is part of the effective fingerprint.
        let shape = a.finish();
        assert_ne!(
            effective_fingerprint(shape, "bincode"),
            effective_fingerprint(shape, "postcard")
        );
    }
}
