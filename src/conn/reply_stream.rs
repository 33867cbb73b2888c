//! The serving side of a reply stream: [`Context::reply_stream`] turns the
//! request being handled into a [`ReplySink`], which sends items as the
//! subscriber grants credit, from any task, until it ends the stream or
//! the subscriber cancels it.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::codec::Message;
use crate::conn::handle::ConnectionHandle;
use crate::conn::handler::Context;
use crate::conn::outbox::PushError;
use crate::conn::streams::{send_end, SinkClosed, SinkState, CLOSING_TEXT};
use crate::wire::envelope::{Envelope, ErrorCode};
use crate::wire::error::Error;
use crate::wire::hello::features;

/// Why [`Context::reply_stream`] gave no sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoStream {
    /// The frame being handled is not a request (a one-way message, or
    /// request ids are off): there is nobody to stream to.
    #[error("a reply stream answers a request: this frame is not one")]
    NotARequest,
    /// The two hellos do not both set
    /// [`REPLY_STREAMS`](crate::handshake::features::REPLY_STREAMS): the
    /// request is answered with an error reply
    /// ([`ErrorCode::StreamRefused`]).
    #[error("reply streams are not on for this connection (both hellos must set REPLY_STREAMS)")]
    Unsupported,
    /// The connection is closing: the request is answered with an error
    /// reply ([`ErrorCode::StreamRefused`]).
    #[error("the connection is closing: no new reply stream")]
    Closing,
    /// The request was answered already (by a reply, or by a stream).
    #[error("the request was answered already")]
    Answered,
}

/// Why [`ReplySink::send`] did not send an item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The subscriber cancelled the stream (it dropped it): send nothing
    /// more.
    #[error("the subscriber cancelled the stream")]
    Cancelled,
    /// The connection is closing or has ended; a graceful close ended the
    /// stream (with [`ErrorCode::StreamRefused`]).
    #[error("the connection is closing or has ended")]
    Closed,
    /// The item could not be encoded or framed (as
    /// [`SendError::Unsendable`](crate::SendError::Unsendable)); the
    /// stream goes on.
    #[error(transparent)]
    Unsendable(Error),
}

impl From<SinkClosed> for SinkError {
    fn from(why: SinkClosed) -> Self {
        match why {
            SinkClosed::Cancelled => SinkError::Cancelled,
            SinkClosed::Closing | SinkClosed::Lost | SinkClosed::Ended => SinkError::Closed,
        }
    }
}

/// The text of the end of a stream whose sink was dropped without ending it.
const DROPPED_TEXT: &str = "the stream's ReplySink was dropped without ending it";

/// Sends the items of one reply stream: made by [`Context::reply_stream`]
/// for the request being handled. Move it into a task of its own and send
/// from there: the handler call can return at once (a running handler
/// holds one of the connection's concurrent-request slots, or the whole
/// connection where requests run in order).
///
/// [`send`](Self::send) waits for credit: the subscriber grants a window
/// of items and more as it takes them, so a slow subscriber holds back
/// its own stream only, never the connection (other streams, requests and
/// messages on it go on). Each stream ends once, with
/// [`end`](Self::end) (the subscriber's stream then ends without error),
/// [`fail`](Self::fail) (it yields
/// [`StreamError::Remote`](crate::StreamError::Remote) with the text), or
/// when the sink is dropped without either (an error end with
/// [`ErrorCode::Unanswered`]). A subscriber that drops its stream cancels
/// it: `send` then fails with [`SinkError::Cancelled`] and
/// [`closed`](Self::closed) returns. A graceful close of the connection
/// (a server's [`shutdown`](crate::Server::shutdown)) ends every open
/// stream at once with [`ErrorCode::StreamRefused`] (its subscriber gets
/// `StreamError::Remote` with that code) and closes its sink; the shutdown
/// does not wait for streams.
///
/// # Examples
///
/// ```
/// use chitchat_net::{BoxError, Context, Handler};
///
/// /// Answers a number `n` with the stream 1, 2, …, n.
/// struct Count;
///
/// impl Handler for Count {
///     type Message = String;
///
///     async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
///         let n: u64 = line.trim().parse()?;
///         let mut sink = ctx.reply_stream::<String>()?;
///         tokio::spawn(async move {
///             for i in 1..=n {
///                 if sink.send(&i.to_string()).await.is_err() {
///                     return; // cancelled, or the connection closes
///                 }
///             }
///             sink.end();
///         });
///         Ok(())
///     }
/// }
/// ```
#[must_use = "a reply stream sends only through its sink"]
pub struct ReplySink<T> {
    handle: ConnectionHandle,
    id: u64,
    state: Arc<SinkState>,
    /// Ended by `end` or `fail` (the drop has nothing left to do).
    done: bool,
    _item: PhantomData<fn(&T)>,
}

impl<T> std::fmt::Debug for ReplySink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplySink")
            .field("id", &self.id)
            .field("credit", &self.state.credit())
            .field("closed", &self.state.closed())
            .finish()
    }
}

impl Context<'_> {
    /// Answers the request being handled with a stream of `T` items: the
    /// sink to send them with (see [`ReplySink`]). The
    /// `Message` derive's handler methods for a subscription
    /// (`#[message(stream = Item)]`) get one made by it.
    ///
    /// # Errors
    ///
    /// [`NoStream`]: the frame is not a request; reply streams are not on
    /// for this connection (both hellos must set
    /// [`REPLY_STREAMS`](crate::handshake::features::REPLY_STREAMS); the
    /// request is answered with an error reply, [`ErrorCode::StreamRefused`],
    /// so the subscriber learns at once); the connection is closing
    /// (likewise); the request was answered already.
    pub fn reply_stream<T: Message>(&mut self) -> Result<ReplySink<T>, NoStream> {
        let Some(id) = self.request else {
            return Err(NoStream::NotARequest);
        };
        if self.answer.answered || self.answer.handed_off.is_some() {
            return Err(NoStream::Answered);
        }
        let inner = &*self.handle.inner;
        let refuse = |why: NoStream, text: &str| {
            inner.fail_request(id, ErrorCode::StreamRefused, text);
            why
        };
        if inner.handshake.features() & features::REPLY_STREAMS == 0 {
            self.answer.answered = true;
            return Err(refuse(
                NoStream::Unsupported,
                "reply streams are not on for this connection",
            ));
        }
        let Some(state) = inner.streams.open_sink(id) else {
            self.answer.answered = true;
            return Err(refuse(NoStream::Closing, CLOSING_TEXT));
        };
        self.answer.answered = true;
        Ok(ReplySink {
            handle: self.handle.clone(),
            id,
            state,
            done: false,
            _item: PhantomData,
        })
    }
}

/// Gives a taken credit back unless the item was queued (a send dropped
/// while it waited for room in the queue).
struct Credit<'a> {
    state: &'a SinkState,
    used: bool,
}

impl Drop for Credit<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.state.give_back();
        }
    }
}

impl<T: Message> ReplySink<T> {
    /// Sends one item: waits for credit from the subscriber, then for room
    /// in the connection's outgoing queue.
    ///
    /// # Errors
    ///
    /// [`SinkError::Cancelled`] once the subscriber cancelled the stream;
    /// [`SinkError::Closed`] once the connection is closing or has ended;
    /// [`SinkError::Unsendable`] for an item that does not encode (the
    /// stream goes on).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the item is queued whole or not at all (and its credit
    /// kept if not).
    pub async fn send(&mut self, item: &T) -> Result<(), SinkError> {
        self.state.take_credit().await?;
        let mut credit = Credit {
            state: &self.state,
            used: false,
        };
        let inner = &*self.handle.inner;
        let kind = Envelope::StreamItem(self.id);
        let pushed = inner
            .outbox
            .push(|buf| inner.wire.encode_as(kind, item, buf))
            .await;
        match pushed {
            Ok(()) => {
                credit.used = true;
                Ok(())
            }
            Err(PushError::Write(error)) => Err(SinkError::Unsendable(error)),
            Err(PushError::Closed | PushError::Full) => Err(self
                .state
                .closed()
                .map_or(SinkError::Closed, SinkError::from)),
        }
    }

    /// Waits until the stream is over for this sink: the subscriber
    /// cancelled it ([`SinkError::Cancelled`]), or the connection is
    /// closing or has ended ([`SinkError::Closed`]). For a task that waits
    /// for changes to send: select on it to stop at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn closed(&self) -> SinkError {
        self.state.wait_closed().await.into()
    }

    /// Whether the stream is over for this sink (see [`closed`](Self::closed)).
    pub fn is_closed(&self) -> bool {
        self.state.closed().is_some()
    }

    /// The items [`send`](Self::send) may send now without waiting for
    /// credit.
    pub fn credit(&self) -> u64 {
        self.state.credit()
    }

    /// The id of the request it answers (the subscriber's).
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// Ends the stream normally: the subscriber's stream ends after the
    /// items sent (queued whatever the queue's bound). Nothing is sent if
    /// the stream is over already (cancelled, or closed with its
    /// connection).
    pub fn end(mut self) {
        self.finish(None);
    }

    /// Ends the stream with an error ([`ErrorCode::Handler`], `message` cut
    /// to 1 KiB): the subscriber's stream yields
    /// [`StreamError::Remote`](crate::StreamError::Remote) after the items
    /// sent. Nothing is sent if the stream is over already.
    pub fn fail(mut self, message: &str) {
        self.finish(Some((ErrorCode::Handler, message)));
    }

    fn finish(&mut self, error: Option<(ErrorCode, &str)>) {
        self.done = true;
        let inner = &*self.handle.inner;
        if inner.streams.end_sink(self.id, &self.state) {
            send_end(&inner.outbox, &inner.wire, self.id, error);
        }
    }
}

impl<T> Drop for ReplySink<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let inner = &*self.handle.inner;
        if inner.streams.end_sink(self.id, &self.state) {
            send_end(
                &inner.outbox,
                &inner.wire,
                self.id,
                Some((ErrorCode::Unanswered, DROPPED_TEXT)),
            );
        }
    }
}
