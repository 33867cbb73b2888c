//! The requests a connection's peer made of it that are being handled:
//! each runs as a future of its own, concurrently, up to a bound per
//! connection; their deadlines and cancellation.
//!
//! A request (a frame with a request id) is registered when it is read,
//! with its deadline if it carries one (envelope kind `0x04`), so that a
//! cancel (kind `0x05`) reaches it while it waits to start as well as
//! while it runs. Its cancellation token is made only when something
//! waits on it (its handler did not complete at its first poll, or asked
//! for it): a request answered at once costs none. The read side starts it
//! ([`crate::conn::reader`]) once a slot is free (past the bound the read
//! side waits: backpressure), unless it was cancelled meanwhile or its
//! deadline has passed ([`ErrorCode::DeadlineExceeded`]); or refuses it at
//! once when a server's overload bounds are reached and the peer announced
//! [`features::OVERLOAD`](crate::wire::hello::features::OVERLOAD)
//! ([`ErrorCode::Overloaded`]).
//!
//! A started request runs as a future of its own: the read side polls it
//! once, and if it does not complete at once it goes on as a tokio task
//! (a handler that answers without waiting costs no task, and its reply
//! leaves with the others of the read). Its handler future is dropped
//! when its cancellation token fires: a cancel from the peer, or the
//! connection's end (an abort: the connection task waits for every
//! request task to end before `on_close`). While it runs its answer is
//! owed ([`Outbox::owe`](crate::conn::outbox::Outbox::owe)), so that a
//! server's shutdown report counts it; a graceful close waits for every
//! running request before the outbox finishes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use foldhash::fast::RandomState;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// The deadline of the request whose handler runs in this task, if it
    /// has one: requests made while it runs inherit it.
    static DEADLINE: Option<Instant>;
}

/// The deadline of the request being handled in this task, if any: a
/// request made from a handler waits at most until then, and passes the
/// remaining time on.
pub(crate) fn inherited_deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok().flatten()
}

/// Runs `fut` with `deadline` as the deadline requests made in it inherit.
pub(crate) async fn with_deadline<F: std::future::Future>(
    deadline: Option<Instant>,
    fut: F,
) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// What a handler call knows of the request it handles: its deadline and
/// its cancellation.
#[derive(Debug)]
pub(crate) struct Call {
    /// The request's id.
    id: u64,
    /// When its caller stops waiting (from the request's envelope).
    pub(crate) deadline: Option<Instant>,
    /// Fires when the request is cancelled, or the connection ends; made
    /// when first asked for (see [`token`](Self::token)).
    token: OnceLock<CancellationToken>,
    /// Whether it runs as a task of its own (with no session).
    pub(crate) concurrent: bool,
}

impl Call {
    /// The request's cancellation token (`inflight`: its connection's):
    /// made and registered the first time, so that a cancel from then on
    /// fires it.
    pub(crate) fn token(&self, inflight: &Inflight) -> &CancellationToken {
        self.token.get_or_init(|| match inflight.get() {
            Some(state) => state.token(self.id),
            None => CancellationToken::new(),
        })
    }

    /// Whether the request has been cancelled (without making its token).
    pub(crate) fn is_cancelled(&self, inflight: &Inflight) -> bool {
        match self.token.get() {
            Some(token) => token.is_cancelled(),
            None => inflight
                .get()
                .is_some_and(|state| state.is_cancelled(self.id)),
        }
    }
}

/// The requests of one connection being handled; made on the first one.
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    state: OnceLock<Box<State>>,
}

/// A request read and not yet ended.
#[derive(Debug)]
struct Entry {
    deadline: Option<Instant>,
    /// Its cancellation token, once something waits on it.
    token: Option<CancellationToken>,
    /// A cancel came before its token was made.
    cancelled: bool,
}

impl Entry {
    /// Whether a cancel came for it.
    fn is_cancelled(&self) -> bool {
        self.cancelled
            || self
                .token
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
    }
}

#[derive(Debug)]
pub(crate) struct State {
    /// Requests read and not yet ended, by id.
    entries: Mutex<HashMap<u64, Entry, RandomState>>,
    /// Slots for requests handled at once on this connection.
    slots: Arc<Semaphore>,
    /// Request tasks not yet ended.
    running: AtomicUsize,
    /// Woken when `running` drops to 0.
    idle: Notify,
    /// Fires when the connection ends: every request's token is its child
    /// (made after it fired, a child is born cancelled).
    all: CancellationToken,
    /// A request running concurrently asked the connection to close.
    close_asked: AtomicBool,
    /// A request task panicked: the connection fails with it.
    panicked: Mutex<Option<String>>,
}

impl Inflight {
    /// The state, made with `slots` slots if it is the first request.
    pub(crate) fn state(&self, slots: usize) -> &State {
        self.state.get_or_init(|| {
            Box::new(State {
                entries: Mutex::new(HashMap::with_hasher(RandomState::default())),
                slots: Arc::new(Semaphore::new(slots.clamp(1, Semaphore::MAX_PERMITS))),
                running: AtomicUsize::new(0),
                idle: Notify::new(),
                all: CancellationToken::new(),
                close_asked: AtomicBool::new(false),
                panicked: Mutex::new(None),
            })
        })
    }

    /// The state, if a request has come.
    #[inline]
    pub(crate) fn get(&self) -> Option<&State> {
        self.state.get().map(|state| &**state)
    }

    /// A cancel from the peer for request `id`: its token fires (it is not
    /// started, or its handler is dropped), or, if none was made yet, the
    /// request is marked cancelled (its token is made cancelled). Whether
    /// it was known.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let Some(state) = self.get() else {
            return false;
        };
        let token = {
            let mut entries = state.lock();
            let Some(entry) = entries.get_mut(&id) else {
                return false;
            };
            entry.cancelled = true;
            entry.token.clone()
        };
        if let Some(token) = token {
            token.cancel();
        }
        true
    }

    /// Whether a request running concurrently asked for a close.
    #[inline]
    pub(crate) fn close_asked(&self) -> bool {
        self.get()
            .is_some_and(|state| state.close_asked.load(Ordering::Acquire))
    }

    /// The connection has ended: stops every request and waits until each
    /// request task has ended (its handler future dropped).
    pub(crate) async fn end(&self) {
        let Some(state) = self.get() else { return };
        state.all.cancel();
        state.wait_idle().await;
    }

    /// The message of a request task's panic, if one panicked.
    pub(crate) fn take_panic(&self) -> Option<String> {
        self.get()?.panicked.lock().ok()?.take()
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry, RandomState>> {
        // Nothing panics under this lock.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Request `id` was read, with `deadline`: registers it.
    pub(crate) fn arrived(&self, id: u64, deadline: Option<Instant>) {
        let entry = Entry {
            deadline,
            token: None,
            cancelled: false,
        };
        let replaced = self.lock().insert(id, entry);
        drop(replaced);
    }

    /// What request `id` was registered with (for one that was not, an id
    /// reused while its first was running: no deadline, and a token that
    /// fires only with the connection's end); `None` if it was cancelled
    /// (or the connection has ended). One look-up for both.
    pub(crate) fn call(&self, id: u64, concurrent: bool) -> Option<Call> {
        if self.all.is_cancelled() {
            return None;
        }
        let deadline = match self.lock().get(&id) {
            Some(entry) if entry.is_cancelled() => return None,
            Some(entry) => entry.deadline,
            None => None,
        };
        Some(Call {
            id,
            deadline,
            token: OnceLock::new(),
            concurrent,
        })
    }

    /// The cancellation token of request `id`, made and registered if it
    /// has none yet (cancelled if a cancel came before); for a request not
    /// registered, a token of its own.
    fn token(&self, id: u64) -> CancellationToken {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return self.all.child_token();
        };
        if let Some(token) = &entry.token {
            return token.clone();
        }
        let token = self.all.child_token();
        if entry.cancelled {
            token.cancel();
        }
        entry.token = Some(token.clone());
        token
    }

    /// Whether request `id` was cancelled, or the connection has ended.
    fn is_cancelled(&self, id: u64) -> bool {
        if self.all.is_cancelled() {
            return true;
        }
        self.lock().get(&id).is_some_and(Entry::is_cancelled)
    }

    /// Request `id` has ended (or will never start): forgets it.
    pub(crate) fn ended(&self, id: u64) {
        let entry = self.lock().remove(&id);
        drop(entry);
    }

    /// A slot free now, if any.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Waits for a free slot.
    pub(crate) async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// A request task starts: counted until [`stopped`](Self::stopped).
    pub(crate) fn started(&self) {
        self.running.fetch_add(1, Ordering::AcqRel);
    }

    /// A request task has ended.
    pub(crate) fn stopped(&self) {
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until no request task runs.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: an end in between still wakes us.
            notified.as_mut().enable();
            if self.running.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A request running concurrently asks the connection to close.
    pub(crate) fn ask_close(&self) {
        self.close_asked.store(true, Ordering::Release);
    }

    /// A request task panicked with `message`.
    pub(crate) fn panicked(&self, message: String) {
        if let Ok(mut panicked) = self.panicked.lock() {
            panicked.get_or_insert(message);
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a handler panicked".to_owned()
    }
}
