//! A cloneable handle on one connection, usable from any task.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};

use crate::base::addr::Addr;
use crate::base::close::CloseReason;
use crate::base::stats::Counters;
use crate::codec::{Message, Request};
use crate::conn::events::EventSink;
use crate::conn::op_error::{RequestError, SendError, TrySendError};
use crate::conn::outbox::{Frames, Outbox, PushError, Tally};
use crate::conn::requests::{Keep, Requests, Waiting};
use crate::conn::signal::Signal;
use crate::conn::streams::StreamsSlot;
use crate::conn::wire::Matching;
use crate::conn::wire::{Encoded, Wire};
use crate::wire::envelope::{Envelope, ErrorCode};
use crate::wire::error::Error;
use crate::wire::hello::features;

/// A connection's number: unique among every connection of the process
/// (servers' and clients'), never reused.
///
/// A server keeps its connections by id, so that a peer that reconnects
/// from the same address while its old connection is still ending is a
/// different connection: the old one's end never removes the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(u64);

impl ConnectionId {
    /// The next unused id.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The number itself.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A connection's end, once known, and the tasks waiting for it.
#[derive(Debug, Default)]
pub(crate) struct End {
    /// 0 while open, else `CloseReason as u8 + 1`.
    reason: std::sync::atomic::AtomicU8,
    waiters: tokio::sync::Notify,
}

impl End {
    const REASONS: [CloseReason; 4] = [
        CloseReason::ByPeer,
        CloseReason::ByUs,
        CloseReason::Aborted,
        CloseReason::Failed,
    ];

    /// Records how the connection ended and wakes everyone waiting.
    pub(crate) fn set(&self, reason: CloseReason) {
        let code = Self::REASONS.iter().position(|r| *r == reason).unwrap_or(3) as u8 + 1;
        self.reason.store(code, Ordering::Release);
        self.waiters.notify_waiters();
    }

    /// How the connection ended, if it has.
    pub(crate) fn get(&self) -> Option<CloseReason> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            code => Self::REASONS.get(usize::from(code) - 1).copied(),
        }
    }

    /// Waits until the connection has ended.
    pub(crate) async fn wait(&self) -> CloseReason {
        loop {
            let notified = self.waiters.notified();
            tokio::pin!(notified);
            // Registered before the check: a `set` in between still wakes us.
            notified.as_mut().enable();
            if let Some(reason) = self.get() {
                return reason;
            }
            notified.await;
        }
    }
}

/// The deadline of a request made now with `timeout`, and the timeout it
/// amounts to: made from a handler whose request has a deadline, no later
/// than that one (the remaining time is passed on).
pub(crate) fn effective_deadline(timeout: Duration) -> (Instant, Duration) {
    let now = Instant::now();
    let own = now + timeout;
    match crate::conn::inflight::inherited_deadline() {
        Some(inherited) if inherited < own => (inherited, inherited.saturating_duration_since(now)),
        _ => (own, timeout),
    }
}

/// Counts what becomes of a queue's frames in `counters`.
fn tally(counters: Arc<Counters>) -> Tally {
    Tally::new(move |frames| match frames {
        Frames::Written(n) => Counters::add(&counters.frames_out, n),
        Frames::Lost(n) => Counters::add(&counters.frames_lost_with_connection, n),
    })
}

/// How a request failed: before its frame was queued (nothing sent), or
/// after.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Nothing was sent: the connection was closing or had ended, or the
    /// frame could not be encoded.
    NotSent(RequestError),
    /// Sent (or it may have been), or given up.
    Failed(RequestError),
}

impl Attempt {
    pub(crate) fn into_error(self) -> RequestError {
        match self {
            Attempt::NotSent(error) | Attempt::Failed(error) => error,
        }
    }
}

/// Forgets a request by id when its caller stops waiting; a request still
/// waiting for its reply is cancelled at the peer if it takes cancels
/// ([`features::CANCELLATION`]).
struct Forget<'a> {
    requests: &'a Requests,
    id: u64,
    /// The connection, if its peer takes cancels.
    cancel: Option<&'a Shared>,
}

impl Forget<'_> {
    /// Cancels the request at the peer, if it takes cancels.
    fn cancel_at_peer(&self) {
        // Not once the connection can send nothing more (nor counted
        // lost then: nobody accepted it for sending).
        if let Some(conn) = self.cancel.filter(|conn| conn.outbox.takes_replies()) {
            let id = self.id;
            let queued = conn
                .outbox
                .push_reply(|buf| conn.wire.encode_cancel(id, buf));
            if let Err(error) = queued {
                tracing::debug!(%error, id, "a cancel could not be queued");
            }
        }
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.requests.forget(self.id) {
            self.cancel_at_peer();
        }
    }
}

/// What the deadline keeper answers a request whose deadline has passed
/// with (its caller fails with [`RequestError::Timeout`]).
const EXPIRED: Error = Error::RequestTimeout(Duration::ZERO);

/// A connection's deadline keeper (see [`crate::conn::requests`]): fails
/// its requests by id whose deadline has passed, with one timer. It holds
/// the connection weakly, and stops at its end.
async fn keep_deadlines(conn: std::sync::Weak<Shared>, wake: Arc<Notify>) {
    /// Dropped unfinished (its runtime shut down): the next request of
    /// the connection starts another keeper.
    struct Gone(std::sync::Weak<Shared>, bool);
    impl Drop for Gone {
        fn drop(&mut self) {
            if !self.1 {
                if let Some(requests) = self
                    .0
                    .upgrade()
                    .as_deref()
                    .and_then(|c| c.requests.as_deref())
                {
                    requests.keeper_gone();
                }
            }
        }
    }
    let mut gone = Gone(conn.clone(), false);
    loop {
        let next = {
            let Some(conn) = conn.upgrade() else {
                gone.1 = true;
                return;
            };
            let Some(requests) = conn.requests.as_deref() else {
                gone.1 = true;
                return;
            };
            let expired = requests.expire(Instant::now());
            if expired.ended {
                gone.1 = true;
                return;
            }
            for waiting in expired.waiting {
                // Its caller may have gone meanwhile: nothing to do then.
                let _ = waiting.answer(Err(EXPIRED));
            }
            expired.next
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// The channel a request's reply comes by, while the request waits for it.
/// A reply handed over but never taken, because the request was given up
/// at that moment (its caller dropped it, or its timer fired as the reply
/// came), is a late reply when the slot is dropped, as if it had come a
/// little later.
struct ReplySlot<'a, R> {
    rx: tokio::sync::oneshot::Receiver<Result<R, Error>>,
    conn: &'a Shared,
    /// The request's id (in ordered mode, its place in line).
    id: u64,
}

impl<R> ReplySlot<'_, R> {
    /// Takes no reply from now on; returns one handed over before, if any.
    fn close(&mut self) -> Option<Result<R, Error>> {
        self.rx.close();
        self.rx.try_recv().ok()
    }
}

impl<R> Drop for ReplySlot<'_, R> {
    fn drop(&mut self) {
        match self.close() {
            // Nothing came, or the reply was taken; or the connection
            // ended, or the deadline keeper failed it (no reply).
            None | Some(Err(Error::ConnectionLost | Error::RequestTimeout(_))) => {}
            Some(_) => self.conn.late_reply(self.id),
        }
    }
}

/// A handle on one live connection: send to it from any task, or close it.
///
/// Sends go through the connection's bounded outgoing queue: [`send`] waits
/// while the queue is full (backpressure), [`try_send`] fails instead. The
/// queue drains while the connection's handler runs or waits, so a handler
/// may await [`send`] on any connection, its own included. Get one from
/// [`Context::handle`](crate::Context::handle), [`Server::connection`](crate::Server::connection)
/// or [`Client::handle`](crate::Client::handle). Cloning it is cheap (one
/// reference count).
///
/// [`send`]: ConnectionHandle::send
/// [`try_send`]: ConnectionHandle::try_send
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub(crate) inner: Arc<Shared>,
}

/// What a connection shares with the tasks that hold a handle on it.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: ConnectionId,
    pub(crate) peer: Addr,
    pub(crate) local: Addr,
    /// Framing and codecs.
    pub(crate) wire: Wire,
    /// Everything sent goes through it.
    pub(crate) outbox: Outbox,
    /// Close and abort, from other tasks.
    pub(crate) signal: Signal,
    /// How it ended, once it has.
    pub(crate) end: End,
    /// How its handshake went, once it has (if it has one).
    pub(crate) handshake: crate::conn::handshake::Outcome,
    /// The server's or client's counters.
    pub(crate) counters: Arc<Counters>,
    /// Requests waiting for replies (only if requests are on).
    pub(crate) requests: Option<Box<Requests>>,
    /// Reply streams, served and subscribed (made on first use).
    pub(crate) streams: StreamsSlot,
    /// Whether a graceful shutdown's drain was announced or answered.
    pub(crate) drain: crate::conn::drain::Drain,
    /// The peer's requests being handled.
    pub(crate) inflight: crate::conn::inflight::Inflight,
}

impl Shared {
    /// Reports late replies that requests notice themselves (see
    /// [`ReplySlot`]) to `events`, as the read side reports the others.
    pub(crate) fn report_late_replies_to(&self, events: &EventSink) {
        if let Some(requests) = &self.requests {
            requests.report_late_replies_to(events);
        }
    }

    /// Answers request `id` with an error reply (with request ids on;
    /// nothing otherwise), queued whatever the bound, as the handler's
    /// replies are.
    /// Once the connection can send nothing more, nothing is queued (nor
    /// counted lost: nobody accepted it for sending).
    pub(crate) fn fail_request(&self, id: u64, code: ErrorCode, text: &str) {
        if !self.wire.has_envelope() || !self.outbox.takes_replies() {
            return;
        }
        let queued = self
            .outbox
            .push_reply(|buf| self.wire.encode_error_reply(id, code, text, buf));
        if let Err(error) = queued {
            tracing::debug!(%error, id, "an error reply could not be queued");
        }
    }

    /// [`fail_request`](Self::fail_request) for a request whose answer is
    /// owed by a `Replier` (dropped unanswered): taken while a graceful
    /// shutdown waits for the answers owed, as the answer itself would be.
    pub(crate) fn fail_owed_request(&self, id: u64, code: ErrorCode, text: &str) {
        if !self.wire.has_envelope() {
            return;
        }
        let queued = self
            .outbox
            .push_owed_reply(|buf| self.wire.encode_error_reply(id, code, text, buf));
        if let Err(error) = queued {
            tracing::debug!(%error, id, "an error reply could not be queued");
        }
    }

    /// What the drain needs of this connection.
    pub(crate) fn drain_parts(&self) -> crate::conn::drain::Parts<'_> {
        crate::conn::drain::Parts {
            drain: &self.drain,
            wire: &self.wire,
            outbox: &self.outbox,
            signal: &self.signal,
            handshake: &self.handshake,
            peer: &self.peer,
            streams: &self.streams,
        }
    }

    /// Counts and reports a late reply to request `id`.
    fn late_reply(&self, id: u64) {
        Counters::add(&self.counters.late_replies, 1);
        if let Some(events) = self.requests.as_deref().and_then(Requests::late_replies) {
            events.report(Some(self.peer.clone()), Error::LateReply { id });
        }
    }
}
impl ConnectionHandle {
    /// A handle for unit tests: lines framing, no request ids, a queue
    /// of 1 KiB, at 127.0.0.1:1.
    #[cfg(test)]
    pub(crate) fn for_tests() -> ConnectionHandle {
        let wire =
            crate::conn::wire::Wire::new(crate::wire::frame::Framing::lines(), false, Vec::new());
        let addr: Addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into();
        ConnectionHandle::new(addr.clone(), addr, wire, 1024, Default::default())
    }

    pub(crate) fn new(
        peer: Addr,
        local: Addr,
        wire: Wire,
        queue_bytes: usize,
        counters: Arc<Counters>,
    ) -> Self {
        ConnectionHandle {
            inner: Arc::new(Shared {
                id: ConnectionId::next(),
                peer,
                local,
                outbox: Outbox::new(queue_bytes).counting(tally(counters.clone())),
                signal: Signal::default(),
                end: End::default(),
                handshake: Default::default(),
                requests: Requests::of(&wire),
                streams: StreamsSlot::default(),
                drain: Default::default(),
                inflight: Default::default(),
                wire,
                counters,
            }),
        }
    }

    /// Queues the hello of the [handshake](crate::handshake), first of
    /// all, if the handshake is on (`plan`).
    pub(crate) fn greet(&self, plan: Option<&crate::conn::handshake::Plan>) {
        if let Some(plan) = plan {
            let inner = &*self.inner;
            inner.handshake.plan();
            inner.drain.plan(plan.role);
            // The plan was checked when it was made: its hello encodes.
            if let Err(error) = inner
                .outbox
                .push_reply(|buf| inner.wire.encode_hello(&plan.hello, buf))
            {
                tracing::warn!(%error, "the handshake's hello could not be queued");
            }
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.inner.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Addr {
        self.inner.peer.clone()
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.inner.local.clone()
    }

    /// Queues `msg`, waiting while the outgoing queue is full.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the connection is closing or has ended;
    /// [`SendError::Unsendable`] for encode and framing errors
    /// ([`Error::DelimiterInPayload`], [`Error::FrameTooLong`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is queued whole or not at all.
    pub async fn send<M: Message>(&self, msg: &M) -> Result<(), SendError> {
        if let Some(sent) = self.send_now(msg) {
            return sent;
        }
        let inner = &*self.inner;
        let pushed = inner.outbox.push(|buf| inner.wire.encode(msg, buf)).await;
        let frames = u64::from(pushed.is_ok());
        self.sent(pushed, frames).map_err(SendError::from_error)
    }

    /// [`send`](Self::send) without waiting: what it returns, unless the
    /// queue is full (`None`: then `send` waits for room). Most sends find
    /// room: they are done here, with no future of the queue's to build and
    /// poll.
    #[inline]
    pub(crate) fn send_now<M: Message>(&self, msg: &M) -> Option<Result<(), SendError>> {
        let inner = &*self.inner;
        match inner.outbox.try_push(|buf| inner.wire.encode(msg, buf)) {
            Ok(()) => Some(Ok(())),
            Err(PushError::Full) => None,
            Err(PushError::Closed) => Some(Err(SendError::Closed)),
            Err(PushError::Write(error)) => Some(Err(SendError::from_error(error))),
        }
    }

    /// Queues every message of `msgs`, in order, waiting while the outgoing
    /// queue is full: the batch form of [`send`](Self::send), for streams of
    /// small messages. Many messages are encoded under one lock of the queue
    /// and the connection task is woken at most once per batch of about
    /// 16 KiB, instead of once per message; the queue's bound in bytes holds
    /// as for single sends.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send). The messages before the one that failed are
    /// queued (and will be sent); that one and those after it are not.
    ///
    /// # Cancel safety
    ///
    /// Not all or nothing: if the future is dropped, the messages queued so
    /// far (a prefix of `msgs`) stay queued.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let collect = handler_fn(move |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
    ///     tx.send(line)?;
    ///     Ok(())
    /// });
    /// let server = Server::listen("127.0.0.1:0", collect).await?;
    /// let client = Client::<String>::connect(server.local_addr()).await?;
    ///
    /// let lines: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    /// client.handle().send_all(&lines).await?;
    /// for i in 0..100 {
    ///     assert_eq!(rx.recv().await, Some(format!("line {i}")));
    /// }
    /// client.close().await;
    /// server.cut().await;
    /// # Ok(()) }
    /// ```
    pub async fn send_all<'a, M, I>(&self, msgs: I) -> Result<(), SendError>
    where
        M: Message + 'a,
        I: IntoIterator<Item = &'a M>,
    {
        self.send_all_counted(msgs).await.1
    }

    /// [`send_all`](Self::send_all) that also says how many messages were
    /// queued (when it fails part way).
    pub(crate) async fn send_all_counted<'a, M, I>(&self, msgs: I) -> (u64, Result<(), SendError>)
    where
        M: Message + 'a,
        I: IntoIterator<Item = &'a M>,
    {
        let inner = &*self.inner;
        let (queued, result) = inner
            .outbox
            .push_all(msgs, |msg, buf| inner.wire.encode(msg, buf))
            .await;
        let sent = self.sent(result, queued).map_err(SendError::from_error);
        (queued, sent)
    }

    /// Queues `msg` if there is room now.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] if there is no room; otherwise as
    /// [`send`](Self::send).
    pub fn try_send<M: Message>(&self, msg: &M) -> Result<(), TrySendError> {
        let inner = &*self.inner;
        let pushed = inner.outbox.try_push(|buf| inner.wire.encode(msg, buf));
        self.tried(pushed)
    }

    /// Queues one frame of raw bytes, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        let inner = &*self.inner;
        let pushed = inner
            .outbox
            .push(|buf| inner.wire.encode_bytes(payload, buf))
            .await;
        let frames = u64::from(pushed.is_ok());
        self.sent(pushed, frames).map_err(SendError::from_error)
    }

    /// Closes the connection gracefully: sends fail from now on; the frames
    /// that have already arrived are still handled and answered, what is
    /// queued is written, then the connection ends.
    pub fn close(&self) {
        self.inner.outbox.close();
        self.inner.signal.close();
    }

    /// Whether the connection is closing or closed: sends fail from then on.
    pub fn is_closed(&self) -> bool {
        self.inner.outbox.is_closed()
    }

    /// Waits until the connection has ended (it no longer reads or writes),
    /// and says how. Returns at once if it already has.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{Client, CloseReason, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::listen("127.0.0.1:0", ()).await?;
    /// let client = Client::<String>::connect(server.local_addr()).await?;
    /// # tokio::time::timeout(std::time::Duration::from_secs(5), async {
    /// #     while server.connection_count() == 0 { tokio::task::yield_now().await }
    /// # }).await?;
    /// let on_server = server.connection(client.local_addr())?;
    /// client.close().await;
    /// assert_eq!(on_server.closed().await, CloseReason::ByPeer);
    /// assert_eq!(client.closed().await, CloseReason::ByUs);
    /// # Ok(()) }
    /// ```
    pub async fn closed(&self) -> CloseReason {
        self.inner.end.wait().await
    }

    /// Sends `msg` as a request and waits for its reply, of the type the
    /// request names ([`Request::Reply`]), for at most `timeout` (counted
    /// from the call: waiting for a slot, for room in the queue and for the
    /// reply). `msg` is encoded at once: the returned future does not keep
    /// it borrowed.
    ///
    /// Requests need [`request_ids`](crate::ClientBuilder::request_ids) on
    /// both ends (replies matched by id, in any order) or, toward peers
    /// without ids, [`ordered_replies`](crate::ClientBuilder::ordered_replies)
    /// on this end (the next frame answers the oldest request). Any number
    /// of requests may be in flight at once, up to the connection's bound;
    /// sends and requests mix freely. For a peer whose replies have no
    /// declared type, see [`request_untyped`](Self::request_untyped).
    ///
    /// # Errors
    ///
    /// [`RequestError::Timeout`]; [`RequestError::ConnectionLost`] if the
    /// connection ends first (the request is never retried);
    /// [`RequestError::Closed`] if it is closing;
    /// [`RequestError::Remote`] if the peer answered with an error reply
    /// (its handler failed, the request did not decode there, or it was
    /// left unanswered: request ids on both ends);
    /// [`RequestError::BadReply`] if the reply does not decode;
    /// [`RequestError::Unsendable`] for encode errors (nothing is sent
    /// then); [`RequestError::NotEnabled`] if requests are not on.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future forgets the request. Its reply, if
    /// it comes, is an [`Error::LateReply`] event, never the answer to
    /// another request. (In ordered mode a request whose frame was queued
    /// keeps its place in line until its reply arrives, so that the next
    /// frame still answers the right request.)
    pub fn request<Q: Request>(
        &self,
        msg: &Q,
        timeout: Duration,
    ) -> impl Future<Output = Result<Q::Reply, RequestError>> + Send + '_ {
        self.request_untyped::<Q, Q::Reply>(msg, timeout)
    }

    /// [`request`](Self::request) whose reply type the caller names: for
    /// peers whose messages declare no reply type (a Go text peer, raw
    /// bytes). Nothing checks that `R` is what the peer answers: a reply
    /// that does not decode as `R` is [`RequestError::BadReply`], and one
    /// that happens to decode is taken.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub fn request_untyped<Q: Message, R: Message>(
        &self,
        msg: &Q,
        timeout: Duration,
    ) -> impl Future<Output = Result<R, RequestError>> + Send + '_ {
        let (deadline, timeout) = effective_deadline(timeout);
        let encoded = self.inner.wire.encode_body(msg);
        async move {
            let encoded = encoded.map_err(RequestError::from_error)?;
            self.try_request(&encoded, deadline, timeout)
                .await
                .map_err(Attempt::into_error)
        }
    }

    /// Encodes a request's message (at once, when the request is made).
    pub(crate) fn encode_request<Q: Message>(&self, msg: &Q) -> Result<Encoded, Error> {
        self.inner.wire.encode_body(msg)
    }

    /// Sends `encoded` as a request and waits for its reply, decoded as
    /// `R`, until `deadline` (`timeout` is what a timeout error reports);
    /// says whether a failed request was sent: a reconnecting client tries
    /// one that was not (its connection had ended) again on the next
    /// connection.
    pub(crate) async fn try_request<R: Message>(
        &self,
        encoded: &Encoded,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<R, Attempt> {
        let timed_out = |_| Attempt::Failed(RequestError::Timeout(timeout));
        let not_sent = |error| Attempt::NotSent(RequestError::from_error(error));
        let inner = &*self.inner;
        let requests = inner
            .requests
            .as_deref()
            .ok_or(Attempt::Failed(RequestError::NotEnabled))?;
        inner.drain.check_open().map_err(not_sent)?;
        // A free slot, the usual case, needs no timer.
        let slot = match requests.try_slot() {
            Some(slot) => slot,
            None => timeout_at(deadline, requests.slot())
                .await
                .map_err(timed_out)?
                .map_err(not_sent)?,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = Waiting::new(tx, deadline, slot);
        // Forgets the request if this future is dropped or fails (with ids;
        // in ordered mode a queued request keeps its place).
        let mut forget = None;
        let id = match inner.wire.matching() {
            Matching::Ids => {
                let line = requests.register().map_err(not_sent)?;
                let (id, keep) = line.by_id(waiting);
                match keep {
                    Keep::Nothing => {}
                    Keep::Wake => requests.wake_keeper(),
                    Keep::Start => {
                        tokio::spawn(keep_deadlines(
                            Arc::downgrade(&self.inner),
                            requests.keeper(),
                        ));
                    }
                }
                let features = inner.handshake.features();
                forget = Some(Forget {
                    requests,
                    id,
                    cancel: (features & features::CANCELLATION != 0).then_some(inner),
                });
                let deadlines = features & features::DEADLINES != 0;
                let queue = |buf: &mut _| {
                    // Under the queue's lock, where a drain is answered.
                    inner.drain.check_open()?;
                    let kind = if deadlines {
                        // Whole milliseconds, rounded up: the time left
                        // when the frame is queued.
                        let left = deadline.saturating_duration_since(Instant::now());
                        let remaining_ms = left.as_micros().div_ceil(1000);
                        Envelope::DeadlineRequest {
                            id,
                            remaining_ms: u64::try_from(remaining_ms).unwrap_or(u64::MAX),
                        }
                    } else {
                        Envelope::Request(id)
                    };
                    inner.wire.encode_encoded(kind, encoded, buf)
                };
                // Room in the queue, the usual case, needs no timer.
                let pushed = match inner.outbox.try_push(queue) {
                    Err(PushError::Full) => timeout_at(deadline, inner.outbox.push(queue))
                        .await
                        .map_err(timed_out)?,
                    other => other,
                };
                let frames = u64::from(pushed.is_ok());
                self.sent(pushed, frames).map_err(not_sent)?;
                id
            }
            _ => {
                let mut waiting = Some(waiting);
                loop {
                    let queued = self
                        .queue_in_line(requests, &mut waiting, encoded)
                        .map_err(not_sent)?;
                    if let Some(id) = queued {
                        break id;
                    }
                    timeout_at(deadline, inner.outbox.room())
                        .await
                        .map_err(timed_out)?;
                }
            }
        };
        let mut rx = ReplySlot {
            rx,
            conn: inner,
            id,
        };
        let reply = match &forget {
            // By id, the connection's deadline keeper fails it at its
            // deadline (taking it out of the table: a reply that comes
            // later is a late reply).
            Some(forget) => match (&mut rx.rx).await {
                Ok(Err(Error::RequestTimeout(_))) => {
                    forget.cancel_at_peer();
                    return Err(Attempt::Failed(RequestError::Timeout(timeout)));
                }
                received => received,
            },
            None => match timeout_at(deadline, &mut rx.rx).await {
                Ok(received) => received,
                // A reply handed over just as the timer fired is the answer
                // (after `close`, one handed over later is a late reply).
                Err(elapsed) => Ok(rx.close().ok_or_else(|| timed_out(elapsed))?),
            },
        };
        drop(forget);
        // Decoded here, by the requester, into the type it asked for.
        let reply = reply.map(|reply| reply.and_then(|frame| inner.wire.decode::<R>(frame)));
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(Error::ConnectionLost)) | Err(_) => {
                Err(Attempt::Failed(RequestError::ConnectionLost))
            }
            Ok(Err(Error::Remote { code, message })) => {
                Err(Attempt::Failed(RequestError::Remote { code, message }))
            }
            Ok(Err(bad)) => Err(Attempt::Failed(RequestError::BadReply(bad))),
        }
    }

    /// In ordered mode: queues `encoded` and puts `waiting` in line.
    /// Returns the request's id in line, or `None` (and keeps `waiting`)
    /// if the queue is full.
    ///
    /// The request goes in line while its frame is appended, under the
    /// queue's lock (every ordered request is queued under it, so the
    /// line's order is the order on the wire), and before any of its bytes
    /// can be written (so its reply cannot be read before it waits). The
    /// table's lock is held only for that: not across the queue's write
    /// through to the socket, where on loopback the reply is read before
    /// the write returns and the read side would wait for the lock to take
    /// the request out of line.
    fn queue_in_line(
        &self,
        requests: &Requests,
        waiting: &mut Option<Waiting>,
        encoded: &Encoded,
    ) -> Result<Option<u64>, Error> {
        let inner = &*self.inner;
        let mut id = None;
        let queue = |buf: &mut _| {
            inner.wire.encode_encoded(Envelope::Message, encoded, buf)?;
            // Encoded: the frame is appended now (on an error above,
            // nothing of it stays, and the request is not in line).
            let line = requests.register()?;
            id = waiting.take().map(|waiting| line.in_order(waiting));
            Ok(())
        };
        match inner.outbox.try_push(queue) {
            Ok(()) => self.sent(Ok(()), 1).map(|()| Some(id.unwrap_or_default())),
            Err(PushError::Full) => Ok(None),
            Err(refused) => self.sent(Err(refused), 0).map(|()| None),
        }
    }

    /// Turns a refusal of a `try_` push into a [`TrySendError`]. (Frames
    /// are counted once written, by the queue's tally.)
    pub(crate) fn tried(&self, pushed: Result<(), PushError<Error>>) -> Result<(), TrySendError> {
        pushed.map_err(|error| match error {
            PushError::Closed => TrySendError::Closed,
            PushError::Full => TrySendError::Full {
                limit: self.inner.outbox.limit(),
            },
            PushError::Write(error) => TrySendError::Unsendable(error),
        })
    }

    /// Turns a refusal into an [`Error`]. (`frames` were queued; they are
    /// counted once written, by the queue's tally.)
    pub(crate) fn sent(
        &self,
        pushed: Result<(), PushError<Error>>,
        frames: u64,
    ) -> Result<(), Error> {
        let _ = frames;
        pushed.map_err(|error| match error {
            PushError::Closed => Error::Closed,
            PushError::Full => Error::QueueFull {
                limit: self.inner.outbox.limit(),
            },
            PushError::Write(error) => error,
        })
    }
}
