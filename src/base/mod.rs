//! The base layer: plain values that every layer above names, and that name
//! nothing of the crate themselves — a peer's address ([`addr`]), how a
//! connection ended ([`close`]) and the traffic counters ([`stats`]). They
//! sit at the bottom because the error type (`wire/error.rs`) holds an
//! `Addr` and a `CloseReason`.
//!
//! May import: nothing of the crate (`.ci/check-layers` checks it).

pub(crate) mod addr;
pub(crate) mod close;
pub(crate) mod stats;
