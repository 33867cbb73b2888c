//! A cloneable handle on one connection, usable from any task.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::stats::Counters;
use crate::wire::Wire;
use crate::{Addr, Error, Message};

/// A handle on one live connection: send to it from any task, or close it.
///
/// Sends go through the connection's bounded outgoing queue: [`send`] waits
/// while the queue is full (backpressure), [`try_send`] fails instead. Get one
/// from [`Context::handle`](crate::Context::handle).
///
/// [`send`]: ConnectionHandle::send
/// [`try_send`]: ConnectionHandle::try_send
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub(crate) peer: Addr,
    pub(crate) local: Addr,
    pub(crate) wire: Wire,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) cancel: CancellationToken,
    pub(crate) counters: Arc<Counters>,
}

impl ConnectionHandle {
    /// The peer's address.
    pub fn peer_addr(&self) -> Addr {
        self.peer.clone()
    }

    /// This end's address.
    pub fn local_addr(&self) -> Addr {
        self.local.clone()
    }

    /// Queues `msg`, waiting while the outgoing queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the connection has ended; encode and framing
    /// errors ([`Error::DelimiterInPayload`], [`Error::FrameTooLong`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is queued whole or not at all.
    pub async fn send<M: Message>(&self, msg: &M) -> Result<(), Error> {
        self.outbox
            .push_with(|buf| self.wire.encode(msg, buf))
            .await?;
        Counters::add(&self.counters.frames_out, 1);
        Ok(())
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
    pub async fn send_all<'a, M, I>(&self, msgs: I) -> Result<(), Error>
    where
        M: Message + 'a,
        I: IntoIterator<Item = &'a M>,
    {
        let (queued, result) = self
            .outbox
            .push_all(msgs, |msg, buf| self.wire.encode(msg, buf))
            .await;
        Counters::add(&self.counters.frames_out, queued);
        result
    }

    /// Queues `msg` if there is room now.
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] if there is no room; otherwise as [`send`](Self::send).
    pub fn try_send<M: Message>(&self, msg: &M) -> Result<(), Error> {
        self.outbox
            .try_push_with(|buf| self.wire.encode(msg, buf))?;
        Counters::add(&self.counters.frames_out, 1);
        Ok(())
    }

    /// Queues one frame of raw bytes, waiting while the queue is full.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn send_bytes(&self, payload: &[u8]) -> Result<(), Error> {
        self.outbox
            .push_with(|buf| self.wire.encode_bytes(payload, buf))
            .await?;
        Counters::add(&self.counters.frames_out, 1);
        Ok(())
    }

    /// Closes the connection: what is queued is still flushed (within the
    /// write timeout), then the connection ends.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Whether the connection is closing or closed: sends fail from then on.
    pub fn is_closed(&self) -> bool {
        self.outbox.is_closed()
    }
}
