//! The byte streams a connection runs on: plain TCP, TLS over TCP (feature
//! `tls`), or a Unix-domain socket — one enum, split without a lock where
//! the socket allows it — and the listeners that accept them; or any
//! `AsyncRead + AsyncWrite` stream a user brings ([`Io`]), with TLS over it
//! if configured. A connection task runs on the two halves of either.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};

use crate::base::addr::sealed::Target;
use crate::base::addr::Addr;

/// A connected byte stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    #[cfg(feature = "tls")]
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Calls `$method` on whichever stream `$self` holds (all are `Unpin`).
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $call,
            #[cfg(unix)]
            Stream::Unix($s) => $call,
            #[cfg(feature = "tls")]
            Stream::TlsServer($s) => $call,
            #[cfg(feature = "tls")]
            Stream::TlsClient($s) => $call,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Stream::Unix(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::TlsServer(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::TlsClient(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl Stream {
    /// The two halves a connection's read and write sides own: TCP and
    /// Unix sockets split without a lock (the kernel keeps the two
    /// directions apart); TLS, whose state both directions share, through
    /// `tokio::io::split`.
    pub(crate) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(tcp) => {
                let (read, write) = tcp.into_split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(Arc::new(write)))
            }
            #[cfg(unix)]
            Stream::Unix(unix) => {
                let (read, write) = unix.into_split();
                (ReadHalf::Unix(read), WriteHalf::Unix(write))
            }
            #[cfg(feature = "tls")]
            other => {
                let (read, write) = tokio::io::split(other);
                (ReadHalf::Shared(read), WriteHalf::Shared(write))
            }
        }
    }
}

/// The read half of a [`Stream`].
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Tcp(tokio::net::tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedReadHalf),
    #[cfg(feature = "tls")]
    Shared(tokio::io::ReadHalf<Stream>),
}

/// The write half of a [`Stream`]. Dropping it ends our side of a Unix
/// stream, and of a TCP stream once the outgoing queue has let go of it
/// too (the queue holds it only while the connection is open).
///
/// A TCP half is shared with the connection's outgoing queue, through
/// which a sender writes through while the write side holds nothing (see
/// [`crate::conn::outbox`]); both write it through readiness (`poll_write_ready`,
/// `try_write`), as tokio's own halves do.
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Tcp(Arc<tokio::net::tcp::OwnedWriteHalf>),
    #[cfg(unix)]
    Unix(tokio::net::unix::OwnedWriteHalf),
    #[cfg(feature = "tls")]
    Shared(tokio::io::WriteHalf<Stream>),
}

macro_rules! delegate_half {
    ($half:ident, $self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            $half::Tcp($s) => $call,
            #[cfg(unix)]
            $half::Unix($s) => $call,
            #[cfg(feature = "tls")]
            $half::Shared($s) => $call,
        }
    };
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate_half!(ReadHalf, self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(tcp) => poll_write_tcp(tcp.as_ref().as_ref(), cx, buf),
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            WriteHalf::Shared(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // TCP writes are not buffered here.
            WriteHalf::Tcp(_) => Poll::Ready(Ok(())),
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            WriteHalf::Shared(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(tcp) => {
                let tcp: &TcpStream = tcp.as_ref().as_ref();
                Poll::Ready(socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write))
            }
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            WriteHalf::Shared(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One write to a shared TCP half, waiting for room: readiness, then a
/// write that does not wait (which clears the readiness if the socket is
/// full).
fn poll_write_tcp(tcp: &TcpStream, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

/// The write half a connection runs on: any writer, and whether senders
/// may write through to it (see [`crate::conn::outbox`]).
pub(crate) trait SocketWrite: AsyncWrite + Unpin {
    /// The socket a sender may write through to, counting what it writes
    /// in `counters`; `None` (the default) for streams whose writes keep
    /// state of their own (TLS, a user's stream).
    fn direct(
        &self,
        counters: &Arc<crate::base::stats::Counters>,
    ) -> Option<Arc<dyn crate::transport::direct::DirectWrite>> {
        let _ = counters;
        None
    }
}

impl<T: AsyncWrite> SocketWrite for tokio::io::WriteHalf<T> {}

impl SocketWrite for WriteHalf {
    fn direct(
        &self,
        counters: &Arc<crate::base::stats::Counters>,
    ) -> Option<Arc<dyn crate::transport::direct::DirectWrite>> {
        match self {
            WriteHalf::Tcp(tcp) => Some(Arc::new(DirectTcp {
                half: tcp.clone(),
                counters: counters.clone(),
            })),
            #[cfg(unix)]
            WriteHalf::Unix(_) => None,
            #[cfg(feature = "tls")]
            WriteHalf::Shared(_) => None,
        }
    }
}

/// A TCP half as the outgoing queue writes through to it.
#[derive(Debug)]
struct DirectTcp {
    half: Arc<tokio::net::tcp::OwnedWriteHalf>,
    counters: Arc<crate::base::stats::Counters>,
}

impl crate::transport::direct::DirectWrite for DirectTcp {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let n = self.half.try_write(buf)?;
        crate::base::stats::Counters::add(&self.counters.bytes_out, n as u64);
        crate::base::stats::Counters::add(&self.counters.bytes_written_through, n as u64);
        Ok(n)
    }
}

/// The server side of TLS: accepts handshakes (uninhabited without the
/// `tls` feature, so plain TCP costs nothing).
#[derive(Clone)]
pub(crate) struct ServerTls {
    #[cfg(feature = "tls")]
    acceptor: tokio_rustls::TlsAcceptor,
    #[cfg(not(feature = "tls"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

#[cfg(feature = "tls")]
impl ServerTls {
    pub(crate) fn new(config: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

/// The client side of TLS: the configuration and the name to verify.
#[derive(Clone)]
pub(crate) struct ClientTls {
    #[cfg(feature = "tls")]
    connector: tokio_rustls::TlsConnector,
    #[cfg(feature = "tls")]
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    #[cfg(not(feature = "tls"))]
    never: std::convert::Infallible,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

#[cfg(feature = "tls")]
impl ClientTls {
    pub(crate) fn new(
        config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
        server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
    ) -> Self {
        ClientTls {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
        }
    }
}

/// Turns an accepted socket into the server's stream: as is, or after a TLS
/// handshake that must finish within `timeout` (TCP only: a Unix server
/// never has TLS).
pub(crate) async fn accept(
    socket: Socket,
    tls: Option<&ServerTls>,
    timeout: std::time::Duration,
) -> Result<Stream, crate::wire::error::Error> {
    let tcp = match socket {
        Socket::Tcp(tcp) => tcp,
        #[cfg(unix)]
        Socket::Unix(unix) => return Ok(Stream::Unix(unix)),
    };
    let Some(tls) = tls else {
        return Ok(Stream::Tcp(tcp));
    };
    #[cfg(feature = "tls")]
    {
        let stream = tls.accept(tcp, timeout).await?;
        Ok(Stream::TlsServer(Box::new(stream)))
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = timeout;
        match tls.never {}
    }
}

/// The server side of TLS over a stream of type `S` (`S` itself without
/// the `tls` feature, where no handshake can be asked for).
#[cfg(feature = "tls")]
pub(crate) type ServerTlsStream<S> = tokio_rustls::server::TlsStream<S>;
#[cfg(not(feature = "tls"))]
pub(crate) type ServerTlsStream<S> = S;

/// The client side of TLS over a stream of type `S`.
#[cfg(feature = "tls")]
pub(crate) type ClientTlsStream<S> = tokio_rustls::client::TlsStream<S>;
#[cfg(not(feature = "tls"))]
pub(crate) type ClientTlsStream<S> = S;

impl ServerTls {
    /// The server's TLS handshake over `io`, which must finish within
    /// `timeout`.
    pub(crate) async fn accept<S>(
        &self,
        io: S,
        timeout: std::time::Duration,
    ) -> Result<ServerTlsStream<S>, crate::wire::error::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        #[cfg(feature = "tls")]
        {
            match tokio::time::timeout(timeout, self.acceptor.accept(io)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(error)) => Err(crate::wire::error::Error::Tls(error)),
                Err(_) => Err(crate::wire::error::Error::Tls(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {timeout:?}"),
                ))),
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (io, timeout);
            match self.never {}
        }
    }
}

impl ClientTls {
    /// The client's TLS handshake over `io` (bounded by the caller's
    /// connect timeout).
    pub(crate) async fn connect<S>(
        &self,
        io: S,
    ) -> Result<ClientTlsStream<S>, crate::wire::error::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        #[cfg(feature = "tls")]
        {
            match self.connector.connect(self.server_name.clone(), io).await {
                Ok(stream) => Ok(stream),
                Err(error) => Err(crate::wire::error::Error::Tls(error)),
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = io;
            match self.never {}
        }
    }
}

/// Something a server accepted, to be made into the two halves its
/// connection task runs on: any TLS handshake happens here, in the
/// connection's own task.
pub(crate) trait Accepted: Send + 'static {
    /// The read half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The write half.
    type Write: SocketWrite + Send + 'static;

    /// The halves, after a TLS handshake (within `timeout`) if `tls` is set.
    fn open(
        self,
        tls: Option<ServerTls>,
        timeout: std::time::Duration,
    ) -> impl std::future::Future<
        Output = Result<(Self::Read, Self::Write), crate::wire::error::Error>,
    > + Send;
}

impl Accepted for Socket {
    type Read = ReadHalf;
    type Write = WriteHalf;

    async fn open(
        self,
        tls: Option<ServerTls>,
        timeout: std::time::Duration,
    ) -> Result<(ReadHalf, WriteHalf), crate::wire::error::Error> {
        self.set_nodelay()?;
        Ok(accept(self, tls.as_ref(), timeout).await?.split())
    }
}

/// A stream a user brings: any `AsyncRead + AsyncWrite` (an in-memory
/// duplex, a simulated network, a QUIC stream, a serial line), split with
/// [`tokio::io::split`].
#[derive(Debug)]
pub(crate) struct Io<S>(pub(crate) S);

/// A user's stream, or TLS over it.
pub(crate) type MaybeTls<S> = tokio_util::either::Either<ServerTlsStream<S>, S>;

impl<S> Accepted for Io<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Read = tokio::io::ReadHalf<MaybeTls<S>>;
    type Write = tokio::io::WriteHalf<MaybeTls<S>>;

    async fn open(
        self,
        tls: Option<ServerTls>,
        timeout: std::time::Duration,
    ) -> Result<(Self::Read, Self::Write), crate::wire::error::Error> {
        let stream = match tls {
            Some(tls) => MaybeTls::Left(tls.accept(self.0, timeout).await?),
            None => MaybeTls::Right(self.0),
        };
        Ok(tokio::io::split(stream))
    }
}

/// Turns a connected socket into the client's stream: as is, or after a TLS
/// handshake (bounded by the caller's connect timeout).
pub(crate) async fn connect(
    tcp: TcpStream,
    tls: Option<&ClientTls>,
) -> Result<Stream, crate::wire::error::Error> {
    let Some(tls) = tls else {
        return Ok(Stream::Tcp(tcp));
    };
    #[cfg(feature = "tls")]
    {
        Ok(Stream::TlsClient(Box::new(tls.connect(tcp).await?)))
    }
    #[cfg(not(feature = "tls"))]
    {
        match tls.never {}
    }
}

/// Connects to `target`, then makes the client's stream (with a TLS
/// handshake if `tls` is set). Returns the stream, the peer's address and
/// this end's.
pub(crate) async fn dial(
    target: Target,
    tls: Option<&ClientTls>,
) -> Result<(Stream, Addr, Addr), crate::wire::error::Error> {
    let tcp = match target {
        Target::Name(name) => TcpStream::connect(&name)
            .await
            .map_err(|e| crate::wire::error::io_context(format_args!("connect to {name}"), e))?,
        Target::Tcp(addrs) => TcpStream::connect(&addrs[..]).await.map_err(|e| {
            let to = addrs.iter().map(ToString::to_string).collect::<Vec<_>>();
            crate::wire::error::io_context(format_args!("connect to {}", to.join(" or ")), e)
        })?,
        #[cfg(unix)]
        Target::Unix(path) => {
            if tls.is_some() {
                return Err(crate::wire::error::Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is not supported on Unix-domain sockets",
                )));
            }
            let unix = UnixStream::connect(&path).await.map_err(|e| {
                crate::wire::error::io_context(format_args!("connect to {}", path.display()), e)
            })?;
            let addr = |addr: io::Result<tokio::net::unix::SocketAddr>| {
                let addr = addr.ok();
                let path = addr.as_ref().and_then(|addr| addr.as_pathname());
                Addr::Unix(crate::base::addr::UnixAddr::named(path))
            };
            let (peer, local) = (addr(unix.peer_addr()), addr(unix.local_addr()));
            return Ok((Stream::Unix(unix), peer, local));
        }
        Target::Named(name) => {
            return Err(crate::wire::error::Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{name}` names a stream, not a socket: connect over the stream with `connect_io`"),
            )));
        }
    };
    tcp.set_nodelay(true)?;
    let (peer, local) = (tcp.peer_addr()?, tcp.local_addr()?);
    Ok((connect(tcp, tls).await?, Addr::Tcp(peer), Addr::Tcp(local)))
}

/// An accepted socket, before any TLS handshake.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Socket {
    /// Sets `TCP_NODELAY` on a TCP socket: frames are written whole and
    /// must not wait for Nagle's timer.
    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(tcp) => tcp.set_nodelay(true),
            #[cfg(unix)]
            Socket::Unix(_) => Ok(()),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix {
        listener: UnixListener,
        /// Removes the socket file when the listener ends.
        _file: SocketFile,
        /// The number of the last accepted peer.
        last_id: u64,
    },
}

impl Listener {
    /// The bound address.
    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(Addr::Tcp),
            #[cfg(unix)]
            Listener::Unix { listener, .. } => {
                let addr = listener.local_addr()?;
                Ok(Addr::Unix(crate::base::addr::UnixAddr::named(
                    addr.as_pathname(),
                )))
            }
        }
    }

    /// Accepts the next connection.
    pub(crate) async fn accept(&mut self) -> io::Result<(Socket, Addr)> {
        match self {
            Listener::Tcp(listener) => {
                let (tcp, peer) = listener.accept().await?;
                Ok((Socket::Tcp(tcp), Addr::Tcp(peer)))
            }
            #[cfg(unix)]
            Listener::Unix {
                listener, last_id, ..
            } => {
                let (unix, peer) = listener.accept().await?;
                *last_id += 1;
                let cred = unix.peer_cred().ok();
                let peer = crate::base::addr::UnixAddr::peer(*last_id, peer.as_pathname(), cred);
                Ok((Socket::Unix(unix), Addr::Unix(peer)))
            }
        }
    }
}

/// Binds a Unix-domain socket at `path`. A socket file left behind by a
/// server that is gone (connecting to it is refused) is replaced; a live
/// server's socket, or any other file, is an [`io::ErrorKind::AddrInUse`]
/// error.
#[cfg(unix)]
pub(crate) async fn bind_unix(path: &std::path::Path) -> io::Result<Listener> {
    use std::os::unix::fs::FileTypeExt;

    let listener = match UnixListener::bind(path) {
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|meta| meta.file_type().is_socket())
                .unwrap_or(false);
            let stale = is_socket
                && matches!(
                    UnixStream::connect(path).await,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
                );
            if !stale {
                return Err(error);
            }
            tracing::debug!(path = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)?;
            UnixListener::bind(path)?
        }
        bound => bound?,
    };
    Ok(Listener::Unix {
        _file: SocketFile::new(path)?,
        listener,
        last_id: 0,
    })
}

/// The socket file of a Unix listener, removed when the listener ends if
/// it is still the one this listener created.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: std::path::PathBuf,
    /// Device and inode at bind time.
    id: (u64, u64),
}

#[cfg(unix)]
impl SocketFile {
    fn new(path: &std::path::Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    }
}

#[cfg(unix)]
impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.id);
        if ours {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::debug!(path = %self.path.display(), %error, "could not remove the socket file");
            }
        }
    }
}
