//! Requests on one connection that wait for their replies.
//!
//! A request registers how to answer it (decode the reply frame into its own
//! type and hand it to the waiting task) before its frame is queued, and the
//! read side answers it from the read loop when the reply arrives: by id
//! with the request envelope, or, in ordered mode, the oldest request with
//! the next frame. When the connection ends, every request still waiting
//! fails with [`Error::ConnectionLost`]; none is retried.
//!
//! The number of requests in flight is bounded (a semaphore): a request
//! waits for a slot, so a peer that never answers cannot make us hold more.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::conn::events::EventSink;
use crate::conn::wire::{Matching, Wire};
use crate::wire::error::Error;

/// Decodes a reply (or takes the error that replaces it) and hands it to
/// the waiting task; returns whether anyone still waited.
pub(crate) type Answer = Box<dyn FnOnce(&Wire, Result<Bytes, Error>) -> bool + Send>;

/// A request waiting for its reply.
pub(crate) struct Waiting {
    answer: Answer,
    /// Its slot among the requests in flight, freed with it.
    _slot: OwnedSemaphorePermit,
}

impl Waiting {
    pub(crate) fn new(answer: Answer, slot: OwnedSemaphorePermit) -> Self {
        Waiting {
            answer,
            _slot: slot,
        }
    }

    /// Answers the request with `reply`; whether anyone still waited.
    pub(crate) fn answer(self, wire: &Wire, reply: Result<Bytes, Error>) -> bool {
        (self.answer)(wire, reply)
    }
}

/// The requests of one connection that wait for replies.
#[derive(Debug)]
pub(crate) struct Requests {
    state: Mutex<State>,
    /// Slots for requests in flight.
    slots: Arc<Semaphore>,
    /// Where late replies noticed by requests themselves are reported (a
    /// reply handed over as its request was given up).
    late_replies: OnceLock<EventSink>,
    /// The next request's id: one counter for every connection of a
    /// client, so that an id never comes back on a later connection.
    ids: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    /// With ids: the waiting requests by id.
    by_id: HashMap<u64, Waiting, BuildHasherDefault<IdHasher>>,
    /// In ordered mode: the waiting requests, oldest first.
    in_order: VecDeque<(u64, Waiting)>,
    /// The connection has ended: no request is taken any more.
    ended: bool,
    /// Requests were refused from the start (a queue with no connection
    /// yet): they fail with [`Error::Closed`], nothing sent.
    refused: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("waiting", &(self.by_id.len() + self.in_order.len()))
            .field("ended", &self.ended)
            .finish()
    }
}

/// Hashes request ids, which this end hands out itself (a counter): no
/// peer chooses them, so the table needs no protection against
/// collisions made on purpose, only a spread of consecutive numbers (a
/// multiplication by an odd constant, as FxHash does). A reply's id comes
/// from the peer but is only looked up: an unknown one misses.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0.rotate_left(5) ^ id).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// The state under the lock, for a request being registered.
pub(crate) struct Registering<'a>(MutexGuard<'a, State>, &'a AtomicU64);

impl Registering<'_> {
    /// The id the request gets.
    fn next_id(&mut self) -> u64 {
        self.1.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a request to be answered by its id; returns the id.
    pub(crate) fn by_id(mut self, waiting: Waiting) -> u64 {
        let mut id = self.next_id();
        // Ids wrap after 2^64 requests; skip any still waiting.
        while self.0.by_id.contains_key(&id) {
            id = self.next_id();
        }
        self.0.by_id.insert(id, waiting);
        id
    }

    /// Registers a request to be answered by the next frame not taken by
    /// an older one. Call it while still holding the lock under which the
    /// request's frame was queued, so that the order here is the order on
    /// the wire.
    pub(crate) fn in_order(mut self, waiting: Waiting) -> u64 {
        let id = self.next_id();
        if self.0.in_order.capacity() == 0 {
            // Room for one: most links wait for one reply at a time (a
            // heartbeat's), and a first push would make room for four
            // (160 B kept by every connection). It grows as usual.
            self.0.in_order.reserve_exact(1);
        }
        self.0.in_order.push_back((id, waiting));
        id
    }
}

impl Requests {
    /// The table for a connection's requests, if requests are on.
    pub(crate) fn of(wire: &Wire) -> Option<Box<Requests>> {
        (wire.matching() != Matching::Off)
            .then(|| Box::new(Requests::new(wire.max_in_flight(), wire.ids())))
    }

    /// No request in flight; at most `max_in_flight` at a time; ids taken
    /// from `ids`.
    pub(crate) fn new(max_in_flight: usize, ids: Arc<AtomicU64>) -> Self {
        Requests {
            state: Mutex::new(State::default()),
            slots: Arc::new(Semaphore::new(
                max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            late_replies: OnceLock::new(),
            ids,
        }
    }

    /// Takes no request, ever: each fails at once with [`Error::Closed`]
    /// and nothing is sent (the queue a reconnecting client keeps while
    /// down has no connection to send a request on).
    pub(crate) fn refuse(&self) {
        let mut state = self.lock();
        state.ended = true;
        state.refused = true;
        drop(state);
        self.slots.close();
    }

    /// Why a request is not taken once the table has ended.
    fn ended_error(&self) -> Error {
        if self.lock().refused {
            Error::Closed
        } else {
            Error::ConnectionLost
        }
    }

    /// Sets where late replies noticed by requests are reported (once).
    pub(crate) fn report_late_replies_to(&self, events: &EventSink) {
        let _ = self.late_replies.get_or_init(|| events.clone());
    }

    /// Where late replies noticed by requests are reported, once set.
    pub(crate) fn late_replies(&self) -> Option<&EventSink> {
        self.late_replies.get()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics under this lock; if something did, the maps are
        // still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a slot among the requests in flight.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] once the connection has ended
    /// ([`Error::Closed`] if it [refused](Self::refuse) requests).
    pub(crate) async fn slot(&self) -> Result<OwnedSemaphorePermit, Error> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| self.ended_error())
    }

    /// A slot among the requests in flight if one is free now (`None`
    /// also once the connection has ended: [`slot`](Self::slot) says so).
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Locks the table to register a request.
    ///
    /// # Errors
    ///
    /// [`Error::ConnectionLost`] once the connection has ended.
    pub(crate) fn register(&self) -> Result<Registering<'_>, Error> {
        let state = self.lock();
        if state.ended {
            return Err(if state.refused {
                Error::Closed
            } else {
                Error::ConnectionLost
            });
        }
        Ok(Registering(state, &self.ids))
    }

    /// Forgets the request with `id` (its caller gave up), if it still
    /// waits; whether it did.
    pub(crate) fn forget(&self, id: u64) -> bool {
        let waiting = self.lock().by_id.remove(&id);
        waiting.is_some()
    }

    /// The request the reply with `id` answers, if it still waits.
    pub(crate) fn take(&self, id: u64) -> Option<Waiting> {
        self.lock().by_id.remove(&id)
    }

    /// The oldest request waiting in order, with its local id.
    pub(crate) fn take_oldest(&self) -> Option<(u64, Waiting)> {
        self.lock().in_order.pop_front()
    }

    /// The connection has ended: every waiting request fails with
    /// [`Error::ConnectionLost`], and no new one is taken.
    pub(crate) fn end(&self, wire: &Wire) {
        let (by_id, in_order) = {
            let mut state = self.lock();
            state.ended = true;
            (
                std::mem::take(&mut state.by_id),
                std::mem::take(&mut state.in_order),
            )
        };
        self.slots.close();
        let waiting = by_id
            .into_values()
            .chain(in_order.into_iter().map(|(_, w)| w));
        for request in waiting {
            request.answer(wire, Err(Error::ConnectionLost));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Requests, Waiting};

    fn waiting(requests: &Requests) -> Waiting {
        let slot = requests.slots.clone().try_acquire_owned().unwrap();
        Waiting::new(Box::new(|_, _| true), slot)
    }

    /// A link that waits for one reply at a time (a heartbeat's) keeps
    /// room for one request in line, not four (160 B per connection).
    #[test]
    fn a_line_of_one_request_holds_room_for_one() {
        let requests = Requests::new(8, Default::default());
        for _ in 0..3 {
            let id = requests.register().unwrap().in_order(waiting(&requests));
            assert_eq!(requests.lock().in_order.capacity(), 1);
            assert_eq!(requests.take_oldest().map(|(oldest, _)| oldest), Some(id));
        }
        // More at once: it grows, and the oldest still comes first.
        let ids: Vec<u64> = (0..3)
            .map(|_| requests.register().unwrap().in_order(waiting(&requests)))
            .collect();
        for id in ids {
            assert_eq!(requests.take_oldest().map(|(oldest, _)| oldest), Some(id));
        }
    }
}
