//! The wire format, pure (no I/O, no tasks): how bytes become frames
//! ([`frame`]), the request envelope at the start of a frame ([`envelope`]),
//! the hello frame of the handshake and the fingerprints it carries
//! ([`hello`]); and the crate's one error type ([`error`]), which names
//! their failures (an envelope or handshake error is an [`Error`](crate::Error)'s
//! source) and which every layer above returns.
//!
//! May import: `base`. Nothing above (`.ci/check-layers` checks it).

pub mod envelope;
pub(crate) mod error;
pub mod frame;
pub(crate) mod hello;
