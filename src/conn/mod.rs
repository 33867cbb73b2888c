//! One connection's machinery, shared by servers and clients: the task that
//! drives a connection ([`connection`]), its read side ([`reader`]) and
//! write side ([`writer`]), the bounded outgoing queue between everything
//! that sends and the write side ([`outbox`]), the close/abort signal
//! ([`signal`], both on the primitives of [`sync`] so that `loom-models/`
//! can check them), the handle other tasks send with ([`handle`]), the
//! requests waiting for replies ([`requests`]), the requests of the peer
//! being handled ([`inflight`]), a graceful shutdown's drain ([`drain`]),
//! what a connection speaks
//! (framing, codecs, envelope: [`wire`]), the handler and its context
//! ([`handler`]), reply streams (the table of each connection's streams,
//! [`streams`]; the serving side, [`reply_stream`]; the subscribing side,
//! [`subscriptions`]), a receiving client's inbox ([`receive`]), the handshake
//! ([`handshake`], the public module), and what configures and reports on a
//! connection: its settings ([`config`], [`options`]), error events
//! ([`events`]) and the errors of its operations ([`op_error`]).
//!
//! May import: `transport`, `codec`, `wire`, `base`. Nothing above
//! (`.ci/check-layers` checks it).

pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod drain;
pub(crate) mod events;
pub(crate) mod frame_deadline;
pub(crate) mod handle;
pub(crate) mod handler;
pub mod handshake;
pub(crate) mod inflight;
pub(crate) mod op_error;
pub(crate) mod options;
pub(crate) mod outbox;
pub(crate) mod reader;
pub(crate) mod receive;
pub(crate) mod reply_stream;
pub(crate) mod requests;
pub(crate) mod signal;
pub(crate) mod streams;
pub(crate) mod subscriptions;
pub(crate) mod sync;
pub(crate) mod wire;
pub(crate) mod writer;
