//! A plain TCP stream owned jointly by its connection task and its outbox,
//! so that a sender may write a message straight to the socket while the
//! task is idle (see `outbox::DirectWriter`). No second descriptor: tokio's
//! `TcpStream` reads and writes through `&self` (`try_read_buf`,
//! `try_write`), so both hold the same `Arc`.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection task's side of a shared TCP stream.
#[derive(Debug)]
pub(crate) struct SharedTcp(pub(crate) Arc<TcpStream>);

/// Runs a non-blocking operation until it does not say `WouldBlock`; on
/// `WouldBlock` the stream's readiness is cleared, so the next poll waits
/// for the reactor.
fn retry<T>(
    mut poll_ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    loop {
        ready!(poll_ready(cx))?;
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.0;
        // `ReadBuf` is a `BufMut`: no zeroing of its unfilled part.
        retry(|cx| tcp.poll_read_ready(cx), || tcp.try_read_buf(buf), cx).map_ok(|_| ())
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.0;
        retry(|cx| tcp.poll_write_ready(cx), || tcp.try_write(buf), cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.0;
        retry(
            |cx| tcp.poll_write_ready(cx),
            || tcp.try_write_vectored(bufs),
            cx,
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the write side (`shutdown(SHUT_WR)`), as `TcpStream` does.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write))
    }
}
