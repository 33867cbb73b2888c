//! A client's link to its server: the connection it sends on now. Fixed
//! for a plain client; a reconnecting client replaces it on every
//! reconnect, and holds (or drops) what is sent while it is down.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::base::stats::Counters;
use crate::conn::handle::ConnectionHandle;

/// What happens to messages sent while a reconnecting client is
/// disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhileDown {
    /// Keep them, up to the queue's bound ([`queue_bytes`](crate::ClientBuilder::queue_bytes)):
    /// `send` waits (and `try_send` fails with [`Error::QueueFull`](crate::Error::QueueFull))
    /// past it. They are sent, in order, once connected again, after what
    /// `on_connect` sends. (The default.)
    #[default]
    Keep,
    /// Drop them: `send` returns `Ok` at once and the message is counted
    /// in [`Stats::dropped_while_down`](crate::Stats::dropped_while_down).
    Drop,
}

/// The connection a client sends on.
#[derive(Debug, Clone)]
pub(crate) enum Current {
    /// Connected.
    Up(ConnectionHandle),
    /// Down, keeping what is sent in this handle's queue (no socket).
    Holding(ConnectionHandle),
    /// Down, dropping what is sent; the last connection, for its addresses.
    Down(ConnectionHandle),
    /// Closed or given up: nothing more is sent; the last connection.
    Ended(ConnectionHandle),
}

impl Current {
    /// The handle, whatever the state.
    pub(crate) fn handle(&self) -> &ConnectionHandle {
        match self {
            Current::Up(h) | Current::Holding(h) | Current::Down(h) | Current::Ended(h) => h,
        }
    }
}

/// Where a send goes now.
pub(crate) enum Target {
    /// Into this connection's (or holding) queue; `u64` is the link's
    /// generation, to wait for a change if the queue turns out closed.
    Queue(ConnectionHandle, u64),
    /// Dropped and counted (down, with [`WhileDown::Drop`]).
    Drop,
    /// Refused: the client is closing.
    Closed,
}

/// A client's current connection and how it changes.
#[derive(Debug)]
pub(crate) struct Link {
    state: Mutex<State>,
    /// Woken on every change.
    changed: Notify,
    /// Whether it reconnects (and what it does while down).
    pub(crate) reconnect: Option<WhileDown>,
    /// Fired by `close` or drop: no more reconnects.
    pub(crate) stop: CancellationToken,
    /// Fired by `close_within`: sends are refused, but a client that is
    /// down still reconnects, to deliver what it kept.
    pub(crate) closing: CancellationToken,
    counters: Arc<Counters>,
    /// Connections a reconnecting client left because their server drains:
    /// they end once their requests in flight are answered.
    draining: Mutex<Vec<ConnectionHandle>>,
}

#[derive(Debug)]
struct State {
    generation: u64,
    current: Current,
}

impl Link {
    pub(crate) fn new(
        handle: ConnectionHandle,
        reconnect: Option<WhileDown>,
        counters: Arc<Counters>,
    ) -> Self {
        Link {
            state: Mutex::new(State {
                generation: 0,
                current: Current::Up(handle),
            }),
            changed: Notify::new(),
            reconnect,
            stop: CancellationToken::new(),
            closing: CancellationToken::new(),
            counters,
            draining: Mutex::new(Vec::new()),
        }
    }

    /// Keeps `conn`, a connection left because its server drains, to
    /// close or abort it with the client (forgets those that have ended).
    pub(crate) fn add_draining(&self, conn: ConnectionHandle) {
        let mut draining = self
            .draining
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        draining.retain(|old| old.inner.end.get().is_none());
        draining.push(conn);
    }

    /// Closes (`abort`: aborts) the connections left because their server
    /// drains.
    pub(crate) fn end_draining(&self, abort: bool) {
        let draining = std::mem::take(
            &mut *self
                .draining
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for conn in draining {
            if abort {
                conn.inner.signal.abort();
            } else {
                conn.close();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The client's counters.
    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The connection now.
    pub(crate) fn current(&self) -> Current {
        self.lock().current.clone()
    }

    /// The generation and the connection now.
    pub(crate) fn now(&self) -> (u64, Current) {
        let state = self.lock();
        (state.generation, state.current.clone())
    }

    /// Replaces the connection; wakes everyone waiting for a change.
    pub(crate) fn set(&self, current: Current) {
        let mut state = self.lock();
        state.generation += 1;
        state.current = current;
        drop(state);
        self.changed.notify_waiters();
    }

    /// Replaces the connection with `update`'s result under the link's
    /// lock (so that no send sees a state in between).
    pub(crate) fn update(&self, update: impl FnOnce(&Current) -> Current) {
        let mut state = self.lock();
        state.generation += 1;
        state.current = update(&state.current);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Where a send of `frames` frames goes now (dropped while down: all
    /// of them are counted).
    pub(crate) fn target(&self, frames: u64) -> Target {
        if self.closing.is_cancelled() {
            return Target::Closed;
        }
        let (generation, current) = self.now();
        match current {
            Current::Down(_) => {
                Counters::add(&self.counters.dropped_while_down, frames);
                Target::Drop
            }
            other => Target::Queue(other.handle().clone(), generation),
        }
    }

    /// A send found the queue of generation `seen` closed. Waits until the
    /// link changes and returns `true` (try again) if the client reconnects
    /// and has not been stopped; `false` otherwise (the send fails).
    pub(crate) async fn retry_after(&self, seen: u64) -> bool {
        if self.reconnect.is_none() {
            return false;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (generation, current) = self.now();
            if self.stop.is_cancelled()
                || self.closing.is_cancelled()
                || matches!(current, Current::Ended(_))
            {
                return false;
            }
            if generation != seen {
                return true;
            }
            tokio::select! {
                () = changed => {}
                () = self.stop.cancelled() => return false,
                () = self.closing.cancelled() => return false,
            }
        }
    }

    /// Waits until the link is up (for requests, which go only to a live
    /// connection); `None` once it has ended.
    pub(crate) async fn up(&self) -> Option<ConnectionHandle> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.current() {
                Current::Up(handle) => return Some(handle),
                Current::Ended(_) => return None,
                Current::Holding(_) | Current::Down(_) if self.stop.is_cancelled() => return None,
                Current::Holding(_) | Current::Down(_) => {}
            }
            tokio::select! {
                () = changed => {}
                () = self.stop.cancelled() => {}
            }
        }
    }
}
