//! The one thing a connection's outgoing queue needs of a socket: a write
//! that never waits ([`DirectWrite`]). It imports nothing, so that
//! `loom-models/` can compile it beside the queue.

/// A socket a sender may write to itself, without waiting: how a send
/// writes through the queue while the write side holds nothing (see
/// `Outbox::set_direct` in `conn/outbox.rs`). Plain TCP has one; TLS and other streams do
/// not (their writes keep state that only the write side may touch).
pub(crate) trait DirectWrite: Send + Sync + std::fmt::Debug {
    /// Writes as much of `buf` as the socket takes now, without waiting:
    /// `WouldBlock` if it takes nothing.
    ///
    /// # Errors
    ///
    /// The socket's; the write side meets them again and ends the
    /// connection.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}
