//! What users write: a [`Handler`] gets each decoded message and a [`Context`].

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::base::addr::Addr;
use crate::base::close::CloseReason;
use crate::codec::Message;
use crate::conn::handle::{ConnectionHandle, ConnectionId};
use crate::conn::inflight::Call;
use crate::conn::op_error::{SendError, TrySendError};
use crate::conn::outbox::PushError;
use crate::wire::envelope::{Envelope, ErrorCode};
use crate::wire::error::{BoxError, Error};

/// Handles the messages of a connection: the Go original's `readfunc`.
///
/// Each frame is decoded into [`Handler::Message`] with that type's codec (or
/// the server's or client's override) and handed to [`handle`](Handler::handle).
/// A connection's one-way messages reach it one at a time, in order; its
/// requests (frames with a request id) run concurrently, each as a task of
/// its own, up to [`concurrent_requests`](crate::Options::concurrent_requests)
/// at once (in order, one at a time, on a connection with a
/// [session](Context::set_session)); connections run concurrently. See
/// README "Conversations" for the order a handler can rely on. One handler value serves every connection, so it is also the
/// shared state the Go original passed as `additional` / `Addon()`: keep
/// counters in atomics and maps behind a `Mutex`.
///
/// An error returned by `handle`, or a frame that fails to decode, becomes an
/// error event naming the peer, and the connection stays open. If the frame
/// was a request (request ids on both ends) that is still unanswered, it is
/// also answered with an error reply ([`ErrorCode::Handler`] with the
/// error's text, or [`ErrorCode::BadRequest`] for a frame that did not
/// decode), so that the peer's request fails at once with
/// [`RequestError::Remote`](crate::RequestError::Remote) instead of at its
/// timeout.
///
/// # Examples
///
/// ```
/// use chitchat_net::{BoxError, Context, Handler};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// /// Answers every line with its length; counts lines across connections.
/// #[derive(Default)]
/// struct Lengths { lines: AtomicU64 }
///
/// impl Handler for Lengths {
///     type Message = String;
///
///     async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         self.lines.fetch_add(1, Ordering::Relaxed);
///         ctx.send(&line.len().to_string())?;
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a chitchat-net handler",
    label = "implement `chitchat_net::Handler` for `{Self}`",
    note = "implement `Handler` by hand, derive it with `#[derive(Handler)] #[handler(message = YourMessage)]`, or wrap a closure with `handler_fn`"
)]
pub trait Handler: Send + Sync + 'static {
    /// The type each frame is decoded into.
    type Message: Message;

    /// Handles one message. Replies sent with [`Context::send`] are queued
    /// at once and written by the connection's write side, which goes on
    /// while this call runs or waits: a handler may await anything,
    /// including a send to another connection or to its own.
    ///
    /// While a call handled in order (a one-way message) waits, the
    /// connection goes on reading: replies reach the requests waiting for
    /// them at once, so a handler may await a
    /// [request](ConnectionHandle::request) on its own connection; other
    /// frames are decoded and kept (at most 1,024 frames and the queue
    /// bound in bytes) and handled, in order, after this call (a request
    /// among them starts at once). If the connection is cut meanwhile, this
    /// call's future is dropped before [`on_close`](Self::on_close) runs;
    /// so is a request's whose caller cancels it (see
    /// [`Context::cancelled`]).
    fn handle(
        &self,
        msg: Self::Message,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Called when a connection opens, before its first frame. An error is
    /// reported as an event and closes the connection.
    ///
    /// `on_open` and [`on_close`](Self::on_close) come in pairs: every
    /// connection whose `on_open` was called (even one that failed or was
    /// cut while it ran) gets exactly one `on_close`, and a connection that
    /// ended before `on_open` was called (a failed handshake, a cut or a
    /// drop right after the connect, a failed `on_connect` hook) gets
    /// neither.
    fn on_open(&self, ctx: &mut Context<'_>) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Called once a connection whose [`on_open`](Self::on_open) was called
    /// has ended, whatever the reason: `closed`
    /// says who the peer was, how the connection ended, and holds its
    /// [session](Context::set_session), if it had one. By then the
    /// connection's socket is closed and no call of [`handle`](Self::handle)
    /// is pending (a call still pending when the connection was cut has
    /// been dropped), so `on_close` may take any lock a handler takes.
    fn on_close(&self, closed: Closed) -> impl Future<Output = ()> + Send {
        let _ = closed;
        async {}
    }
}

/// The write-only handler: frames from the peer are read and dropped (the Go
/// original's nil `readfunc`).
impl Handler for () {
    type Message = Bytes;

    fn handle(
        &self,
        _msg: Bytes,
        _ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        // Ready at once, holding nothing: an `async fn` would keep the
        // message (twice) in every connection task's future.
        std::future::ready(Ok(()))
    }
}

/// What a handler can do on its connection while handling a frame.
///
/// Replies go into the connection's outgoing queue, where the write side
/// takes them: a burst of replies goes out in one write, and a lone reply at
/// once. A reply never waits: the queue's bound does not refuse it. Instead,
/// while the connection's unsent output is over twice its bound
/// ([`queue_bytes`](crate::ServerBuilder::queue_bytes)), no further frame
/// reaches the handler, so a peer that does not read what it is sent stops
/// being read (backpressure), and what it makes us hold stays bounded.
#[derive(Debug)]
pub struct Context<'a> {
    pub(crate) handle: &'a ConnectionHandle,
    pub(crate) closing: &'a mut bool,
    /// The id of the request being handled, if the frame is one (with
    /// request ids on).
    pub(crate) request: Option<u64>,
    /// This connection's own state.
    pub(crate) session: &'a mut Session,
    /// What became of the request being handled: answered, or handed to a
    /// replier (see [`Context::answer`]).
    pub(crate) answer: AnswerState,
    /// The request's deadline and cancellation (a request with an id).
    pub(crate) call: Option<&'a Call>,
}

/// What became of the request a handler call handles.
#[derive(Debug, Default)]
pub(crate) struct AnswerState {
    /// A reply to it was queued.
    pub(crate) answered: bool,
    /// It was handed to this replier (a clone of the one the handler took).
    pub(crate) handed_off: Option<Replier>,
}

impl AnswerState {
    /// The handler call failed with `error`: a request still unanswered
    /// fails with an error reply (through the replier it was handed to, if
    /// any), so that its caller learns why at once.
    pub(crate) fn failed(self, handle: &ConnectionHandle, request: Option<u64>, error: &BoxError) {
        let Some(id) = request else { return };
        if self.answered {
            return;
        }
        let text = crate::wire::error::Report(&**error).to_string();
        match self.handed_off {
            Some(replier) => replier.fail(&text),
            None => handle.inner.fail_request(id, ErrorCode::Handler, &text),
        }
    }
}

/// A connection's own state, kept by its read side between frames.
pub(crate) type Session = Option<Box<dyn Any + Send>>;

/// How a connection ended, for [`Handler::on_close`].
#[derive(Debug)]
pub struct Closed {
    pub(crate) peer: Addr,
    pub(crate) id: ConnectionId,
    pub(crate) reason: CloseReason,
    pub(crate) session: Session,
}

impl Closed {
    /// The peer's address.
    pub fn peer_addr(&self) -> &Addr {
        &self.peer
    }

    /// The connection's id.
    pub fn connection_id(&self) -> ConnectionId {
        self.id
    }

    /// How the connection ended (the error that ended a
    /// [`Failed`](CloseReason::Failed) one went to the error events).
    pub fn reason(&self) -> CloseReason {
        self.reason
    }

    /// Takes the connection's session, if it was set and is an `S`.
    pub fn take_session<S: Any + Send>(&mut self) -> Option<S> {
        match self.session.take()?.downcast::<S>() {
            Ok(session) => Some(*session),
            Err(other) => {
                self.session = Some(other);
                None
            }
        }
    }
}

impl Context<'_> {
    /// The peer's address.
    pub fn peer_addr(&self) -> Addr {
        self.handle.inner.peer.clone()
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.handle.inner.local.clone()
    }

    /// This connection's id.
    pub fn connection_id(&self) -> ConnectionId {
        self.handle.inner.id
    }

    /// Sends a typed message back on this connection, framed and encoded
    /// with `M`'s codec (or the connection's override for `M`).
    ///
    /// # Errors
    ///
    /// Encode errors, [`Error::DelimiterInPayload`] in raw framing,
    /// [`Error::FrameTooLong`]. Nothing is sent then.
    pub fn send<M: Message>(&mut self, msg: &M) -> Result<(), Error> {
        let inner = &*self.handle.inner;
        inner.outbox.push_reply(|buf| inner.wire.encode(msg, buf))?;
        Ok(())
    }

    /// Answers the request being handled with `reply`, typed with the
    /// reply's own codec: with request ids on, the reply carries the
    /// request's id, so the peer's [`request`](crate::Client::request)
    /// gets it whatever the order of replies; otherwise (a peer in ordered
    /// mode, or a one-way message) it is sent like [`send`](Self::send).
    /// To answer later from another task, take a [`Replier`] with
    /// [`replier`](Self::replier).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let lengths = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     ctx.reply(&line.len().to_string())?;
    ///     Ok(())
    /// });
    /// let server = Server::builder(lengths).request_ids().listen("127.0.0.1:0").await?;
    /// let client = Client::<String>::builder().request_ids().connect(server.local_addr()).await?;
    /// let len: String = client.request(&"hello".to_string()).await?;
    /// assert_eq!(len, "5");
    /// # client.close().await;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub fn reply<R: Message>(&mut self, reply: &R) -> Result<(), Error> {
        let inner = &*self.handle.inner;
        let kind = match self.request {
            Some(id) => Envelope::Reply(id),
            None => Envelope::Message,
        };
        inner
            .outbox
            .push_reply(|buf| inner.wire.encode_as(kind, reply, buf))?;
        self.answer.answered = true;
        Ok(())
    }

    /// Answers the request being handled with `result`: `Ok` as
    /// [`reply`](Self::reply) does; `Err` is returned, and the handler
    /// call that returns it answers the request with an error reply (see
    /// [`Handler::handle`]). This is what the handlers the `Message`
    /// derive generates for a request type (`#[message(reply = R)]`) do
    /// with what their methods return.
    ///
    /// A frame that is not a request: with request ids on, a one-way frame
    /// (sent with `send`), whose reply nobody waits for: `Ok` is dropped.
    /// Without request ids, where a peer in ordered mode takes the next
    /// frame as the answer, `Ok` is sent like [`send`](Self::send).
    ///
    /// # Errors
    ///
    /// `result`'s error, or as [`send`](Self::send) (as a [`BoxError`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{BoxError, Context, Handler};
    ///
    /// /// Parses each line as a number and answers with its double; a line
    /// /// that is no number fails the request, and the caller gets
    /// /// `RequestError::Remote` with the parse error's text.
    /// struct Doubler;
    ///
    /// impl Handler for Doubler {
    ///     type Message = String;
    ///
    ///     async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
    ///         let doubled = line.trim().parse::<i64>().map(|n| (2 * n).to_string());
    ///         ctx.answer(doubled.map_err(BoxError::from))
    ///     }
    /// }
    /// ```
    pub fn answer<R: Message>(&mut self, result: Result<R, BoxError>) -> Result<(), BoxError> {
        let reply = result?;
        if self.request.is_some() || !self.handle.inner.wire.has_envelope() {
            self.reply(&reply)?;
        }
        Ok(())
    }

    /// This connection's session (its own state, kept between frames), if
    /// one was set and is an `S`. Set it in `on_open`; it ends with the
    /// connection, and [`Handler::on_close`] gets it back.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{BoxError, Closed, Context, Handler};
    ///
    /// /// Greets each peer by the name it gave in its first line.
    /// struct Greeter;
    ///
    /// struct Session {
    ///     name: Option<String>,
    ///     lines: u64,
    /// }
    ///
    /// impl Handler for Greeter {
    ///     type Message = String;
    ///
    ///     async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
    ///         ctx.set_session(Session { name: None, lines: 0 });
    ///         Ok(())
    ///     }
    ///
    ///     async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
    ///         let session = ctx.session::<Session>().ok_or("no session")?;
    ///         session.lines += 1;
    ///         let name = session.name.get_or_insert(line).clone();
    ///         ctx.send(&format!("hello {name}"))?;
    ///         Ok(())
    ///     }
    ///
    ///     async fn on_close(&self, mut closed: Closed) {
    ///         if let Some(session) = closed.take_session::<Session>() {
    ///             tracing::info!(lines = session.lines, reason = ?closed.reason(), "bye");
    ///         }
    ///     }
    /// }
    /// ```
    pub fn session<S: Any + Send>(&mut self) -> Option<&mut S> {
        self.session.as_mut()?.downcast_mut()
    }

    /// Sets this connection's session, replacing any.
    pub fn set_session<S: Any + Send>(&mut self, session: S) {
        *self.session = Some(Box::new(session));
    }

    /// This connection's session, made with `S::default()` if there is
    /// none yet (or it is of another type).
    pub fn session_or_default<S: Any + Send + Default>(&mut self) -> &mut S {
        if !self.session.as_ref().is_some_and(|s| s.is::<S>()) {
            *self.session = Some(Box::new(S::default()));
        }
        match self.session.as_mut().and_then(|s| s.downcast_mut()) {
            Some(session) => session,
            None => unreachable!("the session was just set to an S"),
        }
    }

    /// The request id of the frame being handled, if it is a request (with
    /// request ids on).
    pub fn request_id(&self) -> Option<u64> {
        self.request
    }

    /// A handle that answers the request being handled later, from any
    /// task (for a handler that hands the work to another task and
    /// returns). Replies sent through it may come in any order with
    /// request ids; in ordered mode they must keep the order of the
    /// requests.
    ///
    /// The request counts as unanswered until the replier (or one of its
    /// clones) answers, or until every clone is dropped: a server's
    /// graceful [`shutdown`](crate::Server::shutdown) waits for it within
    /// its deadline (see [`Replier`]). A replier dropped without answering
    /// answers with an error reply ([`ErrorCode::Unanswered`]; request ids
    /// on): the caller fails at once instead of at its timeout. If the
    /// handler call returns an error while the request is still
    /// unanswered, the replier answers with that error.
    pub fn replier(&mut self) -> Replier {
        let owed = self.handle.inner.outbox.owe();
        let replier = Replier {
            owed: Arc::new(Owed {
                handle: self.handle.clone(),
                owed: AtomicBool::new(owed),
                request: self.request,
                answered: AtomicBool::new(self.answer.answered),
            }),
            request: self.request,
            cancel: self
                .call
                .map(|call| call.token(&self.handle.inner.inflight).clone()),
        };
        if self.request.is_some() {
            self.answer.handed_off = Some(replier.clone());
        }
        replier
    }

    /// Sends one frame of raw bytes back on this connection.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_bytes(&mut self, payload: impl AsRef<[u8]>) -> Result<(), Error> {
        let inner = &*self.handle.inner;
        let payload = payload.as_ref();
        inner
            .outbox
            .push_reply(|buf| inner.wire.encode_bytes(payload, buf))?;
        Ok(())
    }

    /// Closes this connection once the replies sent so far are flushed. No
    /// further frame of this connection reaches the handler.
    pub fn close(&mut self) {
        *self.closing = true;
        if self.call.is_some_and(|call| call.concurrent) {
            // From a request task: the read side learns it at its next frame.
            if let Some(state) = self.handle.inner.inflight.get() {
                state.ask_close();
            }
            self.handle.inner.signal.close();
        }
    }

    /// When the caller of the request being handled stops waiting for its
    /// answer, if it said (a peer that announces
    /// [`DEADLINES`](crate::handshake::features::DEADLINES) sends the time
    /// it still waits with each request; `None` for other peers and for
    /// one-way messages). Requests the handler makes meanwhile inherit it:
    /// see README "Deadlines and cancellation".
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.call.and_then(|call| call.deadline)
    }

    /// Completes once the request being handled is cancelled: its caller
    /// gave it up (a peer that announces
    /// [`CANCELLATION`](crate::handshake::features::CANCELLATION) says so)
    /// or the connection ended. By then the handler future is being
    /// dropped; it is for work the handler started elsewhere (see
    /// [`cancellation_token`](Self::cancellation_token)). Never completes
    /// for a one-way message.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.cancellation_token().cancelled_owned()
    }

    /// Whether the request being handled has been cancelled (see
    /// [`cancelled`](Self::cancelled)).
    pub fn is_cancelled(&self) -> bool {
        self.call
            .is_some_and(|call| call.is_cancelled(&self.handle.inner.inflight))
    }

    /// A token that fires when the request being handled is cancelled
    /// (see [`cancelled`](Self::cancelled)): hand it to work spawned for
    /// the request, so that it stops too. One that never fires for a
    /// one-way message.
    pub fn cancellation_token(&self) -> tokio_util::sync::CancellationToken {
        match self.call {
            Some(call) => call.token(&self.handle.inner.inflight).clone(),
            None => tokio_util::sync::CancellationToken::new(),
        }
    }

    /// A handle to send on this connection from another task later.
    pub fn handle(&self) -> ConnectionHandle {
        self.handle.clone()
    }
}

/// Answers one request later, from any task: made by
/// [`Context::replier`]. It remembers which request it answers.
///
/// Until it answers (or it and all its clones are dropped), its request
/// is *owed* an answer, and a server's graceful
/// [`shutdown`](crate::Server::shutdown) keeps the connection open for it,
/// within the shutdown's deadline: an answer to a request that arrived
/// before the shutdown is still sent, even while the connection is closing
/// (then whatever the queue's bound). A request still owed at the deadline
/// is cut with its connection and counted in the shutdown's report
/// ([`ShutdownReport::unanswered_requests`](crate::ShutdownReport::unanswered_requests)).
/// Dropping a replier (and all its clones) without answering releases its
/// request: with request ids on, it is answered with an error reply
/// ([`ErrorCode::Unanswered`]), so the caller's request fails at once with
/// [`RequestError::Remote`](crate::RequestError::Remote) instead of at its
/// timeout. (Without request ids nothing can be sent: a peer in ordered
/// mode times out. A request read while its connection was already
/// closing is owed nothing: its `reply` fails with [`SendError::Closed`],
/// dropping its replier sends nothing either, and the caller's request
/// ends with the connection.)
///
/// # Examples
///
/// ```
/// use chitchat_net::{BoxError, Context, Handler};
///
/// /// Answers each request from a task of its own: replies may go out in
/// /// any order, and request ids match them.
/// struct Slow;
///
/// impl Handler for Slow {
///     type Message = String;
///
///     async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         let replier = ctx.replier();
///         tokio::spawn(async move {
///             tokio::time::sleep(std::time::Duration::from_millis(line.len() as u64)).await;
///             let _ = replier.reply(&line.to_uppercase()).await;
///         });
///         Ok(())
///     }
/// }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a request is answered only when `reply` is called"]
pub struct Replier {
    /// Shared by the clones: the request is answered once.
    owed: Arc<Owed>,
    request: Option<u64>,
    /// Fires when the request is cancelled.
    cancel: Option<tokio_util::sync::CancellationToken>,
}

/// The answer a replier and its clones owe (see [`Replier`]).
#[derive(Debug)]
struct Owed {
    handle: ConnectionHandle,
    /// Registered with the outbox and not yet paid.
    owed: AtomicBool,
    /// The request it answers (with request ids on).
    request: Option<u64>,
    /// An answer (a reply or an error reply) was queued.
    answered: AtomicBool,
}

impl Owed {
    /// Whether the answer is still owed.
    fn is_owed(&self) -> bool {
        self.owed.load(Ordering::Acquire)
    }

    /// The answer was queued (or will never be): tells the outbox, once.
    fn pay(&self) {
        if self.owed.swap(false, Ordering::AcqRel) {
            self.handle.inner.outbox.paid();
        }
    }
}

impl Drop for Owed {
    /// The last clone is gone: nothing waits for this answer any more. A
    /// request still unanswered gets an error reply.
    fn drop(&mut self) {
        if let Some(id) = self.request {
            // Its cancellation is no longer watched.
            if let Some(state) = self.handle.inner.inflight.get() {
                state.ended(id);
            }
            // Only an answer still owed: one made while its connection was
            // already closing was never owed, and is refused as its reply
            // would have been (`reply` fails with `Closed` then); the
            // caller sees the connection end. (Sent anyway, it was a frame
            // nobody accepted, written while the reply was refused.)
            if !self.answered.swap(true, Ordering::AcqRel) && self.is_owed() {
                self.handle.inner.fail_owed_request(
                    id,
                    ErrorCode::Unanswered,
                    "the request was handed to a Replier that was dropped without answering",
                );
            }
        }
        self.pay();
    }
}

impl Replier {
    /// Sends the reply, waiting while the connection's outgoing queue is
    /// full. The first reply of a replier (or of any of its clones) is its
    /// answer: taken while the connection is open, and while a server's
    /// graceful [`shutdown`](crate::Server::shutdown) waits for it.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the connection is closing or has ended
    /// (for the answer: once it has been cut, or closed other than by a
    /// server's shutdown and its queue written);
    /// [`SendError::Unsendable`] for encode and framing errors (the answer
    /// is still owed then).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the reply is queued whole or not at all (and is still
    /// owed if not).
    pub async fn reply<R: Message>(&self, reply: &R) -> Result<(), SendError> {
        let owed = &*self.owed;
        let inner = &*owed.handle.inner;
        let kind = self.kind();
        let write = |buf: &mut _| inner.wire.encode_as(kind, reply, buf);
        let pushed = if owed.is_owed() {
            inner.outbox.push_answer(write).await
        } else {
            inner.outbox.push(write).await
        };
        self.paid_if(&pushed);
        let frames = u64::from(pushed.is_ok());
        owed.handle
            .sent(pushed, frames)
            .map_err(SendError::from_error)
    }

    /// Answers the request with an error reply ([`ErrorCode::Handler`],
    /// `message` cut to 1 KiB), unless it was answered already: the
    /// caller's request fails with
    /// [`RequestError::Remote`](crate::RequestError::Remote). Queued
    /// whatever the bound, as a handler's replies are. Needs request ids
    /// on both ends; without them nothing is sent.
    pub fn fail(&self, message: &str) {
        let owed = &*self.owed;
        if let Some(id) = self.request {
            if !owed.answered.swap(true, Ordering::AcqRel) {
                owed.handle
                    .inner
                    .fail_request(id, ErrorCode::Handler, message);
            }
        }
        owed.pay();
    }

    /// Sends the reply if the outgoing queue has room now (for the answer,
    /// as [`reply`](Self::reply) takes it).
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`], or as [`reply`](Self::reply).
    pub fn try_reply<R: Message>(&self, reply: &R) -> Result<(), TrySendError> {
        let owed = &*self.owed;
        let inner = &*owed.handle.inner;
        let kind = self.kind();
        let write = |buf: &mut _| inner.wire.encode_as(kind, reply, buf);
        let pushed = if owed.is_owed() {
            inner.outbox.try_push_answer(write)
        } else {
            inner.outbox.try_push(write)
        };
        self.paid_if(&pushed);
        owed.handle.tried(pushed)
    }

    /// The answer is paid once queued, or once it can never be (closed).
    fn paid_if(&self, pushed: &Result<(), PushError<Error>>) {
        if pushed.is_ok() {
            self.owed.answered.store(true, Ordering::Release);
        }
        if matches!(pushed, Ok(()) | Err(PushError::Closed)) {
            self.owed.pay();
        }
    }

    /// The id of the request it answers (with request ids on).
    pub fn request_id(&self) -> Option<u64> {
        self.request
    }

    /// Completes once its request is cancelled: the caller gave it up (a
    /// peer that announces
    /// [`CANCELLATION`](crate::handshake::features::CANCELLATION) says so)
    /// or the connection ended. The answer is then no longer awaited (one
    /// sent anyway is a late reply at the caller). Never completes for a
    /// one-way message.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.cancel.clone().unwrap_or_default().cancelled_owned()
    }

    /// Whether its request has been cancelled (see
    /// [`cancelled`](Self::cancelled)).
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(tokio_util::sync::CancellationToken::is_cancelled)
    }

    fn kind(&self) -> Envelope {
        match self.request {
            Some(id) => Envelope::Reply(id),
            None => Envelope::Message,
        }
    }
}

/// A handler made of a synchronous closure, for handlers that need no
/// `.await`.
///
/// # Examples
///
/// ```
/// use chitchat_net::{handler_fn, BoxError, Context};
///
/// let echo = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
///     ctx.send(&line)?;
///     Ok(())
/// });
/// # let _ = echo;
/// ```
pub fn handler_fn<M, F>(f: F) -> HandlerFn<M, F>
where
    M: Message,
    F: Fn(M, &mut Context<'_>) -> Result<(), BoxError> + Send + Sync + 'static,
{
    HandlerFn {
        f,
        _message: PhantomData,
    }
}

/// A closure handler made by [`handler_fn`].
pub struct HandlerFn<M, F> {
    f: F,
    _message: PhantomData<fn() -> M>,
}

impl<M, F> std::fmt::Debug for HandlerFn<M, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

impl<M, F> Handler for HandlerFn<M, F>
where
    M: Message,
    F: Fn(M, &mut Context<'_>) -> Result<(), BoxError> + Send + Sync + 'static,
{
    type Message = M;

    fn handle(
        &self,
        msg: M,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        std::future::ready((self.f)(msg, ctx))
    }
}

/// Routes a message to the method of `H` that handles it.
///
/// The `Message` derive implements it for each message type against the
/// handler trait it generates (`BeatHandler` for `Beat`: one method per enum
/// variant, or one for a struct), and the `Handler` derive calls it. You do
/// not normally implement it yourself.
pub trait Dispatch<H: ?Sized>: Message {
    /// Hands `self` to the right method of `handler`.
    fn dispatch(
        self,
        handler: &H,
        ctx: &mut Context<'_>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}
