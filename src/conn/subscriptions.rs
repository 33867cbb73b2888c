//! The subscribing side of a reply stream:
//! [`ConnectionHandle::subscribe`] sends a [`Subscription`] and returns a
//! [`ReplyStream`] of its items, which grants the server credit as it is
//! read and cancels the stream when dropped.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;

use crate::codec::{Message, Subscription};
use crate::conn::handle::ConnectionHandle;
use crate::conn::outbox::PushError;
use crate::conn::streams::{send_credit, Next, SubEnd, SubState};
use crate::wire::envelope::{Envelope, ErrorCode};
use crate::wire::error::Error;
use crate::wire::hello::features;

/// The items a subscriber takes before the server must wait for more
/// credit, by default ([`ConnectionHandle::subscribe_with`] sets another):
/// a stream buffers at most this many items its reader has not taken.
pub const DEFAULT_STREAM_WINDOW: u64 = 32;

/// Why a subscription failed or its stream ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer does not support reply streams: the two hellos do not
    /// both set [`REPLY_STREAMS`](crate::handshake::features::REPLY_STREAMS)
    /// (an older build, a peer with
    /// [`no_reply_streams()`](crate::Options::no_reply_streams), or no
    /// handshake). Nothing was sent.
    #[error("the peer does not support reply streams (REPLY_STREAMS is not in both hellos)")]
    Unsupported,
    /// Request ids are not on (`request_ids()` on both ends): a stream's
    /// frames carry the request's id. Nothing was sent.
    #[error("reply streams need `request_ids()` on both ends")]
    NotEnabled,
    /// The connection (or client) is closing or has ended: nothing was
    /// sent.
    #[error("connection closed")]
    Closed,
    /// The server is draining this connection (a graceful shutdown: see
    /// README, "Drain and failover"): nothing was sent. Subscribe
    /// elsewhere; a reconnecting client does so by itself, on its next
    /// connection.
    #[error("the server is draining this connection: subscribe elsewhere")]
    Draining,
    /// No connection within the request timeout (a reconnecting client
    /// that is down): nothing was sent.
    #[error("not connected within {0:?}")]
    Timeout(Duration),
    /// The connection ended while the stream was open: its end never
    /// came. Not retried: subscribe again (a reconnecting client, once
    /// connected again).
    #[error("the connection ended before the stream did")]
    ConnectionLost,
    /// The server ended the stream with an error, or answered the request
    /// with an error reply: its handler failed ([`ErrorCode::Handler`],
    /// with its text), the request did not decode there
    /// ([`ErrorCode::BadRequest`]), its sink was dropped without ending
    /// the stream ([`ErrorCode::Unanswered`]), or it does not serve the
    /// stream (any more: [`ErrorCode::StreamRefused`], as when its
    /// connection closes gracefully).
    #[error("the peer ended the stream with an error ({code}): {message}")]
    Remote {
        /// Why, as the peer says.
        code: ErrorCode,
        /// The peer's text (at most 1 KiB).
        message: String,
    },
    /// An item did not decode into the stream's item type; the stream
    /// goes on.
    #[error("a stream item did not decode: {0}")]
    BadItem(Error),
    /// The peer broke the protocol on this stream (more items than its
    /// credit, a single reply instead of a stream); the stream has ended
    /// (and was cancelled with the peer), the connection goes on.
    #[error("the peer broke the reply stream protocol: {0}")]
    Protocol(&'static str),
    /// The subscription could not be encoded (as
    /// [`SendError::Unsendable`](crate::SendError::Unsendable)).
    #[error(transparent)]
    Unsendable(Error),
}

impl StreamError {
    fn from_end(end: SubEnd) -> Option<Self> {
        match end {
            SubEnd::Done => None,
            SubEnd::Remote { code, message } => Some(StreamError::Remote { code, message }),
            SubEnd::Lost => Some(StreamError::ConnectionLost),
            SubEnd::Protocol(what) => Some(StreamError::Protocol(what)),
        }
    }
}

impl From<StreamError> for Error {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::Unsupported => Error::Config("the peer does not support reply streams"),
            StreamError::NotEnabled => Error::Config("reply streams need `request_ids()`"),
            StreamError::Closed => Error::Closed,
            StreamError::Draining => Error::Draining,
            StreamError::Timeout(timeout) => Error::RequestTimeout(timeout),
            StreamError::ConnectionLost => Error::ConnectionLost,
            StreamError::Remote { code, message } => Error::Remote { code, message },
            StreamError::Protocol(what) => Error::Config(what),
            StreamError::BadItem(error) | StreamError::Unsendable(error) => error,
        }
    }
}

/// The items of one reply stream: made by
/// [`ConnectionHandle::subscribe`] or [`Client::subscribe`](crate::Client::subscribe).
/// A [`Stream`] of `Result<T, StreamError>`.
///
/// It ends once: after the server's normal end it yields `None`; after an
/// error end, or the connection's loss, it yields that error
/// ([`StreamError::Remote`], [`StreamError::ConnectionLost`]) and then
/// `None` (never hangs on a connection that has ended). Items that came
/// before the end are yielded first. Dropping it before the end cancels
/// the stream: the server's sink is told ([`SinkError::Cancelled`](crate::SinkError::Cancelled)).
///
/// Flow control: it holds at most its window of items not yet read (the
/// server waits for credit past that), and grants more credit as they are
/// read, so a stream that is read slowly slows its own server's sink and
/// nothing else on the connection. A stream is bound to the connection it
/// was made on: a reconnecting client subscribes again after a
/// reconnect.
#[must_use = "streams do nothing unless polled (dropping one cancels it)"]
pub struct ReplyStream<T> {
    handle: ConnectionHandle,
    id: u64,
    state: Arc<SubState>,
    window: u64,
    /// The end was yielded.
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for ReplyStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyStream")
            .field("id", &self.id)
            .field("window", &self.window)
            .field("done", &self.done)
            .finish()
    }
}

impl<T> ReplyStream<T> {
    /// The request id of the subscription.
    pub fn request_id(&self) -> u64 {
        self.id
    }
}

impl<T: Message> Stream for ReplyStream<T> {
    type Item = Result<T, StreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.state.poll_next(cx.waker(), this.window) {
            Next::Pending => Poll::Pending,
            Next::Item(item, grant) => {
                let inner = &*this.handle.inner;
                if grant > 0 {
                    send_credit(&inner.outbox, &inner.wire, this.id, grant);
                }
                Poll::Ready(Some(
                    inner.wire.decode::<T>(item).map_err(StreamError::BadItem),
                ))
            }
            Next::End(end) => {
                this.done = true;
                Poll::Ready(StreamError::from_end(end).map(Err))
            }
        }
    }
}

impl<T> Drop for ReplyStream<T> {
    fn drop(&mut self) {
        let inner = &*self.handle.inner;
        if inner.streams.unsubscribe(self.id) {
            // Still open: cancel it with the server.
            send_credit(&inner.outbox, &inner.wire, self.id, 0);
        }
    }
}

/// Forgets a subscription whose request was not queued (the future was
/// dropped, or the queue refused it).
struct Unregister<'a> {
    handle: &'a ConnectionHandle,
    id: u64,
    armed: bool,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.handle.inner.streams.unsubscribe(self.id);
        }
    }
}

impl ConnectionHandle {
    /// Sends `msg` as a subscription and returns the stream of its items,
    /// of the type the subscription names ([`Subscription::Item`]), with a
    /// window of [`DEFAULT_STREAM_WINDOW`] items. Needs request ids on
    /// both ends and reply streams in both hellos (see
    /// [`features::REPLY_STREAMS`](crate::handshake::features::REPLY_STREAMS));
    /// otherwise it fails at once and sends nothing.
    ///
    /// # Errors
    ///
    /// [`StreamError::Unsupported`] if the peer does not support reply
    /// streams; [`StreamError::NotEnabled`] without request ids;
    /// [`StreamError::Closed`] if the connection is closing or has ended;
    /// [`StreamError::Unsendable`] for encode errors. Nothing is sent then.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a subscription whose request was not queued is
    /// forgotten; once it was, the returned stream holds it.
    ///
    /// # Examples
    ///
    /// ```
    /// use chitchat_net::{BoxError, Client, Context, Handler, Message, ReplySink, Server};
    /// use futures_util::StreamExt;
    ///
    /// #[derive(Debug, Message, serde::Serialize, serde::Deserialize)]
    /// #[message(codec = "bincode", stream = Tick)]
    /// struct Count { n: u32 }
    ///
    /// #[derive(Debug, PartialEq, Message, serde::Serialize, serde::Deserialize)]
    /// #[message(codec = "bincode")]
    /// struct Tick { i: u32 }
    ///
    /// #[derive(Handler)]
    /// #[handler(message = Count)]
    /// struct Counter;
    ///
    /// impl CountHandler for Counter {
    ///     async fn count(&self, msg: Count, mut sink: ReplySink<Tick>, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
    ///         tokio::spawn(async move {
    ///             for i in 0..msg.n {
    ///                 if sink.send(&Tick { i }).await.is_err() {
    ///                     return;
    ///                 }
    ///             }
    ///             sink.end();
    ///         });
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = Server::builder(Counter).request_ids().listen("127.0.0.1:0").await?;
    /// let client = Client::<Count>::builder().request_ids().connect(server.local_addr()).await?;
    /// let ticks = client.subscribe(&Count { n: 3 }).await?;
    /// let ticks: Vec<Tick> = ticks.map(|tick| tick.unwrap()).collect().await;
    /// assert_eq!(ticks, [Tick { i: 0 }, Tick { i: 1 }, Tick { i: 2 }]);
    /// # client.close().await;
    /// # server.cut().await;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<Q: Subscription>(
        &self,
        msg: &Q,
    ) -> Result<ReplyStream<Q::Item>, StreamError> {
        self.subscribe_with(msg, DEFAULT_STREAM_WINDOW).await
    }

    /// [`subscribe`](Self::subscribe) with a window of `window` items (at
    /// least 1): the items the stream holds unread at most, and the credit
    /// the server may use ahead of the reader.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    pub async fn subscribe_with<Q: Subscription>(
        &self,
        msg: &Q,
        window: u64,
    ) -> Result<ReplyStream<Q::Item>, StreamError> {
        let inner = &*self.inner;
        if !inner.wire.has_envelope() {
            return Err(StreamError::NotEnabled);
        }
        let features = inner
            .handshake
            .wait(|| inner.end.get().is_some())
            .await
            .map_err(|_| StreamError::Closed)?;
        if features & features::REPLY_STREAMS == 0 {
            return Err(StreamError::Unsupported);
        }
        if inner.drain.check_open().is_err() {
            return Err(StreamError::Draining);
        }
        let encoded = inner
            .wire
            .encode_body(msg)
            .map_err(StreamError::Unsendable)?;
        let window = window.max(1);
        let id = inner.wire.ids().fetch_add(1, Ordering::Relaxed);
        let state = inner
            .streams
            .subscribe(id, window)
            .ok_or(StreamError::Closed)?;
        let mut unregister = Unregister {
            handle: self,
            id,
            armed: true,
        };
        let pushed = inner
            .outbox
            .push(|buf| {
                // Under the queue's lock, where a drain is answered: no
                // subscription follows the answer.
                inner.drain.check_open()?;
                inner
                    .wire
                    .encode_encoded(Envelope::Request(id), &encoded, buf)
            })
            .await;
        match pushed {
            Ok(()) => {}
            Err(PushError::Write(Error::Draining)) => return Err(StreamError::Draining),
            Err(PushError::Write(error)) => return Err(StreamError::Unsendable(error)),
            Err(PushError::Closed | PushError::Full) => return Err(StreamError::Closed),
        }
        unregister.armed = false;
        Ok(ReplyStream {
            handle: self.clone(),
            id,
            state,
            window,
            done: false,
            _item: PhantomData,
        })
    }
}
