//! loom models of the concurrency protocols of chitchat-net's connections:
//! the outgoing queue (send, wake, take, write, close, finish,
//! backpressure) and the close/abort signal. loom runs each model under
//! every interleaving of its threads (within its preemption bound) and
//! fails on a lost wake-up (a thread parked forever) as on a failed
//! assertion.
//!
//! Run with:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" cargo test --manifest-path loom-models/Cargo.toml --release
//! ```
#![forbid(unsafe_code)]

/// loom's primitives under the names `outbox.rs` and `signal.rs` import
/// (as `crate::conn::sync`).
mod sync {
    pub(crate) use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    pub(crate) use loom::sync::{Mutex, MutexGuard};
    use std::task::Waker;

    /// `futures_util::task::AtomicWaker`'s interface over loom's.
    pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

    impl AtomicWaker {
        pub(crate) fn new() -> Self {
            AtomicWaker(loom::future::AtomicWaker::new())
        }

        pub(crate) fn register(&self, waker: &Waker) {
            self.0.register_by_ref(waker);
        }

        pub(crate) fn wake(&self) {
            self.0.wake();
        }

        pub(crate) fn take(&self) -> Option<Waker> {
            self.0.take_waker()
        }
    }

    impl std::fmt::Debug for AtomicWaker {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("AtomicWaker")
        }
    }
}

#[allow(dead_code)]
#[path = "../../src/conn/outbox.rs"]
mod outbox;

#[allow(dead_code)]
#[path = "../../src/conn/signal.rs"]
mod signal;

#[path = "../../src/transport/direct.rs"]
mod direct;

/// The paths the compiled files name (`crate::conn::sync`,
/// `crate::transport::direct`), as in chitchat-net's `src/`.
mod conn {
    #[allow(unused_imports)] // the models use outbox and signal, the lib only sync
    pub(crate) use super::{outbox, signal, sync};
}

/// See [`conn`].
mod transport {
    pub(crate) use super::direct;
}

#[cfg(all(test, loom))]
mod models;
