//! The crate's one error type.

use std::time::Duration;

/// A boxed error, as returned by handlers and user codecs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in chitchat-net.
///
/// Variants are named after the cause. Framing variants ([`Error::FrameTooLong`],
/// [`Error::PartialFrame`], [`Error::BadEscape`]) mean the byte stream cannot
/// continue: a connection that meets one is closed. Per-frame variants
/// ([`Error::Decode`], [`Error::Handler`]) leave the connection open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a socket. Connect and bind errors name the address
    /// in their message (the `io::Error` keeps its kind).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// A frame (as it stands on the wire, without its delimiter) is longer than
    /// the configured maximum.
    #[error("frame of at least {len} bytes is longer than the limit of {limit} bytes")]
    FrameTooLong {
        /// Bytes seen (or, with a length prefix, announced) so far.
        len: usize,
        /// The configured maximum frame length.
        limit: usize,
    },

    /// In raw delimiter mode, a payload contains the delimiter byte and would
    /// split its frame on the wire. Nothing was written.
    #[error("payload contains the delimiter byte {delimiter:#04x} at offset {offset}")]
    DelimiterInPayload {
        /// The delimiter byte.
        delimiter: u8,
        /// Offset of its first occurrence in the payload.
        offset: usize,
    },

    /// In escaped delimiter mode, a frame holds an escape byte that is not
    /// followed by a valid escape code.
    #[error("invalid escape sequence at offset {offset} of a frame")]
    BadEscape {
        /// Offset of the escape byte within the frame.
        offset: usize,
    },

    /// The peer ended the stream in the middle of a frame.
    #[error("peer closed the stream in the middle of a frame ({len} bytes pending)")]
    PartialFrame {
        /// Bytes received after the last complete frame.
        len: usize,
    },

    /// A frame could not be decoded into a typed value.
    #[error("{codec} decode{} failed: {}", IntoType(*message), Report(&**source))]
    Decode {
        /// Name of the codec that failed.
        codec: &'static str,
        /// The Rust type it was decoding into, where known (a connection
        /// and [`TypedCodec`](crate::TypedCodec) always know it), as
        /// `Type::Variant` for a derived enum whose tag was read.
        message: Option<&'static str>,
        /// Why.
        #[source]
        source: BoxError,
    },

    /// A frame is a variant of a message type that this side does not
    /// know: its tag is none of `type_name`'s (the peer is of a later
    /// version, see the README, "Evolving your messages"). The frame is
    /// skipped and counted ([`Stats::unknown_variants`](crate::Stats::unknown_variants));
    /// the connection stays open. A request of it is answered with an
    /// error reply, [`ErrorCode::UnknownVariant`](crate::envelope::ErrorCode::UnknownVariant).
    #[error(
        "unknown variant: tag {tag} is none of `{type_name}`'s variants (the peer is of a later version)"
    )]
    UnknownVariant {
        /// The message type, without its module path (`Command`).
        type_name: &'static str,
        /// The tag read from the frame.
        tag: u32,
    },

    /// A value could not be encoded.
    #[error("{codec} encode failed: {}", Report(&**source))]
    Encode {
        /// Name of the codec that failed.
        codec: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },

    /// A handler returned an error.
    #[error("handler failed: {}", Report(&**.0))]
    Handler(#[source] BoxError),

    /// A connection received no complete frame for longer than the idle
    /// timeout.
    #[error("no complete frame received for {0:?}")]
    IdleTimeout(Duration),

    /// A connection had bytes to write and could write none of them for the
    /// write stall timeout: its peer stopped reading.
    #[error("no byte could be written for {0:?}: the peer is not reading")]
    WriteStalled(Duration),

    /// Connecting did not complete within the connect timeout.
    #[error("connect did not complete within {0:?}")]
    ConnectTimeout(Duration),

    /// A connection was refused by the server's accept filter.
    #[error("connection from {0} refused by the accept filter")]
    Refused(crate::base::addr::Addr),

    /// A connection was refused because the server already holds its maximum.
    #[error("connection refused: the server holds its maximum of {limit} connections")]
    TooManyConnections {
        /// The configured maximum.
        limit: usize,
    },

    /// A message was not queued to a peer whose outgoing queue is full.
    #[error("outgoing queue full ({limit} bytes): message skipped")]
    QueueFull {
        /// The configured queue size in bytes.
        limit: usize,
    },

    /// No connection has this peer address.
    #[error("no connection to {0}")]
    UnknownPeer(crate::base::addr::Addr),

    /// The connection (or the server) is closed.
    #[error("connection closed")]
    Closed,

    /// The peer closed the connection (an event of a client whose server
    /// ended the connection first: the Go original's `EOF` on the error
    /// channel). A lifecycle event, not an error: see
    /// [`ErrorEvent::is_error`](crate::ErrorEvent::is_error).
    #[error("connection closed by the peer")]
    ClosedByPeer,

    /// A TLS handshake failed or took too long.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),

    /// Accepting a connection failed.
    #[error("accept failed: {0}")]
    Accept(#[source] std::io::Error),

    /// A handler panicked while handling a frame.
    #[error("handler panicked: {0}")]
    HandlerPanic(String),

    /// A frame's request envelope is malformed (see [`crate::envelope`]):
    /// the frame is dropped, the connection stays open.
    #[error("malformed request envelope: {0}")]
    Envelope(#[from] crate::wire::envelope::EnvelopeError),

    /// A setting that cannot work, refused when the client or server is
    /// built or used.
    #[error("invalid configuration: {0}")]
    Config(&'static str),

    /// Called outside a tokio runtime: chitchat-net runs on tokio, with its
    /// I/O and time drivers enabled (`#[tokio::main]` or
    /// `Builder::enable_all()`).
    #[error("{0}")]
    Runtime(&'static str),

    /// No reply arrived within the request's timeout. The request is
    /// forgotten; a reply that arrives later becomes an
    /// [`Error::LateReply`] event.
    #[error("no reply within {0:?}")]
    RequestTimeout(Duration),

    /// The connection ended (or was lost) before the reply arrived. The
    /// request is not retried: the peer may or may not have handled it.
    #[error("the connection ended before the reply arrived")]
    ConnectionLost,

    /// The peer answered the request with an error reply (see
    /// [`crate::envelope`]): its handler failed, the request did not decode
    /// there, or it was left unanswered. The connection stays open.
    #[error("the peer answered with an error ({code}): {message}")]
    Remote {
        /// Why, as the peer's status byte says.
        code: crate::wire::envelope::ErrorCode,
        /// The peer's text (at most 1 KiB).
        message: String,
    },

    /// An event: a reply arrived that no request waits for (it timed out,
    /// was cancelled, or was never sent). `id` is the reply's request id
    /// (in ordered mode, the local number of the request it answered).
    /// A lifecycle event, not an error.
    #[error("reply to request {id} arrived after its request was given up")]
    LateReply {
        /// The request id the reply carries.
        id: u64,
    },

    /// An event of a reconnecting client: its connection ended and it
    /// reconnects. A lifecycle event, not an error.
    #[error("disconnected ({reason:?}); reconnecting")]
    Disconnected {
        /// How the connection ended.
        reason: crate::base::close::CloseReason,
    },

    /// An event of a reconnecting client: it is connected again. A
    /// lifecycle event, not an error.
    #[error("reconnected after {attempts} attempt(s)")]
    Reconnected {
        /// Connection attempts it took.
        attempts: u32,
    },

    /// An empty frame was not sent: the connection refuses them
    /// ([`refuse_empty_frames`](crate::ClientBuilder::refuse_empty_frames)),
    /// because a Go chitchat peer crashes on one. Nothing was sent.
    #[error("empty frame refused: Go chitchat peers crash on one")]
    EmptyFrame,

    /// The handshake failed (see [`handshake`](crate::handshake)): the peer
    /// speaks other message types, or has no handshake on. The connection
    /// ends before any frame reaches the handler.
    #[error("handshake failed")]
    Handshake(#[from] crate::wire::hello::HandshakeError),

    /// The server announced a drain (it is shutting down gracefully: see
    /// README, "Drain and failover"). As an event of a client, a lifecycle
    /// event, not an error: the client sends no new request on that
    /// connection (a reconnecting client moves to another one at once). As
    /// the error of a request: it was not sent, since its connection
    /// drains.
    #[error("the server is draining: no new request on this connection")]
    Draining,

    /// A reconnecting client used up its tries: it has ended.
    #[error("gave up reconnecting after {attempts} attempt(s)")]
    ReconnectGaveUp {
        /// Connection attempts made.
        attempts: u32,
    },
}

impl Error {
    /// Builds a [`Error::Decode`] from a codec name and any error.
    pub fn decode(codec: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Decode {
            codec,
            message: None,
            source: source.into(),
        }
    }

    /// Names `variant` (`Type::Variant`) as what a decode error was
    /// decoding into.
    pub(crate) fn decoding_variant(self, variant: &'static str) -> Self {
        match self {
            Error::Decode { codec, source, .. } => Error::Decode {
                codec,
                message: Some(variant),
                source,
            },
            other => other,
        }
    }

    /// Names `M` as the type a decode error was decoding into (if it does
    /// not name one yet); other errors are returned as they are.
    pub(crate) fn decoding<M>(self) -> Self {
        match self {
            Error::Decode {
                codec,
                message: None,
                source,
            } => Error::Decode {
                codec,
                message: Some(std::any::type_name::<M>()),
                source,
            },
            other => other,
        }
    }

    /// Builds a [`Error::Encode`] from a codec name and any error.
    pub fn encode(codec: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Encode {
            codec,
            source: source.into(),
        }
    }

    /// The rustls error behind an [`Error::Tls`] or [`Error::Io`], if any
    /// (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls_cause(&self) -> Option<&tokio_rustls::rustls::Error> {
        match self {
            Error::Tls(e) | Error::Io(e) => e.get_ref()?.downcast_ref(),
            _ => None,
        }
    }

    /// Whether an event of this error is logged at WARN: it ended a
    /// connection (or an accept) abnormally. A peer's ordinary close is
    /// not one.
    pub(crate) fn is_warning(&self) -> bool {
        self.is_fatal() && !matches!(self, Error::ClosedByPeer | Error::ReconnectGaveUp { .. })
    }

    /// Whether this is a lifecycle event rather than an error: a peer's
    /// normal end of stream ([`Error::ClosedByPeer`]), a server's announced
    /// [`Error::Draining`], a reconnecting client's [`Error::Disconnected`]
    /// and [`Error::Reconnected`], and
    /// [`Error::LateReply`]. See [`ErrorEvent`](crate::ErrorEvent).
    pub fn is_lifecycle(&self) -> bool {
        matches!(
            self,
            Error::ClosedByPeer
                | Error::Draining
                | Error::Disconnected { .. }
                | Error::Reconnected { .. }
                | Error::LateReply { .. }
        )
    }

    /// Whether this error ends the byte stream it happened on (a framing or I/O
    /// error), as opposed to one frame (decode or handler errors).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            Error::Decode { .. }
                | Error::UnknownVariant { .. }
                | Error::Handler(_)
                | Error::QueueFull { .. }
                | Error::Envelope(_)
                | Error::LateReply { .. }
                | Error::Remote { .. }
                | Error::RequestTimeout(_)
                | Error::Reconnected { .. }
                | Error::Disconnected { .. }
                | Error::Draining
                | Error::EmptyFrame
        )
    }
}

/// Displays an error with its chain of sources, each once: `handler
/// failed: connection refused`. Use it for any error (a handler's own, for
/// example). chitchat-net's own errors already carry their causes in their
/// `Display`, which this formatter notices, so it never repeats a cause.
///
/// # Examples
///
/// ```
/// use chitchat_net::Report;
///
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "disk on fire");
/// let error = chitchat_net::Error::Handler(Box::new(io));
/// assert_eq!(Report(&error).to_string(), "handler failed: disk on fire");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !shown.ends_with(&text) && !shown.contains(&format!("{text}: ")) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&shown)
    }
}

/// ` of T` for a decode error that knows its type.
struct IntoType(Option<&'static str>);

impl std::fmt::Display for IntoType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ty) => write!(f, " into {ty}"),
            None => Ok(()),
        }
    }
}

/// An I/O error with what was being done and to which address: `connect
/// to 127.0.0.1:1: Connection refused (os error 111)`. Keeps the kind.
#[derive(Debug)]
struct Context {
    what: String,
    source: std::io::Error,
}

impl std::fmt::Display for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `error` with `what` (and the address) in its message, same kind.
pub(crate) fn io_context(what: impl std::fmt::Display, error: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        error.kind(),
        Context {
            what: what.to_string(),
            source: error,
        },
    )
}
