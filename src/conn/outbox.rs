//! A connection's bounded outgoing queue: the one way bytes reach its socket.
//!
//! Everything a connection sends goes through it: other tasks' sends
//! ([`ConnectionHandle`](crate::ConnectionHandle), server `send_to` and
//! `broadcast`, `Client::send`) and its own handler's replies. Senders
//! encode straight into one byte buffer under a short lock; the
//! connection's write side takes the whole buffer at once (a swap, no copy)
//! and writes it.
//!
//! Writing through: on plain TCP a sending task may write what is queued to
//! the socket itself, without waiting ([`DirectWrite`]), when the write
//! side holds nothing (no byte taken and not yet written), *under the
//! queue's lock*, where the write side takes. So the socket has one writer
//! at a time, and every byte leaves in queue order: the write side takes
//! whatever the socket did not take. Frames never interleave. A batch
//! (`send_all`) always tries; a lone send only if the connection has read
//! a frame since the last lone send that wrote through
//! ([`Outbox::read_some`]): in request-reply exchanges that saves the hop
//! through the connection task, while in a one-way stream lone sends stay
//! queued and the write side gathers them into large writes. Handler
//! replies never write through (the write side runs right after the
//! handler, in the same task). `loom-models/` checks the rule under every
//! interleaving.
//!
//! The bound counts *unsent* bytes: what is queued plus what the write side
//! has taken but not yet written.
//!
//! - Other tasks add a frame while fewer than `limit` bytes are unsent
//!   ([`Outbox::try_push`]), or wait for room ([`Outbox::push`]).
//! - The handler's replies ([`Outbox::push_reply`]) are always taken: a
//!   handler cannot wait inside a synchronous `send`. Instead the read side
//!   stops handing frames to the handler while twice `limit` bytes are
//!   unsent ([`Outbox::poll_reader_room`]), so what one connection's
//!   handler queues is bounded too, and the pause is backpressure on the
//!   peer. Twice, so that a peer that keeps the queue full with sends
//!   never stops its own connection from reading.
//! - The write side reports each write ([`Outbox::wrote`]), which wakes
//!   the senders and the read side waiting for room.
//!
//! Frames are counted as well as bytes, for a sender to see what became of
//! them: the queue keeps where each frame it holds ends (a position in all
//! the bytes ever queued), and tells its [`Tally`] when frames are written
//! (through, or by the write side once it has written all it took) and when
//! they are lost (queued or partly written when the connection ended).
//!
//! Phases: open; closed (other tasks' sends fail with `Closed`, replies are
//! still taken); finished (nothing more is taken; the write side writes
//! what is left, then ends).
//!
//! Answers owed: a [`Replier`](crate::conn::handler::Replier) made while the outbox is open
//! or closed is *owed* ([`Outbox::owe`]) until it answers or is dropped
//! ([`Outbox::paid`]). Its answer is taken while closed too (like a reply,
//! whatever the bound). With [`Outbox::hold_for_answers`] (a server's
//! graceful shutdown), [`finish`](Outbox::finish) waits for every answer
//! owed: the outbox stays closed, taking those answers and nothing else,
//! and finishes when the last is paid.
//!
//! This file imports nothing of the runtime but its sync primitives
//! (`conn/sync.rs`) and the [`DirectWrite`] trait (`transport/direct.rs`),
//! so that `loom-models/` can check its protocol under every interleaving.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use crate::conn::sync::{AtomicU8, AtomicUsize, AtomicWaker, Mutex, MutexGuard, Ordering};
use crate::transport::direct::DirectWrite;

/// Wire bytes a batch send encodes under one lock before it lets the write
/// side take them.
const BATCH_BYTES: usize = 16 * 1024;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError<E> {
    /// The outbox is closed: the connection is closing or has ended.
    Closed,
    /// `limit` bytes or more are unsent (only from `try_` pushes).
    Full,
    /// The writing closure failed; nothing of it was queued.
    Write(E),
}

/// What became of frames: told to the queue's [`Tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frames {
    /// This many were written to the socket, whole.
    Written(u64),
    /// This many were lost: queued (or partly written) when the connection
    /// ended, or queued after it had.
    Lost(u64),
}

/// Where a queue reports what became of its frames (the server's or
/// client's counters).
pub(crate) struct Tally(Box<dyn Fn(Frames) + Send + Sync>);

impl Tally {
    pub(crate) fn new(f: impl Fn(Frames) + Send + Sync + 'static) -> Self {
        Tally(Box::new(f))
    }
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tally")
    }
}

/// Frames taken out of a queue no write side serves (see
/// [`Outbox::drain`]), to be queued on another.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    bytes: BytesMut,
    /// Where each frame ends in `bytes`.
    ends: Vec<u64>,
}

impl Kept {
    /// How many frames.
    pub(crate) fn frames(&self) -> u64 {
        self.ends.len() as u64
    }
}

/// What the write side gets from [`Outbox::poll_take`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Bytes to write were moved into the buffer.
    Bytes,
    /// Nothing is left and nothing more will come: end the write side.
    Finished,
}

/// A connection's outgoing queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Unsent bytes above which other tasks' sends wait.
    limit: usize,
    /// The write side, woken when bytes are queued into an empty queue or
    /// when the outbox finishes.
    writer: AtomicWaker,
    /// Hints read without the lock, written under it: [`QUEUED`] (the
    /// write side has something to take), [`FINISHED`], [`OVER`] (the read
    /// side should pause). The lock decides; a stale hint only costs a
    /// lock (or, for `OVER`, lets one more frame through).
    hints: AtomicU8,
    /// Bytes the write side has taken and not yet written, and the
    /// [`WAITING`] bit: someone is registered to be woken when there is
    /// room. One word, so that reporting a write takes no lock unless
    /// someone waits: a registrant sets the bit (under the lock) with the
    /// same read-modify-write that reads the bytes in flight, and
    /// [`wrote`](Outbox::wrote) lowers the bytes with one that reads the
    /// bit, so one of the two always sees the other.
    flight: AtomicUsize,
    /// 1 once the connection has read a frame since a lone send last wrote
    /// through (see [`Outbox::read_some`]).
    answered: AtomicU8,
    /// Frames the write side has taken and not yet written all of: told
    /// written when [`wrote`](Outbox::wrote) brings the bytes in flight
    /// to zero.
    flight_frames: AtomicUsize,
    /// Where frames are told, if anywhere.
    tally: Option<Tally>,
}

/// The top bit of [`Outbox::flight`].
const WAITING: usize = !(usize::MAX >> 1);

const QUEUED: u8 = 1;
const FINISHED: u8 = 2;
const OVER: u8 = 4;

#[derive(Debug, Default)]
struct State {
    /// Encoded frames the write side has not taken yet.
    queued: BytesMut,
    phase: Phase,
    /// Senders waiting for room, by waiter id.
    waiters: Vec<(u64, Waker)>,
    /// The id of the next waiter.
    next_waiter: u64,
    /// The read side, waiting for the replies to drain.
    reader: Option<Waker>,
    /// The socket, for sends that write through (while open).
    direct: Option<std::sync::Arc<dyn DirectWrite>>,
    /// Answers owed by repliers (see the module docs).
    owed: usize,
    /// `finish` waits for the answers owed.
    hold: bool,
    /// `finish` was asked and waits for the answers owed: only they are
    /// taken.
    finishing: bool,
    /// Bytes that batch senders have reserved and are encoding outside the
    /// lock (see [`Outbox::try_push_some`]): counted against the bound.
    reserved: usize,
    /// Every byte ever queued: the position just past `queued`'s end.
    pushed: u64,
    /// Where each frame of `queued` ends (positions, as `pushed`).
    ends: VecDeque<u64>,
    /// Where each frame the write side took last ends (stale once
    /// `flight_frames` is zero).
    flight_ends: VecDeque<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    Open,
    /// Other tasks' sends fail; the handler's replies are still taken.
    Closed,
    /// Nothing more is taken.
    Finished,
}

impl State {
    /// Appends one frame with `write`; on error nothing of it stays.
    /// Returns whether the queue was empty before (the write side must
    /// then be woken).
    fn append<E>(
        &mut self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<bool, PushError<E>> {
        let before = self.queued.len();
        match write(&mut self.queued) {
            Ok(()) => {
                self.ended((self.queued.len() - before) as u64);
                Ok(before == 0 && !self.queued.is_empty())
            }
            Err(error) => {
                self.queued.truncate(before);
                Err(PushError::Write(error))
            }
        }
    }

    /// A frame of `len` bytes was appended to `queued`.
    fn ended(&mut self, len: u64) {
        if len > 0 {
            self.pushed += len;
            self.ends.push_back(self.pushed);
        }
    }

    /// The position of the first byte of `queued`.
    fn queued_from(&self) -> u64 {
        self.pushed - self.queued.len() as u64
    }

    /// Takes the wakers of everyone waiting for room.
    fn waiting(&mut self) -> (Vec<(u64, Waker)>, Option<Waker>) {
        (std::mem::take(&mut self.waiters), self.reader.take())
    }
}

fn wake_all((waiters, reader): (Vec<(u64, Waker)>, Option<Waker>)) {
    for (_, waker) in waiters {
        waker.wake();
    }
    if let Some(reader) = reader {
        reader.wake();
    }
}

impl Outbox {
    /// An open outbox whose senders wait past `limit` unsent bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            limit,
            writer: AtomicWaker::new(),
            hints: AtomicU8::new(0),
            flight: AtomicUsize::new(0),
            answered: AtomicU8::new(0),
            flight_frames: AtomicUsize::new(0),
            tally: None,
        }
    }

    /// Tells `tally` what becomes of the frames queued.
    pub(crate) fn counting(mut self, tally: Tally) -> Self {
        self.tally = Some(tally);
        self
    }

    fn tell(&self, frames: Frames) {
        if let (Some(tally), Frames::Written(n) | Frames::Lost(n)) = (&self.tally, frames) {
            if n > 0 {
                (tally.0)(frames);
            }
        }
    }

    /// Lets senders write through to `socket` (see [`write_through`]):
    /// for sockets whose writes keep no state of their own (plain TCP).
    ///
    /// [`write_through`]: Self::write_through
    pub(crate) fn set_direct(&self, socket: std::sync::Arc<dyn DirectWrite>) {
        let mut state = self.lock();
        if state.phase == Phase::Open {
            state.direct = Some(socket);
        }
    }

    /// No more writes through (the write side is gone: its socket must not
    /// outlive it here).
    pub(crate) fn forget_direct(&self) {
        self.lock().direct = None;
    }

    /// For the read side: the connection has read a frame, so the next lone
    /// send may write through (a request-reply exchange: its sender would
    /// otherwise wait for the connection task). In a one-way stream lone
    /// sends stay in the queue, where the write side gathers them into
    /// large writes.
    #[inline]
    pub(crate) fn read_some(&self) {
        if self.answered.load(Ordering::Relaxed) == 0 {
            self.answered.store(1, Ordering::Relaxed);
        }
    }

    /// Writes what is queued straight to the socket, if it may be written
    /// through and the write side holds nothing: under the lock, where the
    /// write side takes, so that the socket has one writer at a time and
    /// writes the queue's bytes in their order (the write side takes what
    /// the socket did not). Returns whether anything was written.
    fn write_through(&self, state: &mut State) -> bool {
        let Some(socket) = &state.direct else {
            return false;
        };
        if state.queued.is_empty() || self.flight.load(Ordering::Acquire) & !WAITING != 0 {
            return false;
        }
        match socket.try_write(&state.queued) {
            Ok(n) if n > 0 => {
                bytes::Buf::advance(&mut state.queued, n);
                let written = state.queued_from();
                let mut whole = 0;
                while state.ends.front().is_some_and(|end| *end <= written) {
                    state.ends.pop_front();
                    whole += 1;
                }
                self.tell(Frames::Written(whole));
                if state.queued.is_empty() && state.queued.capacity() > BATCH_BYTES * 4 {
                    // After a large frame: do not keep its buffer.
                    state.queued = BytesMut::new();
                }
                true
            }
            // Full (or failing): the write side waits for room (or meets
            // the error) as usual.
            _ => false,
        }
    }

    /// Unsent bytes: queued (`state`, under its lock) and in flight.
    fn unsent_of(&self, state: &State) -> usize {
        state.queued.len() + (self.flight.load(Ordering::Acquire) & !WAITING)
    }

    /// What other tasks' sends count against the bound: unsent bytes and
    /// the room batch senders have reserved.
    fn bound_used(&self, state: &State) -> usize {
        self.unsent_of(state) + state.reserved
    }

    /// For someone about to register for room (under the lock): sets the
    /// [`WAITING`] bit and returns the unsent bytes as of that moment.
    fn unsent_waiting(&self, state: &State) -> usize {
        state.queued.len() + (self.flight.fetch_or(WAITING, Ordering::AcqRel) & !WAITING)
    }

    /// Clears the [`WAITING`] bit if nobody is registered (under the lock,
    /// where everyone registers).
    fn settle_waiting(&self, state: &State) {
        if state.waiters.is_empty() && state.reader.is_none() {
            self.flight.fetch_and(!WAITING, Ordering::AcqRel);
        }
    }

    /// Sets the hints from `state` (under its lock).
    fn hint(&self, state: &State) {
        let mut hints = 0;
        if !state.queued.is_empty() {
            hints |= QUEUED;
        }
        if state.phase == Phase::Finished {
            hints |= FINISHED;
        }
        if self.unsent_of(state) >= self.limit.saturating_mul(2) {
            hints |= OVER;
        }
        self.hints.store(hints, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves only bytes behind: go on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bound of other tasks' sends, in unsent bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Unsent bytes now: queued, or taken and not yet written.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn unsent(&self) -> usize {
        let state = self.lock();
        self.unsent_of(&state)
    }

    /// Appends a frame with `write` if the outbox is open and has room now.
    ///
    /// # Errors
    ///
    /// [`PushError::Closed`], [`PushError::Full`], or what `write` returns.
    pub(crate) fn try_push<E>(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        self.try_push_as(false, write)
    }

    /// Appends the answer of a replier that still owes it (see the module
    /// docs): while open, as [`try_push`](Self::try_push); once closed,
    /// like a reply, whatever the bound, until the outbox has finished.
    ///
    /// # Errors
    ///
    /// As [`try_push`](Self::try_push).
    pub(crate) fn try_push_answer<E>(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        self.try_push_as(true, write)
    }

    /// [`try_push`](Self::try_push), or, for an `answer` owed,
    /// [`try_push_answer`](Self::try_push_answer).
    fn try_push_as<E>(
        &self,
        answer: bool,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let mut state = self.lock();
        if answer && state.phase == Phase::Closed {
            let wake = state.append(write)?;
            self.hint(&state);
            drop(state);
            if wake {
                self.writer.wake();
            }
            return Ok(());
        }
        if state.phase != Phase::Open {
            return Err(PushError::Closed);
        }
        if self.bound_used(&state) >= self.limit {
            return Err(PushError::Full);
        }
        let mut wake = state.append(write)?;
        if state.direct.is_some()
            && self.answered.load(Ordering::Relaxed) == 1
            && self.write_through(&mut state)
        {
            self.answered.store(0, Ordering::Relaxed);
            wake &= !state.queued.is_empty();
        }
        self.hint(&state);
        drop(state);
        if wake {
            self.writer.wake();
        }
        Ok(())
    }

    /// Appends a frame with `write`, waiting while `limit` bytes or more are
    /// unsent.
    ///
    /// # Errors
    ///
    /// [`PushError::Closed`], or what `write` returns.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is queued unless the future completes.
    pub(crate) async fn push<E>(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        self.push_as(false, write).await
    }

    /// Appends the answer of a replier that still owes it: as
    /// [`push`](Self::push) while open, then as
    /// [`try_push_answer`](Self::try_push_answer).
    ///
    /// # Errors
    ///
    /// As [`push`](Self::push).
    ///
    /// # Cancel safety
    ///
    /// As [`push`](Self::push).
    pub(crate) async fn push_answer<E>(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        self.push_as(true, write).await
    }

    async fn push_as<E>(
        &self,
        answer: bool,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        let mut write = Some(write);
        loop {
            let attempt = self.try_push_as(answer, |buf| match write.take() {
                Some(write) => write(buf),
                None => Ok(()),
            });
            match attempt {
                Err(PushError::Full) => self.room().await,
                other => return other,
            }
        }
    }

    /// Appends one frame per item with `write`, in order: as many under one
    /// lock as fit (at most about [`BATCH_BYTES`] at a time, so that the
    /// write side can start), waiting for room in between. An item is added
    /// only while fewer than `limit` bytes are unsent, as for single pushes.
    ///
    /// Returns how many items were queued and the error that stopped it, if
    /// any (nothing of the failing item is queued, nor of those after it).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped, the items queued so far stay queued.
    pub(crate) async fn push_all<T, E>(
        &self,
        items: impl IntoIterator<Item = T>,
        mut write: impl FnMut(T, &mut BytesMut) -> Result<(), E>,
    ) -> (u64, Result<(), PushError<E>>) {
        let mut items = items.into_iter().peekable();
        let mut queued = 0;
        while items.peek().is_some() {
            match self.try_push_some(&mut items, &mut write, &mut queued) {
                Ok(()) => {}
                Err(PushError::Full) => self.room().await,
                Err(error) => return (queued, Err(error)),
            }
        }
        (queued, Ok(()))
    }

    /// One batch of [`push_all`](Self::push_all): items are encoded
    /// outside the lock, into a buffer of their own, up to the room there
    /// was (at most [`BATCH_BYTES`]), then appended under a short lock (a
    /// swap when the queue is empty), so that the write side never waits
    /// for a batch being encoded. The room is reserved while the batch is
    /// encoded, so that senders encoding at the same time share it instead
    /// of each taking all of it: the bound holds as for single pushes, by
    /// one item per sender encoding at the same time (the item that crosses
    /// its reservation).
    fn try_push_some<I: Iterator, E>(
        &self,
        items: &mut std::iter::Peekable<I>,
        write: &mut impl FnMut(I::Item, &mut BytesMut) -> Result<(), E>,
        queued: &mut u64,
    ) -> Result<(), PushError<E>> {
        let room = {
            let mut state = self.lock();
            if state.phase != Phase::Open {
                return Err(PushError::Closed);
            }
            let used = self.bound_used(&state);
            if used >= self.limit {
                return Err(PushError::Full);
            }
            let room = (self.limit - used).min(BATCH_BYTES);
            state.reserved += room;
            room
        };
        // Given back under the lock below, or if encoding panics.
        let mut reservation = Reservation {
            outbox: self,
            bytes: room,
        };
        let mut batch = BytesMut::with_capacity(room.min(BATCH_BYTES) + 256);
        // Where each item ends in the batch.
        let mut ends = Vec::new();
        let mut encoded = 0;
        let mut result = Ok(());
        while batch.len() < room {
            let Some(item) = items.next() else { break };
            let before = batch.len();
            if let Err(error) = write(item, &mut batch) {
                batch.truncate(before);
                result = Err(PushError::Write(error));
                break;
            }
            if batch.len() > before {
                ends.push(batch.len() as u64);
            }
            encoded += 1;
        }
        let mut state = self.lock();
        state.reserved -= std::mem::take(&mut reservation.bytes);
        if state.phase != Phase::Open {
            // Closed meanwhile: this batch is not queued.
            return Err(PushError::Closed);
        }
        // Less than was reserved: room for those waiting.
        let senders = if batch.len() < room && self.bound_used(&state) < self.limit {
            std::mem::take(&mut state.waiters)
        } else {
            Vec::new()
        };
        let was_empty = state.queued.is_empty();
        let from = state.pushed;
        state.pushed += batch.len() as u64;
        state.ends.extend(ends.into_iter().map(|end| from + end));
        if was_empty {
            state.queued = batch;
        } else {
            state.queued.extend_from_slice(&batch);
        }
        // A batch is worth a write of its own: through, if the write side
        // holds nothing.
        self.write_through(&mut state);
        let wake = was_empty && !state.queued.is_empty();
        *queued += encoded;
        self.settle_waiting(&state);
        self.hint(&state);
        drop(state);
        wake_all((senders, None));
        if wake {
            self.writer.wake();
        }
        result
    }

    /// Appends a reply of the connection's own handler with `write`,
    /// whatever the bound (see the module docs). Once the outbox has
    /// finished, replies can no longer be sent: they are dropped (`Ok`).
    ///
    /// # Errors
    ///
    /// What `write` returns; nothing of it is queued then.
    pub(crate) fn push_reply<E>(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        self.push_reply_as(false, write)
    }

    /// [`push_reply`](Self::push_reply) for the error reply of an answer
    /// owed (a `Replier` dropped unanswered: see the module docs): taken
    /// while [`finish`](Self::finish) waits for the answers owed too, like
    /// [`try_push_answer`](Self::try_push_answer), but without waiting and
    /// whatever the bound. Once the outbox has finished it is not made at
    /// all (no sender accepted it, so it is not counted lost).
    pub(crate) fn push_owed_reply<E>(
        &self,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        self.push_reply_as(true, write)
    }

    fn push_reply_as<E>(
        &self,
        owed: bool,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut state = self.lock();
        if state.phase == Phase::Finished || (state.finishing && !owed) {
            drop(state);
            if !owed {
                self.tell(Frames::Lost(1));
            }
            return Ok(());
        }
        match state.append(write) {
            Ok(wake) => {
                self.hint(&state);
                drop(state);
                if wake {
                    self.writer.wake();
                }
                Ok(())
            }
            Err(PushError::Write(error)) => Err(error),
            Err(PushError::Closed | PushError::Full) => Ok(()),
        }
    }

    /// Waits until fewer than `limit` bytes are unsent, or the outbox is
    /// closed.
    pub(crate) fn room(&self) -> Room<'_> {
        Room {
            outbox: self,
            id: None,
        }
    }

    /// For the read side: ready while fewer than twice `limit` bytes are
    /// unsent (or once the outbox has finished); registers `cx` to be woken
    /// when that holds again otherwise.
    #[inline]
    pub(crate) fn poll_reader_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Checked at every frame: inlined, the usual case is one load.
        if self.hints.load(Ordering::Acquire) & OVER == 0 {
            return Poll::Ready(());
        }
        self.poll_reader_room_over(cx)
    }

    /// [`poll_reader_room`](Self::poll_reader_room) once the hint says
    /// over: checked under the lock.
    #[inline(never)]
    fn poll_reader_room_over(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if self.unsent_waiting(&state) < self.limit.saturating_mul(2)
            || state.phase == Phase::Finished
            || state.finishing
        {
            state.reader = None;
            self.hint(&state);
            self.settle_waiting(&state);
            return Poll::Ready(());
        }
        match &mut state.reader {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            reader => *reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// For the write side: moves everything queued into `dst`, which must
    /// be empty (a swap: `dst`'s allocation is reused by the queue), and
    /// counts it as in flight until [`wrote`](Self::wrote) says otherwise.
    /// `Finished` once nothing is left and nothing more will come; pending
    /// (with `cx` registered) while the queue is empty.
    pub(crate) fn poll_take(&self, dst: &mut BytesMut, cx: &mut Context<'_>) -> Poll<Take> {
        if let Some(take) = self.take(dst) {
            return Poll::Ready(take);
        }
        self.writer.register(cx.waker());
        match self.take(dst) {
            Some(take) => Poll::Ready(take),
            None => Poll::Pending,
        }
    }

    /// Forgets the write side's waker until its next [`poll_take`](Self::poll_take):
    /// for a connection task about to poll its write side again anyway, so
    /// that what it queues meanwhile does not wake it needlessly.
    pub(crate) fn quiet_writer(&self) {
        drop(self.writer.take());
    }

    fn take(&self, dst: &mut BytesMut) -> Option<Take> {
        debug_assert!(dst.is_empty(), "take into a buffer not yet written");
        if self.hints.load(Ordering::Acquire) & (QUEUED | FINISHED) == 0 {
            return None;
        }
        let mut state = self.lock();
        if !state.queued.is_empty() {
            std::mem::swap(&mut state.queued, dst);
            // The frames taken before are written (the write side takes
            // again only once it has written all it took): told already.
            let state = &mut *state;
            state.flight_ends.clear();
            std::mem::swap(&mut state.ends, &mut state.flight_ends);
            self.flight_frames
                .store(state.flight_ends.len(), Ordering::Release);
            self.flight.fetch_add(dst.len(), Ordering::AcqRel);
            self.hint(state);
            return Some(Take::Bytes);
        }
        (state.phase == Phase::Finished).then_some(Take::Finished)
    }

    /// For the write side: `n` bytes taken were written. Wakes the senders
    /// and the read side waiting for room, if there is room now.
    pub(crate) fn wrote(&self, n: usize) {
        let before = self.flight.fetch_sub(n, Ordering::AcqRel);
        if before & !WAITING == n {
            // All it took is written: so are its frames.
            let frames = self.flight_frames.swap(0, Ordering::AcqRel);
            self.tell(Frames::Written(frames as u64));
        }
        if before & WAITING == 0 {
            // Nobody waits: no lock. (The read side's hint may stay set a
            // little longer; it then looks under the lock.)
            return;
        }
        let mut state = self.lock();
        let unsent = self.unsent_of(&state);
        let senders = if unsent + state.reserved < self.limit {
            std::mem::take(&mut state.waiters)
        } else {
            Vec::new()
        };
        let reader = if unsent < self.limit.saturating_mul(2) {
            state.reader.take()
        } else {
            None
        };
        self.settle_waiting(&state);
        self.hint(&state);
        drop(state);
        wake_all((senders, reader));
    }

    /// Refuses other tasks' sends from now on (the handler's replies are
    /// still taken); wakes the senders waiting for room, which then fail.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Closed;
        }
        state.direct = None;
        let waiting = state.waiting();
        drop(state);
        wake_all(waiting);
    }

    /// Takes nothing more: the write side writes what is queued, then
    /// ends. With [`hold_for_answers`](Self::hold_for_answers), while
    /// answers are owed: closes, takes only those answers, and finishes
    /// once the last is paid.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        if state.hold && state.owed > 0 && state.phase != Phase::Finished {
            state.phase = Phase::Closed;
            state.finishing = true;
            state.direct = None;
            self.hint(&state);
            let waiting = state.waiting();
            drop(state);
            wake_all(waiting);
            return;
        }
        state.phase = Phase::Finished;
        state.finishing = false;
        state.direct = None;
        self.hint(&state);
        let waiting = state.waiting();
        drop(state);
        wake_all(waiting);
        self.writer.wake();
    }

    /// The connection has ended: drops what was not written (and its
    /// memory) and takes nothing more.
    pub(crate) fn abandon(&self) {
        let mut state = self.lock();
        state.phase = Phase::Finished;
        state.finishing = false;
        // Written: up to what is queued and what the write side took and
        // has not written yet. Frames ending past it are lost.
        let in_flight = (self.flight.load(Ordering::Acquire) & !WAITING) as u64;
        let written = state.queued_from() - in_flight;
        let mut lost = state.ends.len() as u64;
        let mut whole = 0;
        if self.flight_frames.swap(0, Ordering::AcqRel) != 0 {
            for end in &state.flight_ends {
                if *end <= written {
                    whole += 1;
                } else {
                    lost += 1;
                }
            }
        }
        state.ends = VecDeque::new();
        state.flight_ends = VecDeque::new();
        state.queued = BytesMut::new();
        state.direct = None;
        self.flight.store(0, Ordering::Release);
        self.tell(Frames::Written(whole));
        self.tell(Frames::Lost(lost));
        self.hint(&state);
        let waiting = state.waiting();
        drop(state);
        wake_all(waiting);
    }

    /// For an outbox no write side serves (a reconnecting client's queue
    /// while it is down): takes nothing more and returns everything queued;
    /// senders waiting for room are woken and fail.
    pub(crate) fn drain(&self) -> Kept {
        let mut state = self.lock();
        state.phase = Phase::Finished;
        state.finishing = false;
        state.direct = None;
        let from = state.queued_from();
        let ends = std::mem::take(&mut state.ends)
            .into_iter()
            .map(|end| end - from)
            .collect();
        let queued = Kept {
            bytes: std::mem::take(&mut state.queued),
            ends,
        };
        self.hint(&state);
        let waiting = state.waiting();
        drop(state);
        wake_all(waiting);
        queued
    }

    /// Appends frames already framed (what [`drain`](Self::drain) returned
    /// from another outbox), whatever the bound, like replies (lost if the
    /// outbox has finished).
    pub(crate) fn push_kept(&self, kept: Kept) {
        let mut state = self.lock();
        if state.phase == Phase::Finished {
            drop(state);
            self.tell(Frames::Lost(kept.frames()));
            return;
        }
        let was_empty = state.queued.is_empty();
        let from = state.pushed;
        state.pushed += kept.bytes.len() as u64;
        state.ends.extend(kept.ends.iter().map(|end| from + end));
        state.queued.extend_from_slice(&kept.bytes);
        let wake = was_empty && !state.queued.is_empty();
        self.hint(&state);
        drop(state);
        if wake {
            self.writer.wake();
        }
    }

    /// Whether replies are still taken ([`push_reply`](Self::push_reply)
    /// queues them): not once the outbox finishes.
    pub(crate) fn takes_replies(&self) -> bool {
        let state = self.lock();
        !(state.phase == Phase::Finished || state.finishing)
    }

    /// Whether other tasks' sends are refused (closing or ended).
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().phase != Phase::Open
    }

    /// A replier was made: registers the answer it owes, unless the outbox
    /// is finishing or has finished (frames that arrive then cannot be
    /// answered). Returns whether it was registered; if so, call
    /// [`paid`](Self::paid) once, when it answers or is dropped.
    pub(crate) fn owe(&self) -> bool {
        let mut state = self.lock();
        if state.phase == Phase::Finished || state.finishing {
            return false;
        }
        state.owed += 1;
        true
    }

    /// An answer owed was given, or will never be (its replier is gone): a
    /// [`finish`](Self::finish) that waited for it goes on if it was the
    /// last.
    pub(crate) fn paid(&self) {
        let mut state = self.lock();
        state.owed = state.owed.saturating_sub(1);
        let go_on = state.owed == 0 && state.finishing;
        drop(state);
        if go_on {
            self.finish();
        }
    }

    /// Answers owed now.
    pub(crate) fn owed(&self) -> usize {
        self.lock().owed
    }

    /// From now on [`finish`](Self::finish) waits for the answers owed (a
    /// server's graceful shutdown, whose deadline bounds the wait).
    pub(crate) fn hold_for_answers(&self) {
        self.lock().hold = true;
    }
}

/// Room a batch sender reserved: given back when it is dropped (normally
/// under the lock where the batch is appended, with `bytes` set to 0
/// there; here if encoding panicked).
struct Reservation<'a> {
    outbox: &'a Outbox,
    bytes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut state = self.outbox.lock();
            state.reserved -= self.bytes;
            let waiting = state.waiting();
            drop(state);
            wake_all(waiting);
        }
    }
}

/// Waits for room in an [`Outbox`]: made by [`Outbox::room`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Room<'a> {
    outbox: &'a Outbox,
    /// Our entry in the waiter list, once registered.
    id: Option<u64>,
}

impl Future for Room<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let outbox = self.outbox;
        let mut state = outbox.lock();
        let position = self
            .id
            .and_then(|id| state.waiters.iter().position(|(w, _)| *w == id));
        if state.phase != Phase::Open
            || outbox.unsent_waiting(&state) + state.reserved < outbox.limit
        {
            if let Some(position) = position {
                state.waiters.swap_remove(position);
            }
            outbox.settle_waiting(&state);
            self.id = None;
            return Poll::Ready(());
        }
        match position {
            Some(position) => {
                let waker = &mut state.waiters[position].1;
                if !waker.will_wake(cx.waker()) {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let id = state.next_waiter;
                state.next_waiter += 1;
                state.waiters.push((id, cx.waker().clone()));
                self.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut state = self.outbox.lock();
            if let Some(position) = state.waiters.iter().position(|(w, _)| *w == id) {
                state.waiters.swap_remove(position);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    type Result = std::result::Result<(), PushError<()>>;

    fn push(outbox: &Outbox, bytes: &[u8]) -> Result {
        outbox.try_push(|b| {
            b.extend_from_slice(bytes);
            Ok(())
        })
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    fn take(outbox: &Outbox) -> Option<Vec<u8>> {
        let (_, waker) = counting_waker();
        let mut buf = BytesMut::new();
        match outbox.poll_take(&mut buf, &mut Context::from_waker(&waker)) {
            Poll::Ready(Take::Bytes) => {
                outbox.wrote(buf.len());
                Some(buf.to_vec())
            }
            Poll::Ready(Take::Finished) | Poll::Pending => None,
        }
    }

    #[test]
    fn the_bound_counts_bytes_taken_but_not_yet_written() {
        let outbox = Outbox::new(4);
        push(&outbox, b"abcd").unwrap();
        assert_eq!(push(&outbox, b"e"), Err(PushError::Full));
        let (_, waker) = counting_waker();
        let mut in_flight = BytesMut::new();
        let poll = outbox.poll_take(&mut in_flight, &mut Context::from_waker(&waker));
        assert_eq!(poll, Poll::Ready(Take::Bytes));
        assert_eq!(&in_flight[..], b"abcd");
        // Taken, not written: still unsent, still full.
        assert_eq!(outbox.unsent(), 4);
        assert_eq!(push(&outbox, b"e"), Err(PushError::Full));
        outbox.wrote(3);
        push(&outbox, b"e").unwrap();
        assert_eq!(outbox.unsent(), 2);
    }

    /// An outbox whose tally adds up what it is told: (written, lost).
    fn tallied(limit: usize) -> (Outbox, Arc<std::sync::Mutex<(u64, u64)>>) {
        let told = Arc::new(std::sync::Mutex::new((0, 0)));
        let into = told.clone();
        let outbox = Outbox::new(limit).counting(Tally::new(move |frames| {
            let mut told = into.lock().unwrap();
            match frames {
                Frames::Written(n) => told.0 += n,
                Frames::Lost(n) => told.1 += n,
            }
        }));
        (outbox, told)
    }

    #[test]
    fn frames_are_told_written_once_all_their_bytes_are() {
        let (outbox, told) = tallied(64);
        for frame in [&b"aaa\n"[..], b"bb\n", b"c\n"] {
            push(&outbox, frame).unwrap();
        }
        let (_, waker) = counting_waker();
        let mut in_flight = BytesMut::new();
        let poll = outbox.poll_take(&mut in_flight, &mut Context::from_waker(&waker));
        assert_eq!(poll, Poll::Ready(Take::Bytes));
        outbox.wrote(5); // the first frame and one byte of the second
        assert_eq!(
            *told.lock().unwrap(),
            (0, 0),
            "told before the buffer is written"
        );
        outbox.wrote(4);
        assert_eq!(*told.lock().unwrap(), (3, 0));
    }

    #[test]
    fn an_abandoned_outbox_tells_what_was_written_and_what_was_lost() {
        let (outbox, told) = tallied(64);
        for frame in [&b"aaa\n"[..], b"bb\n", b"c\n"] {
            push(&outbox, frame).unwrap();
        }
        let (_, waker) = counting_waker();
        let mut in_flight = BytesMut::new();
        let poll = outbox.poll_take(&mut in_flight, &mut Context::from_waker(&waker));
        assert_eq!(poll, Poll::Ready(Take::Bytes));
        // The first frame and one byte of the second are written; one more
        // frame is queued behind them.
        outbox.wrote(5);
        push(&outbox, b"dddd\n").unwrap();
        outbox.abandon();
        assert_eq!(*told.lock().unwrap(), (1, 3));
        // A reply after the end is lost too.
        outbox
            .push_reply(|b| {
                b.extend_from_slice(b"late\n");
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(*told.lock().unwrap(), (1, 4));
    }

    #[test]
    fn kept_frames_move_with_their_count() {
        let (held, _) = tallied(64);
        let (next, told) = tallied(64);
        push(&next, b"hello\n").unwrap();
        for frame in [&b"k1\n"[..], b"k2\n"] {
            push(&held, frame).unwrap();
        }
        let kept = held.drain();
        assert_eq!(kept.frames(), 2);
        next.push_kept(kept);
        assert_eq!(take(&next).as_deref(), Some(&b"hello\nk1\nk2\n"[..]));
        assert_eq!(*told.lock().unwrap(), (3, 0));
    }

    #[test]
    fn a_failed_write_leaves_nothing_queued() {
        let outbox = Outbox::new(64);
        push(&outbox, b"ab").unwrap();
        let failed = outbox.try_push(|b| {
            b.extend_from_slice(b"half");
            Err("encode failed")
        });
        assert_eq!(failed, Err(PushError::Write("encode failed")));
        assert_eq!(take(&outbox).unwrap(), b"ab");
    }

    #[test]
    fn replies_pass_the_bound_and_the_reader_pauses_at_twice_it() {
        let outbox = Outbox::new(4);
        push(&outbox, b"abcd").unwrap();
        let (reader_wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(outbox.poll_reader_room(&mut cx), Poll::Ready(()));
        outbox
            .push_reply(|b| {
                b.extend_from_slice(b"efgh");
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(outbox.unsent(), 8);
        assert_eq!(outbox.poll_reader_room(&mut cx), Poll::Pending);
        let mut in_flight = BytesMut::new();
        assert_eq!(
            outbox.poll_take(&mut in_flight, &mut cx),
            Poll::Ready(Take::Bytes)
        );
        outbox.wrote(1);
        assert_eq!(reader_wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(outbox.poll_reader_room(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn the_writer_is_woken_when_an_empty_queue_gets_bytes_and_on_finish() {
        let outbox = Outbox::new(64);
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = BytesMut::new();
        assert_eq!(outbox.poll_take(&mut buf, &mut cx), Poll::Pending);
        push(&outbox, b"a").unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            outbox.poll_take(&mut buf, &mut cx),
            Poll::Ready(Take::Bytes)
        );
        outbox.wrote(1);
        buf.clear();
        assert_eq!(outbox.poll_take(&mut buf, &mut cx), Poll::Pending);
        outbox.close();
        push_reply(&outbox, b"r");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(
            outbox.poll_take(&mut buf, &mut cx),
            Poll::Ready(Take::Bytes)
        );
        outbox.wrote(1);
        buf.clear();
        assert_eq!(outbox.poll_take(&mut buf, &mut cx), Poll::Pending);
        outbox.finish();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 3);
        assert_eq!(
            outbox.poll_take(&mut buf, &mut cx),
            Poll::Ready(Take::Finished)
        );
    }

    fn push_reply(outbox: &Outbox, bytes: &[u8]) {
        outbox
            .push_reply(|b| {
                b.extend_from_slice(bytes);
                Ok::<_, ()>(())
            })
            .unwrap();
    }

    #[test]
    fn closed_refuses_senders_but_takes_replies_finished_takes_nothing() {
        let outbox = Outbox::new(64);
        outbox.close();
        assert!(outbox.is_closed());
        assert_eq!(push(&outbox, b"x"), Err(PushError::Closed));
        push_reply(&outbox, b"reply");
        outbox.finish();
        push_reply(&outbox, b"late");
        assert_eq!(take(&outbox).unwrap(), b"reply");
        assert_eq!(take(&outbox), None);
    }

    #[test]
    fn a_batch_stops_at_the_bound_like_single_pushes() {
        let outbox = Outbox::new(10);
        let mut items = [b"aaaa", b"bbbb", b"cccc", b"dddd"].into_iter().peekable();
        let mut write = |item: &[u8; 4], buf: &mut BytesMut| {
            buf.extend_from_slice(item);
            Ok::<_, ()>(())
        };
        let mut queued = 0;
        // 0, 4 and 8 bytes are below the limit: three items, 12 bytes.
        outbox
            .try_push_some(&mut items, &mut write, &mut queued)
            .unwrap();
        assert_eq!(queued, 3);
        assert_eq!(
            outbox.try_push_some(&mut items, &mut write, &mut queued),
            Err(PushError::Full)
        );
        assert_eq!(take(&outbox).unwrap(), b"aaaabbbbcccc");
        outbox
            .try_push_some(&mut items, &mut write, &mut queued)
            .unwrap();
        assert_eq!(queued, 4);
        assert!(items.peek().is_none());
    }

    /// Issue 21: senders encoding batches at the same time each took all
    /// the room there was (up to 16 KiB each) past the bound. Here sender B
    /// runs a whole batch while sender A is encoding its own, outside the
    /// lock.
    #[test]
    fn concurrent_batches_share_the_room_instead_of_each_taking_it() {
        const LIMIT: usize = 4096;
        const ITEM: usize = 100;
        let outbox = Outbox::new(LIMIT);
        let item = [7u8; ITEM];
        let write = |item: &[u8; ITEM], buf: &mut BytesMut| {
            buf.extend_from_slice(item);
            Ok::<_, ()>(())
        };
        let mut b_items = std::iter::repeat_n(&item, 100).peekable();
        let mut b_queued = 0;
        let mut b_result = None;
        let mut a_items = std::iter::repeat_n(&item, 100).peekable();
        let mut a_queued = 0;
        let mut write_a = |item: &[u8; ITEM], buf: &mut BytesMut| {
            if b_result.is_none() {
                let mut write_b = write;
                b_result = Some(outbox.try_push_some(&mut b_items, &mut write_b, &mut b_queued));
            }
            write(item, buf)
        };
        let a_result = outbox.try_push_some(&mut a_items, &mut write_a, &mut a_queued);
        assert_eq!(a_result, Ok(()));
        let unsent = outbox.unsent();
        assert_eq!(unsent, (a_queued + b_queued) as usize * ITEM);
        // One item per sender past the bound, at most.
        assert!(
            unsent <= LIMIT + 2 * ITEM,
            "{unsent} bytes unsent, bound {LIMIT} ({a_queued} + {b_queued} items; B: {b_result:?})"
        );
    }

    /// A replier's answer owed: taken while closed, whatever the bound;
    /// with `hold_for_answers`, `finish` waits for it and takes nothing
    /// else meanwhile.
    #[test]
    fn a_held_finish_waits_for_the_answers_owed() {
        let outbox = Outbox::new(4);
        outbox.hold_for_answers();
        assert!(outbox.owe());
        assert!(outbox.owe());
        push(&outbox, b"abcd").unwrap();
        outbox.close();
        assert_eq!(push(&outbox, b"x"), Err(PushError::Closed));
        // Past the bound: an answer owed is still taken.
        let answer = |b: &mut BytesMut| {
            b.extend_from_slice(b"answer1");
            Ok::<_, ()>(())
        };
        assert_eq!(outbox.try_push_answer(answer), Ok(()));
        outbox.paid();
        outbox.finish();
        // Finishing: no new replier owes anything, a handler's reply is
        // dropped, the write side is not told to end.
        assert!(!outbox.owe());
        push_reply(&outbox, b"dropped");
        assert_eq!(take(&outbox).unwrap(), b"abcdanswer1");
        assert_eq!(take(&outbox), None);
        let answer = |b: &mut BytesMut| {
            b.extend_from_slice(b"answer2");
            Ok::<_, ()>(())
        };
        assert_eq!(outbox.try_push_answer(answer), Ok(()));
        assert_eq!(outbox.owed(), 1);
        outbox.paid();
        assert_eq!(outbox.owed(), 0);
        assert_eq!(take(&outbox).unwrap(), b"answer2");
        let (_, waker) = counting_waker();
        let mut buf = BytesMut::new();
        assert_eq!(
            outbox.poll_take(&mut buf, &mut Context::from_waker(&waker)),
            Poll::Ready(Take::Finished)
        );
        // Finished: too late.
        assert_eq!(
            outbox.try_push_answer(|b| {
                b.extend_from_slice(b"late");
                Ok::<_, ()>(())
            }),
            Err(PushError::Closed)
        );
    }

    /// Without `hold_for_answers` (a client's close, `close_remote`),
    /// `finish` does not wait.
    #[test]
    fn an_unheld_finish_does_not_wait_for_answers() {
        let outbox = Outbox::new(64);
        assert!(outbox.owe());
        outbox.close();
        outbox.finish();
        let (_, waker) = counting_waker();
        let mut buf = BytesMut::new();
        assert_eq!(
            outbox.poll_take(&mut buf, &mut Context::from_waker(&waker)),
            Poll::Ready(Take::Finished)
        );
    }

    #[tokio::test]
    async fn a_waiting_batch_goes_on_when_drained() {
        let outbox = Arc::new(Outbox::new(4));
        let o = outbox.clone();
        let batch = tokio::spawn(async move {
            let items = [b"ab", b"cd", b"ef", b"gh", b"ij"];
            o.push_all(items, |item, buf| {
                buf.extend_from_slice(item);
                Ok::<_, ()>(())
            })
            .await
        });
        let mut out = Vec::new();
        while out.len() < 10 {
            tokio::task::yield_now().await;
            let taken = take(&outbox).unwrap_or_default();
            assert!(taken.len() <= 4, "{} bytes past a bound of 4", taken.len());
            out.extend_from_slice(&taken);
        }
        let (queued, result) = tokio::time::timeout(std::time::Duration::from_secs(5), batch)
            .await
            .unwrap()
            .unwrap();
        result.unwrap();
        assert_eq!(queued, 5);
        assert_eq!(&out[..], b"abcdefghij");
    }

    #[tokio::test]
    async fn a_waiting_sender_wakes_when_written_and_fails_when_closed() {
        let outbox = Arc::new(Outbox::new(1));
        push(&outbox, b"x").unwrap();
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            o.push(|b| {
                b.extend_from_slice(b"y");
                Ok::<_, ()>(())
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(take(&outbox).unwrap(), b"x");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let o = outbox.clone();
        let waiter = tokio::spawn(async move {
            o.push(|b| {
                b.extend_from_slice(b"z");
                Ok::<_, ()>(())
            })
            .await
        });
        tokio::task::yield_now().await;
        outbox.close();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, Err(PushError::Closed));
    }

    #[test]
    fn a_dropped_waiter_leaves_no_entry() {
        let outbox = Outbox::new(1);
        push(&outbox, b"x").unwrap();
        let (_, waker) = counting_waker();
        let mut room = Box::pin(outbox.room());
        assert_eq!(
            room.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        assert_eq!(outbox.lock().waiters.len(), 1);
        drop(room);
        assert!(outbox.lock().waiters.is_empty());
    }

    /// A socket that takes at most `room` bytes per write (`WouldBlock`
    /// when 0) and keeps what it was given.
    #[derive(Debug, Default)]
    struct Socket {
        room: std::sync::Mutex<usize>,
        wire: std::sync::Mutex<Vec<u8>>,
    }

    impl Socket {
        fn with_room(room: usize) -> Arc<Self> {
            Arc::new(Socket {
                room: std::sync::Mutex::new(room),
                wire: Default::default(),
            })
        }

        fn wire(&self) -> Vec<u8> {
            self.wire.lock().unwrap().clone()
        }
    }

    impl DirectWrite for Socket {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            let room = *self.room.lock().unwrap();
            if room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room);
            self.wire.lock().unwrap().extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    #[test]
    fn a_send_never_writes_through_while_the_write_side_holds_bytes() {
        let outbox = Outbox::new(1024);
        let socket = Socket::with_room(usize::MAX);
        outbox.set_direct(socket.clone());
        // No read yet: a lone send stays queued, for the write side.
        push(&outbox, b"first ").unwrap();
        assert!(socket.wire().is_empty());
        let (_, waker) = counting_waker();
        let mut taken = BytesMut::new();
        let cx = &mut Context::from_waker(&waker);
        assert_eq!(outbox.poll_take(&mut taken, cx), Poll::Ready(Take::Bytes));
        // The write side holds "first ": a send after a read must not write
        // ahead of it.
        outbox.read_some();
        push(&outbox, b"second ").unwrap();
        assert!(socket.wire().is_empty(), "wrote ahead of the write side");
        // The write side writes what it took; then a send after a read
        // writes through what is queued, in order.
        socket.try_write(&taken).unwrap();
        outbox.wrote(taken.len());
        push(&outbox, b"third ").unwrap();
        assert_eq!(socket.wire(), b"first second third ");
        assert_eq!(outbox.unsent(), 0);
        // That used up the read: the next lone send waits for the write side.
        push(&outbox, b"fourth").unwrap();
        assert_eq!(socket.wire(), b"first second third ");
        assert_eq!(take(&outbox).unwrap(), b"fourth");
    }

    #[test]
    fn a_partial_write_through_leaves_the_rest_first_in_line() {
        let outbox = Outbox::new(1024);
        let socket = Socket::with_room(4);
        outbox.set_direct(socket.clone());
        outbox.read_some();
        push(&outbox, b"abcdef").unwrap();
        assert_eq!(socket.wire(), b"abcd");
        push(&outbox, b"gh").unwrap();
        // The socket is full now: the write side takes the rest, in order.
        *socket.room.lock().unwrap() = 0;
        outbox.read_some();
        push(&outbox, b"ij").unwrap();
        assert_eq!(socket.wire(), b"abcd");
        assert_eq!(take(&outbox).unwrap(), b"efghij");
    }

    #[test]
    fn batches_write_through_and_closing_stops_it() {
        let outbox = Outbox::new(1024);
        let socket = Socket::with_room(usize::MAX);
        outbox.set_direct(socket.clone());
        let items = [b"ab".as_slice(), b"cd".as_slice()];
        let (queued, pushed) = futures_util::FutureExt::now_or_never(outbox.push_all(
            items,
            |item: &[u8], buf: &mut BytesMut| {
                buf.extend_from_slice(item);
                Ok::<(), ()>(())
            },
        ))
        .unwrap();
        assert_eq!((queued, pushed), (2, Ok(())));
        assert_eq!(socket.wire(), b"abcd");
        outbox.close();
        outbox
            .push_reply(|b| {
                b.extend_from_slice(b"reply");
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(socket.wire(), b"abcd", "wrote through after the close");
        assert_eq!(take(&outbox).unwrap(), b"reply");
    }
}
