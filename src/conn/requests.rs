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
//!
//! Requests by id time out with one timer per connection, not one each: a
//! task of its own (the deadline keeper, started with the first request)
//! sleeps until the earliest deadline it knows of, then fails the requests
//! whose deadline has passed (taking them out of the table, as a reply
//! would) and sleeps until the next. A request registered with a deadline
//! no later than the one the keeper sleeps until costs it nothing (the
//! usual case: one timeout for every request); an earlier one wakes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use foldhash::fast::RandomState;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::conn::events::EventSink;
use crate::conn::wire::{Matching, Wire};
use crate::wire::error::Error;

/// Where a request's reply frame (or the error that replaces it) goes: the
/// waiting task decodes it into its own type. A channel, not a boxed
/// closure that decodes: one allocation per request, not two.
pub(crate) type Answer = tokio::sync::oneshot::Sender<Result<Bytes, Error>>;

/// A request waiting for its reply.
pub(crate) struct Waiting {
    answer: Answer,
    /// When its caller stops waiting (by id: the deadline keeper fails it
    /// then).
    deadline: Instant,
    /// Its slot among the requests in flight, freed with it.
    _slot: OwnedSemaphorePermit,
}

impl Waiting {
    pub(crate) fn new(answer: Answer, deadline: Instant, slot: OwnedSemaphorePermit) -> Self {
        Waiting {
            answer,
            deadline,
            _slot: slot,
        }
    }

    /// Answers the request with `reply`; whether anyone still waited.
    pub(crate) fn answer(self, reply: Result<Bytes, Error>) -> bool {
        self.answer.send(reply).is_ok()
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
    /// Wakes the deadline keeper: an earlier deadline, or the end.
    keeper: Arc<Notify>,
}

/// What registering a request asks of the deadline keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// It will wake in time for the request's deadline.
    Nothing,
    /// It must wake: the request's deadline is earlier than its own.
    Wake,
    /// There is none yet: start it.
    Start,
}

/// The requests a deadline keeper failed, and what it does next.
pub(crate) struct Expired {
    /// Requests whose deadline has passed, out of the table.
    pub(crate) waiting: Vec<Waiting>,
    /// The earliest deadline of those still waiting: sleep until then.
    pub(crate) next: Option<Instant>,
    /// The connection has ended: the keeper stops.
    pub(crate) ended: bool,
}

#[derive(Default)]
struct State {
    /// With ids: the waiting requests by id.
    by_id: HashMap<u64, Waiting, RandomState>,
    /// In ordered mode: the waiting requests, oldest first.
    in_order: VecDeque<(u64, Waiting)>,
    /// The connection has ended: no request is taken any more.
    ended: bool,
    /// Requests were refused from the start (a queue with no connection
    /// yet): they fail with [`Error::Closed`], nothing sent.
    refused: bool,
    /// The deadline keeper was started (and has not stopped).
    keeper: bool,
    /// When the keeper wakes next, if it sleeps until a deadline.
    armed: Option<Instant>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("waiting", &(self.by_id.len() + self.in_order.len()))
            .field("ended", &self.ended)
            .finish()
    }
}

/// The state under the lock, for a request being registered.
pub(crate) struct Registering<'a>(MutexGuard<'a, State>, &'a AtomicU64);

impl Registering<'_> {
    /// The id the request gets.
    fn next_id(&mut self) -> u64 {
        self.1.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a request to be answered by its id (or failed by the
    /// deadline keeper at its deadline); returns the id, and what the
    /// keeper must be told.
    pub(crate) fn by_id(mut self, waiting: Waiting) -> (u64, Keep) {
        let mut id = self.next_id();
        // Ids wrap after 2^64 requests; skip any still waiting.
        while self.0.by_id.contains_key(&id) {
            id = self.next_id();
        }
        let deadline = waiting.deadline;
        self.0.by_id.insert(id, waiting);
        let state = &mut *self.0;
        let keep = if !state.keeper {
            state.keeper = true;
            Keep::Start
        } else if state.armed.is_some_and(|armed| armed <= deadline) {
            return (id, Keep::Nothing);
        } else {
            Keep::Wake
        };
        state.armed = Some(deadline);
        (id, keep)
    }

    /// Registers a request to be answered by the next frame not taken by
    /// an older one. Call it as the request's frame is queued, under the
    /// queue's lock (and before any of the frame can be written), so that
    /// the order here is the order on the wire.
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
            keeper: Arc::new(Notify::new()),
        }
    }

    /// What wakes the deadline keeper (for the keeper itself).
    pub(crate) fn keeper(&self) -> Arc<Notify> {
        self.keeper.clone()
    }

    /// Wakes the deadline keeper (see [`Keep::Wake`]).
    pub(crate) fn wake_keeper(&self) {
        self.keeper.notify_one();
    }

    /// For the deadline keeper, at `now`: takes the requests by id whose
    /// deadline has passed out of the table, and says when to look again.
    pub(crate) fn expire(&self, now: Instant) -> Expired {
        let mut state = self.lock();
        if state.ended {
            state.keeper = false;
            state.armed = None;
            return Expired {
                waiting: Vec::new(),
                next: None,
                ended: true,
            };
        }
        let waiting = state
            .by_id
            .extract_if(|_, waiting| waiting.deadline <= now)
            .map(|(_, waiting)| waiting)
            .collect();
        let next = state.by_id.values().map(|waiting| waiting.deadline).min();
        state.armed = next;
        Expired {
            waiting,
            next,
            ended: false,
        }
    }

    /// The deadline keeper is gone without the connection's end (its
    /// runtime shut down): the next request starts another.
    pub(crate) fn keeper_gone(&self) {
        let mut state = self.lock();
        state.keeper = false;
        state.armed = None;
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
    pub(crate) fn end(&self) {
        let (by_id, in_order) = {
            let mut state = self.lock();
            state.ended = true;
            self.keeper.notify_one();
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
            request.answer(Err(Error::ConnectionLost));
        }
    }
}

impl Drop for Requests {
    /// Lets a deadline keeper waiting for a wake-up see that the
    /// connection is gone (one that never ended: dropped unfinished).
    fn drop(&mut self) {
        self.keeper.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::{Requests, Waiting};

    fn waiting(requests: &Requests) -> Waiting {
        let slot = requests.slots.clone().try_acquire_owned().unwrap();
        Waiting::new(
            tokio::sync::oneshot::channel().0,
            tokio::time::Instant::now(),
            slot,
        )
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
