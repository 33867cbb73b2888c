//! One connection: the task that owns a socket, its buffers, its timeouts and
//! its writes. Servers and clients both run their connections with it.
//!
//! A frame's way through it: socket → `read_buf` → frame decoder → codec →
//! handler → `write_buf` (replies, then whatever other tasks queued in the
//! outbox) → socket, in one write per batch.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionConfig;
use crate::events::EventSink;
use crate::handle::ConnectionHandle;
use crate::outbox::Gate;
use crate::stats::Counters;
use crate::{Context, Error, FrameCodec, Handler};

/// The first read's size: an idle connection holds no read buffer at all,
/// and one that has read a little holds a small one.
const MIN_READ: usize = 512;
/// Reads grow (doubling while they fill the buffer) up to this size.
const MAX_READ: usize = 64 * 1024;
/// Buffers larger than this are released once empty (after a large frame).
const SHRINK_ABOVE: usize = 64 * 1024;
/// Reads a closing connection makes, without waiting, of what has arrived.
const MAX_CLOSING_READS: usize = 64;
/// Replies buffered past this are flushed before the next frame is handled.
const HIGH_WATER: usize = 64 * 1024;

/// Runs a closure once when dropped: how a server takes a connection out of
/// its table however the connection ends (even before it started, if a TLS
/// handshake fails).
pub(crate) struct OnEnd(Option<Box<dyn FnOnce() + Send>>);

impl OnEnd {
    pub(crate) fn new(f: impl FnOnce() + Send + 'static) -> Self {
        OnEnd(Some(Box::new(f)))
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The state of one connection task.
pub(crate) struct Connection<S, H> {
    /// The byte stream: a TCP socket, or any `AsyncRead + AsyncWrite`.
    stream: S,
    /// Bytes read but not yet cut into frames.
    read_buf: BytesMut,
    /// How much room the next read gets: doubles while reads fill it (0
    /// until the first read).
    read_chunk: usize,
    /// Cuts `read_buf` into frames; keeps its search offset between reads.
    decoder: FrameCodec,
    /// Encoded frames waiting for the socket.
    write_buf: BytesMut,
    /// Set by [`Context::close`]: no further frame reaches the handler;
    /// flush, then end.
    closing: bool,
    /// Peer, codecs, outbox and close signal, shared with other tasks.
    handle: Arc<ConnectionHandle>,
    /// The user's handler, shared by every connection.
    handler: Arc<H>,
    /// Timeouts and limits.
    config: Arc<ConnectionConfig>,
    /// Ends the connection at once, even mid-write (server `cut`).
    abort: CancellationToken,
    /// Where errors go.
    events: EventSink,
    /// Runs when the connection is dropped.
    _on_end: Option<OnEnd>,
}

/// What woke the connection.
enum Wake {
    Close,
    Outbox,
    Read(std::io::Result<usize>),
    Idle,
}

impl<S, H> Connection<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        stream: S,
        handle: Arc<ConnectionHandle>,
        handler: Arc<H>,
        config: Arc<ConnectionConfig>,
        abort: CancellationToken,
        events: EventSink,
        on_end: Option<OnEnd>,
    ) -> Self {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            read_chunk: 0,
            decoder: handle.wire.decoder(),
            write_buf: BytesMut::new(),
            closing: false,
            handle,
            handler,
            config,
            abort,
            events,
            _on_end: on_end,
        }
    }

    /// The counters this connection adds to.
    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.handle.counters.clone()
    }

    /// Runs the connection to its end and reports how it ended.
    pub(crate) async fn run(mut self) {
        let peer = self.handle.peer.clone();
        let abort = self.abort.clone();
        // An abort (server `cut`) ends the connection even while a handler
        // is pending: the handler's future is dropped at its await point.
        // Polled only once it has fired (see `Outbox::poll_gated`).
        let outbox = self.handle.outbox.clone();
        let gate_waker = outbox.gate_waker();
        let aborted = abort.cancelled();
        tokio::pin!(aborted);
        let aborted = std::future::poll_fn(|cx| {
            outbox.poll_gated(Gate::Abort, aborted.as_mut(), &gate_waker, cx)
        });
        let served = tokio::select! {
            biased;
            _ = aborted => Ok(Err(Error::Closed)),
            served = AssertUnwindSafe(self.serve()).catch_unwind() => served,
        };
        match served.unwrap_or_else(|panic| Err(Error::HandlerPanic(panic_message(&*panic)))) {
            Ok(()) | Err(Error::Closed) => tracing::debug!("connection closed"),
            Err(error) => self.events.report(Some(peer.clone()), error),
        }
        self.handle.outbox.close();
        let closed = AssertUnwindSafe(self.handler.on_close(peer)).catch_unwind();
        if let Err(panic) = closed.await {
            let error = Error::HandlerPanic(panic_message(&*panic));
            self.events.report(Some(self.handle.peer.clone()), error);
        }
    }

    async fn serve(&mut self) -> Result<(), Error> {
        self.open().await?;
        let idle_timeout = self.config.idle_timeout;
        let idle = sleep_until(Instant::now() + idle_timeout.unwrap_or_default());
        tokio::pin!(idle);
        // Made once, not on every turn of the loop: building and dropping
        // these futures was a large part of a round trip's cost. (An abort
        // is watched by `run`.)
        let close_token = self.handle.cancel.clone();
        let close = close_token.cancelled();
        tokio::pin!(close);
        // The close signal and the outbox, watched through the outbox's
        // lock-free waker: the close future is polled again only once it has
        // fired (each poll of it takes two mutexes).
        let outbox = self.handle.outbox.clone();
        let gate_waker = outbox.gate_waker();
        let mut signals = std::future::poll_fn(|cx| {
            if outbox
                .poll_gated(Gate::Close, close.as_mut(), &gate_waker, cx)
                .is_ready()
            {
                return Poll::Ready(Wake::Close);
            }
            outbox.poll_ready(cx).map(|()| Wake::Outbox)
        });
        // Whether the last wake-up was a read (see `Outbox::set_idle`).
        let mut after_read = true;
        loop {
            if self.closing {
                return self.close_gracefully().await;
            }
            let room = self.make_read_room();
            // Everything is written: senders may write through while we wait.
            self.handle.outbox.set_idle(after_read);
            let wake = tokio::select! {
                biased;
                wake = &mut signals => wake,
                read = self.stream.read_buf(&mut self.read_buf) => Wake::Read(read),
                _ = &mut idle, if idle_timeout.is_some() => Wake::Idle,
            };
            after_read = matches!(wake, Wake::Read(_));
            match wake {
                Wake::Close => return self.close_gracefully().await,
                Wake::Outbox => self.flush().await?,
                Wake::Idle => return Err(Error::IdleTimeout(idle_timeout.unwrap_or_default())),
                Wake::Read(read) => {
                    let n = self.end_of_stream_as_zero(read)?;
                    if n == 0 {
                        return self.end_of_stream().await;
                    }
                    Counters::add(&self.handle.counters.bytes_in, n as u64);
                    if n == room {
                        self.read_chunk = (self.read_chunk * 2).min(MAX_READ);
                    }
                    let frames = self.handle_frames().await?;
                    // Idle means no complete frame: a peer dribbling bytes
                    // that never finish a frame (slow loris) is still idle.
                    // In EOF framing the one frame is the whole stream.
                    if frames > 0 || self.decoder.framing().is_eof() {
                        if let Some(timeout) = idle_timeout {
                            idle.as_mut().reset(Instant::now() + timeout);
                        }
                    }
                    self.flush().await?;
                }
            }
        }
    }

    /// A TLS peer that closes without `close_notify` is read as an
    /// `UnexpectedEof` error. Between frames that is a normal end, as on
    /// plain TCP (a partial frame is still reported); in EOF framing it is
    /// an error, since there it could cut the one frame short.
    fn end_of_stream_as_zero(&self, read: std::io::Result<usize>) -> std::io::Result<usize> {
        match read {
            Err(e)
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    && !self.decoder.framing().is_eof() =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    /// Makes room for the next read; returns how much there is.
    fn make_read_room(&mut self) -> usize {
        if self.read_chunk == 0 {
            // The first read: an idle connection holds no buffer until a
            // byte arrives (`read_buf` then makes a small one itself).
            self.read_chunk = MIN_READ;
            if self.read_buf.capacity() == 0 {
                return 0;
            }
        }
        let room = self.read_buf.capacity() - self.read_buf.len();
        if room >= self.read_chunk / 4 {
            return room;
        }
        self.read_buf.reserve(self.read_chunk);
        self.read_buf.capacity() - self.read_buf.len()
    }

    /// Calls the handler's `on_open` and sends what it wrote.
    async fn open(&mut self) -> Result<(), Error> {
        let mut ctx = Context {
            handle: &self.handle,
            out: &mut self.write_buf,
            closing: &mut self.closing,
        };
        self.handler
            .on_open(&mut ctx)
            .await
            .map_err(Error::Handler)?;
        self.flush().await
    }

    /// Handles every complete frame in the read buffer (after
    /// [`Context::close`], decodes and drops them: the frame limit holds).
    /// Returns how many frames there were.
    async fn handle_frames(&mut self) -> Result<u64, Error> {
        // Replies go out before anything sent meanwhile from other tasks.
        self.handle.outbox.set_busy();
        let mut frames = 0;
        let decoded = self.handle_decoded_frames(&mut frames).await;
        Counters::add(&self.handle.counters.frames_in, frames);
        if self.read_buf.is_empty() && self.read_buf.capacity() >= SHRINK_ABOVE {
            // After a large frame: give the memory back and start small.
            self.read_buf = BytesMut::new();
            self.read_chunk = MIN_READ;
        }
        decoded.map(|()| frames)
    }

    async fn handle_decoded_frames(&mut self, frames: &mut u64) -> Result<(), Error> {
        while let Some(frame) = self.decoder.decode(&mut self.read_buf)? {
            *frames += 1;
            if self.closing {
                continue;
            }
            self.handle_frame(frame).await;
            if self.write_buf.len() >= HIGH_WATER {
                self.flush().await?;
            }
            // A peer flooding tiny frames must not starve other connections.
            tokio::task::consume_budget().await;
        }
        Ok(())
    }

    /// Decodes one frame and hands it to the handler. Decode and handler
    /// errors are reported; the connection goes on.
    async fn handle_frame(&mut self, frame: Bytes) {
        let msg = match self.handle.wire.decode::<H::Message>(frame) {
            Ok(msg) => msg,
            Err(error) => return self.events.report(Some(self.handle.peer.clone()), error),
        };
        let mut ctx = Context {
            handle: &self.handle,
            out: &mut self.write_buf,
            closing: &mut self.closing,
        };
        if let Err(error) = self.handler.handle(msg, &mut ctx).await {
            self.events
                .report(Some(self.handle.peer.clone()), Error::Handler(error));
        }
    }

    /// The peer ended its side: handle what is left, send the replies, end.
    async fn end_of_stream(&mut self) -> Result<(), Error> {
        self.handle_eof_frames().await?;
        self.flush().await?;
        self.shutdown().await
    }

    async fn handle_eof_frames(&mut self) -> Result<(), Error> {
        self.handle_frames().await?;
        while let Some(frame) = self.decoder.decode_eof(&mut self.read_buf)? {
            Counters::add(&self.handle.counters.frames_in, 1);
            if !self.closing {
                self.handle_frame(frame).await;
            }
        }
        Ok(())
    }

    /// Stops taking new messages, flushes what was queued, ends our side,
    /// then waits (bounded) for the peer to end its side, so that it has
    /// read everything we sent before the socket closes. Frames that arrive
    /// meanwhile still reach the handler (unless it called
    /// [`Context::close`]), but its replies can no longer be sent.
    async fn close_gracefully(&mut self) -> Result<(), Error> {
        self.handle.outbox.close();
        if self.answer_what_has_arrived().await? {
            return Ok(());
        }
        self.flush().await?;
        self.shutdown().await?;
        let close_timeout = self.config.close_timeout;
        let abort = self.abort.clone();
        let drain = async {
            loop {
                self.make_read_room();
                if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                    self.handle_eof_frames().await?;
                    return Ok(());
                }
                self.handle_frames().await?;
                // Our side is closed: replies can no longer be sent.
                self.write_buf.clear();
            }
        };
        tokio::select! {
            biased;
            _ = abort.cancelled() => Err(Error::Closed),
            result = tokio::time::timeout(close_timeout, drain) => {
                result.unwrap_or(Ok(()))
            }
        }
    }

    /// Handles and answers the frames that have already arrived (what the
    /// socket holds now, without waiting), so that a graceful close loses
    /// nothing the peer sent before it. Returns whether the peer has ended
    /// its side too (then the connection is done).
    async fn answer_what_has_arrived(&mut self) -> Result<bool, Error> {
        // Bounded, so that a peer sending without pause cannot hold us here.
        for _ in 0..MAX_CLOSING_READS {
            self.make_read_room();
            // Unconstrained: with the task's coop budget spent, a read would
            // say "not ready" even though bytes are waiting.
            let read =
                tokio::task::unconstrained(self.stream.read_buf(&mut self.read_buf)).now_or_never();
            match read {
                None => break,
                Some(Ok(0)) => {
                    self.end_of_stream().await?;
                    return Ok(true);
                }
                Some(Ok(n)) => {
                    Counters::add(&self.handle.counters.bytes_in, n as u64);
                    self.handle_frames().await?;
                }
                Some(Err(error)) => return Err(error.into()),
            }
        }
        self.flush().await?;
        Ok(false)
    }

    async fn shutdown(&mut self) -> Result<(), Error> {
        // Nothing may be written after the end of our side.
        self.handle.outbox.close();
        let write_timeout = self.config.write_timeout;
        let abort = self.abort.clone();
        bounded_write(&abort, write_timeout, self.stream.shutdown()).await
    }

    /// Writes replies and everything queued in the outbox, within the write
    /// timeout. A write that has started is finished (or timed out) before
    /// anything else happens, except an abort.
    async fn flush(&mut self) -> Result<(), Error> {
        let mut wrote = false;
        loop {
            self.handle.outbox.take_into(&mut self.write_buf)?;
            if self.write_buf.is_empty() {
                break;
            }
            let len = self.write_buf.len() as u64;
            let write = self.stream.write_all_buf(&mut self.write_buf);
            bounded_write(&self.abort, self.config.write_timeout, write).await?;
            Counters::add(&self.handle.counters.bytes_out, len);
            wrote = true;
        }
        // Every flush that wrote ends with this one, so with nothing written
        // now there is nothing buffered (TLS) to push out.
        if wrote {
            bounded_write(&self.abort, self.config.write_timeout, self.stream.flush()).await?;
        }
        if self.write_buf.capacity() >= SHRINK_ABOVE {
            self.write_buf = BytesMut::new();
        }
        Ok(())
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a handler panicked".to_owned()
    }
}

/// Runs a write within `timeout`, unless `abort` fires first.
async fn bounded_write(
    abort: &CancellationToken,
    timeout: Option<std::time::Duration>,
    write: impl Future<Output = std::io::Result<()>>,
) -> Result<(), Error> {
    // Most writes complete at once: no timer, no select for those.
    tokio::pin!(write);
    if let Some(done) = write.as_mut().now_or_never() {
        return done.map_err(Error::Io);
    }
    let write = async {
        match timeout {
            Some(t) => match tokio::time::timeout(t, write).await {
                Ok(done) => done.map_err(Error::Io),
                Err(_) => Err(Error::WriteTimeout(t)),
            },
            None => write.await.map_err(Error::Io),
        }
    };
    tokio::select! {
        biased;
        _ = abort.cancelled() => Err(Error::Closed),
        done = write => done,
    }
}

impl<S, H> Drop for Connection<S, H> {
    fn drop(&mut self) {
        self.handle.outbox.close();
    }
}
