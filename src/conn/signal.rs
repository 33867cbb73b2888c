//! How other tasks tell a connection to end: close (gracefully: answer what
//! has arrived, flush, then end) or abort (at once). One state word and one
//! waker: setting a signal costs an atomic operation and a wake, and the
//! connection task checks it without a lock on every wake-up.
//!
//! This file imports nothing of the runtime, so that `loom-models/` can
//! check it under every interleaving.

use std::task::{Context, Poll};

use crate::conn::sync::{AtomicU8, AtomicWaker, Ordering};

const CLOSE: u8 = 1;
const ABORT: u8 = 2;

/// What was asked of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fired {
    /// End gracefully.
    Close,
    /// End at once (also set when a close was asked before).
    Abort,
}

/// A connection's close and abort signals.
#[derive(Debug)]
pub(crate) struct Signal {
    state: AtomicU8,
    /// The connection task.
    task: AtomicWaker,
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            state: AtomicU8::new(0),
            task: AtomicWaker::new(),
        }
    }
}

impl Signal {
    /// Asks the connection to end gracefully.
    pub(crate) fn close(&self) {
        self.set(CLOSE);
    }

    /// Asks the connection to end at once.
    pub(crate) fn abort(&self) {
        self.set(ABORT);
    }

    fn set(&self, bit: u8) {
        self.state.fetch_or(bit, Ordering::AcqRel);
        self.task.wake();
    }

    /// What has been asked so far (abort wins over close).
    pub(crate) fn fired(&self) -> Option<Fired> {
        let state = self.state.load(Ordering::Acquire);
        if state & ABORT != 0 {
            Some(Fired::Abort)
        } else if state & CLOSE != 0 {
            Some(Fired::Close)
        } else {
            None
        }
    }

    /// Whether a close (or an abort) has been asked: for the read side,
    /// which need not register to be woken, since the connection task polls
    /// the abort signal (and registers) on every wake-up, and one waker
    /// serves both signals.
    pub(crate) fn is_closing(&self) -> bool {
        self.fired().is_some()
    }

    /// Ready once `wanted` (or an abort) has been asked; registers the
    /// connection task (`cx`) to be woken otherwise. One task only: every
    /// poller must run in the connection task.
    pub(crate) fn poll(&self, wanted: Fired, cx: &mut Context<'_>) -> Poll<Fired> {
        let check = || match self.fired() {
            Some(Fired::Abort) => Some(Fired::Abort),
            Some(Fired::Close) if wanted == Fired::Close => Some(Fired::Close),
            _ => None,
        };
        if let Some(fired) = check() {
            return Poll::Ready(fired);
        }
        self.task.register(cx.waker());
        match check() {
            Some(fired) => Poll::Ready(fired),
            None => Poll::Pending,
        }
    }
}
