//! Error events: a bounded stream of what went wrong, and with whom.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::base::addr::Addr;
use crate::base::stats::Counters;
use crate::wire::error::Error;

/// Default number of events kept for a reader before new ones are dropped.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// An error and the address it concerns (the Go original's `Errsocket`),
/// or a lifecycle event.
///
/// The stream carries two kinds of event, both as an [`Error`] value (so
/// that a Go-like loop over the error channel sees everything):
///
/// - errors ([`is_error`](Self::is_error) is `true`): something failed;
///   counted in [`Stats::errors`](crate::Stats::errors);
/// - lifecycle events (`is_error` is `false`): [`Error::ClosedByPeer`]
///   (the peer ended the stream normally), [`Error::Disconnected`] and
///   [`Error::Reconnected`] (a reconnecting client), [`Error::LateReply`]
///   (a reply after its request was given up). Not counted as errors.
#[derive(Debug)]
pub struct ErrorEvent {
    /// The peer the error concerns; `None` for the listener itself.
    pub peer: Option<Addr>,
    /// What went wrong.
    pub error: Error,
}

impl ErrorEvent {
    /// Whether this event is an error, rather than a lifecycle event (see
    /// [`ErrorEvent`]).
    pub fn is_error(&self) -> bool {
        !self.error.is_lifecycle()
    }
}

impl std::fmt::Display for ErrorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.peer {
            Some(peer) => write!(f, "{peer}: {}", crate::wire::error::Report(&self.error)),
            None => write!(f, "{}", crate::wire::error::Report(&self.error)),
        }
    }
}

/// The sending side, shared by the tasks of a server or client. It never
/// waits: an event that does not fit is dropped and counted.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    tx: Arc<Sender>,
    counters: Arc<Counters>,
    /// The peers a WARN was logged for once already (see
    /// [`warn_once_per_peer`](Self::warn_once_per_peer)).
    warned: Arc<std::sync::Mutex<HashSet<String>>>,
}

/// Peers remembered by [`EventSink::warn_once_per_peer`], at the most: then
/// the set starts again (so its memory is bounded, and a peer may be
/// warned about once more).
pub(crate) const MAX_WARNED_PEERS: usize = 1024;

impl EventSink {
    pub(crate) fn report(&self, peer: Option<Addr>, error: Error) {
        // Events that end a connection (or stop accepting) at WARN, so that
        // they show with the default filter even if nobody reads the
        // events; per-frame ones (a decode or handler error) at DEBUG
        // (the read side logs those at WARN at a bounded rate itself).
        let warn = error.is_warning();
        self.report_at(peer, error, warn);
    }

    /// Runs `warn` (which logs) the first time it is called for `peer`'s
    /// address (its IP address for TCP, whatever its port), not again.
    pub(crate) fn warn_once_per_peer(&self, peer: &Addr, warn: impl FnOnce()) {
        let key = peer
            .ip()
            .map_or_else(|| peer.to_string(), |ip| ip.to_string());
        let first = {
            let mut warned = self
                .warned
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if warned.len() >= MAX_WARNED_PEERS && !warned.contains(&key) {
                warned.clear();
            }
            warned.insert(key)
        };
        if first {
            warn();
        }
    }

    /// Reports an event logged at DEBUG whatever it is: a reconnecting
    /// client logs one WARN per outage itself, not one per failed try.
    pub(crate) fn report_quietly(&self, peer: Option<Addr>, error: Error) {
        self.report_at(peer, error, false);
    }

    /// Reports an event its caller has logged already.
    pub(crate) fn report_logged(&self, peer: Option<Addr>, error: Error) {
        self.deliver(peer, error);
    }

    fn report_at(&self, peer: Option<Addr>, error: Error, warn: bool) {
        let error_text = crate::wire::error::Report(&error);
        match (&peer, warn) {
            (Some(peer), true) => {
                tracing::warn!(%peer, error = %error_text, "chitchat-net error event")
            }
            (None, true) => tracing::warn!(error = %error_text, "chitchat-net error event"),
            (Some(peer), false) => {
                tracing::debug!(%peer, error = %error_text, "chitchat-net error event")
            }
            (None, false) => tracing::debug!(error = %error_text, "chitchat-net error event"),
        }
        self.deliver(peer, error);
    }

    /// Counts the event and hands it to the reader (or drops and counts it).
    fn deliver(&self, peer: Option<Addr>, error: Error) {
        if !error.is_lifecycle() {
            Counters::add(&self.counters.errors, 1);
        }
        let queue = &self.tx.0;
        // Nobody can read it once every `ErrorEvents` handle is gone (the
        // senders hold one reference between them).
        let unread = Arc::strong_count(queue) <= 1;
        if unread || !queue.push(ErrorEvent { peer, error }) {
            let n = self.counters.dropped_events.fetch_add(1, Ordering::Relaxed) + 1;
            if !unread && n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "error events are not being read: dropping them"
                );
            }
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.counters.dropped_events.load(Ordering::Relaxed)
    }
}

/// The stream of [`ErrorEvent`]s of a server or client.
///
/// Events wait in a bounded buffer; when nobody reads them, new ones are
/// dropped (and counted, see `dropped_events()` on the server or client),
/// so an unread stream never stalls a connection.
///
/// There is one stream per server or client, handed out as handles:
/// `errors()` and `clone()` give handles on that same stream, not separate
/// subscriptions. Each event is read once, by whichever handle reads it
/// first; it is not a broadcast. (So `server.errors().recv().await` in a
/// loop reads every event once, and a handle taken late still gets what is
/// buffered.) To give every event to several consumers, read it in one
/// task and fan it out.
#[derive(Debug, Clone)]
pub struct ErrorEvents {
    queue: Arc<Queue>,
    ended: CancellationToken,
}

impl ErrorEvents {
    /// The next event; `None` once the server or client has ended and every
    /// buffered event has been read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no event is lost if the future is dropped.
    pub async fn recv(&self) -> Option<ErrorEvent> {
        loop {
            let pushed = self.queue.pushed.notified();
            tokio::pin!(pushed);
            // Registered before looking, so that a push in between wakes it.
            pushed.as_mut().enable();
            let (event, closed) = self.queue.pop();
            if event.is_some() || closed {
                return event;
            }
            tokio::select! {
                biased;
                () = pushed => {}
                () = self.ended.cancelled() => return self.queue.pop().0,
            }
        }
    }

    /// The next event if one is buffered now.
    pub fn try_recv(&self) -> Option<ErrorEvent> {
        self.queue.pop().0
    }
}

/// The events waiting for a reader: a bounded queue that allocates nothing
/// until its first event (a client that never fails costs no buffer).
#[derive(Debug)]
struct Queue {
    state: std::sync::Mutex<QueueState>,
    capacity: usize,
    /// Woken at every push, and when the last sender goes.
    pushed: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    events: VecDeque<ErrorEvent>,
    /// Every sender is gone: no event will come.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `event`; `false` (and drops it) if the queue is full.
    fn push(&self, event: ErrorEvent) -> bool {
        let mut state = self.lock();
        if state.events.len() >= self.capacity {
            return false;
        }
        state.events.push_back(event);
        drop(state);
        self.pushed.notify_waiters();
        true
    }

    /// The oldest event, and whether every sender is gone.
    fn pop(&self) -> (Option<ErrorEvent>, bool) {
        let mut state = self.lock();
        (state.events.pop_front(), state.closed)
    }
}

/// The sending side's share of the queue: when the last sink goes, the
/// reader sees the end once it has read what is queued.
#[derive(Debug)]
struct Sender(Arc<Queue>);

impl Drop for Sender {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.pushed.notify_waiters();
    }
}

/// A sink and the stream it feeds; `ended` closes the stream once drained.
pub(crate) fn event_channel(
    capacity: usize,
    ended: CancellationToken,
    counters: Arc<Counters>,
) -> (EventSink, ErrorEvents) {
    let queue = Arc::new(Queue {
        state: std::sync::Mutex::default(),
        capacity: capacity.max(1),
        pushed: Notify::new(),
    });
    let sink = EventSink {
        tx: Arc::new(Sender(queue.clone())),
        counters,
        warned: Arc::default(),
    };
    let events = ErrorEvents { queue, ended };
    (sink, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once per peer address (any port), and the set of peers stays
    /// bounded: past `MAX_WARNED_PEERS` it starts again.
    #[test]
    fn warns_once_per_peer_address_with_bounded_memory() {
        let (sink, _events) = event_channel(1, CancellationToken::new(), Arc::default());
        let warned = std::cell::Cell::new(0);
        let warn = || warned.set(warned.get() + 1);
        let addr = |ip: u32, port: u16| -> Addr {
            std::net::SocketAddr::from((std::net::Ipv4Addr::from(ip), port)).into()
        };
        sink.warn_once_per_peer(&addr(0x7f00_0001, 1000), warn);
        sink.warn_once_per_peer(&addr(0x7f00_0001, 2000), warn);
        assert_eq!(warned.get(), 1);
        for ip in 0..MAX_WARNED_PEERS as u32 * 2 {
            sink.warn_once_per_peer(&addr(0x0a00_0000 + ip, 1), || {});
            assert!(sink.warned.lock().unwrap().len() <= MAX_WARNED_PEERS);
        }
    }
}
