//! The client: one connection to a server, sending messages of type `M`.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[cfg(unix)]
use crate::addr::sealed::Target;
use crate::config::ConnectionConfig;
use crate::connection::{self, OnEnd};
use crate::events::{event_channel, EventSink};
use crate::handle::ConnectionHandle;
use crate::stats::{Counters, Stats};
use crate::transport::{self, ClientTls};
use crate::wire::{codec_override, default_is_binary, Override, Wire};
use crate::{Addr, CloseReason, Codec, ConnectAddr, Error, ErrorEvents, Framing, Handler, Message};

/// Default connect timeout: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a server that sends messages of type `M` (the Go
/// original's `Client`).
///
/// Replies go to the client's handler, if it has one; without one the client
/// is write-only (the Go original's nil `readfunc`). Framing must match the
/// server's: with an [`Escaping::Auto`](crate::Escaping::Auto) delimited
/// framing, both ends choose raw or escaped by the codec of `M`.
///
/// Dropping a client ends its connection at once; [`close`](Client::close)
/// ends it after delivering what was sent.
///
/// # Examples
///
/// ```no_run
/// use chitchat_net::Client;
///
/// # async fn run() -> Result<(), chitchat_net::Error> {
/// let client = Client::<String>::connect("127.0.0.1:7000").await?;
/// client.send(&"heartbeat ping".to_string()).await?;
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client<M> {
    /// Sends, close and abort signals, and addresses.
    handle: ConnectionHandle,
    /// Fired once the connection task has ended (awaited by `close`);
    /// closes the event stream.
    ended: CancellationToken,
    events: EventSink,
    errors: ErrorEvents,
    _message: PhantomData<fn(M)>,
}

/// Configures and connects a [`Client`]. Made by [`Client::builder`].
#[derive(Debug)]
#[must_use = "a client builder does nothing until `connect` is awaited"]
pub struct ClientBuilder<M, H = ()> {
    handler: H,
    config: ConnectionConfig,
    connect_timeout: Duration,
    codec: Option<(bool, Override)>,
    tls: Option<ClientTls>,
    _message: PhantomData<fn(M)>,
}

impl<M: Message> Client<M> {
    /// Starts configuring a write-only client; add a handler with
    /// [`ClientBuilder::handler`].
    pub fn builder() -> ClientBuilder<M, ()> {
        ClientBuilder {
            handler: (),
            config: ConnectionConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            codec: None,
            tls: None,
            _message: PhantomData,
        }
    }

    /// Connects a write-only client with the default settings.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect`].
    pub async fn connect(addr: impl ConnectAddr) -> Result<Self, Error> {
        Client::builder().connect(addr).await
    }

    /// Connects a write-only client to the Unix-domain socket at `path`
    /// with the default settings.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect_unix`].
    #[cfg(unix)]
    pub async fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        Client::builder().connect_unix(path).await
    }
}

impl<M: Message, H: Handler> ClientBuilder<M, H> {
    /// Handles what the server sends with `handler`.
    pub fn handler<H2: Handler>(self, handler: H2) -> ClientBuilder<M, H2> {
        ClientBuilder {
            handler,
            config: self.config,
            connect_timeout: self.connect_timeout,
            codec: self.codec,
            tls: self.tls,
            _message: PhantomData,
        }
    }

    /// How the byte stream is cut into frames (default: [`Framing::lines`],
    /// escaped or raw as `M`'s codec needs).
    pub fn framing(mut self, framing: Framing) -> Self {
        self.config.framing = framing;
        self
    }

    /// The maximum frame length in bytes (default 1 MiB).
    pub fn max_frame_length(mut self, max: usize) -> Self {
        self.config.framing = self.config.framing.max_frame_length(max);
        self
    }

    /// Uses `codec` for `M` instead of its default codec (also for incoming
    /// frames when the handler's message type is `M`).
    pub fn codec<C: Codec<M>>(mut self, codec: C) -> Self {
        self.codec = Some(codec_override::<M, C>(codec));
        self
    }

    /// Speaks TLS (feature `tls`) with `config`, verifying the server as
    /// `server_name`. The handshake is part of [`connect`](Self::connect)
    /// and of its timeout.
    ///
    /// Build `config` with an explicit provider,
    /// `ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))`,
    /// so that no process-wide default is needed. With mutual TLS 1.3 a
    /// server that refuses this client's certificate does so after
    /// `connect` has returned: the connection then ends with an error
    /// event carrying the server's alert.
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        config: Arc<crate::tls::rustls::ClientConfig>,
        server_name: crate::tls::pki_types::ServerName<'static>,
    ) -> Self {
        self.tls = Some(ClientTls::new(config, server_name));
        self
    }

    /// Gives up connecting after `timeout` (default 10 s; the Go original's
    /// `SetDeadLine`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Closes the connection when no complete frame is received for
    /// `timeout` (default: never); see
    /// [`ServerBuilder::idle_timeout`](crate::ServerBuilder::idle_timeout).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = Some(timeout);
        self
    }

    /// Closes the connection when it has bytes to write but can write none
    /// of them for `timeout` (default 30 s): the server has stopped
    /// reading. `None` waits forever. See
    /// [`ServerBuilder::write_stall_timeout`](crate::ServerBuilder::write_stall_timeout).
    pub fn write_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.write_stall_timeout = timeout;
        self
    }

    /// How long [`Client::close`] waits for the server to close its side
    /// (default 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Unsent bytes (queued, or being written) before [`Client::send`]
    /// waits (default 256 KiB). The handler's own replies are always taken,
    /// but while twice this many bytes are unsent the client stops reading
    /// until they drain; see
    /// [`ServerBuilder::queue_bytes`](crate::ServerBuilder::queue_bytes).
    pub fn queue_bytes(mut self, bytes: usize) -> Self {
        self.config.queue_bytes = bytes;
        self
    }

    /// Error events buffered before new ones are dropped (default 1024).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.event_capacity = capacity;
        self
    }

    /// Connects to `addr` and starts reading in the background: a TCP
    /// address or name (`"host:port"`), or an [`Addr`] (a Unix-domain
    /// socket's too, such as a Unix server's `local_addr()`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the connection is refused or fails,
    /// [`Error::ConnectTimeout`] if connecting (and the TLS handshake, if
    /// any) takes longer than the connect timeout; `InvalidInput` for TLS
    /// on a Unix-domain socket.
    pub async fn connect(self, addr: impl ConnectAddr) -> Result<Client<M>, Error> {
        let connecting = transport::dial(addr.target(), self.tls.as_ref());
        let (stream, peer, local) = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| Error::ConnectTimeout(self.connect_timeout))??;
        Ok(self.start(stream.split(), peer, local))
    }

    /// Connects to the Unix-domain socket at `path` (a server started with
    /// [`ServerBuilder::listen_unix`](crate::ServerBuilder::listen_unix))
    /// and starts reading in the background. Everything else works as over
    /// TCP; the addresses are [`Addr::Unix`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if nothing listens at `path` or the connection fails,
    /// [`Error::ConnectTimeout`] if it takes longer than the connect
    /// timeout; `InvalidInput` if TLS is configured (not supported on Unix
    /// sockets).
    #[cfg(unix)]
    pub async fn connect_unix(self, path: impl AsRef<std::path::Path>) -> Result<Client<M>, Error> {
        let target = Target::Unix(path.as_ref().to_path_buf());
        let connecting = transport::dial(target, self.tls.as_ref());
        let (stream, peer, local) = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| Error::ConnectTimeout(self.connect_timeout))??;
        Ok(self.start(stream.split(), peer, local))
    }

    /// Runs the client over `io`, any connected byte stream: an in-memory
    /// [`tokio::io::duplex`], a simulated network, a QUIC stream, a serial
    /// line. `peer` names the other end (usually [`Addr::named`]); the
    /// client's own [`local_addr`](Client::local_addr) is
    /// `Addr::named("local")`. Everything else works as over TCP. The two
    /// directions share `io` through [`tokio::io::split`].
    ///
    /// With TLS configured (feature `tls`), the TLS handshake runs over
    /// `io` first, within the connect timeout.
    ///
    /// # Errors
    ///
    /// Only with TLS: [`Error::Tls`] if the handshake fails,
    /// [`Error::ConnectTimeout`] if it takes longer than the connect
    /// timeout.
    ///
    /// # Examples
    ///
    /// Two peers in memory: a server serving one end of a duplex, a client
    /// on the other.
    ///
    /// ```
    /// use chitchat_net::{handler_fn, Addr, BoxError, Client, Context, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    ///
    /// let echo = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     ctx.send(&line)?;
    ///     Ok(())
    /// });
    /// let accepted = futures_util::stream::iter([Ok((server_end, Addr::named("client")))]);
    /// let server = Server::builder(echo).serve(Addr::named("server"), accepted);
    ///
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let print = handler_fn(move |reply: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     tx.send(reply)?;
    ///     Ok(())
    /// });
    /// let client = Client::<String>::builder()
    ///     .handler(print)
    ///     .connect_io(client_end, Addr::named("server"))
    ///     .await?;
    /// client.send(&"hello".to_string()).await?;
    /// assert_eq!(rx.recv().await.as_deref(), Some("hello"));
    /// client.close().await;
    /// server.cut().await;
    /// # Ok(()) }
    /// ```
    pub async fn connect_io<S>(self, io: S, peer: Addr) -> Result<Client<M>, Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let local = Addr::named("local");
        let Some(tls) = self.tls.clone() else {
            return Ok(self.start(tokio::io::split(io), peer, local));
        };
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(io))
            .await
            .map_err(|_| Error::ConnectTimeout(self.connect_timeout))??;
        Ok(self.start(tokio::io::split(stream), peer, local))
    }

    /// Starts the connection task on the two halves of a connected stream.
    fn start<R, W>(self, halves: (R, W), peer: Addr, local: Addr) -> Client<M>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (binary, overrides) = match self.codec {
            Some((binary, codec)) => (binary, vec![codec]),
            None => (default_is_binary::<M>(), Vec::new()),
        };
        let counters = Arc::new(Counters::default());
        let wire = Wire::new(self.config.framing, binary, overrides);
        let handle = ConnectionHandle::new(peer, local, wire, self.config.queue_bytes, counters);
        let counters = handle.inner.counters.clone();
        counters.opened();
        let ended = CancellationToken::new();
        let (events, errors) =
            event_channel(self.config.event_capacity, ended.clone(), counters.clone());
        let span =
            tracing::info_span!("chitchat_client", peer = %handle.inner.peer, id = %handle.id());
        let done = ended.clone();
        let on_end = OnEnd::new(move || counters.closed());
        let task = connection::run(
            halves,
            handle.clone(),
            Arc::new(self.handler),
            Arc::new(self.config),
            events.clone(),
            on_end,
        );
        let conn = handle.inner.clone();
        let sink = events.clone();
        tokio::spawn(
            async move {
                task.await;
                if conn.end.get() == Some(CloseReason::ByPeer) {
                    sink.report(Some(conn.peer.clone()), Error::ClosedByPeer);
                }
                done.cancel();
            }
            .instrument(span),
        );
        Client {
            handle,
            ended,
            events,
            errors,
            _message: PhantomData,
        }
    }
}

impl<M: Message> Client<M> {
    /// Sends `msg`, waiting while the outgoing queue is full. Messages sent
    /// in a row are written together; a lone one is written at once.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the connection has ended; encode and framing
    /// errors (nothing is sent then).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is queued whole or not at all.
    pub async fn send(&self, msg: &M) -> Result<(), Error> {
        self.handle.send(msg).await
    }

    /// Sends every message of `msgs`, in order, waiting while the outgoing
    /// queue is full: the batch form of [`send`](Self::send), much cheaper
    /// per message for streams of small ones (one lock of the queue and at
    /// most one wake-up of the connection task per batch of about 16 KiB).
    /// See [`ConnectionHandle::send_all`].
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send). The messages before the one that failed are
    /// sent; that one and those after it are not.
    ///
    /// # Cancel safety
    ///
    /// Not all or nothing: if the future is dropped, the messages queued so
    /// far (a prefix of `msgs`) are still sent.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let count = seen.clone();
    /// let counter = handler_fn(move |_n: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     count.fetch_add(1, Ordering::Relaxed);
    ///     Ok(())
    /// });
    /// let server = Server::listen("127.0.0.1:0", counter).await?;
    /// let client = Client::<String>::connect(server.local_addr()).await?;
    ///
    /// let readings: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    /// client.send_all(&readings).await?;
    /// client.close().await; // delivers everything sent, then ends
    /// assert_eq!(seen.load(Ordering::Relaxed), 1000);
    /// server.cut().await;
    /// # Ok(()) }
    /// ```
    pub async fn send_all<'a, I>(&self, msgs: I) -> Result<(), Error>
    where
        M: 'a,
        I: IntoIterator<Item = &'a M>,
    {
        self.handle.send_all(msgs).await
    }

    /// Sends `msg` if the outgoing queue has room now.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`], or as [`send`](Self::send).
    pub fn try_send(&self, msg: &M) -> Result<(), Error> {
        self.handle.try_send(msg)
    }

    /// Sends one frame of raw bytes.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_bytes(&self, payload: &[u8]) -> Result<(), Error> {
        self.handle.send_bytes(payload).await
    }

    /// A handle to send on this connection from other tasks.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.handle.local_addr()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Addr {
        self.handle.peer_addr()
    }

    /// Whether the connection is closing or closed: sends fail from then on.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Delivers everything sent so far, then ends the connection: flushes,
    /// closes the write side (in EOF framing, this is what delivers the
    /// message), and waits until the server has closed its side too (or the
    /// close timeout passes). Replies that arrive meanwhile still reach the
    /// handler.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the connection goes on
    /// closing, and a later `close().await` waits for the same end (calling
    /// it after the end returns at once).
    pub async fn close(&self) {
        self.handle.close();
        self.ended.cancelled().await;
    }

    /// Waits until the connection has ended, whoever ended it, and says
    /// how: [`CloseReason::ByPeer`] when the server closed it first (an
    /// [`Error::ClosedByPeer`] event is reported then too, where the Go
    /// original put `EOF` on its error channel), [`CloseReason::ByUs`]
    /// after [`close`](Self::close). Returns at once if it already has
    /// ended; the handler's `on_close` has run by then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn closed(&self) -> CloseReason {
        self.ended.cancelled().await;
        self.handle.inner.end.get().unwrap_or(CloseReason::Aborted)
    }

    /// The stream of error events.
    pub fn errors(&self) -> ErrorEvents {
        self.errors.clone()
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> Stats {
        self.handle.inner.counters.snapshot()
    }

    /// How many error events were dropped because nobody read them.
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }
}

impl<M> Drop for Client<M> {
    /// Ends the connection at once.
    fn drop(&mut self) {
        self.handle.inner.signal.abort();
        self.ended.cancel();
    }
}
