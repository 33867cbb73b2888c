//! A connection's read side: socket → read buffer → frames → typed
//! messages → handler.
//!
//! It runs beside the write side ([`crate::conn::writer`]), so it never waits for
//! a write: the handler's replies go into the outgoing queue and are written
//! while the next frames are read and handled. It pauses only when this
//! connection's own unsent output is over twice the queue bound (see
//! [`crate::conn::outbox`]), and resumes as that output drains.
//!
//! While a handler call waits (on a lock, a database, or a request of its
//! own on this very connection), the read side goes on reading: replies
//! are handed to the requests waiting for them at once, and other frames
//! are decoded and kept, in order, to be handled after the call (at most
//! [`MAX_AHEAD_FRAMES`] frames and the queue bound in bytes; past that,
//! reading waits for the call to end).
//!
//! How it ends: at the peer's end of stream (after handling every frame,
//! the last one too in EOF framing), or on a close signal: then it answers
//! what has already arrived, finishes the queue (the write side flushes and
//! ends our side) and keeps handing frames to the handler until the peer
//! ends its side, though their replies can no longer be sent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::base::addr::Addr;
use crate::base::close::CloseReason;
use crate::base::stats::Counters;
use crate::conn::config::ConnectionConfig;
use crate::conn::events::EventSink;
use crate::conn::handle::{ConnectionHandle, Shared};
use crate::conn::handler::Session;
use crate::conn::handler::{AnswerState, Context, Handler};
use crate::conn::handshake::Plan;
use crate::conn::inflight::{self, Call};
use crate::conn::requests::Waiting;
use crate::conn::signal::Signal;
use crate::conn::wire::Matching;
use crate::wire::envelope::{self, Envelope, ErrorCode};
use crate::wire::error::{BoxError, Error};
use crate::wire::frame::FrameCodec;
use crate::wire::hello::{
    cut_hello, features, first_bytes, FirstBytes, HandshakeError, Hello, Role,
};

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
/// Frames decoded and kept while a handler call waits, at the most (their
/// bytes on the wire are bounded too, by the connection's queue bound).
pub(crate) const MAX_AHEAD_FRAMES: usize = 1024;

/// Hands a decoded message where `ReadSide::route` sends it (in the read
/// side's async methods). A macro, not a method: an async method keeps its
/// arguments for as long as it runs, which took 16 B more in every
/// connection task's future (`a_connection_task_stays_small`).
macro_rules! dispatch {
    ($side:ident, $msg:ident, $request:ident) => {
        match $side.route($request) {
            Route::Drop => {}
            Route::Task(id) => {
                if let Some(wait) = $side.start_request($msg, id) {
                    wait.await;
                }
            }
            Route::InOrder => $side.call_handler($msg, $request).await,
            // Boxed: no room for its deadline and cancellation in the
            // task's future, for connections that never need them.
            Route::InOrderRequest(id) => {
                Box::pin($side.call_request_handler($msg, id)).await;
            }
        }
    };
}

/// The read side of one connection.
pub(crate) struct ReadSide<'s, R, H: Handler> {
    /// The socket's read half and what was read from it.
    input: Input<R, H::Message>,
    /// Set by [`Context::close`]: no further frame reaches the handler.
    closing: bool,
    /// The connection's queue, signal, codecs and counters.
    handle: ConnectionHandle,
    /// The user's handler, shared by every connection.
    handler: Arc<H>,
    /// Timeouts and limits.
    config: Arc<ConnectionConfig>,
    /// Where decode and handler errors go (the connection task's: a
    /// reference is smaller than a clone in the task's future).
    events: &'s EventSink,
    /// The connection's own state, for the handler. It lives with the
    /// connection task, outside this side, so that `on_close` gets it
    /// however the connection ended (an abort drops this side first).
    session: &'s mut Session,
    /// Set once `on_open` is called (for the connection task: `on_close`
    /// is called only then).
    opened: &'s mut bool,
}

/// The socket's read half, the bytes read from it, and the messages read
/// ahead while a handler call waited.
struct Input<R, M> {
    /// The socket's read half.
    stream: R,
    /// Bytes read but not yet cut into frames.
    buf: BytesMut,
    /// How much room the next read gets: doubles while reads fill it (0
    /// until the first read).
    chunk: usize,
    /// Cuts `buf` into frames; keeps its search offset between reads.
    decoder: FrameCodec,
    /// Whether the handler's message type is decoded in place, from the
    /// read buffer ([`Codec::copies_out`](crate::codec::Codec::copies_out)).
    copies_out: bool,
    /// Until the first bytes are told apart from a hello, on a side with
    /// its handshake off: the side this is (see `check_first_bytes`).
    no_hello: Option<Role>,
    /// What was read while a handler call waited (boxed, and only once a
    /// call has waited: no room in a task whose handler never waits).
    ahead: Option<Box<Ahead<M>>>,
    /// The per-frame errors logged so far (only once there is one, or a
    /// request task that may report one: shared with them).
    errors: Option<SharedErrors>,
}

/// A connection's [`FrameErrors`], shared by its read side and its request
/// tasks.
type SharedErrors = Arc<Mutex<FrameErrors>>;

/// What a read side read while a handler call waited.
struct Ahead<M> {
    /// Messages (with their request id and bytes on the wire) decoded while
    /// a handler call waited: they come before anything in `buf`.
    queue: VecDeque<(M, Option<u64>, usize)>,
    /// The bytes on the wire of the messages in `queue`.
    bytes: usize,
    /// What stopped a read ahead (the end of the stream, as `Ok(0)`, or an
    /// error): the next read returns it, once `queue` has been handled.
    ended: Option<Result<usize, Error>>,
}

impl<M> Ahead<M> {
    /// Whether it holds as much as it may.
    fn is_full(&self, limit: usize) -> bool {
        self.queue.len() >= MAX_AHEAD_FRAMES || self.bytes >= limit
    }
}

/// The slots a started request holds: one of the connection's, and one
/// of the server's in all (with overload bounds).
type Held = (
    tokio::sync::OwnedSemaphorePermit,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Where a message goes (see `ReadSide::route`).
enum Route {
    Drop,
    Task(u64),
    InOrder,
    InOrderRequest(u64),
}

/// Whether a request's slots are free now.
enum Slots {
    Got(Held),
    /// Refused (answered `Overloaded`).
    Refused,
    Wait,
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
    Read(Result<usize, Error>),
    Idle,
}

impl<'s, R, H> ReadSide<'s, R, H>
where
    R: AsyncRead + Unpin,
    H: Handler,
{
    pub(crate) fn new(
        stream: R,
        handle: ConnectionHandle,
        handler: Arc<H>,
        config: Arc<ConnectionConfig>,
        events: &'s EventSink,
        session: &'s mut Session,
        opened: &'s mut bool,
    ) -> Self {
        ReadSide {
            input: Input {
                stream,
                buf: BytesMut::new(),
                chunk: 0,
                decoder: handle.inner.wire.decoder(),
                copies_out: handle.inner.wire.copies_out::<H::Message>(),
                no_hello: config.no_hello,
                ahead: None,
                errors: None,
            },
            closing: false,
            handle,
            handler,
            config,
            events,
            session,
            opened,
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
    #[allow(clippy::manual_async_fn)] // (see the comment in the body)
    pub(crate) fn run(
        mut self,
    ) -> impl Future<Output = Result<CloseReason, Error>> + use<'s, R, H> {
        // Not an `async fn` taking `self`: that would hold the read side
        // twice in the connection task's future (its argument, then the
        // local it is moved to); an `async move` block holds it once.
        async move { self.serve_to_end().await }
    }

    /// [`run`](Self::run)'s body.
    async fn serve_to_end(&mut self) -> Result<CloseReason, Error> {
        // (`served` is never borrowed here, and is moved before any wait:
        // so it takes no room of its own in the task's future.)
        let (served, waits) = waits_after(self.serve_then_close().await, &self.handle.inner);
        if waits {
            // Boxed: no room for it in the task's future.
            return Box::pin(self.end_after(served)).await;
        }
        self.handle.inner.outbox.finish();
        served
    }

    /// The end of [`serve_to_end`](Self::serve_to_end) when there is
    /// something to wait for (see [`waits_after`]).
    async fn end_after(
        &mut self,
        served: Result<CloseReason, Error>,
    ) -> Result<CloseReason, Error> {
        let result = match served {
            Err(Error::Handshake(error @ HandshakeError::UnexpectedHello { .. })) => {
                Err(self.refuse_hello(error).await)
            }
            result => result,
        };
        if result.is_ok() && self.handle.inner.inflight.get().is_some() {
            // Requests still running are answered before our side ends.
            self.wait_for_requests().await;
        }
        self.handle.inner.outbox.finish();
        result
    }

    /// The peer's first frame is a hello, and this side has its handshake
    /// off: says so (at WARN, once per peer address), answers with a
    /// refusal so that the peer fails at once rather than wait for a hello
    /// until its handshake timeout, and ends our side. What the peer sends
    /// meanwhile is dropped; it closes its side once it has read the
    /// refusal. Waited for half the close timeout at most: the
    /// connection's own wait, which starts once our side has ended, must
    /// not end first (it would end the connection without the error).
    async fn refuse_hello(&mut self, error: HandshakeError) -> Error {
        let conn = &self.handle.inner;
        // (A reconnecting client gives up on it.)
        conn.handshake.set(Err(error.clone()));
        let peer = &conn.peer;
        self.events.warn_once_per_peer(peer, || {
            tracing::warn!(%peer, error = %error, "chitchat-net refused a hello: the handshake is off here");
        });
        if let Err(error) = conn.outbox.push_reply(|buf| conn.wire.encode_no_hello(buf)) {
            tracing::debug!(%error, "the refusal of a hello could not be queued");
        }
        conn.outbox.finish();
        let until = Instant::now() + self.config.close_timeout / 2;
        let input = &mut self.input;
        let _ = tokio::time::timeout_at(until, async {
            loop {
                input.buf.clear();
                input.make_read_room();
                if !matches!(input.read().await, Ok(n) if n > 0) {
                    break;
                }
            }
        })
        .await;
        Error::Handshake(error)
    }

    /// Waits until no request task runs, reading ahead meanwhile (their
    /// handlers may wait for replies on this connection).
    async fn wait_for_requests(&mut self) {
        let conn = self.handle.inner.clone();
        let Some(state) = conn.inflight.get() else {
            return;
        };
        let idle = pin!(state.wait_idle());
        let ahead_limit = self.config.queue_bytes;
        self.input
            .while_pending(idle, &conn, self.events, ahead_limit)
            .await;
    }

    /// Whether a close was asked (by the handler, or by a request task).
    fn is_closing(&mut self) -> bool {
        if !self.closing && self.handle.inner.inflight.close_asked() {
            self.closing = true;
        }
        self.closing
    }

    async fn serve_then_close(&mut self) -> Result<CloseReason, Error> {
        self.open().await?;
        if let Stop::EndOfStream = self.serve().await? {
            return Ok(CloseReason::ByPeer);
        }
        // Closing: nothing more from other tasks; open reply streams end
        // (with `StreamRefused`); answer what has arrived.
        self.handle.inner.outbox.close();
        let conn = &self.handle.inner;
        conn.streams.closing(&conn.outbox, &conn.wire);
        // Boxed, as the rest of a close: no room for it in the task's
        // future.
        if Box::pin(self.answer_what_has_arrived()).await? {
            return Ok(CloseReason::ByUs);
        }
        if self.handle.inner.inflight.get().is_some() {
            Box::pin(self.wait_for_requests()).await;
        }
        // Our side ends once the queue is written; the peer may still send
        // until it has read everything and ends its side.
        self.handle.inner.outbox.finish();
        loop {
            self.input.make_read_room();
            let n = self.input.read().await?;
            if n == 0 {
                return Box::pin(self.handle_last_frames())
                    .await
                    .map(|()| CloseReason::ByUs);
            }
            Counters::add(&self.handle.inner.counters.bytes_in, n as u64);
            self.handle_frames().await?;
        }
    }

    /// Checks the peer's hello if the handshake is on, calls the
    /// handler's `on_open`, then handles the frames that came with the
    /// hello (or while `on_open` waited).
    async fn open(&mut self) -> Result<(), Error> {
        if let Some(plan) = self.config.hello.clone() {
            let outcome = self.handshake(&plan).await;
            let conn = &self.handle.inner;
            conn.handshake.set(outcome.clone());
            if let Err(error) = outcome {
                if plan.role == Role::Server {
                    let peer = &conn.peer;
                    self.events.warn_once_per_peer(peer, || {
                        tracing::warn!(%peer, error = %error, "chitchat-net handshake refused a client");
                    });
                }
                return Err(error.into());
            }
        }
        {
            *self.opened = true;
            let mut ctx = Context {
                handle: &self.handle,
                closing: &mut self.closing,
                request: None,
                session: &mut *self.session,
                answer: AnswerState::default(),
                call: None,
            };
            let call = pin!(self.handler.on_open(&mut ctx));
            let ahead_limit = self.config.queue_bytes;
            self.input
                .while_pending(call, &self.handle.inner, self.events, ahead_limit)
                .await
                .map_err(Error::Handler)?;
        }
        if !self.input.buf.is_empty() || self.input.ahead.is_some() {
            self.handle_frames().await?;
        }
        Ok(())
    }

    /// Reads the peer's first frame, within the handshake timeout, and
    /// checks it against ours (see [`crate::handshake`]); returns the
    /// feature bits both sides set. A close asked meanwhile waits for it
    /// (bounded by the timeout); an abort does not.
    async fn handshake(&mut self, plan: &Plan) -> Result<u64, HandshakeError> {
        let timeout = self.config.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let input = &mut self.input;
        // Cut whatever the peer's framing: a peer of another framing is
        // told so by its hello, not waited for.
        let (text, taken) = loop {
            match first_bytes(&input.buf) {
                // The peer has its handshake off, and says so.
                FirstBytes::NoHello => return Err(HandshakeError::NoHandshake { we: plan.role }),
                FirstBytes::Undecided => {}
                FirstBytes::Hello | FirstBytes::Other => {
                    if let Some(found) = cut_hello(&input.buf)? {
                        break found;
                    }
                }
            }
            input.make_read_room();
            let read = tokio::time::timeout_at(deadline, input.read())
                .await
                .map_err(|_| HandshakeError::Timeout(timeout))?;
            match read {
                Ok(0) | Err(_) => return Err(HandshakeError::Closed),
                Ok(n) => Counters::add(&self.handle.inner.counters.bytes_in, n as u64),
            }
        };
        let frame = input.buf.split_to(taken);
        let frame = &frame[text];
        Counters::add(&self.handle.inner.counters.frames_in, 1);
        let theirs = Hello::decode(frame)?;
        let features = plan.hello.check(&theirs, plan.role)?;
        tracing::debug!(?theirs, "handshake done");
        // Accepted, with variants only one side knows (a rolling upgrade):
        // said at INFO by a client, at DEBUG by a server (one line per
        // connection would flood a server's log during an upgrade).
        for words in plan.hello.one_sided(&theirs, plan.role) {
            let peer = &self.handle.inner.peer;
            match plan.role {
                Role::Client => tracing::info!(%peer, "handshake: {words}"),
                Role::Server => tracing::debug!(%peer, "handshake: {words}"),
            }
        }
        Ok(features)
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
        let mut frame_deadline = crate::conn::frame_deadline::FrameDeadline::default();
        loop {
            if self.is_closing() {
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
            let room = self.input.make_read_room();
            // (`wake` in a block of its own: its room ends with it, and
            // is not kept in the task's future beside the handling below.)
            let n = {
                let wake = tokio::select! {
                    biased;
                    _ = closing(&conn.signal) => Wake::Close,
                    read = self.input.read() => Wake::Read(read),
                    _ = poll_idle(&mut idle) => Wake::Idle,
                };
                match wake {
                    Wake::Close => return Ok(Stop::Close),
                    Wake::Idle => return Err(Error::IdleTimeout(idle_timeout.unwrap_or_default())),
                    Wake::Read(read) => read?,
                }
            };
            if n == 0 {
                // Boxed: once per connection, and no room for it in the
                // task's future.
                Box::pin(self.handle_last_frames()).await?;
                return Ok(Stop::EndOfStream);
            }
            Counters::add(&conn.counters.bytes_in, n as u64);
            if n == room {
                self.input.chunk = (self.input.chunk * 2).min(MAX_READ);
            }
            let frames = self.handle_frames().await?;
            // A frame's deadline runs from its first byte (slow loris; in
            // EOF framing the one frame is the whole stream).
            if frame_deadline.restarts_after_read(self.input.decoder.framing().is_eof(), frames) {
                reset_idle(&mut idle);
            }
        }
    }

    /// Handles the messages read ahead, then every complete frame in the
    /// read buffer (after [`Context::close`], decodes and drops them: the
    /// frame limit holds). Returns how many there were.
    async fn handle_frames(&mut self) -> Result<u64, Error> {
        let mut frames = 0;
        let decoded = self.handle_decoded_frames(&mut frames).await;
        if frames > 0 {
            self.handle.inner.outbox.read_some();
        }
        let input = &mut self.input;
        if input.buf.is_empty() && input.buf.capacity() >= SHRINK_ABOVE {
            // After a large frame: give the memory back and start small.
            input.buf = BytesMut::new();
            input.chunk = MIN_READ;
        } else if input.buf.is_empty() && input.chunk <= MIN_READ {
            // Every byte read was a whole frame, and reads are small (they
            // never filled the buffer): most likely the peer has nothing
            // more to send for now (a heartbeat, a reply). An idle
            // connection holds no read buffer; the next read makes one
            // once bytes have come (see `Input::read`).
            // (Reads that fill the buffer grow `chunk`: a busy connection
            // keeps its buffer.)
            spare::put(std::mem::take(&mut input.buf));
        }
        decoded.map(|()| frames)
    }

    async fn handle_decoded_frames(&mut self, frames: &mut u64) -> Result<(), Error> {
        loop {
            let next = match self.input.next_read_ahead() {
                Some(read_ahead) => Some(read_ahead),
                None => {
                    let Some(found) = self.input.decoder.next_frame(&mut self.input.buf)? else {
                        return Ok(());
                    };
                    Counters::add(&self.handle.inner.counters.frames_in, 1);
                    self.take_found(found)
                }
            };
            *frames += 1;
            if let Some((msg, request)) = next {
                dispatch!(self, msg, request);
            }
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
    }

    /// Takes the frame `found` out of the read buffer: decoded for the
    /// handler, or (after [`Context::close`]) dropped.
    fn take_found(
        &mut self,
        found: crate::wire::frame::Found,
    ) -> Option<(H::Message, Option<u64>)> {
        if self.is_closing() {
            self.input.buf.advance(found.wire);
            return None;
        }
        self.input
            .take_message(found, &self.handle.inner, self.events)
    }

    /// Where a message goes: a request (with an id) on a connection
    /// without a session starts as a task of its own (see
    /// [`crate::conn::inflight`]); anything else is handled by the read
    /// side, in order. After a close, it is dropped.
    fn route(&mut self, request: Option<u64>) -> Route {
        if self.is_closing() {
            if let (Some(id), Some(state)) = (request, self.handle.inner.inflight.get()) {
                state.ended(id);
            }
            return Route::Drop;
        }
        match (request, self.handle.inner.wire.matching()) {
            (Some(id), Matching::Ids) if self.session.is_none() => Route::Task(id),
            (Some(id), Matching::Ids) => Route::InOrderRequest(id),
            _ => Route::InOrder,
        }
    }

    /// Starts request `id` as a task of its own, once a slot is free
    /// (reading ahead while it waits for one), unless it was cancelled
    /// meanwhile, its deadline has passed, or (a peer that takes it) the
    /// overload bounds refuse it. Waits only if it must.
    fn start_request(
        &mut self,
        msg: H::Message,
        id: u64,
    ) -> Option<Pin<Box<impl Future<Output = ()> + use<'_, 's, R, H>>>> {
        match self.try_slots(id) {
            Slots::Got(held) => {
                self.spawn_request(msg, id, held);
                None
            }
            Slots::Refused => None,
            // Boxed: no room for the wait in the task's future.
            Slots::Wait => Some(Box::pin(async move {
                match self.wait_for_slots().await {
                    Some(held) => self.spawn_request(msg, id, held),
                    None => {
                        if let Some(state) = self.handle.inner.inflight.get() {
                            state.ended(id);
                        }
                    }
                }
            })),
        }
    }

    /// Spawns the task of request `id`, which holds `held`.
    fn spawn_request(&mut self, msg: H::Message, id: u64, held: Held) {
        let conn = self.handle.inner.clone();
        let state = conn.inflight.state(conn.wire.concurrent_requests());
        let Some(call) = state.call(id, true) else {
            return state.ended(id);
        };
        if call
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            return refuse(&conn, id, ErrorCode::DeadlineExceeded);
        }
        let running = Running::start(&conn, id);
        let errors = self.input.shared_errors(&conn);
        let mut task = Box::pin(run_request(
            self.handler.clone(),
            self.handle.clone(),
            msg,
            id,
            call,
            (running, held.0, held.1),
            self.events.clone(),
            errors,
        ));
        // Polled once here first: a handler that answers without waiting
        // (most do) costs no task, no wake-up of another worker, and its
        // reply leaves with the others of this read. One that waits goes on
        // as a task of its own, which polls it again at once (so the no-op
        // waker of this first poll loses nothing).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if task.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(task);
        }
    }

    /// The slots request `id` needs (one of the connection's, and one of
    /// the server's in all if it has overload bounds), if free now; past
    /// the bounds, toward a peer that takes it, the request is refused
    /// (`Overloaded`).
    fn try_slots(&mut self, id: u64) -> Slots {
        let conn = &self.handle.inner;
        let state = conn.inflight.state(conn.wire.concurrent_requests());
        let refuses =
            self.config.overload.is_some() && conn.handshake.features() & features::OVERLOAD != 0;
        let in_all = match &self.config.overload_slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) if refuses => {
                    refuse(conn, id, ErrorCode::Overloaded);
                    return Slots::Refused;
                }
                Err(_) => return Slots::Wait,
            },
        };
        match state.try_slot() {
            Some(slot) => Slots::Got((slot, in_all)),
            None if refuses => {
                refuse(conn, id, ErrorCode::Overloaded);
                Slots::Refused
            }
            None => Slots::Wait,
        }
    }

    /// Waits for the slots a request needs, reading ahead meanwhile;
    /// `None` if they can no longer be had.
    async fn wait_for_slots(&mut self) -> Option<Held> {
        let conn = self.handle.inner.clone();
        let ahead_limit = self.config.queue_bytes;
        let in_all = match self.config.overload_slots.clone() {
            None => None,
            Some(slots) => {
                let wait = pin!(slots.acquire_owned());
                let slot = self
                    .input
                    .while_pending(wait, &conn, self.events, ahead_limit)
                    .await;
                Some(slot.ok()?)
            }
        };
        let state = conn.inflight.state(conn.wire.concurrent_requests());
        let wait = pin!(state.slot());
        let slot = self
            .input
            .while_pending(wait, &conn, self.events, ahead_limit)
            .await?;
        Some((slot, in_all))
    }

    /// Hands one message to the handler; its error is reported. While the
    /// call waits, the read side reads ahead (see the module docs).
    #[allow(clippy::manual_async_fn)] // (see the comment in the body)
    fn call_handler(
        &mut self,
        msg: H::Message,
        request: Option<u64>,
    ) -> impl Future<Output = ()> + use<'_, 's, R, H> {
        // Not an `async fn`: it would hold its arguments twice in the
        // connection task's future (as arguments, then as the locals they
        // are moved to).
        async move {
            let mut ctx = Context {
                handle: &self.handle,
                closing: &mut self.closing,
                request,
                session: &mut *self.session,
                answer: AnswerState::default(),
                call: None,
            };
            let handled = {
                let call = pin!(self.handler.handle(msg, &mut ctx));
                let ahead_limit = self.config.queue_bytes;
                self.input
                    .while_pending(call, &self.handle.inner, self.events, ahead_limit)
                    .await
            };
            // Most calls succeed: then there is nothing to answer, and the
            // context goes as a whole (no answer taken out of it and dropped
            // apart, at every frame).
            if handled.is_err() {
                let answer = std::mem::take(&mut ctx.answer);
                self.handled(request, answer, handled);
            }
        }
    }

    /// [`call_handler`](Self::call_handler) for request `id` (on a
    /// connection with a session: in order): not run if it was cancelled
    /// or its deadline has passed; its handler future is dropped if it is
    /// cancelled meanwhile.
    async fn call_request_handler(&mut self, msg: H::Message, id: u64) {
        let conn = self.handle.inner.clone();
        let state = conn.inflight.state(conn.wire.concurrent_requests());
        let Some(call) = state.call(id, false) else {
            return state.ended(id);
        };
        if call
            .deadline
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            return refuse(&conn, id, ErrorCode::DeadlineExceeded);
        }
        let mut ctx = Context {
            handle: &self.handle,
            closing: &mut self.closing,
            request: Some(id),
            session: &mut *self.session,
            answer: AnswerState::default(),
            call: Some(&call),
        };
        let handled = {
            let handle = inflight::with_deadline(call.deadline, self.handler.handle(msg, &mut ctx));
            let call = pin!(async {
                tokio::select! {
                    biased;
                    handled = handle => Some(handled),
                    () = call.token(&conn.inflight).cancelled() => None,
                }
            });
            let ahead_limit = self.config.queue_bytes;
            self.input
                .while_pending(call, &conn, self.events, ahead_limit)
                .await
        };
        let answer = std::mem::take(&mut ctx.answer);
        if answer.handed_off.is_none() {
            // (A replier it was handed to forgets it when it goes.)
            state.ended(id);
        }
        // Cancelled: nobody waits for an answer.
        if let Some(handled) = handled {
            self.handled(Some(id), answer, handled);
        }
    }

    /// After a handler call: an error answers its request (if it is one
    /// still unanswered) and is reported.
    fn handled(
        &mut self,
        request: Option<u64>,
        answer: AnswerState,
        handled: Result<(), BoxError>,
    ) {
        if let Err(error) = handled {
            // A request it failed on is answered with the error.
            answer.failed(&self.handle, request, &error);
            let conn = &self.handle.inner;
            self.input
                .frame_error(conn, self.events, Error::Handler(error));
        }
    }

    /// The peer ended its side: handles what is left in the buffer (in EOF
    /// framing, the one frame).
    async fn handle_last_frames(&mut self) -> Result<(), Error> {
        self.handle_frames().await?;
        while let Some(found) = self.input.decoder.next_frame_eof(&mut self.input.buf)? {
            Counters::add(&self.handle.inner.counters.frames_in, 1);
            if let Some((msg, request)) = self.take_found(found) {
                dispatch!(self, msg, request);
            }
            // What a call read ahead comes first, and the buffer's rest
            // after it.
            self.handle_frames().await?;
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
            self.input.make_read_room();
            // Unconstrained: with the task's coop budget spent, a read would
            // say "not ready" even though bytes are waiting.
            let read = tokio::task::unconstrained(self.input.read()).now_or_never();
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
                Some(Err(error)) => return Err(error),
            }
        }
        Ok(false)
    }
}

impl<R: AsyncRead + Unpin, M: crate::codec::Message> Input<R, M> {
    /// The next message read ahead, if any (counted as it was read). Lets
    /// go of what held them once none is left.
    #[inline]
    fn next_read_ahead(&mut self) -> Option<(M, Option<u64>)> {
        // Checked here, inlined in the read loop: most connections never
        // read ahead, and a call per frame to learn it cost more.
        if self.ahead.is_some() {
            self.take_read_ahead()
        } else {
            None
        }
    }

    /// [`next_read_ahead`](Self::next_read_ahead) once something was read
    /// ahead.
    fn take_read_ahead(&mut self) -> Option<(M, Option<u64>)> {
        let ahead = self.ahead.as_deref_mut()?;
        let Some((msg, request, wire)) = ahead.queue.pop_front() else {
            if ahead.ended.is_none() {
                self.ahead = None;
            }
            return None;
        };
        ahead.bytes -= wire;
        Some((msg, request))
    }

    /// Reads into the buffer; what a read ahead met first, if it met the
    /// end of the stream or an error. Cancel safe.
    async fn read(&mut self) -> Result<usize, Error> {
        if let Some(ended) = self.ahead.as_deref_mut().and_then(|a| a.ended.take()) {
            return ended;
        }
        let read = if self.buf.capacity() == 0 {
            self.read_unbuffered().await
        } else {
            self.stream.read_buf(&mut self.buf).await
        };
        let n = self.end_of_stream_as_zero(read)?;
        self.check_first_bytes()?;
        Ok(n)
    }

    /// Reads into room on the stack (of the poll, not of the task), and
    /// makes the read buffer for what came: a connection without one (idle,
    /// see [`ReadSide::handle_frames`]) waits for its next bytes without
    /// making one (tokio's `read_buf` makes 64 B before it waits). Cancel
    /// safe.
    fn read_unbuffered(&mut self) -> impl Future<Output = std::io::Result<usize>> + '_ {
        std::future::poll_fn(move |cx| {
            let mut room = [std::mem::MaybeUninit::<u8>::uninit(); MIN_READ];
            let mut read = tokio::io::ReadBuf::uninit(&mut room);
            std::task::ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
            let filled = read.filled();
            if !filled.is_empty() {
                if let Some(spare) = spare::take() {
                    self.buf = spare;
                }
                // (As `make_read_room`: a spare with a quarter of a read's
                // room is room enough.)
                if self.buf.capacity() < filled.len().max(self.chunk / 4) {
                    self.buf.reserve(self.chunk.max(filled.len()));
                }
                self.buf.extend_from_slice(filled);
            }
            Poll::Ready(Ok(filled.len()))
        })
    }

    /// On a side with its handshake off, until the first bytes read are
    /// told apart: [`HandshakeError::UnexpectedHello`] if they are a hello
    /// (never handed to the handler as a message).
    fn check_first_bytes(&mut self) -> Result<(), Error> {
        let Some(we) = self.no_hello else {
            return Ok(());
        };
        match first_bytes(&self.buf) {
            FirstBytes::Undecided => Ok(()),
            FirstBytes::Hello => {
                self.no_hello = None;
                // Never cut into frames for the handler (a read ahead
                // while `on_open` waits leaves them for after it).
                self.buf.clear();
                Err(HandshakeError::UnexpectedHello { we }.into())
            }
            FirstBytes::NoHello | FirstBytes::Other => {
                self.no_hello = None;
                Ok(())
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
            self.chunk = MIN_READ;
        }
        if self.buf.capacity() == 0 {
            // The first read, or an idle connection's (see `handle_frames`):
            // no buffer until bytes arrive (`read` then makes one).
            return 0;
        }
        let room = self.buf.capacity() - self.buf.len();
        if room >= self.chunk / 4 {
            return room;
        }
        self.buf.reserve(self.chunk);
        self.buf.capacity() - self.buf.len()
    }

    /// Runs `call` (a handler call) to its end. While it waits, reads
    /// ahead: see [`read_ahead`](Self::read_ahead). A call that does not
    /// wait costs nothing more.
    #[allow(clippy::manual_async_fn)] // (see the comment in the body)
    fn while_pending<'a, F: Future>(
        &'a mut self,
        mut call: Pin<&'a mut F>,
        conn: &'a Shared,
        events: &'a EventSink,
        ahead_limit: usize,
    ) -> impl Future<Output = F::Output> + use<'a, R, M, F> {
        // Not an `async fn`: it would hold its arguments twice (see
        // `call_handler`).
        async move {
            // Most calls do not wait.
            let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            if let Poll::Ready(out) = first {
                return out;
            }
            let mut ahead = self.ahead.take().unwrap_or_else(|| {
                Box::new(Ahead {
                    queue: VecDeque::new(),
                    bytes: 0,
                    ended: None,
                })
            });
            let out = {
                // Boxed: no room for it in the task's future.
                let mut reading = Some(Box::pin(self.read_ahead(
                    &mut ahead,
                    conn,
                    events,
                    ahead_limit,
                )));
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(out) = call.as_mut().poll(cx) {
                        return Poll::Ready(out);
                    }
                    if let Some(reading_ahead) = &mut reading {
                        if reading_ahead.as_mut().poll(cx).is_ready() {
                            reading = None;
                        }
                    }
                    Poll::Pending
                })
                .await
            };
            self.ahead = Some(ahead);
            out
        }
    }

    /// Reads while a handler call waits: replies go to the requests
    /// waiting for them at once (the call may be one of them), other
    /// frames are decoded into `ahead`, in order. Ends (and reading waits
    /// for the call) once `ahead` is full ([`MAX_AHEAD_FRAMES`] frames or
    /// `limit` bytes), or at the end of the stream or an error (kept in
    /// `ahead` for the next read). Pauses, as the read side does, while our
    /// unsent output is over its bound.
    async fn read_ahead(
        &mut self,
        ahead: &mut Ahead<M>,
        conn: &Shared,
        events: &EventSink,
        limit: usize,
    ) {
        while ahead.ended.is_none() {
            std::future::poll_fn(|cx| conn.outbox.poll_reader_room(cx)).await;
            if ahead.is_full(limit) {
                return;
            }
            self.make_read_room();
            let read = self.stream.read_buf(&mut self.buf).await;
            match self.end_of_stream_as_zero(read) {
                Ok(0) => ahead.ended = Some(Ok(0)),
                Ok(n) => Counters::add(&conn.counters.bytes_in, n as u64),
                Err(error) => ahead.ended = Some(Err(error.into())),
            }
            if let Err(error) = self.check_first_bytes() {
                ahead.ended = Some(Err(error));
                return;
            }
            let mut frames = 0;
            while !ahead.is_full(limit) {
                let found = match self.decoder.next_frame(&mut self.buf) {
                    Ok(Some(found)) => found,
                    Ok(None) => break,
                    Err(error) => {
                        // After what came before it, as without a read ahead.
                        ahead.ended.get_or_insert(Err(error));
                        break;
                    }
                };
                frames += 1;
                let wire = found.wire;
                if let Some((msg, request)) = self.take_message(found, conn, events) {
                    ahead.queue.push_back((msg, request, wire));
                    ahead.bytes += wire;
                }
            }
            Counters::add(&conn.counters.frames_in, frames);
            if frames > 0 {
                conn.outbox.read_some();
            }
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
        conn: &Shared,
        events: &EventSink,
    ) -> Option<(M, Option<u64>)> {
        let payload = found.payload();
        let (kind, header) = match conn.wire.open_header(&self.buf[payload.clone()]) {
            Ok(opened) => opened,
            Err(error) => {
                self.buf.advance(found.wire);
                self.frame_error(conn, events, Error::Envelope(error));
                return None;
            }
        };
        let body = payload.start + header..payload.end;
        let request = match kind {
            Envelope::Reply(id) => {
                let waiting = conn.requests.as_deref().and_then(|r| r.take(id));
                let reply = found.split(&mut self.buf, body);
                answer(conn, events, id, waiting, Ok(reply));
                return None;
            }
            Envelope::ErrorReply(id) => {
                let waiting = conn.requests.as_deref().and_then(|r| r.take(id));
                // Never decoded as a reply: the request fails with it.
                let failed = match envelope::decode_error(&self.buf[body]) {
                    Ok((code, text)) => Error::Remote {
                        code,
                        message: text.to_owned(),
                    },
                    Err(error) => Error::Envelope(error),
                };
                self.buf.advance(found.wire);
                answer(conn, events, id, waiting, Err(failed));
                return None;
            }
            Envelope::Message if conn.wire.matching() == Matching::Ordered => {
                if let Some((id, waiting)) = conn.requests.as_deref().and_then(|r| r.take_oldest())
                {
                    let reply = found.split(&mut self.buf, body);
                    answer(conn, events, id, Some(waiting), Ok(reply));
                    return None;
                }
                None
            }
            Envelope::Drain => {
                self.buf.advance(found.wire);
                if let Err(error) = crate::conn::drain::received(&conn.drain_parts(), events) {
                    self.frame_error(conn, events, error);
                }
                return None;
            }
            // After the client's answer to our drain: refused, not run.
            Envelope::Request(id) | Envelope::DeadlineRequest { id, .. }
                if conn.drain.refuses_requests() =>
            {
                self.buf.advance(found.wire);
                conn.fail_request(id, ErrorCode::Draining, crate::conn::drain::REFUSED);
                return None;
            }
            Envelope::Cancel(id) => {
                self.buf.advance(found.wire);
                if conn.inflight.cancel(id) {
                    Counters::add(&conn.counters.requests_cancelled, 1);
                }
                return None;
            }
            Envelope::Request(id) => Some((id, None)),
            Envelope::DeadlineRequest { id, remaining_ms } => {
                let deadline = Instant::now().checked_add(Duration::from_millis(remaining_ms));
                Some((id, deadline))
            }
            Envelope::Message => None,
            Envelope::StreamItem(_) | Envelope::StreamEnd(_) | Envelope::Credit(_) => {
                let body = found.split(&mut self.buf, body);
                let features = conn.handshake.features();
                if let Err(error) =
                    conn.streams
                        .take(features, &conn.outbox, &conn.wire, kind, body)
                {
                    self.frame_error(conn, events, error);
                }
                return None;
            }
        };
        let decoded = if self.copies_out {
            let decoded = conn.wire.decode_slice::<M>(&self.buf[body]);
            self.buf.advance(found.wire);
            decoded
        } else {
            let frame = found.split(&mut self.buf, body);
            conn.wire.decode::<M>(frame)
        };
        match decoded {
            Ok(msg) => {
                let request = request.map(|(id, deadline)| {
                    let state = conn.inflight.state(conn.wire.concurrent_requests());
                    state.arrived(id, deadline);
                    id
                });
                Some((msg, request))
            }
            Err(error) => {
                let unknown = matches!(error, Error::UnknownVariant { .. });
                if unknown {
                    Counters::add(&conn.counters.unknown_variants, 1);
                }
                if let Some((id, _)) = request {
                    // The caller learns at once why, instead of waiting
                    // for its timeout.
                    let text = crate::wire::error::Report(&error).to_string();
                    let code = if unknown {
                        ErrorCode::UnknownVariant
                    } else {
                        ErrorCode::BadRequest
                    };
                    conn.fail_request(id, code, &text);
                }
                self.frame_error(conn, events, error);
                None
            }
        }
    }

    /// Reports a per-frame error (a decode or handler error): logged at
    /// WARN at a bounded rate (see [`FrameErrors`]), and an event.
    fn frame_error(&mut self, conn: &Shared, events: &EventSink, error: Error) {
        let errors = self.shared_errors(conn);
        report_frame_error(&errors, conn, events, error);
    }

    /// The connection's frame errors, made if there are none yet.
    fn shared_errors(&mut self, conn: &Shared) -> SharedErrors {
        self.errors
            .get_or_insert_with(|| Arc::new(Mutex::new(FrameErrors::new(conn.peer.clone()))))
            .clone()
    }
}

/// Reports a per-frame error through `errors` (see [`FrameErrors`]).
fn report_frame_error(errors: &SharedErrors, conn: &Shared, events: &EventSink, error: Error) {
    if let Ok(mut errors) = errors.lock() {
        errors.log(&error);
    }
    events.report_logged(Some(conn.peer.clone()), error);
}

/// One request's task (see [`crate::conn::inflight`]): runs its handler
/// until it returns or the request is cancelled; a handler error answers
/// it with an error reply and is reported, a panic fails the connection.
#[allow(clippy::too_many_arguments)]
async fn run_request<H: Handler>(
    handler: Arc<H>,
    handle: ConnectionHandle,
    msg: H::Message,
    id: u64,
    call: Call,
    held: (
        Running,
        tokio::sync::OwnedSemaphorePermit,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
    events: EventSink,
    errors: SharedErrors,
) {
    let mut closing = false;
    let mut session: Session = None;
    let requests = &handle.inner.inflight;
    let mut ctx = Context {
        handle: &handle,
        closing: &mut closing,
        request: Some(id),
        session: &mut session,
        answer: AnswerState::default(),
        call: Some(&call),
    };
    let handled = {
        let mut run = pin!(std::panic::AssertUnwindSafe(inflight::with_deadline(
            call.deadline,
            handler.handle(msg, &mut ctx),
        ))
        .catch_unwind());
        // The cancellation token is made (and the cancel waited for) only
        // once the handler waits: one that answers at once needs none.
        let mut cancelled = pin!(None);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(handled) = run.as_mut().poll(cx) {
                return Poll::Ready(Some(handled));
            }
            if cancelled.is_none() {
                cancelled.set(Some(call.token(requests).cancelled()));
            }
            match cancelled.as_mut().as_pin_mut() {
                Some(cancelled) => cancelled.poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await
    };
    let answer = std::mem::take(&mut ctx.answer);
    let conn = &handle.inner;
    let (mut running, slot, in_all) = held;
    if answer.handed_off.is_some() {
        running.handed_off();
    }
    match handled {
        // Cancelled: nobody waits for an answer.
        None | Some(Ok(Ok(()))) => {}
        Some(Ok(Err(error))) => {
            answer.failed(&handle, Some(id), &error);
            report_frame_error(&errors, conn, &events, Error::Handler(error));
        }
        Some(Err(panic)) => {
            let message = inflight::panic_message(&*panic);
            conn.fail_request(id, ErrorCode::Handler, "the handler panicked");
            if let Some(state) = conn.inflight.get() {
                state.panicked(message);
            }
            conn.signal.abort();
        }
    }
    if session.is_some() {
        tracing::warn!(
            peer = %conn.peer,
            "a request handled concurrently set a session: it is dropped \
             (set the session in on_open: then requests are handled in order, with it)"
        );
    }
    drop((running, slot, in_all));
}

/// A running request task: ends its count, its entry and the answer it
/// owed when dropped (its handler returned, or was dropped).
struct Running {
    conn: Arc<Shared>,
    id: u64,
    owed: bool,
    /// The request was handed to a replier: its entry (its cancellation)
    /// stays until the replier is gone.
    handed_off: bool,
}

impl Running {
    /// Request `id` starts on `conn`.
    fn start(conn: &Arc<Shared>, id: u64) -> Running {
        if let Some(state) = conn.inflight.get() {
            state.started();
        }
        Running {
            conn: conn.clone(),
            id,
            owed: conn.outbox.owe(),
            handed_off: false,
        }
    }

    /// The request was handed to a replier, which forgets it when it goes.
    fn handed_off(&mut self) {
        self.handed_off = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.owed {
            self.conn.outbox.paid();
        }
        if let Some(state) = self.conn.inflight.get() {
            if !self.handed_off {
                state.ended(self.id);
            }
            state.stopped();
        }
    }
}

/// A request not started: answered at once with an error reply (`code`:
/// `Overloaded` or `DeadlineExceeded`), and counted.
fn refuse(conn: &Shared, id: u64, code: ErrorCode) {
    let (counter, text) = match code {
        ErrorCode::Overloaded => (
            &conn.counters.requests_overloaded,
            "the server handles as many requests as it takes: try again later",
        ),
        _ => (
            &conn.counters.requests_deadline_exceeded,
            "the request's deadline passed before its handler started",
        ),
    };
    Counters::add(counter, 1);
    conn.fail_request(id, code, text);
    if let Some(state) = conn.inflight.get() {
        state.ended(id);
    }
}

/// How often a connection logs its per-frame errors at WARN: the first of
/// a kind at once, then, for the others within this window, a count.
pub(crate) const FRAME_ERROR_WINDOW: Duration = Duration::from_secs(5);

/// The per-frame errors of one connection (decode errors, handler errors),
/// logged at WARN at a bounded rate: the first of a kind at once; the
/// others in the [`FRAME_ERROR_WINDOW`] after it at DEBUG, and counted;
/// the next one after the window logs the count ("37 more decode errors
/// from 127.0.0.1:5000 in the last 5 s") and itself, and starts a new
/// window. The connection's end logs what is still counted.
struct FrameErrors {
    peer: Addr,
    /// Per kind: when its window started, and the errors in it not logged
    /// at WARN.
    windows: [(Option<Instant>, u64); 2],
}

impl FrameErrors {
    const KINDS: [&'static str; 2] = ["decode", "handler"];

    fn new(peer: Addr) -> Self {
        FrameErrors {
            peer,
            windows: [(None, 0); 2],
        }
    }

    fn log(&mut self, error: &Error) {
        let kind = usize::from(matches!(error, Error::Handler(_)));
        let now = Instant::now();
        let peer = &self.peer;
        let text = crate::wire::error::Report(error);
        match self.windows[kind].0 {
            Some(start) if now.duration_since(start) < FRAME_ERROR_WINDOW => {
                self.windows[kind].1 += 1;
                tracing::debug!(%peer, error = %text, "chitchat-net error event");
            }
            _ => {
                self.summarise(kind, now);
                let peer = &self.peer;
                tracing::warn!(%peer, error = %text, "chitchat-net error event");
                self.windows[kind] = (Some(now), 0);
            }
        }
    }

    /// Logs the count of errors of `kind` not logged at WARN, if any.
    fn summarise(&mut self, kind: usize, now: Instant) {
        if let (Some(start), more @ 1..) = self.windows[kind] {
            let secs = now.duration_since(start).as_secs().max(1);
            tracing::warn!(
                peer = %self.peer,
                "{more} more {} errors from {} in the last {secs} s",
                Self::KINDS[kind],
                self.peer
            );
            self.windows[kind].1 = 0;
        }
    }
}

impl Drop for FrameErrors {
    fn drop(&mut self) {
        let now = Instant::now();
        for kind in 0..Self::KINDS.len() {
            self.summarise(kind, now);
        }
    }
}

/// Hands a reply to the request waiting for it; a reply nobody waits for
/// is a [`Error::LateReply`] event.
fn answer(
    conn: &Shared,
    events: &EventSink,
    id: u64,
    waiting: Option<Waiting>,
    reply: Result<Bytes, Error>,
) {
    if let Some(waiting) = waiting {
        if waiting.answer(reply) {
            return;
        }
    } else if conn.streams.answer(id, &reply) {
        // It answered a subscription (with an error reply, most often).
        return;
    }
    Counters::add(&conn.counters.late_replies, 1);
    events.report(Some(conn.peer.clone()), Error::LateReply { id });
}

/// One read buffer let go by a connection gone idle (see
/// `ReadSide::handle_frames`), per thread, for the next read on that thread
/// that needs one: a connection idle between each of its frames (a
/// ping-pong) then makes no allocation per read, and idle connections hold
/// no buffer (one per thread at the most).
mod spare {
    use std::cell::Cell;

    use bytes::BytesMut;

    thread_local! {
        static SPARE: Cell<Option<BytesMut>> = const { Cell::new(None) };
    }

    /// Keeps `buf` (empty) as the thread's spare, in place of the one
    /// before, if any.
    pub(super) fn put(buf: BytesMut) {
        // (`try_with`: not during the thread's end.)
        let _ = SPARE.try_with(|spare| spare.replace(Some(buf)));
    }

    /// The thread's spare buffer, if it has one.
    pub(super) fn take() -> Option<BytesMut> {
        SPARE.try_with(Cell::take).ok().flatten()
    }
}

/// How the read side served, and whether its end waits for something: a
/// hello to refuse, or (served to the end) requests still running.
fn waits_after(
    served: Result<CloseReason, Error>,
    conn: &Shared,
) -> (Result<CloseReason, Error>, bool) {
    let waits = match &served {
        Err(Error::Handshake(HandshakeError::UnexpectedHello { .. })) => true,
        Ok(_) => conn.inflight.get().is_some(),
        Err(_) => false,
    };
    (served, waits)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;
    use tokio::io::AsyncWriteExt;

    use super::{ReadSide, MIN_READ};
    use crate::conn::handle::ConnectionHandle;

    /// A connection idle between frames (a heartbeat link between checks)
    /// holds no read buffer: once a read's frames are handled, an empty
    /// buffer of small reads is let go (it held 512 B per connection). A
    /// connection whose reads fill the buffer keeps it (no allocation per
    /// read on a busy one).
    #[tokio::test]
    async fn an_idle_connection_holds_no_read_buffer() {
        let (stream, mut peer) = tokio::io::duplex(4096);
        let (events, _) =
            crate::conn::events::event_channel(1, Default::default(), Default::default());
        let (read_half, _write_half) = tokio::io::split(stream);
        let (mut session, mut opened) = (None, false);
        let mut side = ReadSide::new(
            read_half,
            ConnectionHandle::for_tests(),
            Arc::new(()),
            Default::default(),
            &events,
            &mut session,
            &mut opened,
        );
        for frame in [&b"first\n"[..], b"second\n"] {
            peer.write_all(frame).await.unwrap();
            side.input.make_read_room();
            // The bytes are there: the read does not wait.
            assert_eq!(side.input.read().await.unwrap(), frame.len());
            assert!(side.input.buf.capacity() > 0);
            assert_eq!(side.handle_frames().await.unwrap(), 1);
            assert_eq!(
                side.input.buf.capacity(),
                0,
                "an idle connection holds a read buffer"
            );
            // Waiting for the next bytes makes none either.
            side.input.make_read_room();
            assert!(side.input.read().now_or_never().is_none());
            assert_eq!(
                side.input.buf.capacity(),
                0,
                "waiting for bytes made a read buffer"
            );
        }
        // Reads that filled the buffer made it grow: it is kept.
        side.input.chunk = 2 * MIN_READ;
        peer.write_all(b"busy\n").await.unwrap();
        side.input.make_read_room();
        assert_eq!(side.input.read().await.unwrap(), 5);
        assert_eq!(side.handle_frames().await.unwrap(), 1);
        assert!(
            side.input.buf.capacity() > 0,
            "a busy connection let go of its read buffer"
        );
        // Half a frame is kept too, until the rest comes.
        side.input.chunk = MIN_READ;
        peer.write_all(b"half").await.unwrap();
        side.input.make_read_room();
        assert_eq!(side.input.read().await.unwrap(), 4);
        assert_eq!(side.handle_frames().await.unwrap(), 0);
        assert_eq!(&side.input.buf[..], b"half");
    }
}
