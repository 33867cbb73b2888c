//! Counters of a server or client: cheap enough to leave on.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a server's or client's counters.
///
/// Frames and bytes count what crossed the socket (bytes are wire bytes,
/// with framing): `frames_out` counts frames written whole to a socket.
/// What was accepted for sending and never written is counted in
/// `frames_lost_with_connection`, `kept_frames_dropped_at_end` and
/// `dropped_while_down`: see the README, "What is delivered, what can be
/// lost, and how you know".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted (or made) since the start; connections refused
    /// by the accept filter or the connection limit are not counted here,
    /// only as errors.
    pub connections_total: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames written whole to a socket (not those still queued: a frame
    /// is counted once its last byte is written).
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Of the bytes sent, those that sending tasks wrote to the socket
    /// themselves, while the connection's write side had nothing in flight
    /// (plain TCP only; see README, "How a connection works").
    pub bytes_written_through: u64,
    /// Error events raised (read or dropped) that are errors: lifecycle
    /// events ([`ErrorEvent::is_error`](crate::ErrorEvent::is_error) is
    /// `false`: a peer's normal end of stream, a reconnecting client's
    /// disconnects and reconnects, late replies) are not counted.
    pub errors: u64,
    /// Error events dropped because nobody read them.
    pub dropped_events: u64,
    /// Replies that arrived after their request was given up (timed out or
    /// cancelled), or that answered no request.
    pub late_replies: u64,
    /// Frames skipped because they are a variant this side does not know
    /// (an [`Error::UnknownVariant`](crate::Error::UnknownVariant) event
    /// each; requests among them were answered with an error reply).
    pub unknown_variants: u64,
    /// Messages a reconnecting client dropped while it was disconnected
    /// (with [`WhileDown::Drop`](crate::WhileDown::Drop)).
    pub dropped_while_down: u64,
    /// Frames a receiving client dropped because it was closing and its
    /// receive buffer was full (nobody was reading them).
    pub dropped_at_close: u64,
    /// Frames accepted for sending on a connection (queued) that were not
    /// written whole when it ended: the connection failed or was cut, or
    /// it was closed and its close timed out. (A frame written to the
    /// socket is counted in `frames_out`, even if the peer never read it.)
    pub frames_lost_with_connection: u64,
    /// Frames a reconnecting client kept while it was down
    /// ([`WhileDown::Keep`](crate::WhileDown::Keep)) and dropped unsent
    /// when it ended: closed ([`Client::close`](crate::Client::close), or
    /// [`Client::close_within`](crate::Client::close_within) past its
    /// deadline), dropped, or out of tries.
    pub kept_frames_dropped_at_end: u64,
    /// Requests from peers refused at once with an `Overloaded` error
    /// reply: past a server's overload bounds (README "Overload").
    pub requests_overloaded: u64,
    /// Requests from peers not run because their deadline had passed
    /// before their handler started (answered with `DeadlineExceeded`).
    pub requests_deadline_exceeded: u64,
    /// Requests from peers that their callers cancelled while they waited
    /// to start or ran (their handlers were stopped).
    pub requests_cancelled: u64,
}

/// The live counters behind [`Stats`], shared by every task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) frames_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) bytes_written_through: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) dropped_events: AtomicU64,
    pub(crate) late_replies: AtomicU64,
    pub(crate) unknown_variants: AtomicU64,
    pub(crate) dropped_while_down: AtomicU64,
    pub(crate) dropped_at_close: AtomicU64,
    pub(crate) frames_lost_with_connection: AtomicU64,
    pub(crate) kept_frames_dropped_at_end: AtomicU64,
    pub(crate) requests_overloaded: AtomicU64,
    pub(crate) requests_deadline_exceeded: AtomicU64,
    pub(crate) requests_cancelled: AtomicU64,
}

impl Counters {
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub(crate) fn opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            connections_open: get(&self.connections_open),
            connections_total: get(&self.connections_total),
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            bytes_in: get(&self.bytes_in),
            bytes_out: get(&self.bytes_out),
            bytes_written_through: get(&self.bytes_written_through),
            errors: get(&self.errors),
            dropped_events: get(&self.dropped_events),
            late_replies: get(&self.late_replies),
            unknown_variants: get(&self.unknown_variants),
            dropped_while_down: get(&self.dropped_while_down),
            dropped_at_close: get(&self.dropped_at_close),
            frames_lost_with_connection: get(&self.frames_lost_with_connection),
            kept_frames_dropped_at_end: get(&self.kept_frames_dropped_at_end),
            requests_overloaded: get(&self.requests_overloaded),
            requests_deadline_exceeded: get(&self.requests_deadline_exceeded),
            requests_cancelled: get(&self.requests_cancelled),
        }
    }
}
