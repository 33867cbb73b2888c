//! One connection: a task that drives its read side and its write side
//! together over the split stream. Servers and clients both run their
//! connections with it.
//!
//! A frame's way: socket → [read side](crate::reader) → frame decoder →
//! codec → handler → [outgoing queue](crate::outbox) → [write
//! side](crate::writer) → socket. The two sides share nothing but the
//! queue, and each is polled on every wake-up of the task, so a write in
//! progress never stops reading and a handler that waits never stops
//! writing. The write side is the socket's writer (on plain TCP, senders
//! also write through while it holds nothing: see [`crate::outbox`]).
//!
//! The connection ends when both sides have ended; when the write side has
//! ended (our side of the stream is closed) and the peer has not closed its
//! side within the close timeout; at once when either side fails; or at
//! once on an abort (server `cut`, client dropped), even while a handler
//! is pending.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;
use tokio::io::AsyncRead;

use crate::config::ConnectionConfig;
use crate::events::EventSink;
use crate::handle::{ConnectionHandle, Shared};
use crate::handler::{Closed, Session};
use crate::reader::ReadSide;
use crate::signal::Fired;
use crate::transport::SocketWrite;
use crate::writer::WriteSide;
use crate::{CloseReason, Error, Handler};

/// Runs a closure once: how a server takes a connection out of its table
/// however the connection ends (even before it started, if a TLS handshake
/// fails).
pub(crate) struct OnEnd(Option<Box<dyn FnOnce() + Send>>);

impl OnEnd {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Self {
        OnEnd(Some(Box::new(f)))
    }

    fn run(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.run();
    }
}

/// Runs the connection on the two halves of its stream to its end, reports
/// how it ended, then calls `on_end` (before the handler's `on_close`, so
/// that a server's table no longer holds the connection while `on_close`
/// runs).
pub(crate) async fn run<R, W, H>(
    (read_half, write_half): (R, W),
    handle: ConnectionHandle,
    handler: Arc<H>,
    config: Arc<ConnectionConfig>,
    events: EventSink,
    mut on_end: OnEnd,
) where
    R: AsyncRead + Unpin,
    W: SocketWrite,
    H: Handler,
{
    let conn = handle.inner.clone();
    conn.report_late_replies_to(&events);
    if let Some(socket) = write_half.direct(&conn.counters) {
        conn.outbox.set_direct(socket);
    }
    // Pinned here, once: `drive` borrows them (a future moved into an
    // awaited one would take room in this task twice).
    let reader = pin!(AssertUnwindSafe(
        ReadSide::new(
            read_half,
            handle,
            handler.clone(),
            config.clone(),
            events.clone()
        )
        .run(),
    )
    .catch_unwind()
    .map(|ended| ended.unwrap_or_else(|panic| (Err(panicked(&*panic)), None))));
    let writer = pin!(WriteSide::new(write_half, conn.clone(), config.write_stall_timeout).run());
    let mut session = None;
    let ended = drive(reader, writer, &conn, config.close_timeout, &mut session).await;
    conn.outbox.abandon();
    if let Some(requests) = &conn.requests {
        requests.end(&conn.wire);
    }
    let reason = match &ended {
        Ok(reason) => *reason,
        Err(Error::Closed) => CloseReason::Aborted,
        Err(_) => CloseReason::Failed,
    };
    match ended {
        Ok(_) | Err(Error::Closed) => tracing::debug!(?reason, "connection closed"),
        Err(error) => {
            tracing::debug!(?reason, error = %crate::Report(&error), "connection closed");
            events.report(Some(conn.peer.clone()), error);
        }
    }
    conn.end.set(reason);
    on_end.run();
    let closed = Closed {
        peer: conn.peer.clone(),
        id: conn.id,
        reason,
        session,
    };
    let closed = AssertUnwindSafe(handler.on_close(closed)).catch_unwind();
    if let Err(panic) = closed.await {
        events.report(Some(conn.peer.clone()), panicked(&*panic));
    }
}

/// Polls both sides on every wake-up until the connection is over (see the
/// module docs). An abort is checked first.
/// The read side's session is put in `session` when it ends.
async fn drive(
    mut reader: Pin<&mut impl Future<Output = (Result<CloseReason, Error>, Session)>>,
    mut writer: Pin<&mut impl Future<Output = Result<(), Error>>>,
    conn: &Shared,
    close_timeout: std::time::Duration,
    session: &mut Session,
) -> Result<CloseReason, Error> {
    let (signal, outbox) = (&conn.signal, &conn.outbox);
    // Who ended it, once the read side knows.
    let (mut read_done, mut write_done) = (None, false);
    // Started once our side is closed: how long the peer gets to close its
    // (boxed: most connections never need it).
    let mut linger = None;
    std::future::poll_fn(|cx| {
        if signal.poll(Fired::Abort, cx).is_ready() {
            return Poll::Ready(Err(Error::Closed));
        }
        // Our side is closed: the peer gets the close timeout to close its.
        // (Checked first too, so that a flood of frames cannot hold it.)
        // (Only our close finishes the write side before the read side.)
        if write_done && poll_linger(&mut linger, close_timeout, cx).is_ready() {
            return Poll::Ready(Ok(read_done.unwrap_or(CloseReason::ByUs)));
        }
        // The write side before the read side, so that a flood of frames,
        // which spends the task's cooperative budget, never starves it; and
        // after it, so that the replies of this wake-up go out at once.
        if !write_done {
            if let Poll::Ready(result) = writer.as_mut().poll(cx) {
                result?;
                write_done = true;
            }
        }
        if read_done.is_none() {
            if !write_done {
                // The write side is polled again below: replies need not
                // wake the task.
                outbox.quiet_writer();
            }
            if let Poll::Ready((result, ended_with)) = reader.as_mut().poll(cx) {
                *session = ended_with;
                read_done = Some(result?);
            }
            if !write_done {
                if let Poll::Ready(result) = writer.as_mut().poll(cx) {
                    result?;
                    write_done = true;
                }
            }
        }
        if let (Some(reason), true) = (read_done, write_done) {
            return Poll::Ready(Ok(reason));
        }
        if write_done && poll_linger(&mut linger, close_timeout, cx).is_ready() {
            return Poll::Ready(Ok(read_done.unwrap_or(CloseReason::ByUs)));
        }
        Poll::Pending
    })
    .await
}

/// Starts the close timeout on its first poll; ready once it has passed.
fn poll_linger(
    linger: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    close_timeout: std::time::Duration,
    cx: &mut std::task::Context<'_>,
) -> Poll<()> {
    linger
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(close_timeout)))
        .as_mut()
        .poll(cx)
}

fn panicked(panic: &(dyn Any + Send)) -> Error {
    let message = if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a handler panicked".to_owned()
    };
    Error::HandlerPanic(message)
}

#[cfg(test)]
mod tests {
    /// The task's future is most of what an idle connection costs (README:
    /// memory per connection). It was 2,856 B before the two sides were
    /// pinned in place and the rarely used timers boxed; 1,336 B after,
    /// with rustc 1.95. The bound leaves room for compiler changes.
    #[test]
    fn a_connection_task_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (stream, _peer) = tokio::io::duplex(64);
        let wire = crate::wire::Wire::new(crate::Framing::lines(), false, Vec::new());
        let addr: crate::Addr = "127.0.0.1:1"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into();
        let handle =
            crate::ConnectionHandle::new(addr.clone(), addr, wire, 1024, Default::default());
        let (events, _) = crate::events::event_channel(1, Default::default(), Default::default());
        let on_end = super::OnEnd::new(|| ());
        let handler = std::sync::Arc::new(());
        let halves = tokio::io::split(stream);
        let task = super::run(halves, handle, handler, Default::default(), events, on_end);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1800, "a connection task takes {size} B");
    }
}
