//! Receiving without a handler: a client whose frames go into a bounded
//! buffer that the user reads with [`Client::recv`](crate::Client::recv)
//! or as a `Stream`.
//!
//! The buffer is filled by a handler ([`Inbox`]) that waits while it is
//! full. A handler that waits holds the connection's read side, so the
//! connection stops reading the socket, the kernel's buffers fill and the
//! peer's sends wait: backpressure reaches the peer, and nothing is
//! dropped. Only when this client is closing and the buffer is still full
//! are frames dropped (counted in [`Stats::dropped_at_close`](crate::Stats::dropped_at_close)),
//! so that a close never waits for a reader that is not reading.

use std::future::Future;
use std::task::Poll;

use tokio::sync::mpsc;

use crate::base::stats::Counters;
use crate::codec::Message;
use crate::conn::handler::{Context, Handler};
use crate::wire::error::BoxError;

/// The handler of a receiving client ([`ClientBuilder::receive`](crate::ClientBuilder::receive)):
/// puts each message into the client's buffer, waiting while it is full.
/// A handler that waits holds the connection's read side, so the client
/// stops reading the socket and the server's sends wait: backpressure,
/// nothing dropped. Only when the client is closing and the buffer is full
/// are frames dropped (counted in [`Stats::dropped_at_close`](crate::Stats::dropped_at_close)),
/// so that a close never waits for a reader that is not reading.
#[derive(Debug)]
pub struct Inbox<R> {
    tx: mpsc::Sender<R>,
}

impl<R> Inbox<R> {
    /// The handler and the buffer's reading end, for `capacity` messages.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<R>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Inbox { tx }, rx)
    }
}

impl<R: Message> Handler for Inbox<R> {
    type Message = R;

    async fn handle(&self, msg: R, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let conn = &*ctx.handle.inner;
        // Biased: while there is room, a closing client still gets what
        // arrived.
        tokio::select! {
            biased;
            permit = self.tx.reserve() => {
                // An error: the client is gone, and the connection with it.
                if let Ok(permit) = permit {
                    permit.send(msg);
                }
            }
            () = closing(&conn.signal) => {
                Counters::add(&conn.counters.dropped_at_close, 1);
                tracing::debug!("closing with a full receive buffer: a frame is dropped");
            }
        }
        Ok(())
    }
}

/// Ready once the connection is asked to close. It registers no waker: the
/// connection task registers for its signal on every wake-up, and polls
/// the handler again then.
fn closing(signal: &crate::conn::signal::Signal) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |_| {
        if signal.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}
