//! A connection's read side: socket → read buffer → frames → typed
//! messages → handler.
//!
//! It runs beside the write side ([`crate::conn::writer`]), so it never waits for
//! a write: the handler's replies go into the outgoing queue and are written
//! while the next frames are read and handled. It pauses only when this
//! connection's own unsent output is over twice the queue bound (see
//! [`crate::conn::outbox`]), and resumes as that output drains.
//!
//! How it ends: at the peer's end of stream (after handling every frame,
//! the last one too in EOF framing), or on a close signal: then it answers
//! what has already arrived, finishes the queue (the write side flushes and
//! ends our side) and keeps handing frames to the handler until the peer
//! ends its side, though their replies can no longer be sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::codec::Decoder;

use crate::base::close::CloseReason;
use crate::base::stats::Counters;
use crate::conn::config::ConnectionConfig;
use crate::conn::events::EventSink;
use crate::conn::handle::ConnectionHandle;
use crate::conn::handler::Session;
use crate::conn::handler::{Context, Handler};
use crate::conn::requests::Waiting;
use crate::conn::signal::Signal;
use crate::conn::wire::Matching;
use crate::wire::envelope::Envelope;
use crate::wire::error::Error;
use crate::wire::frame::FrameCodec;
use crate::wire::hello::{HandshakeError, Hello};

/// The first read's size: an idle connection holds no read buffer at all,
/// and one that has read a little holds a small one.
const MIN_READ: usize = 512;
/// Reads grow (doubling while they fill the buffer) up to this size.
const MAX_READ: usize = 64 * 1024;
/// Buffers larger than this are released once empty (after a large frame).
const SHRINK_ABOVE: usize = 64 * 1024;
/// Frames handled per unit of the task's cooperative budget (tokio's: 128
/// units per poll, then the task yields). One unit per frame made a flood
/// of small frames yield every 128 frames, and the yields (a reschedule and
/// often a wake-up of another worker) cost more than the frames: a quarter
/// of one-way throughput. Per 16 frames a flood still yields every 2,048
/// frames at the most (well under a millisecond), so it starves nobody.
const FRAMES_PER_BUDGET_UNIT: u64 = 16;
/// Reads a closing connection makes, without waiting, of what has arrived.
const MAX_CLOSING_READS: usize = 64;

/// The read side of one connection.
pub(crate) struct ReadSide<R, H> {
    /// The socket's read half.
    stream: R,
    /// Bytes read but not yet cut into frames.
    buf: BytesMut,
    /// How much room the next read gets: doubles while reads fill it (0
    /// until the first read).
    chunk: usize,
    /// Cuts `buf` into frames; keeps its search offset between reads.
    decoder: FrameCodec,
    /// Set by [`Context::close`]: no further frame reaches the handler.
    closing: bool,
    /// The connection's queue, signal, codecs and counters.
    handle: ConnectionHandle,
    /// The user's handler, shared by every connection.
    handler: Arc<H>,
    /// Timeouts and limits.
    config: Arc<ConnectionConfig>,
    /// Where decode and handler errors go.
    events: EventSink,
    /// The connection's own state, for the handler.
    session: Session,
    /// Whether the handler's message type is decoded in place, from the
    /// read buffer ([`Codec::copies_out`](crate::Codec::copies_out)).
    copies_out: bool,
}

/// Why serving stopped without an error.
enum Stop {
    /// The peer ended its side; every frame has been handled.
    EndOfStream,
    /// A close was asked (by a signal or by the handler).
    Close,
}

/// What woke the read loop.
enum Wake {
    Close,
    Read(std::io::Result<usize>),
    Idle,
}

impl<R, H> ReadSide<R, H>
where
    R: AsyncRead + Unpin,
    H: Handler,
{
    pub(crate) fn new(
        stream: R,
        handle: ConnectionHandle,
        handler: Arc<H>,
        config: Arc<ConnectionConfig>,
        events: EventSink,
    ) -> Self {
        ReadSide {
            stream,
            buf: BytesMut::new(),
            chunk: 0,
            decoder: handle.inner.wire.decoder(),
            copies_out: handle.inner.wire.copies_out::<H::Message>(),
            closing: false,
            handle,
            handler,
            config,
            events,
            session: None,
        }
    }

    /// Reads and handles frames until the connection ends (see the module
    /// docs); finishes the outgoing queue on the way out.
    ///
    /// # Errors
    ///
    /// Framing and I/O errors, [`Error::IdleTimeout`], or an `on_open`
    /// failure: the connection ends with them.
    /// Returns who ended the connection: the peer (its end of stream came
    /// first) or this side (a close was asked).
    /// Hands back the connection's session too, for `on_close`.
    pub(crate) async fn run(mut self) -> (Result<CloseReason, Error>, Session) {
        let result = self.serve_then_close().await;
        self.handle.inner.outbox.finish();
        (result, self.session.take())
    }

    async fn serve_then_close(&mut self) -> Result<CloseReason, Error> {
        self.open().await?;
        if let Stop::EndOfStream = self.serve().await? {
            return Ok(CloseReason::ByPeer);
        }
        // Closing: nothing more from other tasks; answer what has arrived.
        self.handle.inner.outbox.close();
        if self.answer_what_has_arrived().await? {
            return Ok(CloseReason::ByUs);
        }
        // Our side ends once the queue is written; the peer may still send
        // until it has read everything and ends its side.
        self.handle.inner.outbox.finish();
        loop {
            self.make_read_room();
            let read = self.stream.read_buf(&mut self.buf).await;
            let n = self.end_of_stream_as_zero(read)?;
            if n == 0 {
                return self.handle_last_frames().await.map(|()| CloseReason::ByUs);
            }
            Counters::add(&self.handle.inner.counters.bytes_in, n as u64);
            self.handle_frames().await?;
        }
    }

    /// Checks the peer's hello if the handshake is on, calls the
    /// handler's `on_open`, then handles the frames that came with the
    /// hello.
    async fn open(&mut self) -> Result<(), Error> {
        if let Some(plan) = self.config.handshake {
            self.handshake(plan.hello::<H::Message>()).await?;
        }
        let mut ctx = Context {
            handle: &self.handle,
            closing: &mut self.closing,
            request: None,
            session: &mut self.session,
        };
        self.handler
            .on_open(&mut ctx)
            .await
            .map_err(Error::Handler)?;
        if !self.buf.is_empty() {
            self.handle_frames().await?;
        }
        Ok(())
    }

    /// Reads the peer's first frame, within the handshake timeout, and
    /// checks it against `ours` (see [`crate::handshake`]). A close asked
    /// meanwhile waits for it (bounded by the timeout); an abort does not.
    async fn handshake(&mut self, ours: Hello) -> Result<(), Error> {
        let timeout = self.config.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let frame = loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                break frame;
            }
            self.make_read_room();
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| HandshakeError::Timeout(timeout))?;
            let n = self.end_of_stream_as_zero(read)?;
            if n == 0 {
                return Err(HandshakeError::Closed.into());
            }
            Counters::add(&self.handle.inner.counters.bytes_in, n as u64);
        };
        Counters::add(&self.handle.inner.counters.frames_in, 1);
        let theirs = Hello::decode(&frame)?;
        ours.check(&theirs)?;
        tracing::debug!(?theirs, "handshake done");
        Ok(())
    }

    /// Reads and handles frames until the peer ends the stream or a close
    /// is asked.
    async fn serve(&mut self) -> Result<Stop, Error> {
        let idle_timeout = self.config.idle_timeout;
        // Boxed, and only with an idle timeout: no room in an idle task
        // otherwise.
        let mut idle = idle_timeout.map(|timeout| Box::pin(sleep_until(Instant::now() + timeout)));
        let reset_idle = |idle: &mut Option<Pin<Box<Sleep>>>| {
            if let (Some(idle), Some(timeout)) = (idle, idle_timeout) {
                idle.as_mut().reset(Instant::now() + timeout);
            }
        };
        let conn = self.handle.inner.clone();
        loop {
            if self.closing {
                return Ok(Stop::Close);
            }
            // Backpressure: while our unsent output is over its bound, the
            // peer is not reading it; stop reading what it sends.
            let paused = std::future::poll_fn(|cx| conn.outbox.poll_reader_room(cx)).now_or_never();
            if paused.is_none() {
                let room = std::future::poll_fn(|cx| conn.outbox.poll_reader_room(cx));
                let close = closing(&conn.signal);
                tokio::select! {
                    biased;
                    _ = close => return Ok(Stop::Close),
                    () = room => {}
                }
                // Waiting on our peer is not the peer being idle.
                reset_idle(&mut idle);
            }
            let room = self.make_read_room();
            let wake = tokio::select! {
                biased;
                _ = closing(&conn.signal) => Wake::Close,
                read = self.stream.read_buf(&mut self.buf) => Wake::Read(read),
                _ = poll_idle(&mut idle) => Wake::Idle,
            };
            let n = match wake {
                Wake::Close => return Ok(Stop::Close),
                Wake::Idle => return Err(Error::IdleTimeout(idle_timeout.unwrap_or_default())),
                Wake::Read(read) => self.end_of_stream_as_zero(read)?,
            };
            if n == 0 {
                self.handle_last_frames().await?;
                return Ok(Stop::EndOfStream);
            }
            Counters::add(&conn.counters.bytes_in, n as u64);
            if n == room {
                self.chunk = (self.chunk * 2).min(MAX_READ);
            }
            let frames = self.handle_frames().await?;
            // Idle means no complete frame: a peer dribbling bytes that
            // never finish a frame (slow loris) is still idle. In EOF
            // framing the one frame is the whole stream.
            if frames > 0 || self.decoder.framing().is_eof() {
                reset_idle(&mut idle);
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
            // A reset says nothing of why: say what it usually means.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                Err(crate::wire::error::io_context(
                    "the peer reset the connection (it may have refused what was sent, \
                     such as a frame over its limit: its log says why)",
                    e,
                ))
            }
            other => other,
        }
    }

    /// Makes room for the next read; returns how much there is.
    fn make_read_room(&mut self) -> usize {
        if self.chunk == 0 {
            // The first read: an idle connection holds no buffer until a
            // byte arrives (`read_buf` then makes a small one itself).
            self.chunk = MIN_READ;
            if self.buf.capacity() == 0 {
                return 0;
            }
        }
        let room = self.buf.capacity() - self.buf.len();
        if room >= self.chunk / 4 {
            return room;
        }
        self.buf.reserve(self.chunk);
        self.buf.capacity() - self.buf.len()
    }

    /// Handles every complete frame in the read buffer (after
    /// [`Context::close`], decodes and drops them: the frame limit holds).
    /// Returns how many frames there were.
    async fn handle_frames(&mut self) -> Result<u64, Error> {
        let mut frames = 0;
        let decoded = self.handle_decoded_frames(&mut frames).await;
        Counters::add(&self.handle.inner.counters.frames_in, frames);
        if frames > 0 {
            self.handle.inner.outbox.read_some();
        }
        if self.buf.is_empty() && self.buf.capacity() >= SHRINK_ABOVE {
            // After a large frame: give the memory back and start small.
            self.buf = BytesMut::new();
            self.chunk = MIN_READ;
        }
        decoded.map(|()| frames)
    }

    async fn handle_decoded_frames(&mut self, frames: &mut u64) -> Result<(), Error> {
        while let Some(found) = self.decoder.next_frame(&mut self.buf)? {
            *frames += 1;
            self.handle_found(found).await;
            // A peer flooding tiny frames must not starve other connections:
            // one unit of the task's cooperative budget per
            // FRAMES_PER_BUDGET_UNIT frames.
            if frames.is_multiple_of(FRAMES_PER_BUDGET_UNIT) {
                tokio::task::consume_budget().await;
            }
            // Replies that are not being read hold the next frame back.
            let conn = &self.handle.inner;
            std::future::poll_fn(|cx| conn.outbox.poll_reader_room(cx)).await;
        }
        Ok(())
    }

    /// Takes the frame `found` out of the read buffer and hands it to the
    /// handler (after [`Context::close`], drops it).
    async fn handle_found(&mut self, found: crate::wire::frame::Found) {
        if self.closing {
            self.buf.advance(found.wire);
            return;
        }
        if let Some((msg, request)) = self.take_message(found) {
            self.call_handler(msg, request).await;
        }
    }

    /// Takes the frame `found` out of the read buffer and decodes it into a
    /// message for the handler, with its request id; or, if it is a reply,
    /// hands it to the request waiting for it. Decode errors are reported
    /// (`None` then); the connection goes on.
    ///
    /// Codecs that copy out of the frame decode it in place, in the read
    /// buffer; the others get it as [`Bytes`] split off the buffer.
    fn take_message(
        &mut self,
        found: crate::wire::frame::Found,
    ) -> Option<(H::Message, Option<u64>)> {
        let conn = &*self.handle.inner;
        let payload = found.payload();
        let (kind, header) = match conn.wire.open_header(&self.buf[payload.clone()]) {
            Ok(opened) => opened,
            Err(error) => {
                self.buf.advance(found.wire);
                self.events.report(Some(conn.peer.clone()), error);
                return None;
            }
        };
        let body = payload.start + header..payload.end;
        let request = match kind {
            Envelope::Reply(id) => {
                let waiting = conn.requests.as_deref().and_then(|r| r.take(id));
                let reply = found.split(&mut self.buf, body);
                self.answer(id, waiting, reply);
                return None;
            }
            Envelope::Message if conn.wire.matching() == Matching::Ordered => {
                if let Some((id, waiting)) = conn.requests.as_deref().and_then(|r| r.take_oldest())
                {
                    let reply = found.split(&mut self.buf, body);
                    self.answer(id, Some(waiting), reply);
                    return None;
                }
                None
            }
            Envelope::Request(id) => Some(id),
            Envelope::Message => None,
        };
        let decoded = if self.copies_out {
            let decoded = conn.wire.decode_slice::<H::Message>(&self.buf[body]);
            self.buf.advance(found.wire);
            decoded
        } else {
            let frame = found.split(&mut self.buf, body);
            conn.wire.decode::<H::Message>(frame)
        };
        match decoded {
            Ok(msg) => Some((msg, request)),
            Err(error) => {
                self.events.report(Some(conn.peer.clone()), error);
                None
            }
        }
    }

    /// Hands one message to the handler; its error is reported.
    async fn call_handler(&mut self, msg: H::Message, request: Option<u64>) {
        let mut ctx = Context {
            handle: &self.handle,
            closing: &mut self.closing,
            request,
            session: &mut self.session,
        };
        if let Err(error) = self.handler.handle(msg, &mut ctx).await {
            let peer = Some(self.handle.inner.peer.clone());
            self.events.report(peer, Error::Handler(error));
        }
    }

    /// Hands a reply to the request waiting for it; a reply nobody waits
    /// for is a [`Error::LateReply`] event.
    fn answer(&self, id: u64, waiting: Option<Waiting>, reply: Bytes) {
        let conn = &*self.handle.inner;
        if let Some(waiting) = waiting {
            if waiting.answer(&conn.wire, Ok(reply)) {
                return;
            }
        }
        Counters::add(&conn.counters.late_replies, 1);
        self.events
            .report(Some(conn.peer.clone()), Error::LateReply { id });
    }

    /// The peer ended its side: handles what is left in the buffer (in EOF
    /// framing, the one frame).
    async fn handle_last_frames(&mut self) -> Result<(), Error> {
        self.handle_frames().await?;
        while let Some(found) = self.decoder.next_frame_eof(&mut self.buf)? {
            Counters::add(&self.handle.inner.counters.frames_in, 1);
            self.handle_found(found).await;
        }
        Ok(())
    }

    /// Handles and answers the frames that have already arrived (what the
    /// socket holds now, without waiting), so that a graceful close loses
    /// nothing the peer sent before it. Returns whether the peer has ended
    /// its side too (then the read side is done).
    async fn answer_what_has_arrived(&mut self) -> Result<bool, Error> {
        // Bounded, so that a peer sending without pause cannot hold us here.
        for _ in 0..MAX_CLOSING_READS {
            self.make_read_room();
            // Unconstrained: with the task's coop budget spent, a read would
            // say "not ready" even though bytes are waiting.
            let read = tokio::task::unconstrained(self.stream.read_buf(&mut self.buf))
                .now_or_never()
                .map(|read| self.end_of_stream_as_zero(read));
            match read {
                None => break,
                Some(Ok(0)) => {
                    self.handle_last_frames().await?;
                    return Ok(true);
                }
                Some(Ok(n)) => {
                    Counters::add(&self.handle.inner.counters.bytes_in, n as u64);
                    self.handle_frames().await?;
                }
                Some(Err(error)) => return Err(error.into()),
            }
        }
        Ok(false)
    }
}

/// Ready when the idle timer (if any) fires; never without one.
fn poll_idle(idle: &mut Option<Pin<Box<Sleep>>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match idle {
        Some(sleep) => sleep.as_mut().poll(cx),
        None => Poll::Pending,
    })
}

/// Ready once a close (or an abort) has been asked. It registers no waker:
/// the connection task registers for the signal on every wake-up (see
/// [`Signal::is_closing`]).
fn closing(signal: &Signal) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if signal.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}
