//! A connection's write side: the writer of its socket.
//!
//! It takes what the outgoing queue holds (everything at once), writes it,
//! and reports each write back to the queue, which wakes whoever waits for
//! room. (On plain TCP a sending task may also write what is queued itself,
//! under the queue's lock, while the write side holds nothing: one writer
//! at a time, see [`crate::conn::outbox`].) It runs beside the read side, so reading never waits for a write
//! and a write never waits for a handler. When the queue finishes, it
//! writes what is left, flushes and ends our side of the stream.
//!
//! The stall timeout fires only when bytes are waiting and *none* could be
//! written for that long, so a peer that reads slowly but steadily is never
//! cut. Progress is seen at the granularity the kernel wakes a blocked
//! writer: on Linux loopback the send buffer grows to about 4 MiB, and a
//! writer waiting on a full buffer is woken once about a third of it has
//! drained; a peer that reads less than that within the timeout looks
//! stalled.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::base::stats::Counters;
use crate::conn::handle::Shared;
use crate::conn::outbox::Take;
use crate::wire::error::Error;

/// Write buffers larger than this are released once written (after a large
/// frame), so that a connection that once sent a lot does not keep it.
const SHRINK_ABOVE: usize = 64 * 1024;

/// The write side of one connection.
pub(crate) struct WriteSide<W> {
    /// The socket's write half.
    stream: W,
    /// The bytes taken from the queue and not yet written.
    buf: BytesMut,
    /// The queue (in `conn.outbox`) and the counters.
    conn: Arc<Shared>,
    /// End the connection when no byte could be written for this long.
    stall_timeout: Option<Duration>,
    /// How it was woken: see [`Wakes`].
    wakes: Wakes,
}

/// The wakers the write side waits with, to tell who woke it: a sender that
/// queued bytes while it had nothing to take, or the runtime once it has
/// run the other tasks that were ready (a deferred wake-up, as
/// `tokio::task::yield_now` makes).
///
/// Bytes queued by other tasks (requests from many tasks, replies of
/// request handlers that ran as tasks) come in bursts: a reply read wakes
/// several requesters at once, a timer several handlers. Taken at once, the
/// first frame of a burst would go out alone (the runtime runs a task just
/// woken before the others ready: tokio's LIFO slot), then the next, one
/// system call per frame. So the write side, woken by a sender, first lets
/// the tasks ready now run, then takes what they all queued: one write.
/// Bytes queued by its own connection task (replies of handlers that
/// answer at once) are taken without this wait, and so is what was queued
/// while it wrote.
///
/// Each is made when first needed (no memory for a connection that never
/// waits, or never defers), with its waker, once (not at every take or
/// deferral); boxed, so that the wakers take no room in the connection
/// task's future.
#[derive(Default)]
struct Wakes {
    /// Registered with the outgoing queue (and the waker made of it).
    sender: Option<Box<(Arc<Flagged>, Waker)>>,
    /// Deferred with the runtime (and the waker made of it).
    later: Option<Box<(Arc<Flagged>, Waker)>>,
}

/// A waker that records that it was woken, then wakes the task.
#[derive(Default)]
struct Flagged {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Flagged {
    /// A new one, with the waker made of it.
    fn with_waker() -> Box<(Arc<Flagged>, Waker)> {
        let flagged = Arc::<Flagged>::default();
        Box::new((flagged.clone(), Waker::from(flagged)))
    }

    /// Whether it was woken since the last call; registers `cx`'s waker.
    fn poll_woken(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl<W: AsyncWrite + Unpin> WriteSide<W> {
    pub(crate) fn new(stream: W, conn: Arc<Shared>, stall_timeout: Option<Duration>) -> Self {
        WriteSide {
            stream,
            buf: BytesMut::new(),
            conn,
            stall_timeout,
            wakes: Wakes::default(),
        }
    }

    /// Takes what is queued (see [`Wakes`]): at once if there is something
    /// now; else, woken by a sender, once the tasks ready then have run.
    async fn take(&mut self) -> Take {
        let conn = &*self.conn;
        let buf = &mut self.buf;
        let Wakes { sender, later } = &mut self.wakes;
        let (sender, sender_waker) = &**sender.get_or_insert_with(Flagged::with_waker);
        // What is there already goes at once.
        let mut first = true;
        let mut deferred = false;
        std::future::poll_fn(|cx| {
            if first {
                first = false;
            } else if deferred {
                let (later, _) = &**later.get_or_insert_with(Flagged::with_waker);
                if !later.poll_woken(cx) {
                    return Poll::Pending;
                }
                deferred = false;
            } else if sender.poll_woken(cx) {
                // Let the tasks ready now queue theirs too.
                let (later, later_waker) = &**later.get_or_insert_with(Flagged::with_waker);
                later.poll_woken(cx);
                let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(later_waker));
                deferred = true;
                return Poll::Pending;
            }
            // Woken for something else (its own task's replies), or the
            // tasks ready have run.
            sender.poll_woken(cx);
            conn.outbox
                .poll_take(buf, &mut Context::from_waker(sender_waker))
        })
        .await
    }

    /// Writes until the queue finishes, then ends our side of the stream.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a write fails, [`Error::WriteStalled`] if the peer
    /// takes nothing for the stall timeout.
    #[allow(clippy::manual_async_fn)] // (see the comment in the body)
    pub(crate) fn run(mut self) -> impl Future<Output = Result<(), Error>> {
        // Not an `async fn` taking `self`: that would hold the write side
        // twice in the connection task's future (see `ReadSide::run`).
        async move { self.write_to_end().await }
    }

    /// [`run`](Self::run)'s body.
    async fn write_to_end(&mut self) -> Result<(), Error> {
        loop {
            match self.take().await {
                Take::Bytes => self.write_taken().await?,
                Take::Finished => {
                    let stream = &mut self.stream;
                    within_stall(self.stall_timeout, stream.shutdown()).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Writes everything taken, then flushes (TLS buffers records).
    async fn write_taken(&mut self) -> Result<(), Error> {
        while !self.buf.is_empty() {
            let stream = &mut self.stream;
            let n = within_stall(self.stall_timeout, stream.write_buf(&mut self.buf)).await?;
            if n == 0 {
                return Err(Error::Io(std::io::ErrorKind::WriteZero.into()));
            }
            self.conn.outbox.wrote(n);
            Counters::add(&self.conn.counters.bytes_out, n as u64);
        }
        within_stall(self.stall_timeout, self.stream.flush()).await?;
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
        Ok(())
    }
}

impl<W> Drop for WriteSide<W> {
    /// However the write side ends (even dropped with its task), senders
    /// stop writing through to its socket, so that the socket closes with
    /// the connection.
    fn drop(&mut self) {
        self.conn.outbox.forget_direct();
    }
}

/// Runs one write operation, failing with [`Error::WriteStalled`] if it
/// makes no progress for `timeout`. Most complete at once: no timer then
/// (and the timer is boxed, so that it takes no room in an idle
/// connection's task).
async fn within_stall<T>(
    timeout: Option<Duration>,
    op: impl Future<Output = std::io::Result<T>>,
) -> Result<T, Error> {
    tokio::pin!(op);
    if let Some(done) = op.as_mut().now_or_never() {
        return done.map_err(Error::Io);
    }
    match timeout {
        Some(t) => match Box::pin(tokio::time::timeout(t, op)).await {
            Ok(done) => done.map_err(Error::Io),
            Err(_) => Err(Error::WriteStalled(t)),
        },
        None => op.await.map_err(Error::Io),
    }
}
