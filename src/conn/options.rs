//! One set of connection options, shared by servers and clients: the
//! [`Options`] type, and the same setters on [`ServerBuilder`](crate::ServerBuilder)
//! and [`ClientBuilder`](crate::ClientBuilder), written once here.

use crate::conn::config::ConnectionConfig;

/// The settings every connection has, whether a server accepted it or a
/// client made it. Both builders take them whole with `.options(..)`, and
/// have the same setters one by one; each setter is documented once, here.
///
/// Durations that can be turned off take `impl Into<Option<Duration>>`:
/// `idle_timeout(Duration::from_secs(30))` sets one, `idle_timeout(None)`
/// turns it off again.
///
/// # Examples
///
/// ```
/// use chitchat_net::{Client, Framing, Options, Server};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), chitchat_net::Error> {
/// let options = Options::new()
///     .framing(Framing::delimited(b';'))
///     .idle_timeout(Duration::from_secs(60))
///     .queue_bytes(64 * 1024);
/// let server = Server::builder(()).options(options.clone()).listen("127.0.0.1:0").await?;
/// let client = Client::<String>::builder()
///     .options(options)
///     .connect(server.local_addr())
///     .await?;
/// # client.close().await;
/// # server.cut().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub(crate) config: ConnectionConfig,
}

impl Options {
    /// The defaults.
    pub fn new() -> Self {
        Options::default()
    }

    connection_options!();
}

/// The setters of [`Options`], for `Options` and both builders (each has a
/// `config: ConnectionConfig` field).
macro_rules! connection_options {
    () => {
        /// How the byte stream is cut into frames, with its maximum frame
        /// length (default: [`Framing::lines`](crate::Framing::lines), 1 MiB;
        /// with a delimiter, each message is escaped or raw as its type's
        /// codec needs).
        pub fn framing(mut self, framing: crate::wire::frame::Framing) -> Self {
            self.config.framing = framing;
            self
        }

        /// The maximum frame length in bytes (default 1 MiB). A peer that
        /// sends a longer frame gets [`Error::FrameTooLong`](crate::Error::FrameTooLong)
        /// and is disconnected.
        pub fn max_frame_length(mut self, max: usize) -> Self {
            self.config.framing = self.config.framing.max_frame_length(max);
            self
        }

        /// Closes a connection that receives no complete frame for
        /// `timeout` (default: never; `None` turns it off again), with an
        /// [`Error::IdleTimeout`](crate::Error::IdleTimeout) event. A busy
        /// connection is never cut by it; a peer that dribbles bytes
        /// without ever finishing a frame (slow loris) is: a frame must be
        /// whole within `timeout` of its first byte. In EOF framing, where
        /// the whole stream is one frame, the stream must end within
        /// `timeout` of its first byte.
        pub fn idle_timeout(mut self, timeout: impl Into<Option<std::time::Duration>>) -> Self {
            self.config.idle_timeout = timeout.into();
            self
        }

        /// Closes a connection that has bytes to write but can write none
        /// of them for `timeout` (default 30 s; `None` waits forever), with
        /// an [`Error::WriteStalled`](crate::Error::WriteStalled) event: its
        /// peer has stopped reading. A peer that reads slowly but steadily
        /// is never cut.
        ///
        /// Progress is seen as the kernel reports it: a writer blocked on a
        /// full socket buffer is woken once part of it has drained (on
        /// Linux loopback, where the send buffer grows to about 4 MiB,
        /// after about a third), so a peer must read at least that much
        /// within `timeout`.
        pub fn write_stall_timeout(
            mut self,
            timeout: impl Into<Option<std::time::Duration>>,
        ) -> Self {
            self.config.write_stall_timeout = timeout.into();
            self
        }

        /// How long a closing connection waits for its peer to read what
        /// was sent and close its side (default 5 s).
        pub fn close_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.config.close_timeout = timeout;
            self
        }

        /// Unsent bytes (queued, or being written) a connection holds
        /// before sends from other tasks wait (`try_send` fails, a server's
        /// `broadcast` skips the peer) (default 256 KiB). A message is taken
        /// while fewer bytes are unsent, so the queue may pass the limit by
        /// one frame. A handler's own replies are always taken, but while
        /// twice this many bytes are unsent the connection hands its
        /// handler no further frame (and stops reading), until they drain.
        pub fn queue_bytes(mut self, bytes: usize) -> Self {
            self.config.queue_bytes = bytes;
            self
        }

        /// Error events buffered before new ones are dropped and counted
        /// (default 1024).
        pub fn event_capacity(mut self, capacity: usize) -> Self {
            self.config.event_capacity = capacity;
            self
        }

        /// Puts the request envelope on every frame, so that replies are
        /// matched to requests by id, in any order (a handler answers with
        /// [`Context::reply`](crate::Context::reply)). Both ends must
        /// switch it on: see [`envelope`](crate::envelope) for the wire
        /// format. Delimited framing is escaped then, whatever the codec;
        /// an explicitly raw framing is refused when the server or client
        /// starts.
        pub fn request_ids(mut self) -> Self {
            self.config.request_ids = true;
            self
        }

        /// Matches replies to requests in order, for peers that cannot
        /// carry request ids (such as the Go original: `heartbeat ping` is
        /// answered by `heartbeat pong`): the next frame received answers
        /// the oldest request in flight; frames that arrive while no
        /// request waits go to the handler.
        ///
        /// Its limits: the peer must answer every request, once, in order,
        /// and send nothing else while a request waits (a frame it sends
        /// on its own would be taken as a reply). A request that times out
        /// keeps its place in line, so that a late answer is taken (and
        /// reported as an [`Error::LateReply`](crate::Error::LateReply)
        /// event) instead of answering the next one; if the peer never
        /// answers it, every later reply is off by one. Replies are cut
        /// with the framing of what the client receives (its handler's or
        /// receive buffer's type; a write-only client's sent type): with a
        /// delimited `Escaping::Auto` framing, a reply type that is binary
        /// where that type is text (or the reverse) needs an explicit
        /// `.escaped()` or `.raw()` framing. Use
        /// [`request_ids`](Self::request_ids) when both ends are
        /// chitchat-net. Ignored with `request_ids`.
        pub fn ordered_replies(mut self) -> Self {
            self.config.ordered_replies = true;
            self
        }

        /// Leaves the drain out of the [handshake](crate::handshake)'s
        /// feature bits ([`DRAIN`](crate::handshake::features::DRAIN)), as
        /// a build without it: a server then shuts down without telling its
        /// clients first, and a client is never told (README, "Drain and
        /// failover"). On by default wherever it can be: with the handshake
        /// and request ids on both ends.
        pub fn no_drain(mut self) -> Self {
            self.config.drain = false;
            self
        }

        /// How long a client's `request` waits for a reply (default 30 s).
        pub fn request_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.config.request_timeout = timeout;
            self
        }

        /// Writes and reads every serde message in `format` instead of the
        /// one its type names (derived `codec = "bincode"` and `"postcard"`
        /// types, and any type whose codec is a serde format; see
        /// [`Codec::in_format`](crate::Codec::in_format)): one call for
        /// every such type on the connection. A derived enum keeps its
        /// pinned tags. Both ends must agree. A codec set for one type with
        /// `codec(..)` still wins for that type. (A `BincodeWithLimit<N>`
        /// type switched to [`Format::Bincode`](crate::Format::Bincode) gets
        /// the default limit.)
        ///
        /// # Examples
        ///
        /// ```
        /// use chitchat_net::{codec::Format, Options};
        ///
        /// let options = Options::new().serde_format(Format::Bincode);
        /// # let _ = options;
        /// ```
        pub fn serde_format(mut self, format: crate::codec::Format) -> Self {
            self.config.serde_format = Some(format);
            self
        }

        /// Labels this side's cluster (`"prod-eu"`: 1 to 64 characters of
        /// `A-Z`, `a-z`, `0-9`, `_`, `.` and `-`): the
        /// [handshake](crate::handshake) refuses a peer with another label,
        /// or none, so that two environments on one network never exchange
        /// a frame. It switches the handshake on (whatever the message
        /// types); with [`no_handshake`](Self::no_handshake) it is refused
        /// with [`Error::Config`](crate::Error::Config).
        pub fn cluster(mut self, label: impl Into<String>) -> Self {
            self.config.handshake.cluster = Some(label.into().into());
            self
        }

        /// Switches the [handshake](crate::handshake) off: no hello is sent
        /// or expected. It is on by default when the message types declare
        /// a fingerprint (derived types); switch it off toward peers that
        /// do not speak it (an older chitchat-net, or a peer of your own
        /// that speaks the message format without the hello). `String`,
        /// `Bytes` and Go chitchat peers need nothing: it is off for them
        /// already.
        pub fn no_handshake(mut self) -> Self {
            self.config.handshake.switch = crate::conn::handshake::Switch::Off;
            self
        }

        /// Does not announce [reply streams](crate::ReplySink) in the
        /// [handshake](crate::handshake) (the
        /// [`REPLY_STREAMS`](crate::handshake::features::REPLY_STREAMS)
        /// bit), as a build without them would not: the peer's
        /// `subscribe` fails at once with
        /// [`StreamError::Unsupported`](crate::StreamError::Unsupported),
        /// and so does this side's, and no stream frame is sent either way.
        /// Reply streams need the handshake and request ids on both sides;
        /// without a handshake they are off already.
        pub fn no_reply_streams(mut self) -> Self {
            self.config.handshake.features_off |= crate::wire::hello::features::REPLY_STREAMS;
            self
        }

        /// Requests in flight at most per connection (default 4096): a
        /// request waits for one to end beyond that (within its timeout).
        pub fn max_requests_in_flight(mut self, max: usize) -> Self {
            self.config.max_in_flight = max;
            self
        }

        /// Requests from the peer this side handles at once on one
        /// connection (default
        /// [`DEFAULT_CONCURRENT_REQUESTS`](crate::DEFAULT_CONCURRENT_REQUESTS),
        /// 100). Each request (a frame with a request id) runs as a task of
        /// its own; past this many the connection stops reading until one
        /// ends (backpressure: the peer's requests wait in its socket).
        /// `1` handles them one at a time, though still beside one-way
        /// messages. See README "Conversations" for the order a handler
        /// can rely on.
        pub fn concurrent_requests(mut self, max: usize) -> Self {
            self.config.concurrent_requests = max;
            self
        }

        /// The optional protocol features this side announces in its
        /// hello (default: every one this build speaks,
        /// [`features::SUPPORTED`](crate::handshake::features::SUPPORTED));
        /// bits outside `SUPPORTED` are ignored. A feature is used on a
        /// connection only when both hellos announce it: announcing fewer
        /// makes this side behave toward its peers as a build without them
        /// would (for tests, and for a staged rollout).
        pub fn announce_features(mut self, bits: u64) -> Self {
            self.config.handshake.features = Some(bits);
            self
        }
    };
}
pub(crate) use connection_options;
