//! A connection's bounded outgoing queue, filled by other tasks (server
//! `send_to`/`broadcast`, `Client::send`, [`ConnectionHandle`](crate::ConnectionHandle))
//! and drained by the connection task.
//!
//! It is a byte buffer, not a queue of messages: senders encode straight into
//! it under a short lock, and the connection task swaps the whole buffer out
//! and writes it with one system call. The bound is in bytes.
//!
//! # Direct writes (plain TCP clients)
//!
//! A client's outbox may also hold the socket itself (an `Arc` shared with
//! the connection task: tokio writes through `&TcpStream`). While the connection task is idle (nothing to
//! write, no frame being handled: it says so under the lock before it
//! waits), a sender writes what it queued straight to the socket, still
//! under the lock, so frames never interleave and the connection task does
//! not have to be woken for it (a task hop less per request). Whatever the
//! socket does not take at once stays queued for the connection task, which
//! then owns the rest as before (partial writes, the write timeout); a write
//! error is kept for it to report as if its own write had failed. A lone
//! message is written through only once per read of the connection (the
//! request-reply pattern); messages sent in a row are queued and written
//! together as before, and batches ([`Outbox::push_all`]) are written
//! through whenever the connection is idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use crate::stats::Counters;
use crate::Error;

/// Wire bytes a batch send encodes under one lock before it lets the
/// connection task take them.
const BATCH_BYTES: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct Outbox {
    /// Encoded frames waiting for the connection task, and the state of
    /// direct writes.
    queue: Mutex<Queue>,
    /// Whether the outbox has a direct writer (read without the lock, to
    /// spare connections without one the lock when they go idle).
    direct: AtomicBool,
    /// Bytes above which senders wait (or `try_` sends fail).
    limit: usize,
    /// Set when frames are added to an empty queue; cleared by the
    /// connection task when it sees it.
    pending: AtomicBool,
    /// The connection task, woken when `pending` is set or when one of its
    /// cancellation signals fires (see [`Outbox::poll_gated`]). Lock-free:
    /// waking it costs no mutex, unlike a `Notify`.
    task: AtomicWaker,
    /// Set (both) when the connection's close or abort signal may have
    /// fired: until then the connection task does not poll those futures
    /// again (each poll takes two mutexes).
    gates: [AtomicBool; 2],
    /// Wakes senders waiting for room.
    space: Notify,
    /// Senders waiting for room: draining skips `space` when there are none.
    waiting: AtomicUsize,
    /// Set when the connection ends: sends fail with [`Error::Closed`].
    closed: AtomicBool,
}

/// What the outbox's lock guards.
#[derive(Debug, Default)]
struct Queue {
    /// Encoded frames waiting for the connection task.
    buf: BytesMut,
    /// The socket, for direct writes (plain TCP clients), dropped when the
    /// connection ends.
    writer: Option<DirectWriter>,
    /// The connection task is idle: nothing to write, no frame being
    /// handled. Only then may a sender write to the socket.
    idle: bool,
    /// The connection has read something since the last lone message was
    /// written through.
    fresh: bool,
    /// A direct write failed: the connection task reports it.
    error: Option<std::io::Error>,
}

/// A client's socket, shared with its connection task, for direct writes.
#[derive(Debug)]
pub(crate) struct DirectWriter {
    socket: Arc<tokio::net::TcpStream>,
    counters: Arc<Counters>,
}

impl DirectWriter {
    /// Writes to `socket` (the connection task's too), counting into
    /// `counters`.
    pub(crate) fn new(socket: Arc<tokio::net::TcpStream>, counters: Arc<Counters>) -> Self {
        DirectWriter { socket, counters }
    }
}

impl Queue {
    /// After frames were added to an empty queue: writes them to the socket
    /// at once if the connection task is idle (for a `lone` message, only
    /// if the connection has read since the last one). Returns whether the
    /// connection task must be woken (something is left for it).
    fn write_through(&mut self, lone: bool) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        if !self.idle || (lone && !self.fresh) {
            return true;
        }
        if lone {
            self.fresh = false;
        }
        // Non-blocking; without a syscall if the reactor has seen the socket
        // full since the last write.
        match writer.socket.try_write(&self.buf) {
            Ok(n) => {
                Counters::add(&writer.counters.bytes_out, n as u64);
                self.buf.advance(n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => self.error = Some(e),
        }
        if self.buf.is_empty() {
            return false;
        }
        // The connection task owns the rest: no more direct writes until it
        // is idle again.
        self.idle = false;
        true
    }
}

/// Which of the connection task's cancellation futures [`Outbox::poll_gated`]
/// polls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Gate {
    /// The graceful close signal.
    Close = 0,
    /// The abort signal.
    Abort = 1,
}

/// Counts a sender waiting for room while it lives (dropped too if the
/// waiting future is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Outbox {
    pub(crate) fn new(limit: usize) -> Self {
        Outbox {
            queue: Mutex::new(Queue::default()),
            direct: AtomicBool::new(false),
            limit,
            pending: AtomicBool::new(false),
            task: AtomicWaker::new(),
            gates: [AtomicBool::new(true), AtomicBool::new(true)],
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves only bytes behind: go on.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets senders write to the socket through `writer` while the
    /// connection task is idle.
    pub(crate) fn set_writer(&self, writer: DirectWriter) {
        let mut queue = self.lock();
        if !self.closed.load(Ordering::Acquire) {
            queue.writer = Some(writer);
            self.direct.store(true, Ordering::Release);
        }
    }

    /// The connection task is about to wait with nothing to write: senders
    /// may write through from now on (unless frames are queued). `after_read`:
    /// it has just handled what it read, so a lone message may be written
    /// through again.
    pub(crate) fn set_idle(&self, after_read: bool) {
        if !self.direct.load(Ordering::Acquire) {
            return;
        }
        let mut queue = self.lock();
        if queue.buf.is_empty() && queue.writer.is_some() {
            queue.idle = true;
            queue.fresh |= after_read;
        }
    }

    /// The connection task is busy (handling frames, or writing): no direct
    /// writes until it is idle again.
    pub(crate) fn set_busy(&self) {
        if self.direct.load(Ordering::Acquire) {
            self.lock().idle = false;
        }
    }

    /// Tells the connection task that frames are queued.
    fn signal_ready(&self) {
        self.pending.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Appends with `write` if there is room now.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`], [`Error::QueueFull`], or what `write` returns.
    pub(crate) fn try_push_with(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut queue = self.lock();
        if queue.buf.len() >= self.limit {
            return Err(Error::QueueFull { limit: self.limit });
        }
        let was_empty = queue.buf.is_empty();
        write(&mut queue.buf)?;
        let wake = was_empty && queue.write_through(true);
        drop(queue);
        if wake {
            self.signal_ready();
        }
        Ok(())
    }

    /// Appends with `write`, waiting for room if the queue is full.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is queued unless the future completes.
    pub(crate) async fn push_with<F>(&self, write: F) -> Result<(), Error>
    where
        F: FnOnce(&mut BytesMut) -> Result<(), Error>,
    {
        // A sender in a tight loop must let other tasks run.
        tokio::task::consume_budget().await;
        let mut write = Some(write);
        let mut attempt = |buf: &mut BytesMut| match write.take() {
            Some(write) => write(buf),
            None => Ok(()),
        };
        loop {
            match self.try_push_with(&mut attempt) {
                Err(Error::QueueFull { .. }) => self.room().await,
                other => return other,
            }
        }
    }

    /// Appends one frame per item with `write`, in order: as many under one
    /// lock as fit (at most about [`BATCH_BYTES`] at a time, so that the
    /// connection task can start writing), waiting for room in between.
    /// The bound is the same as for single pushes: an item is added only
    /// while the queue holds less than the limit.
    ///
    /// Returns how many items were queued and the error that stopped it, if
    /// any (nothing of the failing item is queued, nor of those after it).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the items queued so far stay queued.
    pub(crate) async fn push_all<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        mut write: impl FnMut(T, &mut BytesMut) -> Result<(), Error>,
    ) -> (u64, Result<(), Error>) {
        let mut items = items.into_iter().peekable();
        let mut queued = 0;
        while items.peek().is_some() {
            // A sender in a tight loop must let other tasks run.
            tokio::task::consume_budget().await;
            match self.try_push_some(&mut items, &mut write, &mut queued) {
                Ok(()) => {}
                Err(Error::QueueFull { .. }) => self.room().await,
                Err(error) => return (queued, Err(error)),
            }
        }
        (queued, Ok(()))
    }

    /// One lock's worth of [`push_all`](Self::push_all).
    fn try_push_some<I: Iterator>(
        &self,
        items: &mut std::iter::Peekable<I>,
        write: &mut impl FnMut(I::Item, &mut BytesMut) -> Result<(), Error>,
        queued: &mut u64,
    ) -> Result<(), Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let mut queue = self.lock();
        let buf = &mut queue.buf;
        let start = buf.len();
        if start >= self.limit {
            return Err(Error::QueueFull { limit: self.limit });
        }
        let mut result = Ok(());
        while buf.len() < self.limit && buf.len() - start < BATCH_BYTES {
            let Some(item) = items.next() else { break };
            let before = buf.len();
            if let Err(error) = write(item, buf) {
                buf.truncate(before);
                result = Err(error);
                break;
            }
            *queued += 1;
        }
        let added = buf.len() > start;
        let wake = start == 0 && added && queue.write_through(false);
        drop(queue);
        if wake {
            self.signal_ready();
        }
        result
    }

    /// Waits until the queue has room or is closed.
    async fn room(&self) {
        let space = self.space.notified();
        tokio::pin!(space);
        space.as_mut().enable();
        // Counted before the check below, under the lock: a drain that
        // follows the check sees the count and wakes us.
        let _waiting = Waiting::new(&self.waiting);
        if self.closed.load(Ordering::Acquire) || self.lock().buf.len() < self.limit {
            return;
        }
        space.await;
    }

    /// Moves everything queued to the end of `dst` (a swap when `dst` is
    /// empty, so no copy). The connection task is busy from then on.
    ///
    /// # Errors
    ///
    /// The error of a failed direct write (once).
    pub(crate) fn take_into(&self, dst: &mut BytesMut) -> std::io::Result<()> {
        let mut queue = self.lock();
        queue.idle = false;
        if let Some(error) = queue.error.take() {
            return Err(error);
        }
        let buf = &mut queue.buf;
        if buf.is_empty() {
            return Ok(());
        }
        if dst.is_empty() {
            std::mem::swap(buf, dst);
        } else {
            dst.extend_from_slice(buf);
            buf.clear();
        }
        drop(queue);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
        Ok(())
    }

    /// Whether something was queued since the last call that returned
    /// `Ready`; registers the connection task (`cx`) to be woken otherwise.
    /// For the connection task only (one waker).
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.task.register(cx.waker());
        if self.pending.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Polls `fut` (a cancellation future of the connection task) only if
    /// it may have become ready: the first time, and after it has woken
    /// the task through `waker` (made by [`Outbox::gate_waker`]). Registers
    /// the connection task (`cx`) to be woken when it does.
    pub(crate) fn poll_gated<F: Future>(
        &self,
        gate: Gate,
        fut: Pin<&mut F>,
        waker: &Waker,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        self.task.register(cx.waker());
        if !self.gates[gate as usize].swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        fut.poll(&mut Context::from_waker(waker))
    }

    /// The waker to poll gated futures with: it opens both gates and wakes
    /// the connection task.
    pub(crate) fn gate_waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }

    /// Marks the outbox closed and wakes every waiting sender.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // No more direct writes; the outbox lets go of the socket.
        self.direct.store(false, Ordering::Release);
        let mut queue = self.lock();
        queue.idle = false;
        queue.writer = None;
        drop(queue);
        self.space.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The gate waker: a cancellation signal of the connection may have fired.
impl Wake for Outbox {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for gate in &self.gates {
            gate.store(true, Ordering::Release);
        }
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(outbox: &Outbox, bytes: &'static [u8]) -> Result<(), Error> {
        outbox.try_push_with(|b| {
            b.extend_from_slice(bytes);
            Ok(())
        })
    }

    #[test]
    fn full_outbox_refuses_until_drained() {
        let outbox = Outbox::new(4);
        push(&outbox, b"abcd").unwrap();
        assert!(matches!(
            push(&outbox, b"e"),
            Err(Error::QueueFull { limit: 4 })
        ));
        let mut out = BytesMut::new();
        outbox.take_into(&mut out).unwrap();
        assert_eq!(&out[..], b"abcd");
        push(&outbox, b"e").unwrap();
    }

    #[test]
    fn a_batch_stops_at_the_bound_like_single_pushes() {
        let outbox = Outbox::new(10);
        let mut items = [b"aaaa", b"bbbb", b"cccc", b"dddd"].into_iter().peekable();
        let mut write = |item: &[u8; 4], buf: &mut BytesMut| {
            buf.extend_from_slice(item);
            Ok(())
        };
        let mut queued = 0;
        // 0, 4 and 8 bytes are below the limit: three items, 12 bytes.
        outbox
            .try_push_some(&mut items, &mut write, &mut queued)
            .unwrap();
        assert_eq!(queued, 3);
        assert!(matches!(
            outbox.try_push_some(&mut items, &mut write, &mut queued),
            Err(Error::QueueFull { limit: 10 })
        ));
        let mut out = BytesMut::new();
        outbox.take_into(&mut out).unwrap();
        assert_eq!(&out[..], b"aaaabbbbcccc");
        outbox
            .try_push_some(&mut items, &mut write, &mut queued)
            .unwrap();
        assert_eq!(queued, 4);
        assert!(items.peek().is_none());
    }

    #[tokio::test]
    async fn a_waiting_batch_goes_on_when_drained() {
        let outbox = std::sync::Arc::new(Outbox::new(4));
        let o = outbox.clone();
        let batch = tokio::spawn(async move {
            let items = [b"ab", b"cd", b"ef", b"gh", b"ij"];
            o.push_all(items, |item, buf| {
                buf.extend_from_slice(item);
                Ok(())
            })
            .await
        });
        let mut out = BytesMut::new();
        while out.len() < 10 {
            tokio::task::yield_now().await;
            let mut taken = BytesMut::new();
            outbox.take_into(&mut taken).unwrap();
            assert!(
                taken.len() <= 4,
                "{} bytes queued past a bound of 4",
                taken.len()
            );
            out.extend_from_slice(&taken);
        }
        let (queued, result) = tokio::time::timeout(std::time::Duration::from_secs(5), batch)
            .await
            .unwrap()
            .unwrap();
        result.unwrap();
        assert_eq!(queued, 5);
        assert_eq!(&out[..], b"abcdefghij");
    }

    #[tokio::test]
    async fn a_waiting_batch_fails_when_closed() {
        let outbox = std::sync::Arc::new(Outbox::new(1));
        push(&outbox, b"x").unwrap();
        let o = outbox.clone();
        let batch = tokio::spawn(async move {
            o.push_all([b"y"], |item, buf| {
                buf.extend_from_slice(item);
                Ok(())
            })
            .await
        });
        tokio::task::yield_now().await;
        outbox.close();
        let (queued, result) = tokio::time::timeout(std::time::Duration::from_secs(5), batch)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(queued, 0);
        assert!(matches!(result, Err(Error::Closed)));
    }

    #[tokio::test]
    async fn direct_writes_only_while_idle_and_failures_go_to_the_connection_task() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let client = Arc::new(client);
        let (mut server, _) = listener.accept().await.unwrap();
        let counters = Arc::new(Counters::default());
        let outbox = Outbox::new(1024);
        outbox.set_writer(DirectWriter::new(client.clone(), counters.clone()));
        let bytes_out = || counters.bytes_out.load(Ordering::Relaxed);
        let mut out = BytesMut::new();

        // The connection task has not said it is idle: queued for it.
        push(&outbox, b"a\n").unwrap();
        assert_eq!(bytes_out(), 0);
        outbox.take_into(&mut out).unwrap();
        assert_eq!(&out.split()[..], b"a\n");

        // Idle after a read: a lone message goes straight to the socket, once.
        outbox.set_idle(true);
        push(&outbox, b"b\n").unwrap();
        assert_eq!(bytes_out(), 2);
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"b\n");
        push(&outbox, b"c\n").unwrap();
        assert_eq!(
            bytes_out(),
            2,
            "a second lone message waits for the connection task"
        );
        outbox.take_into(&mut out).unwrap();
        assert_eq!(&out.split()[..], b"c\n");

        // Busy (handling frames): nothing goes through, batches neither.
        outbox.set_idle(false);
        outbox.set_busy();
        let write = |item: &[u8; 2], buf: &mut BytesMut| {
            buf.extend_from_slice(item);
            Ok(())
        };
        let (queued, result) = outbox.push_all([b"d\n"], write).await;
        assert!(result.is_ok() && queued == 1);
        assert_eq!(bytes_out(), 2);
        outbox.take_into(&mut out).unwrap();
        assert_eq!(&out.split()[..], b"d\n");

        // Idle, even without a read: a batch goes through.
        outbox.set_idle(false);
        let (queued, result) = outbox.push_all([b"e\n", b"f\n"], write).await;
        assert!(result.is_ok() && queued == 2);
        assert_eq!(bytes_out(), 6);
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"e\nf\n");

        // A direct write that fails leaves the frame queued and the error for
        // the connection task, which reports it as its own.
        socket2::SockRef::from(&*client)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        let (queued, result) = outbox.push_all([b"g\n"], write).await;
        assert!(result.is_ok() && queued == 1);
        let error = outbox.take_into(&mut out).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe);
        outbox.take_into(&mut out).unwrap();
        assert_eq!(&out.split()[..], b"g\n");

        // Closing lets go of the socket: no direct write after it.
        outbox.close();
        assert!(outbox.lock().writer.is_none());
    }

    #[tokio::test]
    async fn waiting_sender_wakes_when_drained_and_fails_when_closed() {
        let outbox = std::sync::Arc::new(Outbox::new(1));
        push(&outbox, b"x").unwrap();
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            o.push_with(|b| {
                b.extend_from_slice(b"y");
                Ok(())
            })
            .await
        });
        tokio::task::yield_now().await;
        let mut out = BytesMut::new();
        outbox.take_into(&mut out).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        outbox.close();
        assert!(matches!(push(&outbox, b"z"), Err(Error::Closed)));
    }
}
