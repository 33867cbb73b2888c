//! Drain: a server that shuts down gracefully tells each client first, so
//! that the client sends no new request on that connection (README, "Drain
//! and failover"; the frame: [`crate::envelope`]).
//!
//! Used on a connection only when both hellos set the
//! [`DRAIN`](crate::wire::hello::features::DRAIN) bit and the envelope is
//! on (request ids); otherwise a graceful shutdown closes as it always did.
//!
//! 1. The server queues a drain frame (envelope kind `0x06`) and keeps
//!    serving: requests that arrive are handled and answered. Other tasks'
//!    sends are refused from then on, as in any graceful shutdown.
//! 2. The client, on reading it, marks the connection drained and queues
//!    the same frame back, under the outgoing queue's lock: every request
//!    queued before it is on the wire before it, and every request after
//!    it fails at once with [`Error::Draining`] (nothing sent). A
//!    reconnecting client moves to its next connection at once.
//! 3. The server, on reading the client's answer, knows that no request
//!    follows: it closes the connection gracefully (answers what has
//!    arrived, waits for the answers owed, flushes, ends its side). A
//!    request that comes after the answer anyway is refused with
//!    [`ErrorCode::Draining`](crate::wire::envelope::ErrorCode::Draining), not run.
//!
//! A peer that sends a drain frame on a connection where it was not agreed
//! gets today's answer to an unknown envelope kind: a frame error.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::base::addr::Addr;
use crate::conn::events::EventSink;
use crate::conn::handshake::Outcome;
use crate::conn::outbox::Outbox;
use crate::conn::signal::Signal;
use crate::conn::streams::StreamsSlot;
use crate::conn::wire::Wire;
use crate::wire::envelope::EnvelopeError;
use crate::wire::error::Error;
use crate::wire::hello::{features, Role};

/// What the drain needs of a connection (its handle's shared parts).
pub(crate) struct Parts<'a> {
    pub(crate) drain: &'a Drain,
    pub(crate) wire: &'a Wire,
    pub(crate) outbox: &'a Outbox,
    pub(crate) signal: &'a Signal,
    pub(crate) handshake: &'a Outcome,
    pub(crate) peer: &'a Addr,
    pub(crate) streams: &'a StreamsSlot,
}

/// The text of the error reply to a request refused as the server drains.
pub(crate) const REFUSED: &str = "the server is draining: the request was not run";

/// This side is a client (set with its hello).
const CLIENT: u8 = 1 << 0;
/// A server: it sent the drain frame.
const SENT: u8 = 1 << 1;
/// A server: the client answered it; no request follows.
const ANSWERED: u8 = 1 << 2;
/// A client: the server announced a drain, and it answered.
const TOLD: u8 = 1 << 3;

/// A connection's drain state.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    state: AtomicU8,
    /// Wakes a reconnecting client's supervisor when the server drains.
    told: tokio::sync::Notify,
}

impl Drain {
    /// Records this side's role (from its handshake plan).
    pub(crate) fn plan(&self, role: Role) {
        if role == Role::Client {
            self.state.fetch_or(CLIENT, Ordering::AcqRel);
        }
    }

    fn has(&self, bit: u8) -> bool {
        self.state.load(Ordering::Acquire) & bit != 0
    }

    /// A client: [`Error::Draining`] once the server announced a drain (a
    /// request checks it under the queue's lock, where the client's answer
    /// is queued).
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.has(TOLD) {
            Err(Error::Draining)
        } else {
            Ok(())
        }
    }

    /// A server: whether the client answered its drain, so that a request
    /// that arrives now is refused with [`ErrorCode::Draining`](crate::wire::envelope::ErrorCode::Draining) (not run).
    pub(crate) fn refuses_requests(&self) -> bool {
        self.has(ANSWERED)
    }

    /// A client: whether the server announced a drain.
    pub(crate) fn is_told(&self) -> bool {
        self.has(TOLD)
    }

    /// A client: waits until the server announces a drain (forever if it
    /// never does).
    pub(crate) async fn told(&self) {
        loop {
            let notified = self.told.notified();
            tokio::pin!(notified);
            // Registered before the check: a drain in between still wakes us.
            notified.as_mut().enable();
            if self.is_told() {
                return;
            }
            notified.await;
        }
    }
}

/// Whether drain was agreed on `conn`: both hellos set the bit, and the
/// envelope is on.
pub(crate) fn agreed(conn: &Parts<'_>) -> bool {
    conn.wire.has_envelope() && conn.handshake.features() & features::DRAIN != 0
}

/// A server starting a graceful shutdown: if drain was agreed on `conn`,
/// refuses other tasks' sends, queues the drain frame, and returns `true`
/// (the connection closes once the client answers); `false` otherwise
/// (close it as before).
pub(crate) fn announce(conn: &Parts<'_>) -> bool {
    if !agreed(conn) || conn.drain.has(CLIENT) {
        return false;
    }
    if conn.drain.state.fetch_or(SENT, Ordering::AcqRel) & SENT != 0 {
        return true;
    }
    conn.outbox.close();
    // The reply streams it serves end now, as in a close (`StreamRefused`):
    // their subscribers move on with the requests.
    conn.streams.closing(conn.outbox, conn.wire);
    if let Err(error) = conn.outbox.push_reply(|buf| conn.wire.encode_drain(buf)) {
        tracing::debug!(%error, "the drain frame could not be queued");
        return false;
    }
    tracing::debug!(peer = %conn.peer, "drain announced");
    true
}

/// A drain frame arrived on `conn` (from the read side); a client reports
/// an [`Error::Draining`] event to `events`.
///
/// # Errors
///
/// [`Error::Envelope`] (an unknown kind, as before) if drain was not
/// agreed on it.
pub(crate) fn received(conn: &Parts<'_>, events: &EventSink) -> Result<(), Error> {
    if !agreed(conn) {
        return Err(EnvelopeError::UnknownKind(crate::wire::envelope::DRAIN).into());
    }
    let drain = &conn.drain;
    if drain.has(CLIENT) {
        if drain.has(TOLD) {
            return Ok(());
        }
        // Marked under the queue's lock, with the answer: a request queued
        // after the answer sees the mark and is not sent.
        let answered = conn.outbox.push_reply(|buf| {
            drain.state.fetch_or(TOLD, Ordering::AcqRel);
            conn.wire.encode_drain(buf)
        });
        drain.state.fetch_or(TOLD, Ordering::AcqRel);
        if let Err(error) = answered {
            tracing::debug!(%error, "the answer to a drain could not be queued");
        }
        tracing::info!(
            peer = %conn.peer,
            "chitchat-net: the server is draining; no new request goes on this connection"
        );
        drain.told.notify_waiters();
        // A lifecycle event, not an error: logged at INFO above, once.
        events.report_logged(Some(conn.peer.clone()), Error::Draining);
        return Ok(());
    }
    if drain.has(SENT) {
        // The client's answer: no request follows. Close gracefully.
        drain.state.fetch_or(ANSWERED, Ordering::AcqRel);
        conn.outbox.close();
        conn.signal.close();
    } else {
        tracing::debug!(peer = %conn.peer, "a drain frame from a client, unasked: ignored");
    }
    Ok(())
}
