//! How a client reconnects: exponential backoff with full jitter.

use std::hash::BuildHasher;
use std::time::Duration;

use crate::client::link::WhileDown;

/// Default first delay before reconnecting: 100 ms (at most; see
/// [`Reconnect`]).
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Default longest delay between two tries: 30 s.
pub const DEFAULT_MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// Default time a connection must last to be healthy if it reads no frame:
/// 1 s (see [`Reconnect::healthy_after`]).
pub const DEFAULT_HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// A reconnecting client's policy: set it with
/// [`ClientBuilder::reconnect`](crate::ClientBuilder::reconnect).
///
/// After a connection ends (unless the client was closed or dropped), the
/// client waits, then connects again, and again on failure. Before try
/// `n` (counting from 0) it waits a random time between zero and
/// `min(max_delay, initial_delay × 2ⁿ)`: exponential backoff with full
/// jitter, so that many clients of one server that restarts do not all
/// come back at the same instant. With [`max_tries`](Self::max_tries) it
/// gives up after that many failed tries in a row: the client then ends
/// ([`Client::closed`](crate::Client::closed) returns
/// [`CloseReason::Failed`](crate::CloseReason::Failed)) with an
/// [`Error::ReconnectGaveUp`](crate::Error::ReconnectGaveUp) event.
///
/// A connection that ends before it was *healthy* counts as a failed try
/// too: healthy means it read a frame from the server, or lasted
/// [`healthy_after`](Self::healthy_after) (default 1 s). So a server that
/// accepts and closes at once (one at its `max_connections`, say) meets a
/// growing backoff and `max_tries`, not a client that redials without
/// pause. Only a healthy connection starts the count of tries over.
///
/// With several addresses
/// ([`connect_any`](crate::ClientBuilder::connect_any)) each try goes to
/// the next address of the list, round it; the failed tries in a row are
/// counted over the whole list, so the delays and `max_tries` are those of
/// one address. When the server drains (README, "Drain and failover") the
/// next try is made at once, without a delay.
///
/// Requests in flight when a connection drops fail with
/// [`Error::ConnectionLost`](crate::Error::ConnectionLost); they are never
/// retried (the server may have handled them). Messages sent while down
/// follow [`WhileDown`]. Messages already queued on the connection that
/// dropped are lost with it: TCP cannot tell which of them the server got.
///
/// # Examples
///
/// ```
/// use chitchat_net::{Reconnect, WhileDown};
/// use std::time::Duration;
///
/// let policy = Reconnect::new()
///     .initial_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(5))
///     .max_tries(20)
///     .while_down(WhileDown::Drop);
/// assert!(policy.delay(3, 0.5) <= Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    initial_delay: Duration,
    max_delay: Duration,
    max_tries: Option<u32>,
    healthy_after: Duration,
    pub(crate) while_down: WhileDown,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_delay: DEFAULT_RECONNECT_DELAY,
            max_delay: DEFAULT_MAX_RECONNECT_DELAY,
            max_tries: None,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            while_down: WhileDown::Keep,
        }
    }
}

impl Reconnect {
    /// The default policy: 100 ms doubling up to 30 s, tries without end,
    /// healthy after 1 s, [`WhileDown::Keep`].
    pub fn new() -> Self {
        Reconnect::default()
    }

    /// The longest first delay (default 100 ms).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest delay between two tries (default 30 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Gives up after `tries` failed tries in a row (default: never).
    pub fn max_tries(mut self, tries: u32) -> Self {
        self.max_tries = Some(tries);
        self
    }

    /// How long a connection that reads no frame must last to be healthy
    /// (default 1 s): one that ends sooner counts as a failed try (see
    /// above). `Duration::ZERO` makes every connection healthy.
    pub fn healthy_after(mut self, after: Duration) -> Self {
        self.healthy_after = after;
        self
    }

    /// Whether a connection that lasted `lasted`, and read a frame or not,
    /// was healthy.
    pub(crate) fn healthy(&self, lasted: Duration, read_a_frame: bool) -> bool {
        read_a_frame || lasted >= self.healthy_after
    }

    /// What happens to messages sent while disconnected (default
    /// [`WhileDown::Keep`]).
    pub fn while_down(mut self, policy: WhileDown) -> Self {
        self.while_down = policy;
        self
    }

    /// The delay before try `attempt` (from 0) for a uniform random
    /// `unit` in `[0, 1]`: `unit × min(max_delay, initial_delay × 2^attempt)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let doubled = self
            .initial_delay
            .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .unwrap_or(self.max_delay);
        doubled.min(self.max_delay).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Refuses a policy that cannot work.
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) for a zero delay (a client
    /// would hammer a server that is down) or zero tries.
    pub(crate) fn validate(&self) -> Result<(), crate::wire::error::Error> {
        if self.initial_delay.is_zero() || self.max_delay.is_zero() {
            return Err(crate::wire::error::Error::Config(
                "reconnect delays must not be zero: the client would retry without pause",
            ));
        }
        if self.max_tries == Some(0) {
            return Err(crate::wire::error::Error::Config(
                "reconnect max_tries must be at least 1 (leave it unset for no limit)",
            ));
        }
        Ok(())
    }

    /// Whether `failed` tries in a row are all it may make.
    pub(crate) fn exhausted(&self, failed: u32) -> bool {
        self.max_tries.is_some_and(|max| failed >= max)
    }
}

/// A uniform random number in `[0, 1]` (for jitter; not for secrets): the
/// standard library's randomly keyed hasher over a counter.
pub(crate) fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = std::collections::hash_map::RandomState::new().hash_one(n);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = Reconnect::new()
            .initial_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        assert_eq!(policy.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(policy.delay(2, 1.0), Duration::from_millis(400));
        assert_eq!(policy.delay(4, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(200, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(3, 0.0), Duration::ZERO);
        assert_eq!(policy.delay(3, 0.5), Duration::from_millis(400));
    }

    #[test]
    fn jitter_spreads_over_the_unit_interval() {
        let samples: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(samples.iter().all(|u| (0.0..=1.0).contains(u)));
        let low = samples.iter().filter(|u| **u < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below 0.5");
    }

    #[test]
    fn tries_run_out_only_with_a_maximum() {
        assert!(!Reconnect::new().exhausted(u32::MAX));
        assert!(Reconnect::new().max_tries(3).exhausted(3));
        assert!(!Reconnect::new().max_tries(3).exhausted(2));
    }
}
