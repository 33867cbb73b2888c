//! Settings shared by servers and clients.

use std::time::Duration;

use crate::wire::error::Error;
use crate::wire::frame::Framing;

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

/// Requests in flight at most per connection, by default: a request waits
/// for a slot beyond that.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;

/// Requests from the peer handled at once on one connection, by default
/// (hyper's default bound of concurrent HTTP/2 streams; tarpc's server
/// has no bound unless asked, its client 1,000 requests in flight): past
/// it the connection stops reading until one ends.
pub const DEFAULT_CONCURRENT_REQUESTS: usize = 200;

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
    /// Requests from the peer handled at once per connection.
    pub(crate) concurrent_requests: usize,
    /// A server's overload bounds: requests handled at once per connection
    /// and in all, past which a request is refused (`Overloaded`).
    pub(crate) overload: Option<(usize, usize)>,
    /// The server-wide slots of its overload bound (made when it starts).
    pub(crate) overload_slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// How long a request waits for its reply by default.
    pub(crate) request_timeout: Duration,
    /// The serde format of every derived message, if switched.
    pub(crate) serde_format: Option<crate::codec::Format>,
    /// Sending an empty frame is refused with `Error::EmptyFrame`.
    pub(crate) refuse_empty_frames: bool,
    /// What the builders say about the handshake.
    pub(crate) handshake: crate::conn::handshake::Settings,
    /// The handshake of every connection, if it is on: resolved when the
    /// server or client starts (from `handshake` and the message types).
    pub(crate) hello: Option<std::sync::Arc<crate::conn::handshake::Plan>>,
    /// With the handshake off, in a framing that can carry a hello: the
    /// side this is. A hello as the peer's first frame is then refused
    /// (see [`crate::conn::handshake`]).
    pub(crate) no_hello: Option<crate::wire::hello::Role>,
    /// The error that ends a connection is logged at DEBUG, not WARN (it is
    /// still an event): a reconnecting client logs one WARN per outage
    /// itself.
    pub(crate) quiet_ends: bool,
    /// The hello sets the drain feature bit (see `no_drain`).
    pub(crate) drain: bool,
}

/// Fails with a clear error outside a tokio runtime (where tokio itself
/// would panic at the first spawn or timer).
///
/// # Errors
///
/// [`Error::Runtime`].
pub(crate) fn runtime_check() -> Result<(), Error> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| {
            Error::Runtime(
                "no tokio runtime here: chitchat-net runs on tokio with its I/O and time drivers \
                 (`#[tokio::main]`, or a runtime built with `enable_all()`)",
            )
        })
}

impl ConnectionConfig {
    /// Refuses settings that cannot work (a zero queue makes every send
    /// wait forever, a zero timeout fires at once, ...).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        runtime_check()?;
        let zero = |d: Option<Duration>| d.is_some_and(|d| d.is_zero());
        let checks = [
            (
                self.framing.max_length() == 0,
                "max_frame_length must be at least 1 byte: 0 refuses every frame",
            ),
            (
                self.queue_bytes == 0,
                "queue_bytes must be at least 1 byte: 0 makes every send wait forever",
            ),
            (
                self.event_capacity == 0,
                "event_capacity must be at least 1: 0 drops every error event",
            ),
            (
                zero(self.idle_timeout),
                "idle_timeout must not be zero (None turns it off): zero closes every connection at once",
            ),
            (
                zero(self.write_stall_timeout),
                "write_stall_timeout must not be zero (None turns it off): zero fails every write that waits",
            ),
            (
                self.handshake_timeout.is_zero(),
                "handshake_timeout must not be zero: every handshake would time out",
            ),
            (
                self.max_in_flight == 0,
                "max_requests_in_flight must be at least 1: 0 makes every request wait forever",
            ),
            (
                self.concurrent_requests == 0,
                "concurrent_requests must be at least 1: 0 handles no request",
            ),
            (
                self.overload.is_some_and(|(one, all)| one == 0 || all == 0),
                "overload bounds must be at least 1: 0 refuses every request",
            ),
            (
                self.request_timeout.is_zero(),
                "request_timeout must not be zero: every request would time out",
            ),
        ];
        match checks.into_iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(Error::Config(why)),
            None => self.handshake.validate(),
        }
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            framing: Framing::default(),
            idle_timeout: None,
            write_stall_timeout: Some(DEFAULT_WRITE_STALL_TIMEOUT),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            event_capacity: crate::conn::events::DEFAULT_EVENT_CAPACITY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_ids: false,
            ordered_replies: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            concurrent_requests: DEFAULT_CONCURRENT_REQUESTS,
            overload: None,
            overload_slots: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            serde_format: None,
            refuse_empty_frames: false,
            handshake: Default::default(),
            hello: None,
            no_hello: None,
            quiet_ends: false,
            drain: true,
        }
    }
}
