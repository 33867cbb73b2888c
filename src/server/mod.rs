//! The server: accepts connections and runs a handler on each.
//!
//! May import: `conn`, `transport`, `codec`, `wire`, `base`; not `client`
//! beside it, nothing above (`.ci/check-layers` checks it).

use std::collections::{BTreeSet, HashMap};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};

use crate::base::addr::sealed::Target;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::base::addr::{Addr, ConnectAddr};
use crate::base::close::CloseReason;
use crate::base::stats::{Counters, Stats};
use crate::codec::{Codec, Message};
use crate::conn::config::ConnectionConfig;
use crate::conn::connection::{self, OnEnd};
use crate::conn::events::ErrorEvents;
use crate::conn::events::{event_channel, EventSink};
use crate::conn::handle::{ConnectionHandle, ConnectionId};
use crate::conn::handler::Handler;
use crate::conn::outbox::PushError;
use crate::conn::signal::Fired;
use crate::conn::wire::{codec_override, default_is_binary, Wire};
use crate::transport::stream::{self, Accepted, Io, Listener, ServerTls};
use crate::wire::error::Error;

/// Default listen backlog.
const DEFAULT_BACKLOG: u32 = 1024;
/// Longest pause of the accept loop after repeated accept errors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A TCP server that decodes each frame into `H::Message` and hands it to
/// `H` (the Go original's `Server`).
///
/// Three steps make it work: an address, a handler, and a look at
/// [`errors`](Server::errors). The same server serves a Unix-domain socket
/// for local IPC with [`ServerBuilder::listen_unix`], and connections of
/// any other kind of byte stream with [`ServerBuilder::serve`].
///
/// # Examples
///
/// ```no_run
/// use chitchat_net::{handler_fn, BoxError, Context, Server};
///
/// # async fn run() -> Result<(), chitchat_net::Error> {
/// let echo = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
///     ctx.send(&line)?;
///     Ok(())
/// });
/// let server = Server::builder(echo).listen("127.0.0.1:7000").await?;
/// while let Some(event) = server.errors().recv().await {
///     eprintln!("{event}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server<H> {
    shared: Arc<Shared<H>>,
}

/// What the server's tasks share.
#[derive(Debug)]
struct Shared<H> {
    /// The user's handler: shared state for every connection.
    handler: Arc<H>,
    /// The bound address.
    local: Addr,
    /// Framing and codecs.
    wire: Wire,
    /// Timeouts and limits of each connection.
    config: Arc<ConnectionConfig>,
    /// Refuse connections past this many.
    max_connections: usize,
    /// Refuse connections from peers it rejects.
    accept_filter: Option<AcceptFilter>,
    /// Live counters.
    counters: Arc<Counters>,
    /// TLS, if configured.
    tls: Option<ServerTls>,
    /// Open connections; the handle is shared with the connection task.
    connections: Mutex<Table>,
    /// Error events.
    events: EventSink,
    errors: ErrorEvents,
    /// The accept loop and every connection task.
    tasks: TaskTracker,
    /// Ends the accept loop.
    stop_accepting: CancellationToken,
    /// Fired once every task has ended: closes the event stream.
    ended: CancellationToken,
}

/// The server's open connections, by id: a peer that reconnects from the
/// same address is a new entry, and a connection's end removes only its
/// own. Inserting and removing take constant time (a mass disconnect
/// holds the lock that accepts and broadcasts take for a time linear in
/// the connections, not quadratic), and logarithmic time in the rare
/// connections from one address at once.
#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<ConnectionId, ConnectionHandle>,
    /// The newest connection from each address, for lookups by address.
    by_addr: HashMap<Addr, ConnectionId>,
    /// The other live connections from an address that has more than one
    /// (an old one still ending when its peer reconnected from the same
    /// address, or streams served under one name).
    older: HashMap<Addr, BTreeSet<ConnectionId>>,
    /// Set by `shutdown` (close) or `cut` (abort): every connection was
    /// told, and one accepted from now on is not started.
    ending: Option<Fired>,
}

impl Table {
    fn insert(&mut self, handle: ConnectionHandle) {
        let id = handle.id();
        let peer = handle.inner.peer.clone();
        self.by_id.insert(id, handle);
        match self.by_addr.get_mut(&peer) {
            None => {
                self.by_addr.insert(peer, id);
            }
            Some(newest) => {
                // The newest stays in `by_addr`, the other goes with the
                // older ones.
                let older = if *newest < id {
                    std::mem::replace(newest, id)
                } else {
                    id
                };
                self.older.entry(peer).or_default().insert(older);
            }
        }
    }

    /// Removes connection `id`, and nothing else.
    fn remove(&mut self, id: ConnectionId) {
        let Some(handle) = self.by_id.remove(&id) else {
            return;
        };
        let peer = &handle.inner.peer;
        let Some(older) = self.older.get_mut(peer) else {
            // The only connection from its address (the usual case).
            if self.by_addr.get(peer) == Some(&id) {
                self.by_addr.remove(peer);
            }
            return;
        };
        if self.by_addr.get(peer) == Some(&id) {
            // The newest of the others takes its place.
            if let Some(next) = older.pop_last() {
                self.by_addr.insert(peer.clone(), next);
            }
        } else {
            older.remove(&id);
        }
        if older.is_empty() {
            self.older.remove(peer);
        }
    }

    /// The live connection from `peer`: the newest, if a peer reconnected
    /// from the same address while its old connection was still ending.
    fn find(&self, peer: &Addr) -> Option<&ConnectionHandle> {
        self.by_addr.get(peer).and_then(|id| self.by_id.get(id))
    }

    /// Tells every connection to close (gracefully) or abort.
    fn end_all(&mut self, how: Fired) {
        if self.ending != Some(Fired::Abort) {
            self.ending = Some(how);
        }
        for handle in self.by_id.values() {
            match how {
                Fired::Close => {
                    handle.inner.outbox.hold_for_answers();
                    // With drain agreed, it closes once the client answers.
                    if !crate::conn::drain::announce(&handle.inner.drain_parts()) {
                        handle.close();
                    }
                }
                Fired::Abort => handle.inner.signal.abort(),
            }
        }
    }
}

/// A user's accept filter.
#[derive(Clone)]
struct AcceptFilter(Arc<dyn Fn(&Addr) -> bool + Send + Sync>);

impl std::fmt::Debug for AcceptFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptFilter")
    }
}

/// Configures and starts a [`Server`]. Made by [`Server::builder`].
#[derive(Debug)]
#[must_use = "a server builder does nothing until `listen` is awaited or `serve` called"]
pub struct ServerBuilder<H: Handler> {
    handler: H,
    config: ConnectionConfig,
    max_connections: usize,
    accept_filter: Option<AcceptFilter>,
    tls: Option<ServerTls>,
    backlog: u32,
    codec: Option<(bool, crate::conn::wire::Override)>,
    /// What the server says it sends in its hello (`handshake::<S>()`).
    sends: Option<crate::conn::wire::Declared>,
}

impl<H: Handler> Server<H> {
    /// Starts configuring a server that runs `handler` on every connection.
    pub fn builder(handler: H) -> ServerBuilder<H> {
        ServerBuilder {
            handler,
            config: ConnectionConfig::default(),
            max_connections: usize::MAX,
            accept_filter: None,
            tls: None,
            backlog: DEFAULT_BACKLOG,
            codec: None,
            sends: None,
        }
    }

    /// Binds `addr` with the default settings and starts accepting
    /// (`Server::builder(handler).listen(addr)`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address cannot be bound.
    pub async fn listen(addr: impl ConnectAddr, handler: H) -> Result<Self, Error> {
        Server::builder(handler).listen(addr).await
    }
}

impl<H: Handler> ServerBuilder<H> {
    crate::conn::options::connection_options!();

    /// Takes every connection option at once (replacing those set before).
    pub fn options(mut self, options: crate::conn::options::Options) -> Self {
        let handshake_timeout = self.config.handshake_timeout;
        self.config = options.config;
        self.config.handshake_timeout = handshake_timeout;
        self
    }

    /// Uses `codec` for `H::Message` instead of its default codec, both for
    /// incoming frames and for messages of that type sent back.
    pub fn codec<C: Codec<H::Message>>(mut self, codec: C) -> Self {
        self.codec = Some(codec_override::<H::Message, C>(codec));
        self
    }

    /// Refuses connections beyond `max` open ones (default: no limit). A
    /// refused connection is closed at once, with an
    /// [`Error::TooManyConnections`] event.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Overload is an answer: the server handles at most `per_connection`
    /// requests at once on one connection and `in_all` across its
    /// connections; past either bound a request from a peer that announces
    /// [`OVERLOAD`](crate::handshake::features::OVERLOAD) is refused at
    /// once with an error reply, [`ErrorCode::Overloaded`](crate::envelope::ErrorCode::Overloaded)
    /// (counted in [`Stats::requests_overloaded`]), so that its caller can
    /// go elsewhere instead of waiting for its timeout. Toward other peers
    /// the bounds make the connection wait (stop reading) instead, as
    /// [`concurrent_requests`](Self::concurrent_requests) does. Default: no
    /// bound in all, and `concurrent_requests` per connection, waiting. See
    /// README "Overload".
    pub fn overload_bounds(mut self, per_connection: usize, in_all: usize) -> Self {
        self.config.overload = Some((per_connection, in_all));
        self
    }

    /// Accepts a connection only if `allow(peer)` returns true, decided
    /// before any byte is read (an allow list, for example). A refused
    /// connection is closed at once with an [`Error::Refused`] event. On a
    /// Unix-domain socket, the peer's credentials are known by then
    /// ([`UnixAddr::uid`](crate::UnixAddr::uid)).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use chitchat_net::{handler_fn, BoxError, Context, Server};
    /// # async fn run() -> Result<(), chitchat_net::Error> {
    /// # let handler = handler_fn(|_: String, _: &mut Context<'_>| -> Result<(), BoxError> { Ok(()) });
    /// let server = Server::builder(handler)
    ///     .accept_filter(|peer| peer.ip().is_some_and(|ip| ip.is_loopback()))
    ///     .listen("127.0.0.1:7000")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn accept_filter(mut self, allow: impl Fn(&Addr) -> bool + Send + Sync + 'static) -> Self {
        self.accept_filter = Some(AcceptFilter(Arc::new(allow)));
        self
    }

    /// Serves TLS (feature `tls`) with `config`, which also says whether
    /// clients must present a certificate (mutual TLS). A peer that fails the
    /// handshake is closed with an [`Error::Tls`] event before any frame
    /// reaches the handler (and before `on_open`).
    ///
    /// Build `config` with an explicit provider,
    /// `ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))`,
    /// so that no process-wide default is needed. A peer still in its
    /// handshake already counts as a connection (in `remote_addrs`,
    /// `stats` and `max_connections`). Byte counters count plaintext.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<crate::transport::tls::rustls::ServerConfig>) -> Self {
        self.tls = Some(ServerTls::new(config));
        self
    }

    /// How long a TLS handshake may take (default 10 s), and, with the
    /// [`handshake`](Self::handshake) on, the peer's hello after it.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Switches the [handshake](crate::handshake) on, and says that this
    /// server sends `S` (use `Bytes` if it sends several types or none:
    /// not checked): each connection's first frame then says what this
    /// server sends (`S`) and accepts (`H::Message`), and the client's
    /// first frame must match (see [`Message::fingerprint`](crate::Message::fingerprint)).
    /// Without it the handshake is on when `H::Message` declares a
    /// fingerprint (a derived type), and says nothing of what the server
    /// sends.
    ///
    /// A mismatch, or a client without the handshake (its first frame is
    /// not a hello, or no hello comes within the
    /// [handshake timeout](Self::handshake_timeout)), ends the connection
    /// with an [`Error::Handshake`] event before any frame reaches the
    /// handler, and a WARN line naming the difference, once per peer
    /// address. Refused when the server is started, with [`Error::Config`],
    /// in EOF framing, and in a raw framing whose delimiter is a character
    /// of the hello.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{BoxError, Context, Handler, Message, Server};
    ///
    /// #[derive(Debug, Message)]
    /// #[message(codec = "bincode")]
    /// enum Command { Get { key: String } }
    ///
    /// #[derive(Debug, Message)]
    /// #[message(codec = "bincode")]
    /// enum Reply { Found { value: String }, NotFound { key: String } }
    ///
    /// struct Store;
    ///
    /// impl Handler for Store {
    ///     type Message = Command;
    ///
    ///     async fn handle(&self, cmd: Command, ctx: &mut Context<'_>) -> Result<(), BoxError> {
    ///         let Command::Get { key } = cmd;
    ///         ctx.send(&Reply::NotFound { key })?;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::builder(Store).handshake::<Reply>().listen("127.0.0.1:0").await?;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub fn handshake<S: Message>(mut self) -> Self {
        self.config.handshake.switch = crate::conn::handshake::Switch::On;
        self.sends = Some(crate::conn::wire::declared::<S>);
        self
    }

    /// Refuses to send an empty frame on any connection: sends fail with
    /// [`Error::EmptyFrame`] instead, and nothing is sent (a handler's
    /// [`Context::send`](crate::Context::send) too). For Go chitchat peers,
    /// which crash on an empty frame (a lone delimiter). Off by default.
    pub fn refuse_empty_frames(mut self) -> Self {
        self.config.refuse_empty_frames = true;
        self
    }

    /// The listen backlog: connections the kernel queues before they are
    /// accepted (default 1024; tokio's own default of 128 drops handshakes
    /// when thousands of peers connect at once, each then retrying after
    /// a second).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// Refuses settings that cannot work, and a call outside a runtime.
    fn validate(&self) -> Result<(), Error> {
        if self.max_connections == 0 {
            return Err(Error::Config(
                "max_connections must be at least 1: 0 refuses every connection",
            ));
        }
        self.config.validate()
    }

    /// Binds `addr` and starts accepting in the background. `addr` is
    /// anything a client connects to: `"host:port"`, a `SocketAddr`,
    /// `(ip, port)`, `("host", port)`, or an [`Addr`] (an [`Addr::Unix`]
    /// listens on that path, as [`listen_unix`](Self::listen_unix)).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address cannot be resolved or bound (its
    /// message names it); [`Error::Config`] for request ids over a raw
    /// framing, and for settings that cannot work; `InvalidInput` for an
    /// [`Addr::Named`] (serve such streams with [`serve`](Self::serve)).
    pub async fn listen(self, addr: impl ConnectAddr) -> Result<Server<H>, Error> {
        self.validate()?;
        let listener = match addr.target() {
            Target::Name(name) => bind(name.as_str(), self.backlog).await?,
            Target::Tcp(addrs) => bind(&addrs[..], self.backlog).await?,
            #[cfg(unix)]
            Target::Unix(path) => return self.listen_unix(path).await,
            Target::Named(name) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("`{name}` names a stream, not a socket: serve streams with `serve`"),
                )))
            }
        };
        self.start_listener(Listener::Tcp(listener))
    }

    /// Binds a Unix-domain socket at `path` (local IPC) and starts accepting
    /// in the background. Everything else works as over TCP: peers are
    /// [`Addr::Unix`], numbered by the server, with their credentials.
    ///
    /// A socket file left at `path` by a server that has gone is replaced;
    /// the file is removed when this server ends (cut, shut down or
    /// dropped). Who may connect is decided by the file's permissions and
    /// the [accept filter](ServerBuilder::accept_filter).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the path cannot be bound (a live server's socket or
    /// any other file at `path` is `AddrInUse`); `InvalidInput` if TLS is
    /// configured (a Unix socket is local: it has no use for it).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
    ///
    /// # async fn run() -> Result<(), chitchat_net::Error> {
    /// let echo = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     ctx.send(&line)?;
    ///     Ok(())
    /// });
    /// let server = Server::builder(echo)
    ///     .accept_filter(|peer| peer.unix().and_then(|p| p.uid()) == Some(1000))
    ///     .listen_unix("/run/myapp/control.sock")
    ///     .await?;
    /// let client = Client::<String>::builder()
    ///     .connect_unix("/run/myapp/control.sock")
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(unix)]
    pub async fn listen_unix(self, path: impl AsRef<std::path::Path>) -> Result<Server<H>, Error> {
        self.validate()?;
        if self.tls.is_some() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "TLS is not supported on Unix-domain sockets",
            )));
        }
        let listener = stream::bind_unix(path.as_ref()).await?;
        self.start_listener(listener)
    }

    /// Serves every connection `incoming` yields: each an
    /// `AsyncRead + AsyncWrite` stream of any kind (an in-memory
    /// [`tokio::io::duplex`], a simulated network, QUIC streams, serial
    /// lines) with its peer's address, usually [`Addr::named`]. `local` is
    /// what [`Server::local_addr`] and [`Context::local_addr`] report.
    ///
    /// Everything else works as with [`listen`](Self::listen): the accept
    /// filter and `max_connections` decide on each peer before any byte is
    /// read, [`Server::remote_addrs`], [`Server::close_remote`] and
    /// [`Server::send_to`] find connections by the address they came with
    /// (give each its own), and `cut` and `shutdown` end them. An `Err`
    /// item is an [`Error::Accept`] event, and the server waits a little
    /// (longer after each one in a row) before it polls `incoming` again.
    /// Once `incoming` ends, no connection is added; those open go on. With
    /// TLS configured (feature `tls`), each connection's handshake runs
    /// over its stream, within the handshake timeout.
    ///
    /// Each stream's two directions are shared through
    /// [`tokio::io::split`]. Call this within a tokio runtime.
    ///
    /// # Examples
    ///
    /// A server in memory, with two peers:
    ///
    /// ```
    /// use chitchat_net::{handler_fn, Addr, BoxError, Client, Context, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (alice, alice_at_server) = tokio::io::duplex(64 * 1024);
    /// let (bob, bob_at_server) = tokio::io::duplex(64 * 1024);
    /// let accepted = futures_util::stream::iter([
    ///     Ok((alice_at_server, Addr::named("alice"))),
    ///     Ok((bob_at_server, Addr::named("bob"))),
    /// ]);
    /// let greet = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     ctx.send(&format!("{line}, {}", ctx.peer_addr()))?;
    ///     Ok(())
    /// });
    /// let server = Server::builder(greet).serve(Addr::named("memory"), accepted)?;
    ///
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let collect = handler_fn(move |reply: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     tx.send(reply)?;
    ///     Ok(())
    /// });
    /// let client = Client::<String>::builder()
    ///     .handler(collect)
    ///     .connect_io(bob, server.local_addr())
    ///     .await?;
    /// client.send(&"hello".to_string()).await?;
    /// assert_eq!(rx.recv().await.as_deref(), Some("hello, bob"));
    ///
    /// server.close_remote(Addr::named("alice"))?;
    /// server.cut().await;
    /// # drop(alice);
    /// # Ok(()) }
    /// ```
    ///
    /// [`Context::local_addr`]: crate::Context::local_addr
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for request ids over a raw framing.
    pub fn serve<I, S>(self, local: impl Into<Addr>, incoming: I) -> Result<Server<H>, Error>
    where
        I: Stream<Item = std::io::Result<(S, Addr)>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.validate()?;
        let incoming = incoming.map(|accepted| accepted.map(|(io, peer)| (Io(io), peer)));
        self.start(local.into(), incoming)
    }

    /// Starts accepting on `listener` in the background.
    fn start_listener(self, listener: Listener) -> Result<Server<H>, Error> {
        let local = listener.local_addr()?;
        let incoming = futures_util::stream::unfold(listener, |mut listener| async move {
            let accepted = listener.accept().await;
            Some((accepted, listener))
        });
        self.start(local, incoming)
    }

    /// Starts serving what `incoming` yields in the background.
    fn start<I, A>(self, local: Addr, incoming: I) -> Result<Server<H>, Error>
    where
        I: Stream<Item = std::io::Result<(A, Addr)>> + Send + 'static,
        A: Accepted,
    {
        let (binary, overrides) = match self.codec {
            Some((binary, codec)) => (binary, vec![codec]),
            None => (default_is_binary::<H::Message>(), Vec::new()),
        };
        let wire = Wire::build(&self.config, binary, overrides)?;
        let mut config = self.config;
        config.hello = crate::conn::wire::server_plan::<H::Message>(&config, &wire, self.sends)?;
        config.no_hello =
            crate::conn::wire::no_hello(&config, &wire, crate::wire::hello::Role::Server);
        config.overload_slots = config.overload.map(|(_, in_all)| {
            Arc::new(tokio::sync::Semaphore::new(
                in_all.min(tokio::sync::Semaphore::MAX_PERMITS),
            ))
        });
        let ended = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let (events, errors) =
            event_channel(config.event_capacity, ended.clone(), counters.clone());
        let shared = Arc::new(Shared {
            handler: Arc::new(self.handler),
            local,
            wire,
            config: Arc::new(config),
            max_connections: self.max_connections,
            accept_filter: self.accept_filter,
            counters,
            tls: self.tls,
            connections: Mutex::new(Table::default()),
            events,
            errors,
            tasks: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            ended,
        });
        let span = tracing::info_span!("chitchat_server", local = %shared.local);
        shared
            .tasks
            .spawn(accept_loop(incoming, shared.clone()).instrument(span));
        tracing::debug!(local = %shared.local, "listening");
        Ok(Server { shared })
    }
}

/// Binds the first address of `addr` that works, with `backlog`.
async fn bind(addr: impl ToSocketAddrs, backlog: u32) -> Result<TcpListener, Error> {
    let mut last = None;
    let addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| crate::wire::error::io_context("resolve the address to listen on", e))?;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: rebind at once after a restart.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                last = Some(crate::wire::error::io_context(
                    format_args!("listen on {addr}"),
                    error,
                ))
            }
        }
    }
    Err(Error::Io(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")
    })))
}

/// Accepts connections until the server is cut (or `incoming` ends).
async fn accept_loop<H, I, A>(incoming: I, shared: Arc<Shared<H>>)
where
    H: Handler,
    I: Stream<Item = std::io::Result<(A, Addr)>>,
    A: Accepted,
{
    let mut incoming = pin!(incoming);
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop_accepting.cancelled() => return accept_what_waits(incoming, &shared),
            accepted = incoming.next() => accepted,
        };
        let Some(accepted) = accepted else {
            tracing::debug!("no more connections to accept");
            return;
        };
        match accepted {
            Ok((accepted, peer)) => {
                backoff = Duration::ZERO;
                start_connection(&shared, accepted, peer);
            }
            Err(error) => {
                // Out of descriptors or a transient network error: wait a
                // little (longer each time), then try again.
                shared.events.report(None, Error::Accept(error));
                backoff = (backoff * 2).clamp(Duration::from_millis(5), MAX_ACCEPT_BACKOFF);
                tokio::select! {
                    _ = shared.stop_accepting.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// The server stops accepting. Shutting down gracefully, it first takes the
/// connections that wait to be accepted (a peer's `connect` has returned for
/// them, and it may have written already): they are served like the others,
/// closing at once, so that they read what was written instead of being
/// reset with the listener.
fn accept_what_waits<H, I, A>(mut incoming: Pin<&mut I>, shared: &Arc<Shared<H>>)
where
    H: Handler,
    I: Stream<Item = std::io::Result<(A, Addr)>>,
    A: Accepted,
{
    if shared.lock().ending != Some(Fired::Close) {
        return;
    }
    // Bounded by the backlog; no waiting.
    while let Some(Some(Ok((accepted, peer)))) = incoming.next().now_or_never() {
        start_connection(shared, accepted, peer);
    }
}

/// Registers and spawns the task of one accepted connection, whatever its
/// transport: the accept filter, the connection limit and the table are
/// the same for all.
fn start_connection<H: Handler, A: Accepted>(shared: &Arc<Shared<H>>, accepted: A, peer: Addr) {
    if let Some(AcceptFilter(allow)) = &shared.accept_filter {
        if !allow(&peer) {
            shared
                .events
                .report(Some(peer.clone()), Error::Refused(peer));
            return;
        }
    }
    let mut connections = shared.lock();
    let ending = connections.ending;
    if ending == Some(Fired::Abort) {
        // Accepted while the server was being cut: not started.
        return;
    }
    if connections.by_id.len() >= shared.max_connections {
        drop(connections);
        let limit = shared.max_connections;
        shared
            .events
            .report(Some(peer), Error::TooManyConnections { limit });
        return;
    }
    let handle = ConnectionHandle::new(
        peer.clone(),
        shared.local.clone(),
        shared.wire.clone(),
        shared.config.queue_bytes,
        shared.counters.clone(),
    );
    handle.greet(shared.config.hello.as_deref());
    let id = handle.id();
    connections.insert(handle.clone());
    if ending == Some(Fired::Close) {
        // Accepted while the server shuts down gracefully: it reads what
        // has arrived, answers it, and closes.
        handle.inner.outbox.hold_for_answers();
        handle.close();
    }
    drop(connections);
    shared.counters.opened();
    let weak = Arc::downgrade(shared);
    let counters = shared.counters.clone();
    let on_end = OnEnd::new(move || {
        counters.closed();
        if let Some(shared) = weak.upgrade() {
            shared.lock().remove(id);
        }
    });
    let span = tracing::info_span!("connection", %peer, %id);
    let tls = shared.tls.clone();
    let handler = shared.handler.clone();
    let config = shared.config.clone();
    let events = shared.events.clone();
    let task = async move {
        let timeout = config.handshake_timeout;
        let conn = handle.inner.clone();
        // Opened first: a plain connection opens at once, so one closed
        // already (accepted while the server shuts down gracefully) still
        // reads what arrived and closes. A (TLS) handshake still pending
        // when it is closed or cut is not waited for.
        let opened = tokio::select! {
            biased;
            opened = accepted.open(tls, timeout) => opened,
            fired = std::future::poll_fn(|cx| conn.signal.poll(Fired::Close, cx)) => {
                let reason = match fired {
                    Fired::Close => CloseReason::ByUs,
                    Fired::Abort => CloseReason::Aborted,
                };
                conn.outbox.abandon();
                return conn.end.set(reason);
            }
        };
        match opened {
            Ok(halves) => connection::run(halves, handle, handler, config, events, on_end).await,
            Err(error) => {
                conn.outbox.abandon();
                conn.end.set(CloseReason::Failed);
                events.report(Some(peer), error)
            }
        }
    };
    shared.tasks.spawn(task.instrument(span));
}

impl<H> Shared<H> {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent even if a holder panicked.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn handle(&self, peer: &Addr) -> Result<ConnectionHandle, Error> {
        self.lock()
            .find(peer)
            .cloned()
            .ok_or_else(|| Error::UnknownPeer(peer.clone()))
    }
}

impl<H: Handler> Server<H> {
    /// The address the server listens on (the Go original's `GetLocalAddr`),
    /// or the `local` address it was given by [`ServerBuilder::serve`].
    pub fn local_addr(&self) -> Addr {
        self.shared.local.clone()
    }

    /// The handler, which is also the state shared by every connection (the
    /// Go original's `Addon`).
    pub fn handler(&self) -> &H {
        &self.shared.handler
    }

    /// The addresses of the connected peers (the Go original's
    /// `RangeRemoteAddr`).
    pub fn remote_addrs(&self) -> Vec<Addr> {
        // A peer reconnecting from the same address while its old
        // connection ends is listed once.
        self.shared.lock().by_addr.keys().cloned().collect()
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.shared.lock().by_id.len()
    }

    /// A handle on the connection from `peer` (the newest, if the peer
    /// reconnected from the same address while its old connection was still
    /// ending).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPeer`] if no connection has that address.
    pub fn connection(&self, peer: impl Into<Addr>) -> Result<ConnectionHandle, Error> {
        self.shared.handle(&peer.into())
    }

    /// Closes the connection from `peer` after flushing what was queued for
    /// it (the Go original's `CloseRemote`).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPeer`] if no connection has that address.
    pub fn close_remote(&self, peer: impl Into<Addr>) -> Result<(), Error> {
        self.shared.handle(&peer.into())?.close();
        Ok(())
    }

    /// Sends `msg` to `peer`, waiting while its outgoing queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownPeer`], [`Error::Closed`], or encode errors.
    pub async fn send_to<M: Message>(&self, peer: impl Into<Addr>, msg: &M) -> Result<(), Error> {
        Ok(self.shared.handle(&peer.into())?.send(msg).await?)
    }

    /// Queues `msg` to every connection without waiting on any: it is
    /// encoded once, then copied into each outgoing queue. A peer whose queue
    /// is full is skipped, with an [`Error::QueueFull`] event. Returns how
    /// many connections it reached.
    ///
    /// # Errors
    ///
    /// Encode errors (nothing is sent then).
    pub fn broadcast<M: Message>(&self, msg: &M) -> Result<usize, Error> {
        let mut frame = bytes::BytesMut::new();
        self.shared.wire.encode(msg, &mut frame)?;
        let mut reached = 0;
        for handle in self.shared.lock().by_id.values() {
            let conn = &handle.inner;
            let queued = conn.outbox.try_push(|buf| {
                buf.extend_from_slice(&frame);
                Ok::<_, ()>(())
            });
            match queued {
                Ok(()) => reached += 1,
                Err(PushError::Closed | PushError::Write(())) => {}
                Err(PushError::Full) => {
                    let limit = conn.outbox.limit();
                    let error = Error::QueueFull { limit };
                    self.shared.events.report(Some(conn.peer.clone()), error);
                }
            }
        }
        Ok(reached)
    }

    /// The stream of error events (the Go original's `ErrChan`).
    pub fn errors(&self) -> ErrorEvents {
        self.shared.errors.clone()
    }

    /// How many error events were dropped because nobody read them.
    pub fn dropped_events(&self) -> u64 {
        self.shared.events.dropped()
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Shuts down gracefully: stops accepting (what waits in the listen
    /// backlog is accepted and closed gracefully too), lets every connection handle
    /// and answer the frames that have already arrived, waits for the
    /// answers still owed by [`Replier`](crate::Replier)s (requests that
    /// arrived before the shutdown and were handed to another task: their
    /// answers are still sent), flushes what is queued, and closes; cuts
    /// whatever is still running after `deadline`. Returns a report: whether
    /// everything finished before the deadline, and if not, what was cut.
    ///
    /// Frames that arrive after the shutdown began still reach the handler
    /// while a connection waits for its peer to close, but cannot be
    /// answered.
    ///
    /// A connection whose client agreed to drain (both hellos set the
    /// [`DRAIN`](crate::handshake::features::DRAIN) bit) is told first,
    /// and served until the client answers that no request follows: the
    /// requests that crossed the drain are answered too (README, "Drain
    /// and failover").
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::Server;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::listen("127.0.0.1:0", ()).await?;
    /// let report = server.shutdown(Duration::from_secs(5)).await;
    /// assert!(report.finished);
    /// assert_eq!(report.unanswered_requests, 0);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        // Ending first: the accept loop then takes what waits to be
        // accepted, to close it gracefully too.
        self.shared.lock().end_all(Fired::Close);
        self.shared.stop_accepting.cancel();
        self.shared.tasks.close();
        let finished = tokio::time::timeout(deadline, self.shared.tasks.wait())
            .await
            .is_ok();
        let mut report = ShutdownReport {
            finished,
            connections_cut: 0,
            unanswered_requests: 0,
        };
        if !finished {
            let table = self.shared.lock();
            report.connections_cut = table.by_id.len();
            report.unanswered_requests = table
                .by_id
                .values()
                .map(|handle| handle.inner.outbox.owed() as u64)
                .sum();
            drop(table);
            tracing::debug!(
                ?deadline,
                connections = report.connections_cut,
                unanswered_requests = report.unanswered_requests,
                "graceful shutdown past its deadline: cutting"
            );
        }
        self.cut().await;
        report
    }

    /// Stops accepting, closes every connection at once, and returns once
    /// every connection task has ended (the Go original's `Cut`, which did
    /// not wait). Calling it again does nothing more.
    pub async fn cut(&self) {
        self.shared.stop_accepting.cancel();
        self.shared.lock().end_all(Fired::Abort);
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.ended.cancel();
    }
}

/// What a graceful [`Server::shutdown`] did: made by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Every connection ended (and its `on_close` returned) before the
    /// deadline: nothing was cut.
    pub finished: bool,
    /// Connections still open at the deadline, cut then.
    pub connections_cut: usize,
    /// Requests still owed an answer by a [`Replier`](crate::Replier) (not
    /// answered, not dropped) on the connections cut: their callers get no
    /// reply (a request made with this crate's client fails with
    /// [`RequestError::ConnectionLost`](crate::RequestError::ConnectionLost)).
    pub unanswered_requests: u64,
}

impl<H> Drop for Server<H> {
    /// Cuts the server without waiting for its tasks.
    fn drop(&mut self) {
        self.shared.stop_accepting.cancel();
        self.shared.lock().end_all(Fired::Abort);
        self.shared.tasks.close();
        self.shared.ended.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(peer: &Addr) -> ConnectionHandle {
        let wire = Wire::new(crate::wire::frame::Framing::lines(), false, Vec::new());
        let local: Addr = "127.0.0.1:1"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        ConnectionHandle::new(peer.clone(), local, wire, 1024, Arc::default())
    }

    #[test]
    fn an_old_connection_ending_never_removes_the_new_one_from_the_same_address() {
        let peer: Addr = "127.0.0.1:5000"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let mut table = Table::default();
        let (old, new) = (handle(&peer), handle(&peer));
        table.insert(old.clone());
        table.insert(new.clone());
        assert_eq!(table.find(&peer).map(|h| h.id()), Some(new.id()));
        table.remove(old.id());
        assert_eq!(table.find(&peer).map(|h| h.id()), Some(new.id()));
        assert_eq!(table.by_id.len(), 1);
        table.remove(new.id());
        assert!(table.find(&peer).is_none());
        assert!(table.by_addr.is_empty());
    }

    #[test]
    fn named_peers_are_indexed_by_name() {
        let mut table = Table::default();
        let (a, b) = (Addr::named("a"), Addr::named("b"));
        let (first_a, on_b, second_a) = (handle(&a), handle(&b), handle(&a));
        table.insert(first_a.clone());
        table.insert(on_b.clone());
        table.insert(second_a.clone());
        assert_eq!(
            table.find(&Addr::named("b")).map(|h| h.id()),
            Some(on_b.id())
        );
        assert_eq!(table.find(&a).map(|h| h.id()), Some(second_a.id()));
        assert_eq!(table.by_addr.len(), 2);
        table.remove(second_a.id());
        assert_eq!(table.find(&a).map(|h| h.id()), Some(first_a.id()));
        assert!(table.find(&Addr::named("c")).is_none());
    }

    #[test]
    fn many_connections_from_one_address_end_in_any_order() {
        let peer = Addr::named("shared");
        let mut table = Table::default();
        let handles: Vec<_> = (0..5).map(|_| handle(&peer)).collect();
        // Inserted out of order: the newest is still the one found.
        for i in [1, 0, 3, 4, 2] {
            table.insert(handles[i].clone());
        }
        assert_eq!(table.find(&peer).map(|h| h.id()), Some(handles[4].id()));
        for (gone, newest_left) in [(2, 4), (4, 3), (0, 3), (3, 1), (1, 1)] {
            table.remove(handles[gone].id());
            if gone == newest_left {
                assert!(table.find(&peer).is_none());
            } else {
                assert_eq!(
                    table.find(&peer).map(|h| h.id()),
                    Some(handles[newest_left].id()),
                    "after removing {gone}"
                );
            }
        }
        assert!(table.by_id.is_empty() && table.by_addr.is_empty() && table.older.is_empty());
    }

    #[test]
    fn the_old_connection_is_found_again_if_the_new_one_ends_first() {
        let peer: Addr = "127.0.0.1:5001"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let mut table = Table::default();
        let (old, new) = (handle(&peer), handle(&peer));
        table.insert(old.clone());
        table.insert(new.clone());
        table.remove(new.id());
        assert_eq!(table.find(&peer).map(|h| h.id()), Some(old.id()));
    }
}
