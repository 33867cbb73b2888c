//! How a monitor checks, decides and bounds: [`HeartbeatConfig`], validated
//! when built.

use std::time::Duration;

/// The Go original's check interval: 3 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3);
/// The Go original's miss limit: dead after more than 3 misses in a row.
pub const DEFAULT_MISS_LIMIT: u32 = 3;
/// Peers watched at most by default.
pub const DEFAULT_MAX_PEERS: usize = 10_000;
/// Dead peers are forgotten after this long dead, by default: 10 minutes.
pub const DEFAULT_FORGET_DEAD_AFTER: Duration = Duration::from_secs(600);

/// How a monitor decides that a peer is dead.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Detector {
    /// Dead after more than this many missed checks in a row: the Go
    /// original's rule (with 3), and the default.
    MissLimit(u32),
    /// Dead once the phi accrual suspicion level reaches a threshold:
    /// see [`PhiAccrual`].
    PhiAccrual(PhiAccrual),
}

impl Default for Detector {
    fn default() -> Self {
        Detector::MissLimit(DEFAULT_MISS_LIMIT)
    }
}

/// The phi accrual failure detector (Hayashibara et al., 2004; as in Akka
/// and Cassandra).
///
/// Every answered check is a heartbeat arrival. The detector keeps the last
/// `window` times between two arrivals and models them as a normal
/// distribution (its standard deviation at least `min_std_dev`). After a
/// missed check it computes φ = −log₁₀ P(an arrival takes longer than the
/// time elapsed since the last one): φ = 1 means a 10 % chance that the
/// peer is merely late, φ = 2 a 1 % chance, φ = 8 one in 10⁸. The peer is
/// declared dead once φ reaches `threshold`. Since the distribution is
/// learnt, a peer on a jittery path gets more slack than one on a steady
/// path, and a peer that once came back after a long pause gets more slack
/// afterwards.
///
/// # Picking the threshold
///
/// With a steady network, the elapsed time at which a peer is declared
/// dead is about `mean + z × std_dev`, where `mean` is the check interval
/// (plus jitter) and `z` grows slowly with the threshold: z ≈ 1.6 at φ = 1,
/// 2.3 at φ = 2, 3.1 at φ = 3, 4.3 at φ = 5, 5.6 at φ = 8, 7.0 at φ = 12.
/// So with a 1 s interval and `min_std_dev` of 500 ms (the default, half
/// the interval), φ = 8 declares a silent peer dead about 3.8 s after its
/// last answer (the Go rule, 3 s interval and 3 misses: 12 to 15 s).
/// Lower thresholds detect sooner and suspect more wrongly; raise
/// `min_std_dev` rather than the threshold to tolerate pauses of a known
/// length (a pause of `p` beyond the interval is tolerated when
/// `p < z × min_std_dev`). The turmoil simulations in
/// `tests/suite/sim_heartbeat.rs` measure both detectors on the same seeded
/// runs: see the README's table.
///
/// # Examples
///
/// ```
/// use chitchat_net::heartbeat::{Detector, HeartbeatConfig, PhiAccrual};
/// use std::time::Duration;
///
/// let config = HeartbeatConfig::builder()
///     .interval(Duration::from_secs(1))
///     .detector(Detector::PhiAccrual(
///         PhiAccrual::new(8.0).window(100).min_std_dev(Duration::from_millis(500)),
///     ))
///     .build()?;
/// # Ok::<(), chitchat_net::heartbeat::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiAccrual {
    threshold: f64,
    window: usize,
    min_std_dev: Option<Duration>,
}

impl Default for PhiAccrual {
    fn default() -> Self {
        PhiAccrual::new(8.0)
    }
}

impl PhiAccrual {
    /// Phi accrual declaring death at φ ≥ `threshold`, with a window of
    /// 100 samples and a minimum standard deviation of half the interval.
    pub fn new(threshold: f64) -> Self {
        PhiAccrual {
            threshold,
            window: 100,
            min_std_dev: None,
        }
    }

    /// How many inter-arrival times are kept (default 100).
    pub fn window(mut self, samples: usize) -> Self {
        self.window = samples;
        self
    }

    /// The smallest standard deviation assumed (default: half the check
    /// interval), so that a very steady history does not make the detector
    /// jumpy.
    pub fn min_std_dev(mut self, min: Duration) -> Self {
        self.min_std_dev = Some(min);
        self
    }

    /// The suspicion level at which a peer is declared dead.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The number of samples kept.
    pub fn samples(&self) -> usize {
        self.window
    }

    /// The minimum standard deviation, given the check interval.
    pub fn min_std_dev_for(&self, interval: Duration) -> Duration {
        self.min_std_dev.unwrap_or(interval / 2)
    }
}

/// Whose address a typed registration may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RegisteredIp {
    /// Only the IP of the connection that registers (the default): nobody
    /// can aim the monitor's checks at a third host.
    #[default]
    SameAsConnection,
    /// Any address (behind a registration server reachable only by trusted
    /// peers, or with an accept filter).
    Any,
}

/// A configuration that cannot work, found when it is built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The check interval is zero.
    #[error("heartbeat interval is zero")]
    ZeroInterval,
    /// The check timeout is zero.
    #[error("heartbeat timeout is zero")]
    ZeroTimeout,
    /// The maximum number of watched peers is zero.
    #[error("maximum number of watched peers is zero")]
    ZeroMaxPeers,
    /// The time after which dead peers are forgotten is zero.
    #[error("time after which dead peers are forgotten is zero")]
    ZeroForgetDeadAfter,
    /// The phi accrual threshold is not a positive finite number.
    #[error("phi accrual threshold {0} is not a positive finite number")]
    BadPhiThreshold(f64),
    /// The phi accrual window is smaller than 2 samples.
    #[error("phi accrual window of {0} samples is under 2")]
    SmallPhiWindow(usize),
    /// The phi accrual minimum standard deviation is zero.
    #[error("phi accrual minimum standard deviation is zero")]
    ZeroMinStdDev,
    /// The suspicion window is zero.
    #[error("suspicion window is zero")]
    ZeroSuspicion,
    /// The Go port is zero: no Go node can be checked on it.
    #[error("Go port is zero: Go nodes could not be checked")]
    ZeroGoPort,
}

/// How often, how patiently and how forgivingly a
/// [`Monitor`](super::Monitor) checks, and what its registrar accepts.
/// Built (and validated) with [`HeartbeatConfig::builder`]; the default is
/// the Go original's: every 3 s, dead after more than 3 misses in a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartbeatConfig {
    interval: Duration,
    timeout: Duration,
    detector: Detector,
    max_peers: usize,
    forget_dead_after: Option<Duration>,
    registered_ip: RegisteredIp,
    go_port: Option<u16>,
    suspicion: Option<Duration>,
    local_health: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_INTERVAL,
            detector: Detector::default(),
            max_peers: DEFAULT_MAX_PEERS,
            forget_dead_after: Some(DEFAULT_FORGET_DEAD_AFTER),
            registered_ip: RegisteredIp::SameAsConnection,
            go_port: None,
            suspicion: None,
            local_health: 0,
        }
    }
}

impl HeartbeatConfig {
    /// Starts from the defaults.
    pub fn builder() -> HeartbeatConfigBuilder {
        HeartbeatConfigBuilder {
            config: HeartbeatConfig::default(),
            timeout: None,
        }
    }

    /// Checks every `interval`, with a timeout of one interval and the
    /// other defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroInterval`].
    pub fn with_interval(interval: Duration) -> Result<Self, ConfigError> {
        HeartbeatConfig::builder().interval(interval).build()
    }

    /// Time between two checks of a peer.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a check may take: connecting (if needed), ping, pong.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How death is decided.
    pub fn detector(&self) -> Detector {
        self.detector
    }

    /// Peers watched at most.
    pub fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// How long a peer stays dead before it is forgotten (`None`: never).
    pub fn forget_dead_after(&self) -> Option<Duration> {
        self.forget_dead_after
    }

    /// Whose address a typed registration may name.
    pub fn registered_ip(&self) -> RegisteredIp {
        self.registered_ip
    }

    /// The port Go-style registrations (`hello`) are checked on, if they
    /// are accepted.
    pub fn go_port(&self) -> Option<u16> {
        self.go_port
    }

    /// How long a peer stays [`Suspect`](super::PeerState::Suspect)
    /// before it is declared dead (`None`, the default: no suspect state).
    pub fn suspicion(&self) -> Option<Duration> {
        self.suspicion
    }

    /// The largest local health multiplier (0, the default: local health
    /// is not watched).
    pub fn local_health(&self) -> u32 {
        self.local_health
    }
}

/// Builds a [`HeartbeatConfig`]; made by [`HeartbeatConfig::builder`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a config builder does nothing until `build` is called"]
pub struct HeartbeatConfigBuilder {
    config: HeartbeatConfig,
    /// `None`: one interval.
    timeout: Option<Duration>,
}

impl HeartbeatConfigBuilder {
    /// Time between two checks of a peer (default 3 s, as the Go original).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.config.interval = interval;
        self
    }

    /// How long a check may take: connecting (if needed), ping, pong
    /// (default: the interval).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Dead after more than `limit` misses in a row (the default detector,
    /// with 3, as the Go original).
    pub fn miss_limit(mut self, limit: u32) -> Self {
        self.config.detector = Detector::MissLimit(limit);
        self
    }

    /// How death is decided (default [`Detector::MissLimit`] with 3).
    pub fn detector(mut self, detector: Detector) -> Self {
        self.config.detector = detector;
        self
    }

    /// Peers watched at most (default 10,000): registrations beyond it are
    /// refused and counted.
    pub fn max_peers(mut self, max: usize) -> Self {
        self.config.max_peers = max;
        self
    }

    /// Forgets a peer once it has been dead this long (default 10 min;
    /// `None`: never). Its checks stop and it leaves
    /// [`peers`](super::Monitor::peers), with a
    /// [`PeerState::Forgotten`](super::PeerState::Forgotten) event.
    pub fn forget_dead_after(mut self, after: Option<Duration>) -> Self {
        self.config.forget_dead_after = after;
        self
    }

    /// Whose address a typed registration may name (default: only the IP
    /// of the connection that registers).
    pub fn registered_ip(mut self, policy: RegisteredIp) -> Self {
        self.config.registered_ip = policy;
        self
    }

    /// Accepts Go-style registrations (`hello`, EOF-framed, as the Go
    /// original's nodes send): the node is checked at the connection's IP
    /// and this port, with the Go original's text probe
    /// ([`TextProbe`](super::TextProbe)) whatever the monitor's own probe
    /// (default: refused; port 0 is refused when built).
    pub fn go_port(mut self, port: u16) -> Self {
        self.config.go_port = Some(port);
        self
    }

    /// Suspect before dead (SWIM): once the detector finds a peer dead it
    /// is first [`Suspect`](super::PeerState::Suspect) for `window`
    /// (checks go on, and a [`Responder`](super::Responder) is asked to
    /// refute the suspicion with a higher incarnation, see
    /// [`Beat::Suspect`](super::Beat::Suspect)); an answer within it makes
    /// it alive again, none makes it dead at the first check ending
    /// `window` after the suspicion began. Default: off, a peer is dead as
    /// soon as the detector says so (as before). Zero is refused when built.
    pub fn suspicion(mut self, window: Duration) -> Self {
        self.config.suspicion = Some(window);
        self
    }

    /// Watches the monitor's own health (Lifeguard's local health
    /// multiplier, at most `max`; default 0: off). Every check that fails
    /// raises it by one, every check answered lowers it by one, and a check
    /// that starts more than half an interval late (an overloaded process)
    /// raises it by one too. In a [cluster](super::MonitorBuilder::cluster)
    /// with indirect probes, a failed check raises it only when the other
    /// monitor asked to probe the node does not answer at all: one that
    /// reached the node, or answered that it could not (Lifeguard's nack),
    /// shows this monitor's own messages get through. While it is `m`, every limit is widened by
    /// `1 + m`: the misses it takes to find a peer dead (the miss limit
    /// plus one), the φ threshold and the suspicion; a failed check is
    /// judged with the score the other checks made (its own miss aside).
    /// A monitor whose own probes all fail at once (it is the one cut off)
    /// or whose timers fire late then declares no deaths until it has
    /// recovered; one dead peer among many answering ones is judged with
    /// unwidened limits.
    pub fn local_health(mut self, max: u32) -> Self {
        self.config.local_health = max;
        self
    }

    /// The configuration, if it can work.
    ///
    /// # Errors
    ///
    /// [`ConfigError`]: zero interval, timeout, maximum of peers, time to
    /// forget or Go port, or phi accrual parameters out of range.
    pub fn build(self) -> Result<HeartbeatConfig, ConfigError> {
        let mut config = self.config;
        config.timeout = self.timeout.unwrap_or(config.interval);
        if config.interval.is_zero() {
            return Err(ConfigError::ZeroInterval);
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if config.max_peers == 0 {
            return Err(ConfigError::ZeroMaxPeers);
        }
        if config.go_port == Some(0) {
            return Err(ConfigError::ZeroGoPort);
        }
        if config.suspicion.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroSuspicion);
        }
        if config.forget_dead_after.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroForgetDeadAfter);
        }
        if let Detector::PhiAccrual(phi) = config.detector {
            if !(phi.threshold.is_finite() && phi.threshold > 0.0) {
                return Err(ConfigError::BadPhiThreshold(phi.threshold));
            }
            if phi.window < 2 {
                return Err(ConfigError::SmallPhiWindow(phi.window));
            }
            if phi.min_std_dev_for(config.interval).is_zero() {
                return Err(ConfigError::ZeroMinStdDev);
            }
        }
        Ok(config)
    }
}
