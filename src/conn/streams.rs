//! The reply streams of one connection: the streams this side serves (its
//! handler's [`ReplySink`](crate::ReplySink)s, by the subscriber's request
//! id) and the subscriptions it made (its
//! [`ReplyStream`](crate::ReplyStream)s, by their request id), with the
//! credit that paces each (see [`envelope`](crate::envelope) for the
//! frames).
//!
//! The read side hands every stream frame here at once (never to the
//! handler): an item goes into its subscription's buffer, which holds at
//! most the credit granted (a peer that sends more ends that stream with
//! an error), a credit wakes its sink. So a subscriber that does not read
//! holds back its own stream only: the connection goes on reading.
//!
//! Credit: a sink starts with a credit of one item ([`INITIAL_CREDIT`],
//! implied by the request), and the subscriber grants the rest of its
//! window when the first item arrives, then more as it takes items. Every
//! credit frame therefore comes after its sink was made, so a credit for a
//! stream this side does not serve (any more) is dropped, and no state is
//! kept for unknown ids but the last few cancels. A credit of 0 cancels a
//! stream (one that overtook its request, still waiting for its handler,
//! is kept, and its sink starts closed); an item for a subscription this
//! side does not have (dropped, or ended) is answered with a cancel, so a
//! sink whose cancel was lost still learns it at its next item.
//!
//! Each stream ends once: the entry leaves the table under its lock, and
//! whoever takes it out (the sink's end, a cancel, a graceful close, the
//! connection's end; the end frame, an error reply, the subscriber's drop)
//! settles it.
//!
//! The table is made on first use: a connection without streams holds one
//! empty slot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;

use bytes::{Bytes, BytesMut};

use crate::conn::outbox::Outbox;
use crate::conn::wire::Wire;
use crate::wire::envelope::{self, Envelope, EnvelopeError, ErrorCode};
use crate::wire::error::Error;
use crate::wire::hello::features;

/// The credit a sink starts with: the request implies it.
pub(crate) const INITIAL_CREDIT: u64 = 1;

/// The text of the end a graceful close gives each stream still open.
pub(crate) const CLOSING_TEXT: &str = "the connection is closing: the stream ends with it";

/// Why a sink takes no more items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkClosed {
    /// The subscriber cancelled the stream (it dropped it).
    Cancelled,
    /// The connection is closing (a graceful close or shutdown): the stream
    /// was ended with [`ErrorCode::StreamRefused`].
    Closing,
    /// The connection has ended.
    Lost,
    /// The sink ended the stream itself.
    Ended,
}

/// A stream this side serves: its credit and whether it is over.
#[derive(Debug)]
pub(crate) struct SinkState {
    inner: Mutex<SinkInner>,
    /// Woken on credit and on close.
    changed: tokio::sync::Notify,
}

#[derive(Debug)]
struct SinkInner {
    credit: u64,
    closed: Option<SinkClosed>,
}

impl SinkState {
    fn lock(&self) -> MutexGuard<'_, SinkInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self, why: SinkClosed) {
        let mut inner = self.lock();
        inner.closed.get_or_insert(why);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Why it is closed, if it is.
    pub(crate) fn closed(&self) -> Option<SinkClosed> {
        self.lock().closed
    }

    /// The credit left.
    pub(crate) fn credit(&self) -> u64 {
        self.lock().credit
    }

    /// Waits for one item of credit and takes it.
    ///
    /// # Errors
    ///
    /// Why the sink is closed, once it is.
    pub(crate) async fn take_credit(&self) -> Result<(), SinkClosed> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check: a credit in between still wakes.
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if let Some(why) = inner.closed {
                    return Err(why);
                }
                if inner.credit > 0 {
                    inner.credit -= 1;
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Gives back one item of credit taken by [`take_credit`](Self::take_credit)
    /// (its item was not queued).
    pub(crate) fn give_back(&self) {
        let mut inner = self.lock();
        inner.credit = inner.credit.saturating_add(1);
    }

    /// Waits until the sink is closed.
    pub(crate) async fn wait_closed(&self) -> SinkClosed {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(why) = self.closed() {
                return why;
            }
            notified.await;
        }
    }
}

/// How a subscription ended, as the table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubEnd {
    /// The server ended it normally.
    Done,
    /// The server ended it with an error, or answered the request with an
    /// error reply.
    Remote { code: ErrorCode, message: String },
    /// The connection ended first.
    Lost,
    /// The peer broke the protocol (more items than its credit, a single
    /// reply instead of a stream, a malformed end).
    Protocol(&'static str),
}

/// A subscription this side made: the items received and not yet taken,
/// and its end.
#[derive(Debug)]
pub(crate) struct SubState {
    inner: Mutex<SubInner>,
}

#[derive(Debug)]
struct SubInner {
    items: VecDeque<Bytes>,
    end: Option<SubEnd>,
    waker: Option<Waker>,
    /// Credit granted and not yet used by an item.
    outstanding: u64,
    /// The rest of the window, granted when the first item arrives.
    rest_of_window: u64,
    /// Items taken since the last credit frame.
    taken: u64,
}

/// What [`SubState::poll_next`] found.
#[derive(Debug)]
pub(crate) enum Next {
    /// An item, and the credit to grant now (0: none yet).
    Item(Bytes, u64),
    /// The subscription has ended, every item taken.
    End(SubEnd),
    /// Nothing yet: the waker is kept.
    Pending,
}

impl SubState {
    fn lock(&self) -> MutexGuard<'_, SubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends it with `end` unless it has ended; wakes the consumer.
    fn settle(&self, end: SubEnd) {
        let mut inner = self.lock();
        if inner.end.is_none() {
            inner.end = Some(end);
        }
        let waker = inner.waker.take();
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next item or the end; `window` is what one credit frame grants
    /// at most (credit is granted in halves of it).
    pub(crate) fn poll_next(&self, waker: &Waker, window: u64) -> Next {
        let mut inner = self.lock();
        if let Some(item) = inner.items.pop_front() {
            if inner.end.is_some() {
                return Next::Item(item, 0);
            }
            inner.taken += 1;
            let grant = if inner.taken >= (window / 2).max(1) {
                std::mem::take(&mut inner.taken)
            } else {
                0
            };
            inner.outstanding += grant;
            return Next::Item(item, grant);
        }
        if let Some(end) = &inner.end {
            return Next::End(end.clone());
        }
        if !inner.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            inner.waker = Some(waker.clone());
        }
        Next::Pending
    }

    /// Whether it has ended (items may still wait to be taken).
    pub(crate) fn has_ended(&self) -> bool {
        self.lock().end.is_some()
    }
}

/// The stream tables of one connection, made on first use.
#[derive(Debug, Default)]
pub(crate) struct StreamsSlot {
    table: OnceLock<Box<Streams>>,
    /// The connection has ended: nothing is registered any more.
    ended: AtomicBool,
}

#[derive(Debug, Default)]
struct Streams {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The streams this side serves, by the subscriber's request id.
    sinks: HashMap<u64, Arc<SinkState>>,
    /// The subscriptions this side made, by their request id.
    subs: HashMap<u64, Arc<SubState>>,
    /// A graceful close has begun: no new sink.
    closing: bool,
    /// The last ids cancelled before their sink was made (a cancel that
    /// overtook a request still waiting for its handler): such a sink
    /// starts closed. Bounded; ids are never reused, so a stale one is
    /// harmless.
    cancelled_early: VecDeque<u64>,
}

/// Cancels kept for sinks not yet made, at most.
const MAX_CANCELLED_EARLY: usize = 64;

impl Streams {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StreamsSlot {
    fn table(&self) -> &Streams {
        self.table.get_or_init(Box::default)
    }

    fn existing(&self) -> Option<&Streams> {
        self.table.get().map(|b| &**b)
    }

    /// Registers a sink for the peer's request `id`, with the initial
    /// credit; `None` once the connection is closing or has ended (or a
    /// sink for `id` exists: one request, one stream).
    pub(crate) fn open_sink(&self, id: u64) -> Option<Arc<SinkState>> {
        let table = self.table();
        let mut state = table.lock();
        if state.closing || self.ended.load(Ordering::SeqCst) || state.sinks.contains_key(&id) {
            return None;
        }
        let cancelled = match state.cancelled_early.iter().position(|&c| c == id) {
            Some(at) => {
                state.cancelled_early.remove(at);
                Some(SinkClosed::Cancelled)
            }
            None => None,
        };
        let sink = Arc::new(SinkState {
            inner: Mutex::new(SinkInner {
                credit: INITIAL_CREDIT,
                closed: cancelled,
            }),
            changed: tokio::sync::Notify::new(),
        });
        if cancelled.is_none() {
            state.sinks.insert(id, sink.clone());
        }
        Some(sink)
    }

    /// The sink of `id` ends the stream itself: takes it out of the table.
    /// Returns whether it was still there (then the caller sends the end;
    /// otherwise a cancel, a close or the connection's end settled it).
    pub(crate) fn end_sink(&self, id: u64, sink: &Arc<SinkState>) -> bool {
        let Some(table) = self.existing() else {
            return false;
        };
        let mut state = table.lock();
        let ours = state.sinks.get(&id).is_some_and(|s| Arc::ptr_eq(s, sink));
        if ours {
            state.sinks.remove(&id);
        }
        drop(state);
        sink.close(SinkClosed::Ended);
        ours
    }

    /// Registers a subscription with request `id` and a window of `window`
    /// items (of which the request implies the first); `None` once the
    /// connection has ended.
    pub(crate) fn subscribe(&self, id: u64, window: u64) -> Option<Arc<SubState>> {
        let table = self.table();
        let mut state = table.lock();
        if self.ended.load(Ordering::SeqCst) {
            return None;
        }
        let sub = Arc::new(SubState {
            inner: Mutex::new(SubInner {
                items: VecDeque::new(),
                end: None,
                waker: None,
                outstanding: INITIAL_CREDIT,
                rest_of_window: window.saturating_sub(INITIAL_CREDIT),
                taken: 0,
            }),
        });
        state.subs.insert(id, sub.clone());
        Some(sub)
    }

    /// Forgets subscription `id` (its stream was dropped, or it failed
    /// before its request was sent). Returns whether it was still open:
    /// then the caller cancels it with the peer.
    pub(crate) fn unsubscribe(&self, id: u64) -> bool {
        let Some(table) = self.existing() else {
            return false;
        };
        let removed = table.lock().subs.remove(&id);
        match removed {
            Some(sub) => !sub.has_ended(),
            None => false,
        }
    }

    /// A graceful close has begun: every open sink is closed, and its
    /// stream ended with [`ErrorCode::StreamRefused`] (queued as a reply,
    /// ahead of the close); no new sink is opened.
    pub(crate) fn closing(&self, outbox: &Outbox, wire: &Wire) {
        let Some(table) = self.existing() else {
            return;
        };
        let sinks = {
            let mut state = table.lock();
            state.closing = true;
            std::mem::take(&mut state.sinks)
        };
        for (id, sink) in sinks {
            sink.close(SinkClosed::Closing);
            send_end(
                outbox,
                wire,
                id,
                Some((ErrorCode::StreamRefused, CLOSING_TEXT)),
            );
        }
    }

    /// The connection has ended: every sink is closed, every subscription
    /// ends with [`SubEnd::Lost`] (after the items it holds), and nothing
    /// new is registered.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        let Some(table) = self.existing() else {
            return;
        };
        let (sinks, subs) = {
            let mut state = table.lock();
            (
                std::mem::take(&mut state.sinks),
                std::mem::take(&mut state.subs),
            )
        };
        for sink in sinks.into_values() {
            sink.close(SinkClosed::Lost);
        }
        for sub in subs.into_values() {
            sub.settle(SubEnd::Lost);
        }
    }

    /// A reply or an error reply that no request waited for: if it answers
    /// one of our subscriptions, ends it (an error reply as the server's
    /// error; a single reply breaks the protocol). Returns whether it did.
    pub(crate) fn answer(&self, id: u64, reply: &Result<Bytes, Error>) -> bool {
        let Some(table) = self.existing() else {
            return false;
        };
        let Some(sub) = table.lock().subs.remove(&id) else {
            return false;
        };
        let end = match reply {
            Err(Error::Remote { code, message }) => SubEnd::Remote {
                code: *code,
                message: message.clone(),
            },
            Err(_) => SubEnd::Protocol("the peer's error reply to the subscription is malformed"),
            Ok(_) => SubEnd::Protocol("the peer answered the subscription with a single reply"),
        };
        sub.settle(end);
        true
    }

    /// Takes one stream frame (`kind` is a stream kind, `body` what follows
    /// its header), on a connection whose hellos both set `features`.
    ///
    /// # Errors
    ///
    /// A frame the peer should not have sent (the connection goes on): a
    /// stream frame on a connection without reply streams (as an unknown
    /// kind, as a peer without them would say), a malformed body.
    pub(crate) fn take(
        &self,
        features: u64,
        outbox: &Outbox,
        wire: &Wire,
        kind: Envelope,
        body: Bytes,
    ) -> Result<(), Error> {
        if features & features::REPLY_STREAMS == 0 {
            let byte = match kind {
                Envelope::StreamItem(_) => 0x07,
                Envelope::StreamEnd(_) => 0x08,
                _ => 0x09,
            };
            return Err(EnvelopeError::UnknownKind(byte).into());
        }
        match kind {
            Envelope::StreamItem(id) => {
                self.take_item(outbox, wire, id, body);
                Ok(())
            }
            Envelope::StreamEnd(id) => {
                let end = match envelope::decode_stream_end(&body) {
                    Ok(None) => SubEnd::Done,
                    Ok(Some((code, text))) => SubEnd::Remote {
                        code,
                        message: text.to_owned(),
                    },
                    Err(_) => SubEnd::Protocol("the peer's end of the stream is malformed"),
                };
                let sub = self.existing().and_then(|t| t.lock().subs.remove(&id));
                if let Some(sub) = sub {
                    sub.settle(end);
                }
                Ok(())
            }
            Envelope::Credit(id) => {
                let n = envelope::decode_credit(&body)?;
                let table = self.table();
                let mut state = table.lock();
                if n == 0 {
                    if let Some(sink) = state.sinks.remove(&id) {
                        drop(state);
                        sink.close(SinkClosed::Cancelled);
                    } else {
                        if state.cancelled_early.len() == MAX_CANCELLED_EARLY {
                            state.cancelled_early.pop_front();
                        }
                        state.cancelled_early.push_back(id);
                    }
                    return Ok(());
                }
                // A stream that has ended (or is not ours): dropped.
                if let Some(sink) = state.sinks.get(&id) {
                    let mut inner = sink.lock();
                    inner.credit = inner.credit.saturating_add(n);
                    drop(inner);
                    sink.changed.notify_waiters();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// An item of subscription `id`: buffered, within its credit.
    fn take_item(&self, outbox: &Outbox, wire: &Wire, id: u64, item: Bytes) {
        let sub = self
            .existing()
            .and_then(|t| t.lock().subs.get(&id).cloned());
        let Some(sub) = sub else {
            // Not (or no longer) ours: tell its sink to stop.
            send_credit(outbox, wire, id, 0);
            return;
        };
        let mut inner = sub.lock();
        if inner.outstanding == 0 {
            drop(inner);
            // More than it was granted: this stream ends (the others go on).
            if let Some(table) = self.existing() {
                table.lock().subs.remove(&id);
            }
            sub.settle(SubEnd::Protocol(
                "the peer sent more items than the credit it was granted",
            ));
            send_credit(outbox, wire, id, 0);
            return;
        }
        inner.outstanding -= 1;
        inner.items.push_back(item);
        let rest = std::mem::take(&mut inner.rest_of_window);
        inner.outstanding += rest;
        let waker = inner.waker.take();
        drop(inner);
        if rest > 0 {
            send_credit(outbox, wire, id, rest);
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Queues a credit frame for stream `id` (a cancel for `n` 0), as a reply:
/// whatever the queue's bound.
pub(crate) fn send_credit(outbox: &Outbox, wire: &Wire, id: u64, n: u64) {
    // Once nothing more can be sent, nothing is made (nor counted lost).
    if !outbox.takes_replies() {
        return;
    }
    let queued = outbox.push_reply(|buf: &mut BytesMut| {
        wire.encode_control(buf, |d| envelope::encode_credit(id, n, d))
    });
    if let Err(error) = queued {
        tracing::debug!(%error, id, "a stream credit could not be queued");
    }
}

/// Queues the end of stream `id`, as a reply: whatever the queue's bound.
pub(crate) fn send_end(outbox: &Outbox, wire: &Wire, id: u64, error: Option<(ErrorCode, &str)>) {
    if !outbox.takes_replies() {
        return;
    }
    let queued = outbox.push_reply(|buf: &mut BytesMut| {
        wire.encode_control(buf, |d| envelope::encode_stream_end(id, error, d))
    });
    if let Err(error) = queued {
        tracing::debug!(%error, id, "a stream's end could not be queued");
    }
}
