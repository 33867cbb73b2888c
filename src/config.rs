//! Settings shared by servers and clients.

use std::time::Duration;

use crate::Framing;

/// Default size of a connection's outgoing queue: 256 KiB.
pub const DEFAULT_QUEUE_BYTES: usize = 256 * 1024;
/// Default write stall timeout: 30 s without a byte written.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a TLS handshake may take: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a closing connection waits for the peer to finish: 5 s.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time a request waits for its reply: 30 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What each connection of a server or client is configured with.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionConfig {
    /// How the stream is cut into frames (escaping still `Auto` here).
    pub(crate) framing: Framing,
    /// Close a connection that receives nothing for this long.
    pub(crate) idle_timeout: Option<Duration>,
    /// Close a connection that has bytes to write but writes none for this
    /// long.
    pub(crate) write_stall_timeout: Option<Duration>,
    /// After closing its side, how long to wait for the peer to close.
    pub(crate) close_timeout: Duration,
    /// Bytes the outgoing queue holds before senders wait.
    pub(crate) queue_bytes: usize,
    /// Error events buffered for a reader.
    pub(crate) event_capacity: usize,
    /// A TLS handshake must finish within this.
    pub(crate) handshake_timeout: Duration,
    /// Every frame carries the request envelope (replies matched by id).
    pub(crate) request_ids: bool,
    /// Without ids: the next frame answers the oldest request.
    pub(crate) ordered_replies: bool,
    /// Requests in flight at most per connection.
    pub(crate) max_in_flight: usize,
    /// How long a request waits for its reply by default.
    pub(crate) request_timeout: Duration,
    /// Sending an empty frame is refused with `Error::EmptyFrame`.
    pub(crate) refuse_empty_frames: bool,
    /// The wrong-peer handshake, if switched on.
    pub(crate) handshake: Option<crate::handshake::Plan>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            framing: Framing::default(),
            idle_timeout: None,
            write_stall_timeout: Some(DEFAULT_WRITE_STALL_TIMEOUT),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            event_capacity: crate::DEFAULT_EVENT_CAPACITY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_ids: false,
            ordered_replies: false,
            max_in_flight: crate::DEFAULT_MAX_IN_FLIGHT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            refuse_empty_frames: false,
            handshake: None,
        }
    }
}
