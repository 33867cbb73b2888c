//! The client: one connection to a server, sending messages of type `M`
//! (and, with [`ClientBuilder::receive`], receiving messages of type `R`),
//! optionally reconnecting when the connection drops.
//!
//! The folder holds the client ([`Client`], [`ClientBuilder`], here), its
//! current connection and what it does with sends while down ([`link`]),
//! and its reconnect policy ([`reconnect`]).
//!
//! May import: `conn`, `transport`, `codec`, `wire`, `base`; not `server`
//! beside it, nothing above (`.ci/check-layers` checks it).

pub(crate) mod connector;
pub(crate) mod link;
pub(crate) mod reconnect;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::base::addr::sealed::Target as DialTarget;
use crate::base::addr::{Addr, ConnectAddr};
use crate::base::close::CloseReason;
use crate::base::stats::{Counters, Stats};
use crate::client::link::{Current, Link, Target};
use crate::client::reconnect::{jitter, Reconnect};
use crate::codec::{Codec, Message, Request, Subscription};
use crate::conn::config::ConnectionConfig;
use crate::conn::connection::{self, OnEnd};
use crate::conn::events::ErrorEvents;
use crate::conn::events::{event_channel, EventSink};
use crate::conn::handle::{Attempt, ConnectionHandle};
use crate::conn::handler::Handler;
use crate::conn::op_error::{ConnectError, RequestError, SendError, TrySendError};
use crate::conn::receive::Inbox;
use crate::conn::subscriptions::{ReplyStream, StreamError};
use crate::conn::wire::{codec_override, default_is_binary, Encoded, Override, Wire};
use crate::transport::stream::{self, ClientTls};
use crate::wire::error::{BoxError, Error};

/// Default connect timeout: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs after every connect: see [`ClientBuilder::on_connect`].
type OnConnect = Arc<dyn Fn(ConnectionHandle) -> Hello + Send + Sync + 'static>;

/// What `on_connect` returns, boxed.
type Hello = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

/// A connection to a server that sends messages of type `M` (the Go
/// original's `Client`), and receives messages of type `R` if it was built
/// with [`ClientBuilder::receive`].
///
/// What the server sends goes to the client's handler, if it has one
/// ([`ClientBuilder::handler`]), or to its receive buffer, read with
/// [`recv`](Client::recv) or as a [`Stream`](futures_util::Stream)
/// ([`ClientBuilder::receive`]); without either the client is write-only
/// (the Go original's nil `readfunc`). [`request`](Client::request) sends
/// a message and waits for its reply. Framing must match the server's:
/// with an [`Escaping::Auto`](crate::Escaping::Auto) delimited framing,
/// both ends choose raw or escaped by the codec of `M`.
///
/// Dropping a client ends its connection at once; [`close`](Client::close)
/// ends it after delivering what was sent. With a [`Reconnect`] policy the
/// client connects again whenever its connection drops.
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
pub struct Client<M = (), R = NoReceive> {
    /// The connection it sends on now.
    link: Arc<Link>,
    /// A client that does not reconnect has one connection for its whole
    /// life: its sends go straight to it, without looking at the link.
    fixed: Option<ConnectionHandle>,
    /// Fired once the client has ended (its last connection task is over);
    /// closes the event stream.
    ended: CancellationToken,
    /// How the client ended, once it has.
    outcome: Arc<OnceLock<CloseReason>>,
    events: EventSink,
    errors: ErrorEvents,
    /// What the server sent, for `recv` (a receiving client only).
    inbox: Option<tokio::sync::Mutex<mpsc::Receiver<R>>>,
    request_timeout: Duration,
    _message: PhantomData<fn(M)>,
}

/// Configures and connects a [`Client`]. Made by [`Client::builder`].
#[must_use = "a client builder does nothing until `connect` is awaited"]
pub struct ClientBuilder<M, H = (), R = NoReceive> {
    handler: H,
    /// The receive buffer's reading end (with [`ClientBuilder::receive`]).
    inbox: Option<mpsc::Receiver<R>>,
    /// The capacity asked for the receive buffer (validated on connect).
    receive_capacity: Option<usize>,
    config: ConnectionConfig,
    connect_timeout: Duration,
    codec: Option<(bool, Override)>,
    tls: Option<ClientTls>,
    reconnect: Option<Reconnect>,
    on_connect: Option<OnConnect>,
    _message: PhantomData<fn(M)>,
}

impl<M, H: std::fmt::Debug, R> std::fmt::Debug for ClientBuilder<M, H, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("handler", &self.handler)
            .field("receive", &self.inbox.is_some())
            .field("config", &self.config)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls.is_some())
            .field("reconnect", &self.reconnect)
            .field("on_connect", &self.on_connect.is_some())
            .finish()
    }
}

impl<M: Message> Client<M> {
    /// Starts configuring a write-only client; add a handler with
    /// [`ClientBuilder::handler`] or a receive buffer with
    /// [`ClientBuilder::receive`].
    pub fn builder() -> ClientBuilder<M, ()> {
        ClientBuilder {
            handler: (),
            inbox: None,
            receive_capacity: None,
            config: ConnectionConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            codec: None,
            tls: None,
            reconnect: None,
            on_connect: None,
            _message: PhantomData,
        }
    }

    /// Connects a write-only client with the default settings.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect`].
    pub async fn connect(addr: impl ConnectAddr) -> Result<Self, ConnectError> {
        Client::builder().connect(addr).await
    }

    /// Connects a write-only client to the Unix-domain socket at `path`
    /// with the default settings.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect_unix`].
    #[cfg(unix)]
    pub async fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Self, ConnectError> {
        Client::builder().connect_unix(path).await
    }
}

impl<M: Message, H: Handler, R: Send + 'static> ClientBuilder<M, H, R> {
    crate::conn::options::connection_options!();

    /// Takes every connection option at once (replacing those set before).
    pub fn options(mut self, options: crate::conn::options::Options) -> Self {
        self.config = options.config;
        self
    }

    /// Handles what the server sends with `handler`.
    pub fn handler<H2: Handler>(self, handler: H2) -> ClientBuilder<M, H2> {
        self.receiving(handler, None)
    }

    /// Buffers what the server sends, decoded as `R`, for
    /// [`Client::recv`] (or the client as a `Stream`), up to `capacity`
    /// messages. When the buffer is full the client stops reading the
    /// socket until it is read: the server's sends then wait
    /// (backpressure); nothing is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let echo = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     ctx.send(&line)?;
    ///     Ok(())
    /// });
    /// let server = Server::listen("127.0.0.1:0", echo).await?;
    /// let client = Client::<String>::builder()
    ///     .receive::<String>(64)
    ///     .connect(server.local_addr())
    ///     .await?;
    /// client.send(&"hello".to_string()).await?;
    /// assert_eq!(client.recv().await.as_deref(), Some("hello"));
    /// # client.close().await;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub fn receive<R2: Message>(self, capacity: usize) -> ClientBuilder<M, Inbox<R2>, R2> {
        let (inbox, rx) = Inbox::new(capacity);
        let mut builder = self.receiving(inbox, Some(rx));
        builder.receive_capacity = Some(capacity);
        builder
    }

    fn receiving<H2, R2>(
        self,
        handler: H2,
        inbox: Option<mpsc::Receiver<R2>>,
    ) -> ClientBuilder<M, H2, R2> {
        ClientBuilder {
            handler,
            inbox,
            receive_capacity: None,
            config: self.config,
            connect_timeout: self.connect_timeout,
            codec: self.codec,
            tls: self.tls,
            reconnect: self.reconnect,
            on_connect: self.on_connect,
            _message: PhantomData,
        }
    }

    /// Connects again when the connection drops (but not after
    /// [`Client::close`] or a drop), following `policy`: see
    /// [`Reconnect`]. There are [`Error::Disconnected`] and
    /// [`Error::Reconnected`] events each time.
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// Runs `hook` with a handle on the new connection after every connect
    /// and reconnect, before the client is handed out (or, after a
    /// reconnect, before what was kept while down is sent): to say hello or
    /// register again. Its sends go out first. If it fails, `connect`
    /// returns [`ConnectError::Hello`] with the hook's error; after a
    /// reconnect the failure is an [`Error::Handler`] event and counts as a
    /// failed try.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use chitchat_net::{Client, ConnectionHandle, Reconnect};
    ///
    /// # async fn run() -> Result<(), chitchat_net::Error> {
    /// let client = Client::<String>::builder()
    ///     .reconnect(Reconnect::new())
    ///     .on_connect(|conn: ConnectionHandle| async move {
    ///         conn.send(&"hello node-7".to_string()).await?;
    ///         Ok(())
    ///     })
    ///     .connect("127.0.0.1:7000")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectionHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |conn| Box::pin(hook(conn))));
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
        config: Arc<crate::transport::tls::rustls::ClientConfig>,
        server_name: crate::transport::tls::pki_types::ServerName<'static>,
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

    /// Switches the [handshake](crate::handshake) on, whatever the
    /// message types: the connection's first frame says what this client
    /// sends (`M`) and accepts (its handler's message type, or `R`), with
    /// its request mode, framing, codecs and cluster label, and the
    /// server's first frame must match. Without it the handshake is on
    /// when `M` or the accepted type declares a fingerprint (derived
    /// types), or a [cluster](Self::cluster) is set; off for `String` and
    /// `Bytes` (and Go peers).
    ///
    /// With the handshake on, `connect` returns only once the server's
    /// hello has been checked: a mismatch, or a server without the
    /// handshake (its first frame is not a hello, or no hello comes within
    /// the [handshake timeout](Self::handshake_timeout)), is
    /// [`ConnectError::Handshake`], naming the first difference. A
    /// reconnecting client that meets a mismatch on a reconnect gives up
    /// ([`Error::ReconnectGaveUp`]). Refused by `connect` with
    /// [`ConnectError::Config`] in EOF framing, and in a raw framing whose
    /// delimiter is a character of the hello.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{handler_fn, BoxError, Client, ConnectError, Context, Message, Server};
    ///
    /// #[derive(Debug, Message)]
    /// #[message(codec = "bincode")]
    /// enum Command { Get { key: String } }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let store = handler_fn(move |cmd: Command, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     tx.send(cmd)?;
    ///     Ok(())
    /// });
    /// // On by default: both ends have derived types.
    /// let server = Server::builder(store).request_ids().listen("127.0.0.1:0").await?;
    /// let client = Client::<Command>::builder().request_ids().connect(server.local_addr()).await?;
    /// client.send(&Command::Get { key: "a".into() }).await?;
    /// assert!(rx.recv().await.is_some());
    ///
    /// // A client without request ids is refused at `connect`, in words.
    /// let refused = Client::<Command>::builder().connect(server.local_addr()).await;
    /// let Err(ConnectError::Handshake(why)) = refused else { panic!("{refused:?}") };
    /// assert_eq!(why.to_string(), "the server uses request ids, this client no requests");
    /// # client.close().await;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub fn handshake(mut self) -> Self {
        self.config.handshake.switch = crate::conn::handshake::Switch::On;
        self
    }

    /// How long the server's hello may take to arrive once connected, with
    /// the [handshake](Self::handshake) on (default 10 s): `connect` waits
    /// for it at most this long.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Refuses to send an empty frame: [`send`](Client::send) and every
    /// other way of sending fails with [`Error::EmptyFrame`] (in
    /// [`SendError::Unsendable`]) instead, and
    /// nothing is sent. For Go chitchat peers, which crash on an empty
    /// frame (a lone delimiter). Off by default.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use chitchat_net::{Client, Error, SendError};
    ///
    /// # async fn run() -> Result<(), Error> {
    /// let client = Client::<String>::builder()
    ///     .refuse_empty_frames()
    ///     .connect("127.0.0.1:7000")
    ///     .await?;
    /// assert!(matches!(
    ///     client.send(&String::new()).await,
    ///     Err(SendError::Unsendable(Error::EmptyFrame))
    /// ));
    /// # Ok(()) }
    /// ```
    pub fn refuse_empty_frames(mut self) -> Self {
        self.config.refuse_empty_frames = true;
        self
    }

    /// Connects to `addr` and starts reading in the background: a TCP
    /// address or name (`"host:port"`), or an [`Addr`] (a Unix-domain
    /// socket's too, such as a Unix server's `local_addr()`).
    ///
    /// # Errors
    ///
    /// [`ConnectError::Io`] if the connection is refused or fails (the
    /// message names the address), [`ConnectError::Timeout`] if connecting
    /// (and the TLS handshake, if any) takes longer than the connect
    /// timeout, [`ConnectError::Tls`] if the handshake fails; `InvalidInput`
    /// for TLS on a Unix-domain socket; [`ConnectError::Config`] for
    /// settings that cannot work (or no tokio runtime);
    /// [`ConnectError::Hello`] if the `on_connect` hook fails.
    pub async fn connect(self, addr: impl ConnectAddr) -> Result<Client<M, R>, ConnectError> {
        self.dial_and_start(vec![addr.target()]).await
    }

    /// Connects to the first of `addrs` that accepts, trying them in order
    /// (one try each, without a delay between them), and starts reading in
    /// the background. A [reconnecting](Self::reconnect) client fails over
    /// between them: after its connection drops, and at once when its
    /// server drains (README, "Drain and failover"), it connects to the
    /// next address of the list, going round it, one address per try. The
    /// backoff counts the failed tries in a row over the whole list, not
    /// per address: the delay before each try, and
    /// [`max_tries`](Reconnect::max_tries), are as with one address (see
    /// [`Reconnect`]); only the try after a drain is made without a delay.
    /// `connect(addr)` is `connect_any([addr])`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), with the last address's error when
    /// none connects; [`ConnectError::Config`] for an empty list. A failed
    /// handshake or `on_connect` on the address that connected is returned
    /// at once (the other addresses are not tried).
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{Client, Reconnect, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Nothing listens on the first address any more.
    /// let gone = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    /// let server = Server::listen("127.0.0.1:0", ()).await?;
    /// let client = Client::<String>::builder()
    ///     .reconnect(Reconnect::new())
    ///     .connect_any([gone.into(), server.local_addr()])
    ///     .await?;
    /// assert_eq!(client.peer_addr(), server.local_addr());
    /// # client.close().await;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub async fn connect_any<A: ConnectAddr>(
        self,
        addrs: impl IntoIterator<Item = A>,
    ) -> Result<Client<M, R>, ConnectError> {
        let targets = addrs.into_iter().map(|addr| addr.target()).collect();
        self.dial_and_start(targets).await
    }

    /// Connects to the Unix-domain socket at `path` (a server started with
    /// [`ServerBuilder::listen_unix`](crate::ServerBuilder::listen_unix))
    /// and starts reading in the background. Everything else works as over
    /// TCP; the addresses are [`Addr::Unix`].
    ///
    /// # Errors
    ///
    /// [`ConnectError::Io`] if nothing listens at `path` or the connection
    /// fails, [`ConnectError::Timeout`] if it takes longer than the connect
    /// timeout; `InvalidInput` if TLS is configured (not supported on Unix
    /// sockets); otherwise as [`connect`](Self::connect).
    #[cfg(unix)]
    pub async fn connect_unix(
        self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Client<M, R>, ConnectError> {
        self.dial_and_start(vec![DialTarget::Unix(path.as_ref().to_path_buf())])
            .await
    }

    /// Refuses client settings that cannot work (the connection's own are
    /// checked when it starts).
    fn validate(&self) -> Result<(), Error> {
        crate::conn::config::runtime_check()?;
        if self.connect_timeout.is_zero() {
            return Err(Error::Config(
                "connect_timeout must not be zero: every connect would time out",
            ));
        }
        if self.receive_capacity == Some(0) {
            return Err(Error::Config(
                "receive(capacity) needs a capacity of at least 1 message",
            ));
        }
        self.reconnect.as_ref().map_or(Ok(()), Reconnect::validate)
    }

    async fn dial_and_start(self, targets: Vec<DialTarget>) -> Result<Client<M, R>, ConnectError> {
        self.dial_and_start_inner(targets)
            .await
            .map_err(ConnectError::from_error)
    }

    async fn dial_and_start_inner(self, targets: Vec<DialTarget>) -> Result<Client<M, R>, Error> {
        self.validate()?;
        let mut dialled = Err(Error::Config("connect_any needs at least one address"));
        let mut next = 0;
        for target in &targets {
            next += 1;
            dialled = dial_within(self.connect_timeout, target.clone(), self.tls.as_ref()).await;
            if dialled.is_ok() {
                break;
            }
        }
        let (stream, peer, local) = dialled?;
        let redial = Redial {
            targets,
            next: std::sync::atomic::AtomicUsize::new(next),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
        };
        let on_connect = self.on_connect.clone();
        let (client, conn) = self.start(stream.split(), peer, local, Some(redial))?;
        // On failure the client is dropped: its connection ends.
        handshaken(&conn).await?;
        if let Some(hook) = on_connect {
            // On failure the client is dropped: its connection ends.
            say_hello(&hook, conn).await?;
        }
        Ok(client)
    }

    /// Runs the client over `io`, any connected byte stream: an in-memory
    /// [`tokio::io::duplex`], a simulated network, a QUIC stream, a serial
    /// line. `peer` names the other end (usually [`Addr::named`]); the
    /// client's own [`local_addr`](Client::local_addr) is
    /// `Addr::named("local")`. Everything else works as over TCP, except
    /// that such a client cannot reconnect (it has nothing to dial): a
    /// [`reconnect`](Self::reconnect) policy is ignored. The two directions
    /// share `io` through [`tokio::io::split`].
    ///
    /// With TLS configured (feature `tls`), the TLS handshake runs over
    /// `io` first, within the connect timeout.
    ///
    /// # Errors
    ///
    /// With TLS: [`ConnectError::Tls`] if the handshake fails,
    /// [`ConnectError::Timeout`] if it takes longer than the connect
    /// timeout. [`ConnectError::Config`] for settings that cannot work;
    /// [`ConnectError::Hello`] if the `on_connect` hook fails.
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
    /// let server = Server::builder(echo).serve(Addr::named("server"), accepted)?;
    ///
    /// let client = Client::<String>::builder()
    ///     .receive::<String>(16)
    ///     .connect_io(client_end, Addr::named("server"))
    ///     .await?;
    /// client.send(&"hello".to_string()).await?;
    /// assert_eq!(client.recv().await.as_deref(), Some("hello"));
    /// client.close().await;
    /// server.cut().await;
    /// # Ok(()) }
    /// ```
    pub async fn connect_io<S>(self, io: S, peer: Addr) -> Result<Client<M, R>, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.connect_io_inner(io, peer)
            .await
            .map_err(ConnectError::from_error)
    }

    async fn connect_io_inner<S>(self, io: S, peer: Addr) -> Result<Client<M, R>, Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.validate()?;
        let local = Addr::named("local");
        let on_connect = self.on_connect.clone();
        let (client, conn) = match self.tls.clone() {
            None => self.start(tokio::io::split(io), peer, local, None)?,
            Some(tls) => {
                let stream = tokio::time::timeout(self.connect_timeout, tls.connect(io))
                    .await
                    .map_err(|_| Error::ConnectTimeout(self.connect_timeout))??;
                self.start(tokio::io::split(stream), peer, local, None)?
            }
        };
        handshaken(&conn).await?;
        if let Some(hook) = on_connect {
            say_hello(&hook, conn).await?;
        }
        Ok(client)
    }

    /// Starts the connection on the two halves of a connected stream; the
    /// client and a handle for `on_connect`. `redial` says how to connect
    /// again (a reconnecting client needs it).
    #[allow(clippy::type_complexity)]
    fn start<Rd, Wr>(
        self,
        halves: (Rd, Wr),
        peer: Addr,
        local: Addr,
        redial: Option<Redial>,
    ) -> Result<(Client<M, R>, ConnectionHandle), Error>
    where
        Rd: AsyncRead + Send + Unpin + 'static,
        Wr: crate::transport::stream::SocketWrite + Send + 'static,
    {
        let (binary, overrides) = match self.codec {
            Some((binary, codec)) => (binary, vec![codec]),
            None => (default_is_binary::<M>(), Vec::new()),
        };
        let wire = Wire::build(&self.config, binary, overrides)?;
        // Frames received are cut as the handler's (or receive buffer's)
        // type needs; a write-only client keeps its sent type's framing,
        // which is what replies to its requests usually share.
        let write_only = std::any::TypeId::of::<H>() == std::any::TypeId::of::<()>();
        let wire = if write_only {
            wire
        } else {
            wire.receiving::<H::Message>()
        };
        let mut config = self.config;
        config.hello =
            crate::conn::wire::client_plan::<M, H::Message>(&config, &wire, !write_only)?;
        config.no_hello =
            crate::conn::wire::no_hello(&config, &wire, crate::wire::hello::Role::Client);
        let counters = Arc::new(Counters::default());
        let ended = CancellationToken::new();
        let (events, errors) =
            event_channel(config.event_capacity, ended.clone(), counters.clone());
        let (handler, inbox) = (self.handler, self.inbox);
        let request_timeout = config.request_timeout;
        config.quiet_ends = self.reconnect.is_some();
        let starter = Starter {
            handler: Arc::new(handler),
            config: Arc::new(config),
            wire,
            counters: counters.clone(),
            events: events.clone(),
        };
        let (conn, task) = starter.launch(halves, peer, local);
        let reconnect = self.reconnect.filter(|_| redial.is_some());
        let link = Arc::new(Link::new(
            conn.clone(),
            reconnect.map(|policy| policy.while_down),
            counters,
        ));
        let outcome = Arc::new(OnceLock::new());
        let supervisor = Supervisor {
            starter,
            link: link.clone(),
            policy: reconnect.zip(redial),
            on_connect: self.on_connect.clone(),
            ended: ended.clone(),
            outcome: outcome.clone(),
        };
        match supervisor.policy {
            Some(_) => drop(tokio::spawn(supervisor.run(task))),
            // One connection for the client's life: a small task (what it
            // holds is the client's memory for as long as it is open).
            None => drop(tokio::spawn(
                Ended {
                    link: supervisor.link,
                    events: supervisor.starter.events,
                    ended: supervisor.ended,
                    outcome: supervisor.outcome,
                }
                .after(task),
            )),
        }
        let fixed = link.reconnect.is_none().then(|| conn.clone());
        let client = Client {
            link,
            fixed,
            ended,
            outcome,
            events,
            errors,
            inbox: inbox.map(tokio::sync::Mutex::new),
            request_timeout,
            _message: PhantomData,
        };
        Ok((client, conn))
    }
}

/// Waits until the handshake of `conn` is done, if it has one (bounded by
/// the handshake timeout, which the connection enforces, and by its end).
///
/// # Errors
///
/// [`Error::Handshake`].
async fn handshaken(conn: &ConnectionHandle) -> Result<(), Error> {
    let inner = &conn.inner;
    inner.handshake.wait(|| inner.end.get().is_some()).await?;
    Ok(())
}

/// Runs the `on_connect` hook on `conn`.
fn say_hello(
    hook: &OnConnect,
    conn: ConnectionHandle,
) -> impl Future<Output = Result<(), Error>> + Send + 'static {
    let hello = hook(conn);
    async move { hello.await.map_err(Error::Handler) }
}

/// Connects to `target` within `timeout`.
async fn dial_within(
    timeout: Duration,
    target: DialTarget,
    tls: Option<&ClientTls>,
) -> Result<(stream::Stream, Addr, Addr), Error> {
    tokio::time::timeout(timeout, stream::dial(target, tls))
        .await
        .map_err(|_| Error::ConnectTimeout(timeout))?
}

/// How to connect again.
#[derive(Debug)]
struct Redial {
    /// The server's addresses, tried in turn.
    targets: Vec<DialTarget>,
    /// The index (modulo their number) of the next one to try.
    next: std::sync::atomic::AtomicUsize,
    tls: Option<ClientTls>,
    connect_timeout: Duration,
}

impl Redial {
    /// The address to try next: the one after the last tried, round the
    /// list.
    fn next_target(&self) -> DialTarget {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.targets[n % self.targets.len()].clone()
    }
}

/// A connection task, boxed: a reconnecting client runs one after another.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What every connection of one client is started with.
struct Starter<H> {
    handler: Arc<H>,
    config: Arc<ConnectionConfig>,
    wire: Wire,
    counters: Arc<Counters>,
    events: EventSink,
}

impl<H: Handler> Starter<H> {
    /// A handle on a new connection on `halves`, and its task.
    fn launch<Rd, Wr>(&self, halves: (Rd, Wr), peer: Addr, local: Addr) -> (ConnectionHandle, Task)
    where
        Rd: AsyncRead + Send + Unpin + 'static,
        Wr: crate::transport::stream::SocketWrite + Send + 'static,
    {
        let (conn, task) = self.connection(halves, peer, local);
        (conn, Box::pin(task))
    }

    /// A handle on a new connection on `halves`, and its task, unboxed.
    fn connection<Rd, Wr>(
        &self,
        halves: (Rd, Wr),
        peer: Addr,
        local: Addr,
    ) -> (ConnectionHandle, impl Future<Output = ()> + Send + 'static)
    where
        Rd: AsyncRead + Send + Unpin + 'static,
        Wr: crate::transport::stream::SocketWrite + Send + 'static,
    {
        let conn = self.handle(peer, local);
        conn.greet(self.config.hello.as_deref());
        self.counters.opened();
        let counters = self.counters.clone();
        let on_end = OnEnd::new(move || counters.closed());
        let span = tracing::info_span!("chitchat_client", peer = %conn.inner.peer, id = %conn.id());
        let task = connection::run(
            halves,
            conn.clone(),
            self.handler.clone(),
            self.config.clone(),
            self.events.clone(),
            on_end,
        );
        (conn, task.instrument(span))
    }

    /// A queue for a reconnecting client that is down: it keeps what is
    /// sent, and refuses requests (they would have no connection to go
    /// out on: a request never waits in it, to be sent later after its
    /// caller was told it failed).
    fn holding(&self, peer: Addr, local: Addr) -> ConnectionHandle {
        let held = self.handle(peer, local);
        if let Some(requests) = &held.inner.requests {
            requests.refuse();
        }
        held
    }

    /// A handle with a queue and no socket (yet).
    fn handle(&self, peer: Addr, local: Addr) -> ConnectionHandle {
        ConnectionHandle::new(
            peer,
            local,
            self.wire.clone(),
            self.config.queue_bytes,
            self.counters.clone(),
        )
    }
}

/// The task behind a client: awaits its connection, and for a
/// reconnecting client connects again when it drops.
struct Supervisor<H> {
    starter: Starter<H>,
    link: Arc<Link>,
    policy: Option<(Reconnect, Redial)>,
    on_connect: Option<OnConnect>,
    ended: CancellationToken,
    outcome: Arc<OnceLock<CloseReason>>,
}

/// What a client that does not reconnect does when its connection ends:
/// the part of [`Supervisor`] it needs.
struct Ended {
    link: Arc<Link>,
    events: EventSink,
    ended: CancellationToken,
    outcome: Arc<OnceLock<CloseReason>>,
}

impl Ended {
    /// Runs the connection's task, then ends the client (as
    /// [`Supervisor::run`] does without a policy).
    async fn after(self, task: Task) {
        task.await;
        let now = self.link.current().handle().clone();
        let reason = now.inner.end.get().unwrap_or(CloseReason::Aborted);
        if reason == CloseReason::ByPeer {
            self.events
                .report(Some(now.peer_addr()), Error::ClosedByPeer);
        }
        let _ = self.outcome.set(reason);
        self.ended.cancel();
    }
}

impl<H: Handler> Supervisor<H> {
    async fn run(self, first: Task) {
        let mut task = first;
        // When the connection now started, and the frames read until then.
        let mut since = self.since();
        // Failed tries in a row: a connection that ended before it was
        // healthy is one too.
        let mut failed: u32 = 0;
        // Tries in the outage now (since the last healthy connection).
        let mut attempts: u32 = 0;
        let mut outage = false;
        // The tasks of connections left because their server drains: they
        // end by themselves, and the client ends after them.
        let mut left: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let reason = loop {
            let now = self.link.current().handle().clone();
            let drained = match &self.policy {
                // A reconnecting client moves on when its server drains.
                Some(_) => tokio::select! {
                    () = &mut task => false,
                    () = now.inner.drain.told() => true,
                },
                None => {
                    (&mut task).await;
                    false
                }
            };
            let Some((policy, redial)) = &self.policy else {
                let reason = now.inner.end.get().unwrap_or(CloseReason::Aborted);
                if reason == CloseReason::ByPeer {
                    self.starter
                        .events
                        .report(Some(now.peer_addr()), Error::ClosedByPeer);
                }
                break reason;
            };
            if drained && !(self.link.stop.is_cancelled() || self.link.closing.is_cancelled()) {
                // The server drains: the requests in flight are answered on
                // this connection, which then ends by itself; new ones wait
                // for the next. No backoff: the first try is made at once.
                self.link.add_draining(now.clone());
                if self.link.stop.is_cancelled() || self.link.closing.is_cancelled() {
                    // Closed just now: it may not have seen this one.
                    now.close();
                }
                left.push(tokio::spawn(task));
                let (started, frames_in) = since;
                if policy.healthy(started.elapsed(), self.frames_in() > frames_in) {
                    failed = 0;
                }
                outage = false;
                attempts = 0;
                tracing::debug!(peer = %now.peer_addr(), "the server drains: connecting to the next address");
                self.set_down(policy, &now);
                match self
                    .reconnect(policy, redial, &mut failed, &mut attempts, true)
                    .await
                {
                    Ok((next, started)) => {
                        task = next;
                        since = started;
                        continue;
                    }
                    Err(gave_up) => break self.give_up(gave_up, &now),
                }
            }
            if drained {
                // Closing anyway: the connection ends with the client.
                (&mut task).await;
            }
            let last = now;
            let reason = last.inner.end.get().unwrap_or(CloseReason::Aborted);
            let peer = Some(last.peer_addr());
            if self.link.stop.is_cancelled() || self.link.closing.is_cancelled() {
                break reason;
            }
            // This client has no handshake and refused the server's hello
            // (the server does the handshake): dialling again cannot help.
            let refused = last.inner.handshake.outcome();
            if let Some(Err(error)) = refused.filter(|o| matches!(o, Err(e) if e.is_permanent())) {
                tracing::warn!(
                    error = %error,
                    "chitchat-net client: the server does the handshake, this client not; giving up reconnecting"
                );
                break self.give_up(Some(failed.saturating_add(1)), &last);
            }
            let (started, frames_in) = since;
            if policy.healthy(started.elapsed(), self.frames_in() > frames_in) {
                failed = 0;
                outage = false;
            } else {
                failed = failed.saturating_add(1);
            }
            // One WARN per outage, not one per try.
            if outage {
                tracing::debug!(
                    peer = %last.peer_addr(),
                    ?reason,
                    tries = failed,
                    "connection ended before it was healthy: a failed try"
                );
            } else {
                tracing::warn!(
                    peer = %last.peer_addr(),
                    ?reason,
                    "chitchat-net client disconnected; reconnecting"
                );
                outage = true;
                attempts = 0;
            }
            self.starter
                .events
                .report_quietly(peer, Error::Disconnected { reason });
            self.set_down(policy, &last);
            match self
                .reconnect(policy, redial, &mut failed, &mut attempts, false)
                .await
            {
                Ok((next, started)) => {
                    task = next;
                    since = started;
                }
                Err(gave_up) => break self.give_up(gave_up, &last),
            }
        };
        // The connections left draining end by themselves (their server
        // closes them); closing or dropping the client ends them too.
        for task in left {
            let _ = task.await;
        }
        let _ = self.outcome.set(reason);
        self.ended.cancel();
    }

    /// The link while down after `last`: holding or dropping what is sent.
    fn set_down(&self, policy: &Reconnect, last: &ConnectionHandle) {
        self.link.set(match policy.while_down {
            crate::client::link::WhileDown::Keep => {
                Current::Holding(self.starter.holding(last.peer_addr(), last.local_addr()))
            }
            _ => Current::Down(last.clone()),
        });
    }

    /// Ends the client after reconnecting stopped (`None`: closed) or gave
    /// up (`Some(tries)`); `last` was its last connection.
    fn give_up(&self, gave_up: Option<u32>, last: &ConnectionHandle) -> CloseReason {
        if let Some(tries) = gave_up {
            tracing::warn!(
                peer = %last.peer_addr(),
                tries,
                "chitchat-net client gave up reconnecting"
            );
            self.starter.events.report_quietly(
                Some(last.peer_addr()),
                Error::ReconnectGaveUp { attempts: tries },
            );
        }
        let counters = &self.starter.counters;
        self.link.update(|current| {
            if let Current::Holding(held) = current {
                drop_kept(held, counters);
            }
            Current::Ended(last.clone())
        });
        if gave_up.is_some() {
            CloseReason::Failed
        } else {
            CloseReason::ByUs
        }
    }

    /// Frames read by the client so far.
    fn frames_in(&self) -> u64 {
        self.starter
            .counters
            .frames_in
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Now, and the frames read so far: when a connection starts.
    fn since(&self) -> (Instant, u64) {
        (Instant::now(), self.frames_in())
    }

    /// Connects again until it succeeds (the new connection's task and
    /// when it started), the client is stopped (`Err(None)`) or the tries
    /// run out (`Err(Some(failed))`). `failed` counts failed tries in a
    /// row, `attempts` the tries of this outage.
    async fn reconnect(
        &self,
        policy: &Reconnect,
        redial: &Redial,
        failed: &mut u32,
        attempts: &mut u32,
        drained: bool,
    ) -> Result<(Task, (Instant, u64)), Option<u32>> {
        // After a drain the first try is made at once.
        let mut at_once = drained;
        loop {
            if policy.exhausted(*failed) && !at_once {
                return Err(Some(*failed));
            }
            let delay = if std::mem::take(&mut at_once) {
                Duration::ZERO
            } else {
                policy.delay(*failed, jitter())
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.link.stop.cancelled() => return Err(None),
            }
            *attempts = attempts.saturating_add(1);
            match self.try_connect(redial).await {
                Ok(launched) => {
                    let peer = self.link.current().handle().peer_addr();
                    if drained && *attempts == 1 {
                        // The drain was logged at INFO already: no more.
                        tracing::debug!(%peer, "chitchat-net client moved on after a drain");
                    } else {
                        tracing::info!(
                            %peer,
                            attempts = *attempts,
                            "chitchat-net client reconnected"
                        );
                    }
                    self.starter.events.report_quietly(
                        Some(self.link.current().handle().peer_addr()),
                        Error::Reconnected {
                            attempts: *attempts,
                        },
                    );
                    return Ok(launched);
                }
                Err(_) if self.link.stop.is_cancelled() => return Err(None),
                // The server speaks another protocol: dialling again
                // cannot help.
                Err(Error::Handshake(error)) if error.is_permanent() => {
                    *failed = failed.saturating_add(1);
                    tracing::warn!(
                        error = %error,
                        "chitchat-net client: the server refused the handshake; giving up reconnecting"
                    );
                    return Err(Some(*failed));
                }
                Err(error) => {
                    *failed = failed.saturating_add(1);
                    tracing::debug!(error = %crate::wire::error::Report(&error), tries = *failed, "reconnect failed");
                    self.starter.events.report_quietly(None, error);
                }
            }
        }
    }

    /// One try: connects, runs `on_connect` (while the connection runs),
    /// moves what was kept while down behind what it sent, and makes the
    /// new connection the client's. A connection that started and fails
    /// here is ended, and its task awaited (its `on_close` runs).
    async fn try_connect(&self, redial: &Redial) -> Result<(Task, (Instant, u64)), Error> {
        let dial = dial_within(
            redial.connect_timeout,
            redial.next_target(),
            redial.tls.as_ref(),
        );
        let (stream, peer, local) = tokio::select! {
            dialled = dial => dialled?,
            () = self.link.stop.cancelled() => return Err(Error::Closed),
        };
        let since = self.since();
        let (conn, mut task) = self.starter.launch(stream.split(), peer, local);
        let shaken = tokio::select! {
            biased;
            shaken = handshaken(&conn) => shaken,
            // Ended by itself (its on_close has run): after a failed
            // handshake, that failure.
            () = &mut task => {
                return Err(handshaken(&conn).await.err().unwrap_or(Error::Closed));
            }
            () = self.link.stop.cancelled() => Err(Error::Closed),
        };
        if let Err(error) = shaken {
            conn.inner.signal.abort();
            task.await;
            return Err(error);
        }
        if let Some(hook) = &self.on_connect {
            let hello = say_hello(hook, conn.clone());
            let said = tokio::select! {
                said = hello => said,
                // Ended by itself (its on_close has run).
                () = &mut task => return Err(Error::Closed),
                () = self.link.stop.cancelled() => Err(Error::Closed),
            };
            if let Err(error) = said {
                // Its on_open has run: end it, and let its on_close run.
                conn.inner.signal.abort();
                task.await;
                return Err(error);
            }
        }
        self.link.update(|current| {
            if let Current::Holding(held) = current {
                conn.inner.outbox.push_kept(held.inner.outbox.drain());
            }
            Current::Up(conn.clone())
        });
        if self.link.stop.is_cancelled() || self.link.closing.is_cancelled() {
            // Closed meanwhile: this connection closes too (after sending
            // what was kept, unless stopped).
            conn.close();
        }
        Ok((task, since))
    }
}

/// Drops what a reconnecting client kept while down (`held`'s queue), and
/// counts it.
fn drop_kept(held: &ConnectionHandle, counters: &Counters) {
    let kept = held.inner.outbox.drain();
    Counters::add(&counters.kept_frames_dropped_at_end, kept.frames());
}

/// What [`Client::close_within`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Frames accepted for sending and never written, dropped by this
    /// close: kept while down and dropped at the deadline
    /// ([`Stats::kept_frames_dropped_at_end`]), or queued on a connection
    /// that ended before they were written
    /// ([`Stats::frames_lost_with_connection`]). Zero if everything sent
    /// before the close was written.
    pub dropped: u64,
    /// Whether everything ended within the deadline (`false`: the deadline
    /// passed and the client was ended at once).
    pub in_time: bool,
    /// How the client ended.
    pub reason: CloseReason,
}

impl<M: Message, R> Client<M, R> {
    /// Sends `msg`, waiting while the outgoing queue is full. Messages sent
    /// in a row are written together; a lone one is written at once.
    ///
    /// A reconnecting client that is down keeps or drops `msg` as its
    /// [`WhileDown`](crate::WhileDown) policy says.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the connection has ended (a reconnecting
    /// client: once it is closed or has given up);
    /// [`SendError::Unsendable`] for encode and framing errors (nothing is
    /// sent then).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is queued whole or not at all.
    pub async fn send(&self, msg: &M) -> Result<(), SendError> {
        if let Some(conn) = &self.fixed {
            // Queued at once if there is room: no inner future to poll.
            if let Some(sent) = conn.send_now(msg) {
                return sent;
            }
            return conn.send(msg).await;
        }
        loop {
            let (conn, seen) = match self.link.target(1) {
                Target::Queue(conn, seen) => (conn, seen),
                Target::Drop => return Ok(()),
                Target::Closed => return Err(SendError::Closed),
            };
            match conn.send(msg).await {
                Err(SendError::Closed) if self.link.retry_after(seen).await => {}
                other => return other,
            }
        }
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
    pub async fn send_all<'a, I>(&self, msgs: I) -> Result<(), SendError>
    where
        M: 'a,
        I: IntoIterator<Item = &'a M>,
    {
        if let Some(conn) = &self.fixed {
            return conn.send_all(msgs).await;
        }
        // Reconnecting: a batch cut short by a dropped connection goes on
        // after what was queued.
        let msgs: Vec<&M> = msgs.into_iter().collect();
        let mut from = 0;
        while from < msgs.len() {
            let (conn, seen) = match self.link.target((msgs.len() - from) as u64) {
                Target::Queue(conn, seen) => (conn, seen),
                Target::Drop => return Ok(()),
                Target::Closed => return Err(SendError::Closed),
            };
            let (queued, result) = conn.send_all_counted(Rest(&msgs[from..])).await;
            from += usize::try_from(queued).unwrap_or(usize::MAX);
            match result {
                Err(SendError::Closed) if self.link.retry_after(seen).await => {}
                other => return other,
            }
        }
        Ok(())
    }

    /// Sends `msg` if the outgoing queue has room now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`], or as [`send`](Self::send).
    pub fn try_send(&self, msg: &M) -> Result<(), TrySendError> {
        if let Some(conn) = &self.fixed {
            return conn.try_send(msg);
        }
        match self.link.target(1) {
            Target::Queue(conn, _) => conn.try_send(msg),
            Target::Drop => Ok(()),
            Target::Closed => Err(TrySendError::Closed),
        }
    }

    /// Sends one frame of raw bytes.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        if let Some(conn) = &self.fixed {
            return conn.send_bytes(payload).await;
        }
        loop {
            let (conn, seen) = match self.link.target(1) {
                Target::Queue(conn, seen) => (conn, seen),
                Target::Drop => return Ok(()),
                Target::Closed => return Err(SendError::Closed),
            };
            match conn.send_bytes(payload).await {
                Err(SendError::Closed) if self.link.retry_after(seen).await => {}
                other => return other,
            }
        }
    }

    /// Sends `msg` as a request and waits for its reply, of the type `M`
    /// names ([`Request::Reply`]: `#[message(reply = ...)]`), for at most
    /// the request timeout (default 30 s;
    /// [`ClientBuilder::request_timeout`]). `msg` is encoded at once: the
    /// returned future does not keep it borrowed. Needs
    /// [`request_ids`](ClientBuilder::request_ids) (on both ends) or
    /// [`ordered_replies`](ClientBuilder::ordered_replies): see
    /// [`ConnectionHandle::request`]. A reconnecting client that is down
    /// waits to be connected again, within the timeout. For a peer whose
    /// replies have no declared type, see
    /// [`request_untyped`](Self::request_untyped).
    ///
    /// # Errors
    ///
    /// [`RequestError::Timeout`], [`RequestError::ConnectionLost`] (never
    /// retried), [`RequestError::Remote`] (the server's handler failed,
    /// the request did not decode there, or was left unanswered), and as
    /// [`ConnectionHandle::request`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a reply that comes after the future is dropped is an
    /// [`Error::LateReply`] event, never the answer to another request.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let shout = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     ctx.reply(&line.to_uppercase())?;
    ///     Ok(())
    /// });
    /// let server = Server::builder(shout).request_ids().listen("127.0.0.1:0").await?;
    /// let client = Client::<String>::builder().request_ids().connect(server.local_addr()).await?;
    /// // A `String` asks, a `String` answers; the messages are built inline.
    /// let (a, b) = tokio::join!(
    ///     client.request(&"ping".to_string()),
    ///     client.request(&"hello".to_string()),
    /// );
    /// assert_eq!((a?.as_str(), b?.as_str()), ("PING", "HELLO"));
    /// # client.close().await;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub fn request(&self, msg: &M) -> impl Future<Output = Result<M::Reply, RequestError>> + '_
    where
        M: Request,
    {
        self.request_untyped_within::<M::Reply>(msg, self.request_timeout)
    }

    /// [`request`](Self::request) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn request_within(
        &self,
        msg: &M,
        timeout: Duration,
    ) -> impl Future<Output = Result<M::Reply, RequestError>> + '_
    where
        M: Request,
    {
        self.request_untyped_within::<M::Reply>(msg, timeout)
    }

    /// [`request`](Self::request) whose reply type the caller names, for
    /// peers whose messages declare no reply type (a Go text peer in
    /// ordered mode, raw bytes). Nothing checks that `T` is what the peer
    /// answers: a reply that does not decode as `T` is
    /// [`RequestError::BadReply`], and one that happens to decode is taken.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn request_untyped<T: Message>(
        &self,
        msg: &M,
    ) -> impl Future<Output = Result<T, RequestError>> + '_ {
        self.request_untyped_within::<T>(msg, self.request_timeout)
    }

    /// [`request_untyped`](Self::request_untyped) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn request_untyped_within<T: Message>(
        &self,
        msg: &M,
        timeout: Duration,
    ) -> impl Future<Output = Result<T, RequestError>> + '_ {
        let (deadline, timeout) = crate::conn::handle::effective_deadline(timeout);
        // Encoded now, so that the future does not borrow `msg`: every
        // connection of a client speaks the same wire.
        let encoded = match &self.fixed {
            Some(conn) => conn.encode_request(msg),
            None => self.link.current().handle().encode_request(msg),
        };
        async move {
            let encoded = encoded.map_err(RequestError::from_error)?;
            self.request_encoded(&encoded, deadline, timeout).await
        }
    }

    /// Sends a request already encoded, and waits for its reply until
    /// `deadline`.
    async fn request_encoded<T: Message>(
        &self,
        encoded: &Encoded,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<T, RequestError> {
        let timed_out = |_| RequestError::Timeout(timeout);
        loop {
            if self.link.closing.is_cancelled() {
                return Err(RequestError::Closed);
            }
            let (seen, current) = self.link.now();
            let conn = match current {
                Current::Up(conn) => conn,
                Current::Ended(_) => return Err(RequestError::Closed),
                Current::Holding(_) | Current::Down(_) => {
                    tokio::time::timeout_at(deadline, self.link.up())
                        .await
                        .map_err(timed_out)?
                        .ok_or(RequestError::Closed)?
                }
            };
            match conn.try_request(encoded, deadline, timeout).await {
                Ok(reply) => return Ok(reply),
                // The connection ended before the request went out (it
                // may be in its `on_close` still): a reconnecting client
                // sends it on the next one.
                // Or its server drains (it was not sent), or refused it
                // as it drained (it was not run): on the next one too.
                Err(
                    Attempt::NotSent(
                        RequestError::Closed
                        | RequestError::ConnectionLost
                        | RequestError::Draining,
                    )
                    | Attempt::Failed(RequestError::Remote {
                        code: crate::wire::envelope::ErrorCode::Draining,
                        ..
                    }),
                ) if self.link.reconnect.is_some() => {
                    let retry = tokio::time::timeout_at(deadline, self.link.retry_after(seen))
                        .await
                        .map_err(timed_out)?;
                    if !retry {
                        return Err(RequestError::Closed);
                    }
                }
                Err(failed) => return Err(failed.into_error()),
            }
        }
    }

    /// Sends `msg` as a subscription and returns the stream of its items
    /// (of the type `M` names: [`Subscription::Item`], `#[message(stream =
    /// ...)]`), with a window of
    /// [`DEFAULT_STREAM_WINDOW`](crate::DEFAULT_STREAM_WINDOW) items: see
    /// [`ConnectionHandle::subscribe`]. Needs request ids on both ends and
    /// reply streams in both hellos; otherwise it fails at once with
    /// [`StreamError::Unsupported`] (or [`StreamError::NotEnabled`]) and
    /// sends nothing. A reconnecting client that is down waits to be
    /// connected again, within the request timeout. The stream is bound to
    /// the connection it was made on: it ends with
    /// [`StreamError::ConnectionLost`] when that connection is lost, and a
    /// reconnecting client subscribes again once connected.
    ///
    /// # Errors
    ///
    /// [`StreamError::Timeout`] (down for the whole request timeout), and
    /// as [`ConnectionHandle::subscribe`].
    pub async fn subscribe(&self, msg: &M) -> Result<ReplyStream<M::Item>, StreamError>
    where
        M: Subscription,
    {
        self.subscribe_with(msg, crate::conn::subscriptions::DEFAULT_STREAM_WINDOW)
            .await
    }

    /// [`subscribe`](Self::subscribe) with a window of `window` items (see
    /// [`ConnectionHandle::subscribe_with`]).
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_with(
        &self,
        msg: &M,
        window: u64,
    ) -> Result<ReplyStream<M::Item>, StreamError>
    where
        M: Subscription,
    {
        let timeout = self.request_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if self.link.closing.is_cancelled() {
                return Err(StreamError::Closed);
            }
            let (seen, current) = self.link.now();
            let conn = match current {
                Current::Up(conn) => conn,
                Current::Ended(_) => return Err(StreamError::Closed),
                Current::Holding(_) | Current::Down(_) => {
                    tokio::time::timeout_at(deadline, self.link.up())
                        .await
                        .map_err(|_| StreamError::Timeout(timeout))?
                        .ok_or(StreamError::Closed)?
                }
            };
            match conn.subscribe_with(msg, window).await {
                // Nothing was sent: a reconnecting client tries the next
                // connection (after a drain, the one it moves on to).
                Err(StreamError::Closed | StreamError::Draining)
                    if self.link.reconnect.is_some() =>
                {
                    let retry = tokio::time::timeout_at(deadline, self.link.retry_after(seen))
                        .await
                        .map_err(|_| StreamError::Timeout(timeout))?;
                    if !retry {
                        return Err(StreamError::Closed);
                    }
                }
                other => return other,
            }
        }
    }

    /// A handle to send on this client's connection from other tasks (of a
    /// reconnecting client: on the connection now; it does not follow
    /// reconnects). While a reconnecting client is down with
    /// [`WhileDown::Keep`](crate::WhileDown::Keep), it is the queue of what
    /// is kept: sends on it are kept and go out after the reconnect, and
    /// requests on it fail at once with [`RequestError::Closed`] (nothing
    /// is sent; [`Client::request`] waits for the reconnect instead).
    pub fn handle(&self) -> ConnectionHandle {
        self.link.current().handle().clone()
    }

    /// This end's address (of the connection now).
    pub fn local_addr(&self) -> Addr {
        self.link.current().handle().local_addr()
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Addr {
        self.link.current().handle().peer_addr()
    }

    /// Whether the client is closing or closed: sends fail from then on. A
    /// reconnecting client is closed only once closed or given up.
    pub fn is_closed(&self) -> bool {
        match self.link.current() {
            Current::Ended(_) => true,
            current if self.link.reconnect.is_none() => current.handle().is_closed(),
            _ => self.link.stop.is_cancelled(),
        }
    }

    /// Delivers everything sent so far, then ends the connection: flushes,
    /// closes the write side (in EOF framing, this is what delivers the
    /// message), and waits until the server has closed its side too (or the
    /// close timeout passes). Replies that arrive meanwhile still reach the
    /// handler. A reconnecting client stops reconnecting; what it kept
    /// while down is dropped, and counted in
    /// [`Stats::kept_frames_dropped_at_end`] ([`close_within`](Self::close_within)
    /// waits for the reconnect instead). What can be lost, and where it
    /// is counted: README, "What is delivered, what can be lost, and how
    /// you know".
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped, the connection goes on
    /// closing, and a later `close().await` waits for the same end (calling
    /// it after the end returns at once).
    pub async fn close(&self) {
        self.link.stop.cancel();
        self.link.end_draining(false);
        match self.link.current() {
            Current::Up(conn) => conn.close(),
            Current::Holding(held) => drop_kept(&held, self.link.counters()),
            Current::Down(_) | Current::Ended(_) => {}
        }
        self.ended.cancelled().await;
    }

    /// Closes the client as [`close`](Self::close) does, but a
    /// reconnecting client that is down first waits, up to `deadline`, to
    /// connect again and send what it kept. Sends are refused from the
    /// call on. If the deadline passes first, the client ends at once
    /// (what it kept is dropped; what its connection had not written is
    /// lost). The report says how many frames were dropped so, and
    /// whether it ended in time.
    ///
    /// Frames written to the socket may still be lost if the server dies
    /// before reading them: see README, "What is delivered, what can be
    /// lost, and how you know".
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the client goes on closing (its sends
    /// stay refused) without a deadline; [`close`](Self::close) ends it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use chitchat_net::{Client, Reconnect};
    /// use std::time::Duration;
    ///
    /// # async fn run() -> Result<(), chitchat_net::ConnectError> {
    /// let client = Client::<String>::builder()
    ///     .reconnect(Reconnect::new())
    ///     .connect("127.0.0.1:7000")
    ///     .await?;
    /// client.send(&"last reading".to_string()).await.ok();
    /// let report = client.close_within(Duration::from_secs(5)).await;
    /// if report.dropped > 0 {
    ///     eprintln!("{} readings never sent", report.dropped);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn close_within(&self, deadline: Duration) -> CloseReport {
        let counters = self.link.counters();
        let unsent = || {
            let stats = counters.snapshot();
            stats.frames_lost_with_connection + stats.kept_frames_dropped_at_end
        };
        let before = unsent();
        self.link.closing.cancel();
        self.link.end_draining(false);
        match self.link.current() {
            Current::Up(conn) => conn.close(),
            // What it kept goes out on the next connection, which closes.
            Current::Holding(held) => held.inner.outbox.close(),
            // Nothing kept: nothing to wait for.
            Current::Down(_) => self.link.stop.cancel(),
            Current::Ended(_) => {}
        }
        let in_time = tokio::time::timeout(deadline, self.ended.cancelled())
            .await
            .is_ok();
        if !in_time {
            self.link.stop.cancel();
            self.link.end_draining(true);
            match self.link.current() {
                Current::Holding(held) => drop_kept(&held, counters),
                current => current.handle().inner.signal.abort(),
            }
            self.ended.cancelled().await;
        }
        CloseReport {
            dropped: unsent().saturating_sub(before),
            in_time,
            reason: self.outcome.get().copied().unwrap_or(CloseReason::Aborted),
        }
    }

    /// Waits until the client has ended, whoever ended it, and says how:
    /// [`CloseReason::ByPeer`] when the server closed it first (an
    /// [`Error::ClosedByPeer`] event is reported then too, where the Go
    /// original put `EOF` on its error channel), [`CloseReason::ByUs`]
    /// after [`close`](Self::close). A reconnecting client ends only when
    /// closed, dropped, or out of tries ([`CloseReason::Failed`]). Returns
    /// at once if it already has ended; the handler's `on_close` has run by
    /// then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn closed(&self) -> CloseReason {
        self.ended.cancelled().await;
        self.outcome.get().copied().unwrap_or(CloseReason::Aborted)
    }

    /// The stream of error events.
    pub fn errors(&self) -> ErrorEvents {
        self.errors.clone()
    }

    /// A snapshot of the client's counters (over every connection of a
    /// reconnecting client). Which of them count frames that were never
    /// written: README, "What is delivered, what can be lost, and how you
    /// know".
    pub fn stats(&self) -> Stats {
        self.link.counters().snapshot()
    }

    /// How many error events were dropped because nobody read them.
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped()
    }
}

/// The receive type of a client built without
/// [`ClientBuilder::receive`]: it has no receive buffer, so
/// [`Client::recv`] does not compile on it. No value of it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReceive {}

/// What a client with a receive buffer receives: any [`Message`]. A client
/// built without [`ClientBuilder::receive`] receives [`NoReceive`], which
/// is not one, so that `recv` on it says what to add.
#[diagnostic::on_unimplemented(
    message = "this client has no receive buffer: build it with `.receive::<T>(capacity)` to call `recv`",
    label = "the client's builder had no `.receive::<T>(capacity)`",
    note = "`Client::<M>::builder().receive::<T>(capacity)` buffers what the server sends, decoded as `T`, for `recv`, `try_recv` and the client as a `Stream`; a client with a handler (`.handler(..)`) gets what the server sends there instead"
)]
pub trait Receivable: Message {}

impl<T: Message> Receivable for T {}

impl<M: Message, R> Client<M, R> {
    /// The next message the server sent, in order; `None` once the client
    /// has ended and everything it received has been taken
    /// ([`closed`](Self::closed) then says why, at once). While nobody
    /// calls it, the buffer fills and the client stops reading (see
    /// [`ClientBuilder::receive`]).
    ///
    /// It takes `&self`, so that one task can receive while others send
    /// and make requests; concurrent `recv` calls take turns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no message is lost if the future is dropped.
    pub async fn recv(&self) -> Option<R>
    where
        R: Receivable,
    {
        self.inbox.as_ref()?.lock().await.recv().await
    }

    /// The next message if one is buffered now (`None` also while another
    /// task is in [`recv`](Self::recv)).
    pub fn try_recv(&self) -> Option<R>
    where
        R: Receivable,
    {
        self.inbox.as_ref()?.try_lock().ok()?.try_recv().ok()
    }
}

/// The messages of a batch not yet queued, by reference. (Not
/// `iter().copied()`: the `Copy` bound that adapter carries makes the future
/// of `send_all` unsendable to `tokio::spawn`, "implementation of `Copy` is
/// not general enough".)
struct Rest<'s, 'a, M>(&'s [&'a M]);

impl<'a, M> Iterator for Rest<'_, 'a, M> {
    type Item = &'a M;

    fn next(&mut self) -> Option<&'a M> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.0.len(), Some(self.0.len()))
    }
}

/// A receiving client is a stream of what the server sends: it ends when
/// the client has ended and everything received has been taken (see
/// [`Client::recv`]).
impl<M: Message, R: Message> futures_util::Stream for Client<M, R> {
    type Item = R;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<R>> {
        match self.get_mut().inbox.as_mut() {
            Some(inbox) => inbox.get_mut().poll_recv(cx),
            None => Poll::Ready(None),
        }
    }
}

impl<M, R> Drop for Client<M, R> {
    /// Ends the connection at once.
    fn drop(&mut self) {
        self.link.stop.cancel();
        self.link.end_draining(true);
        match self.link.current() {
            Current::Holding(held) => drop_kept(&held, self.link.counters()),
            current => current.handle().inner.signal.abort(),
        }
        self.ended.cancel();
    }
}
