//! The synchronisation primitives of the outgoing queue and the connection
//! signal, in one place so that the loom models (`loom-models/`) can put
//! loom's instrumented twins in their stead: that crate includes
//! `conn/outbox.rs` and `conn/signal.rs` with its own `conn::sync` module.

pub(crate) use futures_util::task::AtomicWaker;
pub(crate) use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
pub(crate) use std::sync::{Mutex, MutexGuard};
