//! The byte streams a connection runs on: plain TCP, or TLS over TCP
//! (feature `tls`). One enum, so that servers and clients run one kind of
//! connection task whatever the transport.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connected byte stream.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
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
/// handshake that must finish within `timeout`.
pub(crate) async fn accept(
    tcp: TcpStream,
    tls: Option<&ServerTls>,
    timeout: std::time::Duration,
) -> Result<Stream, crate::Error> {
    let Some(tls) = tls else {
        return Ok(Stream::Tcp(tcp));
    };
    #[cfg(feature = "tls")]
    {
        match tokio::time::timeout(timeout, tls.acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(Stream::TlsServer(Box::new(stream))),
            Ok(Err(error)) => Err(crate::Error::Tls(error)),
            Err(_) => Err(crate::Error::Tls(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {timeout:?}"),
            ))),
        }
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = timeout;
        match tls.never {}
    }
}

/// Turns a connected socket into the client's stream: as is, or after a TLS
/// handshake (bounded by the caller's connect timeout).
pub(crate) async fn connect(
    tcp: TcpStream,
    tls: Option<&ClientTls>,
) -> Result<Stream, crate::Error> {
    let Some(tls) = tls else {
        return Ok(Stream::Tcp(tcp));
    };
    #[cfg(feature = "tls")]
    {
        match tls.connector.connect(tls.server_name.clone(), tcp).await {
            Ok(stream) => Ok(Stream::TlsClient(Box::new(stream))),
            Err(error) => Err(crate::Error::Tls(error)),
        }
    }
    #[cfg(not(feature = "tls"))]
    {
        match tls.never {}
    }
}
