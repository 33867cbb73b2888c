//! Deciding death from check results: the miss limit and phi accrual (pure).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Detector, HeartbeatConfig};
use super::PeerState;

/// One peer's detector: fed every check's outcome, says its state.
#[derive(Debug)]
pub(crate) struct Judge {
    detector: Detector,
    interval: Duration,
    /// Misses in a row.
    misses: u32,
    /// The state's miss count frozen when the peer was declared dead.
    dead_at: Option<u32>,
    /// When the last answer arrived (or watching started).
    last_arrival: Instant,
    /// Whether any answer arrived yet (the first one gives no interval).
    answered: bool,
    /// Recent times between two answers, in seconds (phi accrual only).
    samples: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    /// How long a peer stays suspect before it is declared dead (`None`:
    /// no suspect state, dead at once).
    suspicion: Option<Duration>,
    /// Since when the peer is suspect.
    suspect_since: Option<Instant>,
    /// The highest incarnation the peer answered with.
    incarnation: u64,
}

/// What a check's outcome made of a peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) state: PeerState,
    /// Misses in a row (miss limit) or φ (phi accrual); 0 when alive.
    pub(crate) suspicion: f64,
}

impl Judge {
    pub(crate) fn new(config: &HeartbeatConfig, now: Instant) -> Self {
        Judge {
            detector: config.detector(),
            interval: config.interval(),
            misses: 0,
            dead_at: None,
            last_arrival: now,
            answered: false,
            samples: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            suspicion: config.suspicion(),
            suspect_since: None,
            incarnation: 0,
        }
    }

    /// The incarnation the peer is suspected at, if it is suspect.
    pub(crate) fn suspected(&self) -> Option<u64> {
        self.suspect_since.map(|_| self.incarnation)
    }

    /// The highest incarnation the peer answered with.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// A check was answered at `now`, with the peer's incarnation if the
    /// answer carries one.
    pub(crate) fn answered_at(&mut self, now: Instant, incarnation: Option<u64>) -> Verdict {
        if let Some(incarnation) = incarnation {
            self.incarnation = self.incarnation.max(incarnation);
        }
        self.suspect_since = None;
        self.answered(now)
    }

    /// A check was answered at `now`.
    pub(crate) fn answered(&mut self, now: Instant) -> Verdict {
        if let Detector::PhiAccrual(phi) = self.detector {
            if self.answered {
                let gap = now
                    .saturating_duration_since(self.last_arrival)
                    .as_secs_f64();
                if self.samples.len() >= phi.samples() {
                    if let Some(old) = self.samples.pop_front() {
                        self.sum -= old;
                        self.sum_sq -= old * old;
                    }
                }
                self.samples.push_back(gap);
                self.sum += gap;
                self.sum_sq += gap * gap;
            }
        }
        self.answered = true;
        self.last_arrival = now;
        self.misses = 0;
        self.dead_at = None;
        Verdict {
            state: PeerState::Alive,
            suspicion: 0.0,
        }
    }

    /// A check failed at `now`.
    #[cfg(test)]
    pub(crate) fn missed(&mut self, now: Instant) -> Verdict {
        self.missed_widened(now, 1)
    }

    /// A check failed at `now`, with every limit (the miss limit, the φ
    /// threshold, the suspicion's length) multiplied by `widen` (at least
    /// 1): the monitor's own health says it may be the one at fault.
    pub(crate) fn missed_widened(&mut self, now: Instant, widen: u32) -> Verdict {
        let widen = widen.max(1);
        self.misses = self.misses.saturating_add(1);
        let (dead, suspicion) = match self.detector {
            // The misses it takes (limit + 1) times `widen`.
            Detector::MissLimit(limit) => (
                self.misses >= limit.saturating_add(1).saturating_mul(widen),
                f64::from(self.misses),
            ),
            Detector::PhiAccrual(params) => {
                let phi = self.phi(now, params.min_std_dev_for(self.interval));
                (phi >= params.threshold() * f64::from(widen), phi)
            }
        };
        let state = match self.dead_at {
            // Stays dead with the count it was declared dead with.
            Some(misses) => PeerState::Dead { misses },
            None if dead => {
                let suspect_for = self.suspicion.map(|window| {
                    let since = *self.suspect_since.get_or_insert(now);
                    (now.saturating_duration_since(since), window * widen)
                });
                match suspect_for {
                    Some((suspect_for, window)) if suspect_for < window => PeerState::Suspect {
                        misses: self.misses,
                        incarnation: self.incarnation,
                    },
                    _ => {
                        self.dead_at = Some(self.misses);
                        self.suspect_since = None;
                        PeerState::Dead {
                            misses: self.misses,
                        }
                    }
                }
            }
            None => PeerState::Missed {
                misses: self.misses,
            },
        };
        Verdict { state, suspicion }
    }

    /// When the peer will be declared dead if no answer comes: the end of
    /// the check that will decide it (each check starts an interval after
    /// the one started at `last_check`, and ends within `timeout`), as
    /// long as checks run on time. `None` once dead.
    pub(crate) fn deadline(&self, last_check: Instant, timeout: Duration) -> Option<Instant> {
        if self.dead_at.is_some() {
            return None;
        }
        if let Some(window) = self.suspicion {
            // Suspect from the end of the check that finds it dead (at most
            // `timeout` after it starts) for `window`: the first check
            // starting after that decides.
            let interval = self.interval.as_secs_f64();
            let (from, after) = match self.suspect_since {
                Some(since) => (last_check, since.checked_add(window)?),
                None => {
                    let decides = self.detector_deadline(last_check, Duration::ZERO)?;
                    (decides, decides.checked_add(timeout + window)?)
                }
            };
            let checks = (after.saturating_duration_since(from).as_secs_f64() / interval)
                .ceil()
                .max(if self.suspect_since.is_some() {
                    1.0
                } else {
                    0.0
                });
            let checks = u32::try_from(checks as u64).ok()?;
            return from
                .checked_add(self.interval.checked_mul(checks)?)?
                .checked_add(timeout);
        }
        self.detector_deadline(last_check, timeout)
    }

    /// When the detector alone decides (the suspicion aside).
    fn detector_deadline(&self, last_check: Instant, timeout: Duration) -> Option<Instant> {
        let checks = match self.detector {
            Detector::MissLimit(limit) => {
                limit.saturating_add(1).saturating_sub(self.misses).max(1)
            }
            Detector::PhiAccrual(params) => {
                let min_std = params.min_std_dev_for(self.interval);
                // The silence after which φ reaches the threshold (φ grows
                // with it): the first check starting later decides.
                let (mut low, mut high) = (0.0f64, self.interval.as_secs_f64().max(1e-3));
                while self.phi_after(high, min_std) < params.threshold() && high < 1e9 {
                    low = high;
                    high *= 2.0;
                }
                for _ in 0..60 {
                    let mid = (low + high) / 2.0;
                    if self.phi_after(mid, min_std) < params.threshold() {
                        low = mid;
                    } else {
                        high = mid;
                    }
                }
                let silence = Duration::try_from_secs_f64(high).unwrap_or(Duration::MAX);
                let due = self.last_arrival.checked_add(silence)?;
                let after = due.saturating_duration_since(last_check).as_secs_f64();
                let interval = self.interval.as_secs_f64();
                let checks = (after / interval).ceil().max(1.0);
                if checks >= f64::from(u32::MAX) {
                    u32::MAX
                } else {
                    checks as u32
                }
            }
        };
        last_check
            .checked_add(self.interval.checked_mul(checks)?)?
            .checked_add(timeout)
    }

    /// φ after `elapsed` seconds of silence since the last answer.
    fn phi_after(&self, elapsed: f64, min_std_dev: Duration) -> f64 {
        let now = self.last_arrival + Duration::from_secs_f64(elapsed);
        self.phi(now, min_std_dev)
    }

    /// φ at `now`: −log₁₀ of the probability that an answer comes later
    /// than the time elapsed since the last one, under a normal model of
    /// the times between answers.
    pub(crate) fn phi(&self, now: Instant, min_std_dev: Duration) -> f64 {
        let elapsed = now
            .saturating_duration_since(self.last_arrival)
            .as_secs_f64();
        let min_std = min_std_dev.as_secs_f64();
        let n = self.samples.len() as f64;
        let (mean, std) = if self.samples.len() < 2 {
            // Before any history: the configured interval.
            (self.interval.as_secs_f64(), min_std)
        } else {
            let mean = self.sum / n;
            let variance = (self.sum_sq / n - mean * mean).max(0.0);
            (mean, variance.sqrt().max(min_std))
        };
        phi(elapsed, mean, std)
    }
}

/// −log₁₀(1 − F(elapsed)) for a normal distribution of `mean` and `std`,
/// with the logistic approximation of the normal CDF that Akka uses (its
/// error is under 0.02 %, and it stays finite far in the tail).
pub(crate) fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let value = if elapsed > mean {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    };
    if value.is_finite() {
        value.max(0.0)
    } else {
        f64::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::PhiAccrual;

    fn config(detector: Detector) -> HeartbeatConfig {
        HeartbeatConfig::builder()
            .interval(Duration::from_secs(1))
            .detector(detector)
            .build()
            .unwrap()
    }

    #[test]
    fn phi_grows_with_silence() {
        assert!(phi(1.0, 1.0, 0.1) < 0.5);
        let p2 = phi(1.3, 1.0, 0.1);
        let p3 = phi(1.5, 1.0, 0.1);
        assert!(p2 > 2.0 && p3 > p2, "{p2} {p3}");
        // z = 5.6 is about φ = 8.
        let p8 = phi(1.0 + 5.6 * 0.1, 1.0, 0.1);
        assert!((7.0..9.5).contains(&p8), "{p8}");
        assert!(phi(1000.0, 1.0, 0.001).is_finite());
    }

    #[test]
    fn miss_limit_dies_after_more_than_the_limit_and_keeps_its_count() {
        let start = Instant::now();
        let mut judge = Judge::new(&config(Detector::MissLimit(2)), start);
        let s = Duration::from_secs(1);
        assert_eq!(judge.answered(start + s).state, PeerState::Alive);
        assert_eq!(
            judge.missed(start + 2 * s).state,
            PeerState::Missed { misses: 1 }
        );
        assert_eq!(
            judge.missed(start + 3 * s).state,
            PeerState::Missed { misses: 2 }
        );
        assert_eq!(
            judge.missed(start + 4 * s).state,
            PeerState::Dead { misses: 3 }
        );
        let later = judge.missed(start + 5 * s);
        assert_eq!(later.state, PeerState::Dead { misses: 3 });
        assert_eq!(later.suspicion, 4.0);
        assert_eq!(judge.answered(start + 6 * s).state, PeerState::Alive);
    }

    #[test]
    fn deadline_is_the_end_of_the_check_that_decides() {
        let start = Instant::now();
        let s = Duration::from_secs(1);
        let timeout = Duration::from_millis(500);
        let mut judge = Judge::new(&config(Detector::MissLimit(3)), start);
        judge.answered(start);
        // Four more misses: the fourth check after this one decides.
        assert_eq!(
            judge.deadline(start, timeout),
            Some(start + 4 * s + timeout)
        );
        judge.missed(start + s);
        assert_eq!(
            judge.deadline(start + s, timeout),
            Some(start + 4 * s + timeout)
        );
        for k in 2..=4 {
            judge.missed(start + k * s);
        }
        assert_eq!(judge.deadline(start + 4 * s, timeout), None, "dead");

        let phi = Detector::PhiAccrual(PhiAccrual::new(8.0));
        let mut judge = Judge::new(&config(phi), start);
        let mut t = start;
        for _ in 0..10 {
            t += s;
            judge.answered(t);
        }
        // φ = 8 at about mean + 5.6 × 0.5 s = 3.8 s of silence: the check
        // starting 4 s after the last answer decides.
        assert_eq!(judge.deadline(t, timeout), Some(t + 4 * s + timeout));
        // Feeding misses at those checks: dead exactly at the fourth.
        for k in 1..=3 {
            assert!(matches!(
                judge.missed(t + k * s).state,
                PeerState::Missed { .. }
            ));
        }
        assert!(matches!(
            judge.missed(t + 4 * s).state,
            PeerState::Dead { .. }
        ));
    }

    #[test]
    fn suspect_for_the_window_then_dead_and_an_answer_refutes() {
        let start = Instant::now();
        let s = Duration::from_secs(1);
        let config = HeartbeatConfig::builder()
            .interval(s)
            .miss_limit(0)
            .suspicion(2 * s)
            .build()
            .unwrap();
        let mut judge = Judge::new(&config, start);
        judge.answered_at(start, None);
        let suspect = |v: Verdict| matches!(v.state, PeerState::Suspect { .. });
        assert!(suspect(judge.missed(start + s)));
        assert_eq!(judge.suspected(), Some(0));
        assert!(suspect(judge.missed(start + 2 * s)));
        // An answer with a higher incarnation refutes.
        assert_eq!(
            judge.answered_at(start + 3 * s, Some(1)).state,
            PeerState::Alive
        );
        assert_eq!((judge.suspected(), judge.incarnation()), (None, 1));
        assert_eq!(
            judge.missed(start + 4 * s).state,
            PeerState::Suspect {
                misses: 1,
                incarnation: 1
            }
        );
        assert!(suspect(judge.missed(start + 5 * s)));
        // Suspect for the whole window: dead.
        assert_eq!(
            judge.missed(start + 6 * s).state,
            PeerState::Dead { misses: 3 }
        );
    }

    #[test]
    fn widened_limits_take_more_misses() {
        let start = Instant::now();
        let s = Duration::from_secs(1);
        let mut judge = Judge::new(&config(Detector::MissLimit(1)), start);
        // Dead after 2 misses normally; widened by 3: after 6.
        for k in 1..=5 {
            let v = judge.missed_widened(start + k * s, 3);
            assert!(matches!(v.state, PeerState::Missed { .. }), "{k}: {v:?}");
        }
        assert!(matches!(
            judge.missed_widened(start + 6 * s, 3).state,
            PeerState::Dead { misses: 6 }
        ));
    }

    #[test]
    fn phi_accrual_tolerates_more_after_a_jittery_history() {
        let detector =
            Detector::PhiAccrual(PhiAccrual::new(8.0).min_std_dev(Duration::from_millis(50)));
        let start = Instant::now();
        let steady = {
            let mut judge = Judge::new(&config(detector), start);
            let mut t = start;
            for _ in 0..50 {
                t += Duration::from_secs(1);
                judge.answered(t);
            }
            judge.missed(t + Duration::from_millis(1800))
        };
        let jittery = {
            let mut judge = Judge::new(&config(detector), start);
            let mut t = start;
            for i in 0..50 {
                t += Duration::from_millis(if i % 2 == 0 { 600 } else { 1400 });
                judge.answered(t);
            }
            judge.missed(t + Duration::from_millis(1800))
        };
        assert!(matches!(steady.state, PeerState::Dead { .. }), "{steady:?}");
        assert!(
            matches!(jittery.state, PeerState::Missed { .. }),
            "{jittery:?}"
        );
        assert!(jittery.suspicion < steady.suspicion);
    }
}
