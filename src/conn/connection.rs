//! One connection: a task that drives its read side and its write side
//! together over the split stream. Servers and clients both run their
//! connections with it.
//!
//! A frame's way: socket → [read side](crate::conn::reader) → frame decoder →
//! codec → handler → [outgoing queue](crate::conn::outbox) → [write
//! side](crate::conn::writer) → socket. The two sides share nothing but the
//! queue, and each is polled on every wake-up of the task, so a write in
//! progress never stops reading and a handler that waits never stops
//! writing. The write side is the socket's writer (on plain TCP, senders
//! also write through while it holds nothing: see [`crate::conn::outbox`]).
//!
//! The connection ends when both sides have ended; when the write side has
//! ended (our side of the stream is closed) and the peer has not closed its
//! side within the close timeout; at once when either side fails; or at
//! once on an abort (server `cut`, client dropped), even while a handler
//! is pending. However it ended, both sides are dropped before the
//! handler's `on_close` runs: a pending handler call with them (and what it
//! holds), and the socket is closed; `on_close` gets the session.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;

use futures_util::FutureExt;
use tokio::io::AsyncRead;

use crate::base::close::CloseReason;
use crate::conn::config::ConnectionConfig;
use crate::conn::events::EventSink;
use crate::conn::handle::{ConnectionHandle, Shared};
use crate::conn::handler::Closed;
use crate::conn::handler::Handler;
use crate::conn::reader::ReadSide;
use crate::conn::signal::Fired;
use crate::conn::writer::WriteSide;
use crate::transport::stream::SocketWrite;
use crate::wire::error::Error;

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
#[allow(clippy::manual_async_fn)] // (see the comment in the body)
pub(crate) fn run<R, W, H>(
    (read_half, write_half): (R, W),
    handle: ConnectionHandle,
    handler: Arc<H>,
    config: Arc<ConnectionConfig>,
    events: EventSink,
    mut on_end: OnEnd,
) -> impl Future<Output = ()>
where
    R: AsyncRead + Unpin,
    W: SocketWrite,
    H: Handler,
{
    // Not an `async fn`: it would hold its arguments twice in the task's
    // future (as arguments, then as the locals they are moved to).
    async move {
        let conn = handle.inner.clone();
        conn.report_late_replies_to(&events);
        if let Some(socket) = write_half.direct(&conn.counters) {
            conn.outbox.set_direct(socket);
        }
        // The session outlives both sides, for `on_close`; and whether
        // `on_open` was called (`on_close` is called only then: they pair).
        let mut session = None;
        let mut opened = false;
        let ended = {
            // Pinned here, once: `drive` borrows them (a future moved into an
            // awaited one would take room in this task twice).
            let reader = pin!(AssertUnwindSafe(
                ReadSide::new(
                    read_half,
                    handle,
                    handler.clone(),
                    config.clone(),
                    &events,
                    &mut session,
                    &mut opened,
                )
                .run(),
            )
            .catch_unwind()
            .map(|ended| ended.unwrap_or_else(|panic| Err(panicked(&*panic)))));
            let writer =
                pin!(WriteSide::new(write_half, conn.clone(), config.write_stall_timeout).run());
            let ended = drive(reader, writer, &conn, &config.close_timeout).await;
            // Lets go of the socket's write half (senders write through it).
            conn.outbox.abandon();
            ended
            // Both sides end here, whatever ended the connection: a handler
            // call still pending after an abort is dropped (with whatever it
            // holds: a lock, a permit), and the socket is closed, before
            // `on_close` runs.
        };
        // Every request task ends too (its handler future dropped) before
        // `on_close`; one that panicked fails the connection.
        // (`ended` is moved, never borrowed, before each wait: it takes no
        // room of its own in the task's future beside both sides.)
        let ended = if conn.inflight.get().is_some() {
            // Boxed: no room for the wait in the task's future.
            let inflight = &conn.inflight;
            Box::pin(async move {
                inflight.end().await;
                match inflight.take_panic() {
                    Some(message) => Err(Error::HandlerPanic(message)),
                    None => ended,
                }
            })
            .await
        } else {
            ended
        };
        if let Some(requests) = &conn.requests {
            requests.end();
        }
        conn.streams.end();
        let reason = report_end(ended, &conn, &events, config.quiet_ends);
        conn.end.set(reason);
        conn.handshake.ended();
        on_end.run();
        if !opened {
            // Ended before `on_open` was called (cut or dropped at once, a
            // failed `on_connect`, a failed handshake): no `on_close` either.
            return;
        }
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
}

/// How the connection ended, from the result of its sides; logs it, and
/// reports an error to `events` (quietly with `quiet_ends`).
fn report_end(
    ended: Result<CloseReason, Error>,
    conn: &Shared,
    events: &EventSink,
    quiet_ends: bool,
) -> CloseReason {
    let reason = match &ended {
        Ok(reason) => *reason,
        Err(Error::Closed) => CloseReason::Aborted,
        Err(_) => CloseReason::Failed,
    };
    match ended {
        Ok(_) | Err(Error::Closed) => tracing::debug!(?reason, "connection closed"),
        // A handshake failure is logged where it is known: a server once
        // per peer (the read side), a client by `connect` or its reconnects.
        Err(error @ Error::Handshake(_)) => {
            events.report_quietly(Some(conn.peer.clone()), error);
        }
        Err(error) => {
            tracing::debug!(?reason, error = %crate::wire::error::Report(&error), "connection closed");
            if quiet_ends {
                events.report_quietly(Some(conn.peer.clone()), error);
            } else {
                events.report(Some(conn.peer.clone()), error);
            }
        }
    }
    reason
}

/// Polls both sides on every wake-up until the connection is over (see the
/// module docs). An abort is checked first.
///
/// Not an `async fn`: one holds its arguments twice (as arguments, then as
/// the locals they are moved to); the future of `poll_fn` holds them once.
fn drive<'a>(
    mut reader: Pin<&'a mut impl Future<Output = Result<CloseReason, Error>>>,
    mut writer: Pin<&'a mut impl Future<Output = Result<(), Error>>>,
    conn: &'a Shared,
    close_timeout: &'a std::time::Duration,
) -> impl Future<Output = Result<CloseReason, Error>> + 'a {
    // Who ended it, once the read side knows.
    let (mut read_done, mut write_done) = (None, false);
    // Started once our side is closed: how long the peer gets to close its
    // (boxed: most connections never need it).
    let mut linger = None;
    std::future::poll_fn(move |cx| {
        // (Taken here, not kept: the fewer the closure holds, the smaller
        // the task's future.)
        let (signal, outbox, close_timeout) = (&conn.signal, &conn.outbox, *close_timeout);
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
            if let Poll::Ready(result) = reader.as_mut().poll(cx) {
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
    /// with rustc 1.95; 1,528 B as of issue 15, and 1,680 B once the read
    /// side reads ahead while a handler waits (issue 21; the read ahead
    /// itself is boxed); 1,768 B before and 1,888 B after requests ran
    /// concurrently (issue 23: their waits and deadline checks boxed);
    /// 1,920 B (at the bound) after round 3 of the request path
    /// (`ae69023`); 1,104 B (issue 25 item 4) once `run`, the read and
    /// write sides, `drive`, `call_handler` and `while_pending` held their
    /// arguments once (an `async fn` holds them twice: as arguments, then
    /// as the locals they are moved to), no result (56 B) was kept across
    /// a wait beside both sides (`ended`, `wake`, `serve_to_end`'s), the
    /// end of the stream and the rest of a close were boxed, the read side
    /// borrowed the event sink, and the write-only handler's future held
    /// no message. A monitor's link (TCP halves, its span) is 1,176 B, in
    /// a task cell of 1,280 B (tokio rounds cells to 128 B): keep it there
    /// or below.
    #[test]
    fn a_connection_task_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (stream, _peer) = tokio::io::duplex(64);
        let handle = crate::conn::handle::ConnectionHandle::for_tests();
        let (events, _) =
            crate::conn::events::event_channel(1, Default::default(), Default::default());
        let on_end = super::OnEnd::new(|| ());
        let handler = std::sync::Arc::new(());
        let halves = tokio::io::split(stream);
        let task = super::run(halves, handle, handler, Default::default(), events, on_end);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 1104, "a connection task takes {size} B");
    }
}
