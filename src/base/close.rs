//! How a connection ended ([`CloseReason`]): a plain value, here at the
//! bottom because the error type names it
//! ([`Error::Disconnected`](crate::Error::Disconnected)).

/// How a connection ended: what [`ConnectionHandle::closed`](crate::ConnectionHandle::closed) and
/// [`Client::closed`](crate::Client::closed) return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer ended the connection: its end of stream came first, between
    /// frames (the Go original's `EOF` on the error channel).
    ByPeer,
    /// This side closed it gracefully: `close`, [`Context::close`](crate::Context::close),
    /// `close_remote` or a server's `shutdown`.
    ByUs,
    /// This side ended it at once: a server's `cut`, or a dropped client.
    Aborted,
    /// An error ended it; the error itself went to the error events.
    Failed,
}
