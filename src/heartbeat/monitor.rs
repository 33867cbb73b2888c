//! The monitor side: checks peers every interval and reports state changes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::Instrument;

use super::cluster::{
    BoxFuture, Cluster, ClusterConfig, ClusterHandler, ClusterMessage, Combined, Indirect, Local,
    Member,
};
use super::config::{HeartbeatConfig, RegisteredIp};
use super::detector::{Judge, Verdict};
use super::probe::{BeatProbe, Dialer, Probe, TextProbe};
use super::{Register, Registered};
use crate::base::addr::Addr;
use crate::base::close::CloseReason;
use crate::client::connector::{Connector, Owned};
use crate::client::Client;
use crate::codec::Codec;
use crate::conn::handle::ConnectionHandle;
use crate::conn::handler::{Closed, Context, Handler};
use crate::server::{Server, ServerBuilder};
use crate::wire::error::{BoxError, Error};
use crate::wire::frame::Framing;

/// Peer events buffered for a reader before new ones are dropped.
const EVENT_CAPACITY: usize = 1024;
/// Registration connections open at once, at most, by default.
pub const DEFAULT_MAX_REGISTRATION_CONNECTIONS: usize = 1024;
/// How long a registration connection may stay open, by default: a
/// registration is one small message.
pub const DEFAULT_REGISTRATION_DEADLINE: Duration = Duration::from_secs(5);
/// The largest registration accepted.
const MAX_REGISTRATION_BYTES: usize = 4 * 1024;
/// What a Go node sends to register.
const GO_HELLO: &[u8] = b"hello";

/// What a monitor knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerState {
    /// It answered the last check.
    Alive,
    /// It missed the last `misses` checks in a row, and the detector does
    /// not take it for dead yet.
    Missed {
        /// Misses in a row.
        misses: u32,
    },
    /// The detector found it dead, and it has that long (the
    /// [`suspicion`](super::HeartbeatConfigBuilder::suspicion) window) to
    /// answer before it is declared dead: an answer makes it
    /// [`PeerState::Alive`] again (a [`Responder`](super::Responder)
    /// refutes with a higher incarnation). Only with a suspicion window.
    Suspect {
        /// Misses in a row.
        misses: u32,
        /// The incarnation it is suspected at: the highest it answered
        /// with before (0 if none).
        incarnation: u64,
    },
    /// The detector declared it dead. Checks go on: an answer makes it
    /// [`PeerState::Alive`] again.
    Dead {
        /// Misses in a row when it was declared dead (it does not change
        /// while the peer stays dead).
        misses: u32,
    },
    /// It stayed dead longer than
    /// [`forget_dead_after`](super::HeartbeatConfigBuilder::forget_dead_after):
    /// it is no longer watched (the last event of that peer).
    Forgotten,
    /// A node of the same name registered (or was watched) at another
    /// address, `by`: this address is no longer watched (the last event
    /// of that address; the node goes on at `by`).
    Replaced {
        /// The node's new address.
        by: SocketAddr,
    },
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::Alive => write!(f, "alive"),
            PeerState::Missed { misses } => write!(f, "missed {misses} in a row"),
            PeerState::Suspect {
                misses,
                incarnation,
            } => write!(
                f,
                "suspect after {misses} misses (incarnation {incarnation})"
            ),
            PeerState::Dead { misses } => write!(f, "DEAD after {misses} misses"),
            PeerState::Forgotten => write!(f, "forgotten"),
            PeerState::Replaced { by } => write!(f, "replaced by {by}"),
        }
    }
}

/// How a peer is checked, chosen per peer: from how it registered, or
/// given to [`Monitor::watch_as`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum PeerKind {
    /// A node of this crate (registered with a [`Register`]): checked with
    /// the monitor's probe ([`BeatProbe`] by default).
    #[default]
    Typed,
    /// A Go chitchat node (registered with `hello`): checked with the Go
    /// original's [`TextProbe`], whatever the monitor's probe.
    Go,
}

/// What a monitor knows of one watched peer: see [`Monitor::peer`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The node's name (its identity: see [`Monitor::watch`]).
    pub name: String,
    /// Where it is checked.
    pub addr: SocketAddr,
    /// How it is checked.
    pub kind: PeerKind,
    /// Its last known state (`None` before its first check).
    pub state: Option<PeerState>,
    /// When the detector will declare it dead if no answer comes from now
    /// on: the latest end of the check that would decide it, given the
    /// answers and misses so far, as long as checks run on time (an
    /// overloaded monitor checks late, and a monitor in poor
    /// [local health](super::HeartbeatConfigBuilder::local_health) widens
    /// its limits). `None` before its first check and once dead. It moves
    /// later with every answer.
    pub deadline: Option<Instant>,
    /// The highest incarnation the node answered with (0 until it refuted
    /// a suspicion).
    pub incarnation: u64,
    /// Whether this monitor checks it now: from its first check on, alone;
    /// in a [cluster](super::MonitorBuilder::cluster), while this monitor
    /// is one of its `k` watchers among the live monitors (as of its last
    /// check's turn). `false` before its first turn.
    pub checking: bool,
}

/// A change in a peer's state.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerEvent {
    /// The name the peer registered with.
    pub name: String,
    /// The peer's responder address.
    pub addr: SocketAddr,
    /// Its new state.
    pub state: PeerState,
    /// The state before, `None` for the first check.
    pub previous: Option<PeerState>,
    /// The detector's suspicion level when the change was seen: misses in
    /// a row with [`Detector::MissLimit`](super::Detector::MissLimit), φ
    /// with [`Detector::PhiAccrual`](super::Detector::PhiAccrual); 0 when
    /// alive.
    pub suspicion: f64,
    /// When the change was seen.
    pub at: SystemTime,
}

/// The stream of [`PeerEvent`]s of a [`Monitor`].
#[derive(Debug)]
pub struct PeerEvents {
    rx: mpsc::Receiver<PeerEvent>,
    stopped: CancellationToken,
}

impl PeerEvents {
    /// The next state change; `None` once the monitor has stopped (or
    /// every handle on it was dropped) and every event has been read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        tokio::select! {
            biased;
            event = self.rx.recv() => event,
            _ = self.stopped.cancelled() => self.rx.try_recv().ok(),
        }
    }
}

/// Why a peer is not watched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The monitor already watches its maximum of peers.
    #[error("already watching the maximum of {max} peers")]
    Full {
        /// The maximum.
        max: usize,
    },
    /// The monitor has stopped.
    #[error("monitor stopped")]
    Stopped,
}

/// A snapshot of a monitor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorStats {
    /// Peers watched now.
    pub watched: u64,
    /// Registrations accepted (typed and Go-style, renames included).
    pub registrations: u64,
    /// Registrations and `watch` calls refused because the monitor was
    /// full.
    pub refused_full: u64,
    /// Registration connections refused because the registration server
    /// had its maximum open
    /// ([`max_registration_connections`](MonitorBuilder::max_registration_connections)).
    pub refused_connections: u64,
    /// Registration connections that ended in an error before a whole
    /// registration arrived: a registration over 4 KiB (the usual cause),
    /// or a connection broken off.
    pub refused_unread: u64,
    /// Registration connections closed by the registration deadline
    /// ([`registration_deadline`](MonitorBuilder::registration_deadline))
    /// before a whole registration arrived: slow peers.
    pub refused_slow: u64,
    /// Entries replaced by a node of the same name at another address
    /// ([`PeerState::Replaced`]).
    pub replaced: u64,
    /// Typed registrations refused because they named another IP than
    /// their connection's.
    pub refused_ip: u64,
    /// Registration connections refused by the accept filter.
    pub refused_filter: u64,
    /// Registrations that could not be read (neither a [`Register`] nor a
    /// Go `hello`, or a `hello` with no Go port configured).
    pub refused_invalid: u64,
    /// Dead peers forgotten.
    pub forgotten: u64,
    /// Checks made.
    pub checks: u64,
    /// Checks missed.
    pub misses: u64,
    /// Peers declared dead (each time).
    pub deaths: u64,
    /// Peer events dropped because nobody read them.
    pub dropped_events: u64,
    /// Peers found [`Suspect`](PeerState::Suspect) (each time).
    pub suspicions: u64,
    /// Suspicions refuted: a suspect peer answered in time.
    pub refuted: u64,
    /// Checks that started more than half an interval late (an overloaded
    /// monitor).
    pub late_checks: u64,
    /// The monitor's local health multiplier now (0: healthy; see
    /// [`local_health`](super::HeartbeatConfigBuilder::local_health)).
    pub local_health: u64,
    /// Indirect probes asked of another monitor (in a cluster).
    pub indirect_probes: u64,
    /// Indirect probes the node answered: misses not counted.
    pub indirect_answered: u64,
    /// Indirect probes another monitor answered without reaching the node
    /// (nacks): misses counted, but the monitor's own messages got
    /// through, so its local health is not raised.
    pub indirect_nacks: u64,
    /// Cluster messages dropped because a monitor's queue was full.
    pub cluster_dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    registrations: AtomicU64,
    refused_full: AtomicU64,
    refused_connections: AtomicU64,
    refused_unread: AtomicU64,
    refused_slow: AtomicU64,
    replaced: AtomicU64,
    refused_ip: AtomicU64,
    refused_filter: AtomicU64,
    refused_invalid: AtomicU64,
    forgotten: AtomicU64,
    checks: AtomicU64,
    misses: AtomicU64,
    deaths: AtomicU64,
    dropped_events: AtomicU64,
    suspicions: AtomicU64,
    refuted: AtomicU64,
    late_checks: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A registration accept filter, shared.
type Filter = Arc<dyn Fn(&Addr) -> bool + Send + Sync + 'static>;

/// Checks a set of peers with a [`Probe`] (by default [`BeatProbe`]) and
/// reports their state changes. Cloning gives another handle on the same
/// monitor; once every handle is dropped (or [`stop`](Monitor::stop) is
/// called) every check ends and the event stream ends once drained.
pub struct Monitor<P: Probe = BeatProbe> {
    shared: Arc<Shared<P>>,
    /// Stops the monitor when the last handle goes (its scheduler and the
    /// registrar hold `shared` only).
    _owner: Arc<Owner>,
}

impl<P: Probe> Clone for Monitor<P> {
    fn clone(&self) -> Self {
        Monitor {
            shared: self.shared.clone(),
            _owner: self._owner.clone(),
        }
    }
}

impl<P: Probe> fmt::Debug for Monitor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.shared.config)
            .field("probe", &self.shared.probe)
            .field("watched", &self.shared.lock().by_addr.len())
            .finish()
    }
}

#[derive(Debug)]
struct Owner {
    stop: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Shared<P> {
    config: HeartbeatConfig,
    probe: P,
    /// How to reach peers (`None`: TCP).
    dialer: Option<Arc<dyn Dialer>>,
    /// Who may open a registration connection.
    filter: Option<Filter>,
    /// How long a registration connection may stay open.
    registration_deadline: Duration,
    /// Registration connections open at once, at most.
    max_registration_connections: usize,
    /// Watched peers.
    peers: Mutex<Peers>,
    /// Where state changes go (dropped when nobody reads them).
    events: mpsc::Sender<PeerEvent>,
    /// Every task of the monitor (its scheduler, its cluster links).
    tasks: TaskTracker,
    /// Stops every task.
    stop: CancellationToken,
    /// The scheduler that drives every peer's checks (started on the
    /// first watch).
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
    /// Told when a peer whose check is in flight is removed, or the
    /// monitor stops: that check ends.
    removed: Notify,
    /// The last watched entry's id.
    last_id: AtomicU64,
    counters: Counters,
    /// Lifeguard's local health multiplier: 0 (healthy) to
    /// `config.local_health()`.
    health: Health,
    /// The cluster of monitors this one is part of.
    cluster: Option<Arc<Cluster>>,
    /// What connections to peers are started with, by probe and by
    /// whether they use request ids (made on first use): shared, so that a
    /// kept-open connection costs its handle and its task only.
    connectors: Mutex<HashMap<(std::any::TypeId, bool), Arc<Connector>>>,
}

/// A monitor's local health score (Lifeguard): raised by failed and late
/// checks, lowered by answered ones, within `0..=max`.
#[derive(Debug, Default)]
struct Health {
    score: std::sync::atomic::AtomicU32,
    max: u32,
}

impl Health {
    fn raise(&self) {
        if self.max > 0 {
            let _ = self
                .score
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    (s < self.max).then_some(s + 1)
                });
        }
    }

    fn lower(&self) {
        let _ = self
            .score
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| s.checked_sub(1));
    }

    /// What limits are multiplied by now.
    fn widen(&self) -> u32 {
        1 + self.score.load(Ordering::Acquire)
    }
}

/// Watched peers, by address and by name (a name is at one address).
#[derive(Debug, Default)]
struct Peers {
    by_addr: HashMap<SocketAddr, Watched>,
    by_name: HashMap<String, SocketAddr>,
}

#[derive(Debug)]
struct Watched {
    name: String,
    kind: PeerKind,
    state: Option<PeerState>,
    deadline: Option<Instant>,
    incarnation: u64,
    /// Whether this monitor checks it now (see [`PeerInfo::checking`]).
    checking: bool,
    /// Which entry this is, for the scheduler.
    id: u64,
}

/// The address as one peer has it, whatever the socket that saw it: an
/// IPv4 address seen by a dual-stack (`[::]`) socket as `::ffff:a.b.c.d`
/// is `a.b.c.d`.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Configures a [`Monitor`]: made by [`Monitor::builder`].
#[must_use = "a monitor builder does nothing until `build` is called"]
pub struct MonitorBuilder<P = BeatProbe> {
    config: HeartbeatConfig,
    probe: P,
    dialer: Option<Arc<dyn Dialer>>,
    filter: Option<Filter>,
    registration_deadline: Duration,
    max_registration_connections: usize,
    cluster: Option<ClusterConfig>,
}

impl<P: fmt::Debug> fmt::Debug for MonitorBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("config", &self.config)
            .field("probe", &self.probe)
            .field("dialer", &self.dialer.is_some())
            .field("filter", &self.filter.is_some())
            .field("registration_deadline", &self.registration_deadline)
            .field(
                "max_registration_connections",
                &self.max_registration_connections,
            )
            .finish()
    }
}

impl<P: Probe> MonitorBuilder<P> {
    /// Probes typed peers with `probe` (default [`BeatProbe`]), for
    /// example [`TextProbe`] for nodes that registered with a [`Register`]
    /// but answer the Go original's text. Go nodes (registered with
    /// `hello`, or watched as [`PeerKind::Go`]) are always checked with
    /// [`TextProbe`].
    pub fn probe<Q: Probe>(self, probe: Q) -> MonitorBuilder<Q> {
        MonitorBuilder {
            config: self.config,
            probe,
            dialer: self.dialer,
            filter: self.filter,
            registration_deadline: self.registration_deadline,
            max_registration_connections: self.max_registration_connections,
            cluster: self.cluster,
        }
    }

    /// Makes this monitor one of a cluster of monitors that share the
    /// watch (see [`ClusterConfig`]): every node registered with (or
    /// watched by) any of them is known to all; each is checked by `k` of
    /// the live monitors (rendezvous hashing over their names), which share
    /// their verdicts; the node is declared dead when a majority of its
    /// watchers find it dead. Every monitor's event stream then reports the
    /// cluster's verdicts. Serve [`Monitor::cluster_server`] at the address
    /// the others are given. [`build`](Self::build) must then run inside a
    /// tokio runtime (it starts the links to the other monitors).
    pub fn cluster(mut self, cluster: ClusterConfig) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How long a registration connection may stay open (default 5 s): one
    /// still open then is closed, and counted in
    /// [`MonitorStats::refused_slow`] if no whole registration came, so
    /// that slow peers cannot hold the registration server's connections.
    /// Zero is taken as 1 ms.
    pub fn registration_deadline(mut self, deadline: Duration) -> Self {
        self.registration_deadline = deadline.max(Duration::from_millis(1));
        self
    }

    /// Registration connections open at once, at most (default 1024; at
    /// least 1): one more is closed at once, and counted in
    /// [`MonitorStats::refused_connections`].
    pub fn max_registration_connections(mut self, max: usize) -> Self {
        self.max_registration_connections = max.max(1);
        self
    }

    /// Reaches peers through `dialer` instead of TCP.
    pub fn dialer(mut self, dialer: impl Dialer) -> Self {
        self.dialer = Some(Arc::new(dialer));
        self
    }

    /// The registration server accepts a connection only if
    /// `allow(peer)`; refused ones are counted in
    /// [`MonitorStats::refused_filter`].
    pub fn registration_filter(
        mut self,
        allow: impl Fn(&Addr) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(allow));
        self
    }

    /// The monitor, with no peers yet, and the stream of its events.
    pub fn build(self) -> (Monitor<P>, PeerEvents) {
        let (events, rx) = mpsc::channel(EVENT_CAPACITY);
        let stop = CancellationToken::new();
        let (cluster, queues) = match &self.cluster {
            Some(config) => {
                let (cluster, queues) = Cluster::new(config, self.config.interval());
                (Some(Arc::new(cluster)), queues)
            }
            None => (None, Vec::new()),
        };
        let shared = Arc::new(Shared {
            config: self.config,
            probe: self.probe,
            dialer: self.dialer,
            filter: self.filter,
            registration_deadline: self.registration_deadline,
            max_registration_connections: self.max_registration_connections,
            peers: Mutex::new(Peers::default()),
            events,
            tasks: TaskTracker::new(),
            stop: stop.clone(),
            commands: OnceLock::new(),
            removed: Notify::new(),
            last_id: AtomicU64::new(0),
            counters: Counters::default(),
            health: Health {
                score: Default::default(),
                max: self.config.local_health(),
            },
            cluster,
            connectors: Mutex::new(HashMap::new()),
        });
        if let Some(cluster) = shared.cluster.clone() {
            let epoch = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ Arc::as_ptr(&shared) as usize as u64;
            for (member, queue) in cluster.members.iter().zip(queues) {
                let link = cluster_link(
                    shared.clone(),
                    cluster.clone(),
                    member.clone(),
                    queue,
                    epoch,
                );
                shared.tasks.spawn(link);
            }
            shared.tasks.spawn(cluster_tick(shared.clone(), cluster));
        }
        let monitor = Monitor {
            shared,
            _owner: Arc::new(Owner { stop: stop.clone() }),
        };
        (monitor, PeerEvents { rx, stopped: stop })
    }
}

impl Monitor {
    /// A monitor probing with [`BeatProbe`], with no peers yet, and the
    /// stream of its events.
    pub fn new(config: HeartbeatConfig) -> (Monitor, PeerEvents) {
        Monitor::builder(config).build()
    }

    /// Starts configuring a monitor (probe, dialer, registration filter).
    pub fn builder(config: HeartbeatConfig) -> MonitorBuilder {
        MonitorBuilder {
            config,
            probe: BeatProbe,
            dialer: None,
            filter: None,
            registration_deadline: DEFAULT_REGISTRATION_DEADLINE,
            max_registration_connections: DEFAULT_MAX_REGISTRATION_CONNECTIONS,
            cluster: None,
        }
    }
}

impl<P: Probe> Monitor<P> {
    /// The monitor's settings.
    pub fn config(&self) -> HeartbeatConfig {
        self.shared.config
    }

    /// Starts checking the typed node `name` at `addr`, with the
    /// monitor's probe ([`PeerKind::Typed`]; see [`watch_as`](Self::watch_as)).
    ///
    /// A node is its name: watching a name already watched at another
    /// address replaces that entry (it gets a last
    /// [`PeerState::Replaced`] event, counted in
    /// [`MonitorStats::replaced`]), so a node restarted on a new port is
    /// one peer, not a live one and a dead one. Watching an address
    /// already watched only renames it. Addresses are compared
    /// canonically (an IPv4-mapped IPv6 address is its IPv4 address).
    ///
    /// # Errors
    ///
    /// [`WatchError::Full`] if the monitor watches its maximum of peers
    /// already (counted in [`MonitorStats::refused_full`]),
    /// [`WatchError::Stopped`] once stopped.
    pub fn watch(&self, name: impl Into<String>, addr: SocketAddr) -> Result<(), WatchError> {
        self.shared.watch(name.into(), addr, PeerKind::Typed, true)
    }

    /// As [`watch`](Self::watch), checking the peer as `kind` says: a Go
    /// node with [`TextProbe`], a typed one with the monitor's probe.
    ///
    /// # Errors
    ///
    /// As [`watch`](Self::watch).
    pub fn watch_as(
        &self,
        name: impl Into<String>,
        addr: SocketAddr,
        kind: PeerKind,
    ) -> Result<(), WatchError> {
        self.shared.watch(name.into(), addr, kind, true)
    }

    /// Stops checking `addr`; returns whether it was watched.
    pub fn unwatch(&self, addr: SocketAddr) -> bool {
        let mut peers = self.shared.lock();
        match peers.by_addr.remove(&canonical(addr)) {
            Some(watched) => {
                peers.by_name.remove(&watched.name);
                self.shared.command(Command::Remove(watched.id));
                true
            }
            None => false,
        }
    }

    /// Every watched peer: name, address and last known state (`None`
    /// before its first check).
    pub fn peers(&self) -> Vec<(String, SocketAddr, Option<PeerState>)> {
        self.shared
            .lock()
            .by_addr
            .iter()
            .map(|(addr, w)| (w.name.clone(), *addr, w.state))
            .collect()
    }

    /// What the monitor knows of the peer at `addr`, its detector's
    /// deadline included; `None` if it is not watched.
    pub fn peer(&self, addr: SocketAddr) -> Option<PeerInfo> {
        let addr = canonical(addr);
        let peers = self.shared.lock();
        let watched = peers.by_addr.get(&addr)?;
        Some(PeerInfo {
            name: watched.name.clone(),
            addr,
            kind: watched.kind,
            state: watched.state,
            deadline: watched.deadline,
            incarnation: watched.incarnation,
            checking: watched.checking,
        })
    }

    /// The monitor's counters.
    pub fn stats(&self) -> MonitorStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MonitorStats {
            watched: self.shared.lock().by_addr.len() as u64,
            registrations: get(&c.registrations),
            refused_full: get(&c.refused_full),
            refused_connections: get(&c.refused_connections),
            refused_unread: get(&c.refused_unread),
            refused_slow: get(&c.refused_slow),
            replaced: get(&c.replaced),
            refused_ip: get(&c.refused_ip),
            refused_filter: get(&c.refused_filter),
            refused_invalid: get(&c.refused_invalid),
            forgotten: get(&c.forgotten),
            checks: get(&c.checks),
            misses: get(&c.misses),
            deaths: get(&c.deaths),
            dropped_events: get(&c.dropped_events),
            suspicions: get(&c.suspicions),
            refuted: get(&c.refuted),
            late_checks: get(&c.late_checks),
            local_health: u64::from(self.shared.health.widen() - 1),
            indirect_probes: self
                .shared
                .cluster
                .as_ref()
                .map_or(0, |c| c.counters.indirect_probes.load(Ordering::Relaxed)),
            indirect_answered: self
                .shared
                .cluster
                .as_ref()
                .map_or(0, |c| c.counters.indirect_answered.load(Ordering::Relaxed)),
            indirect_nacks: self
                .shared
                .cluster
                .as_ref()
                .map_or(0, |c| c.counters.indirect_nacks.load(Ordering::Relaxed)),
            cluster_dropped: self
                .shared
                .cluster
                .as_ref()
                .map_or(0, |c| c.counters.dropped.load(Ordering::Relaxed)),
        }
    }

    /// The registration server, configured (EOF framing, registrations of
    /// at most 4 KiB, at most
    /// [`max_registration_connections`](MonitorBuilder::max_registration_connections)
    /// connections at once, each closed after the
    /// [`registration_deadline`](MonitorBuilder::registration_deadline),
    /// the registration filter) but not started: start it with
    /// [`listen`](ServerBuilder::listen), or
    /// [`serve`](ServerBuilder::serve) over any stream of connections.
    /// Each connection carries one registration: a [`Register`] (see
    /// [`register`](super::register)), answered with a [`Registered`]
    /// that tells the node the check interval, or, with a Go port
    /// configured, the Go original's `hello`. Every refusal is counted in
    /// [`MonitorStats`].
    pub fn registration_server(&self) -> ServerBuilder<Registrar> {
        let registrar = Registrar {
            shared: Arc::new(self.shared.clone()),
            open: Arc::new(AtomicUsize::new(0)),
        };
        let idle = self.shared.config.interval().max(Duration::from_secs(10));
        let deadline = self.shared.registration_deadline;
        let max = self.shared.max_registration_connections;
        let open = registrar.open.clone();
        let shared = Arc::downgrade(&self.shared);
        let allow = self.shared.filter.clone();
        Server::builder(registrar)
            .framing(Framing::eof().max_frame_length(MAX_REGISTRATION_BYTES))
            // A backstop: the deadline closes first (and counts it).
            .idle_timeout(idle.max(deadline * 2))
            // The node has sent its registration and ended its side: no
            // need to wait long for it to close.
            .close_timeout(deadline.min(Duration::from_secs(1)))
            // A backstop: the filter below takes a slot first.
            .max_connections(max)
            .accept_filter(move |peer| {
                let count = |counter: fn(&Counters) -> &AtomicU64| {
                    if let Some(shared) = shared.upgrade() {
                        bump(counter(&shared.counters));
                    }
                };
                if allow.as_ref().is_some_and(|allow| !allow(peer)) {
                    count(|c| &c.refused_filter);
                    return false;
                }
                // A slot, given back when the connection closes.
                let taken = open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                });
                if taken.is_err() {
                    count(|c| &c.refused_connections);
                    tracing::debug!(%peer, max, "registration connection refused: too many open");
                    return false;
                }
                true
            })
    }

    /// The server other monitors of the cluster connect to (request ids,
    /// bincode [`ClusterMessage`]s), configured but not started: start it
    /// with [`listen`](ServerBuilder::listen) or
    /// [`serve`](ServerBuilder::serve) at the address the other monitors
    /// are given. `None` if the monitor is not in a cluster.
    pub fn cluster_server(&self) -> Option<ServerBuilder<ClusterHandler>> {
        let cluster = self.shared.cluster.clone()?;
        let handler = ClusterHandler {
            local: Arc::new(self.shared.clone()),
            cluster,
        };
        Some(
            Server::builder(handler)
                .request_ids()
                .idle_timeout(self.shared.config.interval() * 10),
        )
    }

    /// Serves registrations on `addr` over TCP: see
    /// [`registration_server`](Self::registration_server).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address cannot be bound.
    pub async fn listen_registrations(
        &self,
        addr: impl crate::base::addr::ConnectAddr,
    ) -> Result<Server<Registrar>, Error> {
        self.registration_server().listen(addr).await
    }

    /// Stops every check and waits for the checks to end. The event stream
    /// ends once drained. (Dropping every handle stops them too, without
    /// waiting.)
    pub async fn stop(&self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl<P: Probe> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, Peers> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connector for `probe`'s connections (with or without request
    /// ids), made on first use.
    fn connector<Q: Probe>(&self, probe: &Q, request_ids: bool) -> Result<Arc<Connector>, Error> {
        let key = (std::any::TypeId::of::<Q>(), request_ids);
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(connector) = connectors.get(&key) {
            return Ok(connector.clone());
        }
        let timeout = self.config.timeout();
        let mut builder = probe
            .client()
            .connect_timeout(timeout)
            .request_timeout(timeout)
            .write_stall_timeout(Some(timeout))
            .close_timeout(timeout);
        if request_ids {
            builder = builder.request_ids();
        }
        let connector = Arc::new(builder.connector()?);
        connectors.insert(key, connector.clone());
        Ok(connector)
    }

    /// Watches a node; `share`: tell the other monitors of the cluster,
    /// once it is in the table (a link that syncs empties its queue, then
    /// reads the table: a node queued first would be in neither).
    fn watch(
        self: &Arc<Self>,
        name: String,
        addr: SocketAddr,
        kind: PeerKind,
        share: bool,
    ) -> Result<(), WatchError> {
        let addr = canonical(addr);
        let node = match (share, &self.cluster) {
            (true, Some(_)) => Some(ClusterMessage::Node {
                name: name.clone(),
                addr,
                go: kind == PeerKind::Go,
            }),
            _ => None,
        };
        let watched = self.watch_here(name, addr, kind);
        if let (Some(node), Some(cluster)) = (node, &self.cluster) {
            cluster.broadcast(&node);
        }
        watched
    }

    /// Watches a node here.
    fn watch_here(
        self: &Arc<Self>,
        name: String,
        addr: SocketAddr,
        kind: PeerKind,
    ) -> Result<(), WatchError> {
        let mut peers = self.lock();
        if self.stop.is_cancelled() {
            return Err(WatchError::Stopped);
        }
        // The name's entry at another address, replaced by this one.
        let elsewhere = peers.by_name.get(&name).copied().filter(|at| *at != addr);
        if let Some(watched) = peers.by_addr.get_mut(&addr) {
            // Watched already: a rename at most.
            if watched.name != name {
                let old = std::mem::replace(&mut watched.name, name.clone());
                peers.by_name.remove(&old);
                peers.by_name.insert(name, addr);
            }
            let replaced = elsewhere.and_then(|at| self.remove(&mut peers, at));
            drop(peers);
            if let Some(replaced) = replaced {
                self.replaced(replaced, addr);
            }
            return Ok(());
        }
        let max = self.config.max_peers();
        if elsewhere.is_none() && peers.by_addr.len() >= max {
            bump(&self.counters.refused_full);
            return Err(WatchError::Full { max });
        }
        let replaced = elsewhere.and_then(|at| self.remove(&mut peers, at));
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(%addr, %name, ?kind, "watching peer");
        peers.by_name.insert(name.clone(), addr);
        peers.by_addr.insert(
            addr,
            Watched {
                name,
                kind,
                state: None,
                deadline: None,
                incarnation: 0,
                checking: false,
                id,
            },
        );
        // Under the lock: the scheduler hears of it before its removal.
        self.command(Command::Watch { addr, kind, id });
        drop(peers);
        if let Some(replaced) = replaced {
            self.replaced(replaced, addr);
        }
        Ok(())
    }

    /// Tells the scheduler (started on first use); nothing once stopped.
    fn command(self: &Arc<Self>, command: Command) {
        let commands = self.commands.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.tasks.spawn(schedule(self.clone(), rx));
            tx
        });
        let _ = commands.send(command);
    }

    /// Whether the entry `id` still watches `addr`.
    fn is_watched(&self, addr: SocketAddr, id: u64) -> bool {
        self.lock().by_addr.get(&addr).is_some_and(|w| w.id == id)
    }

    /// Removes the entry at `addr` (its checks stop).
    fn remove(
        self: &Arc<Self>,
        peers: &mut Peers,
        addr: SocketAddr,
    ) -> Option<(SocketAddr, Watched)> {
        let watched = peers.by_addr.remove(&addr)?;
        if peers.by_name.get(&watched.name) == Some(&addr) {
            peers.by_name.remove(&watched.name);
        }
        self.command(Command::Remove(watched.id));
        Some((addr, watched))
    }

    /// Reports the entry `old` replaced by the same node at `by`.
    fn replaced(&self, (addr, old): (SocketAddr, Watched), by: SocketAddr) {
        bump(&self.counters.replaced);
        tracing::info!(peer = %addr, %by, name = %old.name, "peer replaced by the same name at a new address");
        self.emit(PeerEvent {
            name: old.name,
            addr,
            state: PeerState::Replaced { by },
            previous: old.state,
            suspicion: 0.0,
            at: SystemTime::now(),
        });
    }

    /// Records `verdict` for the entry `id` at `addr` (and the detector's
    /// deadline), and reports it if the state changed; `false` if that
    /// entry is no longer watched.
    fn record(
        self: &Arc<Self>,
        addr: SocketAddr,
        id: u64,
        verdict: Verdict,
        deadline: Option<Instant>,
        incarnation: u64,
    ) -> bool {
        let mut peers = self.lock();
        let Some(watched) = peers.by_addr.get_mut(&addr).filter(|w| w.id == id) else {
            return false;
        };
        watched.deadline = deadline;
        watched.incarnation = incarnation;
        let state = verdict.state;
        let previous = watched.state.replace(state);
        let same = match (previous, state) {
            // One suspicion, whatever the misses during it.
            (Some(PeerState::Suspect { .. }), PeerState::Suspect { .. }) => true,
            (previous, state) => previous == Some(state),
        };
        if same {
            return true;
        }
        match state {
            PeerState::Dead { .. } => bump(&self.counters.deaths),
            PeerState::Suspect { .. } => bump(&self.counters.suspicions),
            PeerState::Alive if matches!(previous, Some(PeerState::Suspect { .. })) => {
                bump(&self.counters.refuted)
            }
            _ => {}
        }
        let event = PeerEvent {
            name: watched.name.clone(),
            addr,
            state,
            previous,
            suspicion: verdict.suspicion,
            at: SystemTime::now(),
        };
        drop(peers);
        match &self.cluster {
            // The cluster's verdict is reported, from every watcher's.
            Some(cluster) => {
                let vote = match state {
                    PeerState::Alive => Some((0, 0, 0)),
                    PeerState::Missed { misses } => Some((0, misses, 0)),
                    PeerState::Suspect {
                        misses,
                        incarnation,
                    } => Some((1, misses, incarnation)),
                    PeerState::Dead { misses } => Some((2, misses, 0)),
                    _ => None,
                };
                if let Some(vote) = vote {
                    cluster.local_verdict(self, &event.name, vote);
                }
            }
            None => Shared::emit(self, event),
        }
        true
    }

    fn emit(&self, event: PeerEvent) {
        let (addr, state, suspicion) = (event.addr, event.state, event.suspicion);
        tracing::info!(peer = %addr, %state, suspicion, "peer state changed");
        if self.events.try_send(event).is_err() {
            bump(&self.counters.dropped_events);
            tracing::warn!(peer = %addr, "peer events are not being read: event dropped");
        }
    }

    /// Stops watching `addr`, dead too long.
    fn forget(self: &Arc<Self>, addr: SocketAddr) {
        let mut peers = self.lock();
        let Some((_, watched)) = self.remove(&mut peers, addr) else {
            return;
        };
        drop(peers);
        bump(&self.counters.forgotten);
        Shared::emit(
            self,
            PeerEvent {
                name: watched.name,
                addr,
                state: PeerState::Forgotten,
                previous: watched.state,
                suspicion: 0.0,
                at: SystemTime::now(),
            },
        );
    }
}

/// What a monitor's scheduler is told.
enum Command {
    /// Start checking the new entry `id` (its first check now).
    Watch {
        addr: SocketAddr,
        kind: PeerKind,
        id: u64,
    },
    /// The entry `id` is no longer watched: its checks stop.
    Remove(u64),
}

/// Where a watched entry is, for the scheduler.
enum Slot {
    /// Waiting for its next check, in the timer queue.
    Idle(delay_queue::Key),
    /// Its check is in flight.
    Busy,
}

/// The scheduler's table by entry id (two look-ups per check): foldhash,
/// a fraction of SipHash's cost.
type Ids = foldhash::fast::RandomState;

/// Whether a peer's checks go on after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// A kept-open connection to a peer, and how replies are matched on it.
struct Link {
    client: Option<Owned>,
    /// Whether the peer answers with request ids: `None` until it has
    /// answered one way (or after a miss), when it may be either.
    request_ids: Option<bool>,
}

/// What is kept of one watched peer between its checks (in the
/// scheduler's timer queue; moved into its check while in flight).
struct PeerCheck {
    addr: SocketAddr,
    kind: PeerKind,
    /// Its entry (a peer unwatched and watched again is a new entry).
    id: u64,
    link: Link,
    judge: Judge,
    dead_since: Option<Instant>,
    seq: u64,
    /// Checks made while suspect: they alternate between asking the peer
    /// to refute and a plain ping (a node from before `Suspect` answers
    /// only that).
    suspect_checks: u32,
    /// When the last check ended: a check due before it is not late.
    ready_at: Instant,
    /// In a cluster: whether this monitor watched the peer at the last
    /// check's turn.
    watching: bool,
    /// What `PeerInfo::checking` says.
    checking: bool,
    /// When its next check is due.
    due: Instant,
}

impl PeerCheck {
    /// A new entry's, its first check due `now`.
    fn new<P: Probe>(
        shared: &Shared<P>,
        addr: SocketAddr,
        kind: PeerKind,
        id: u64,
        now: Instant,
    ) -> Self {
        let fallback = match kind {
            PeerKind::Typed => shared.probe.request_ids_fallback(),
            PeerKind::Go => TextProbe.request_ids_fallback(),
        };
        PeerCheck {
            addr,
            kind,
            id,
            link: Link {
                client: None,
                request_ids: (!fallback).then_some(false),
            },
            judge: Judge::new(&shared.config, now),
            dead_since: None,
            seq: 0,
            suspect_checks: 0,
            ready_at: now,
            watching: false,
            checking: false,
            due: now,
        }
    }
}

/// Drives every peer's checks, each every interval (as a
/// [`tokio::time::Interval`] with [`MissedTickBehavior::Delay`] would):
/// one timer queue for all the peers, the checks in flight polled
/// together. One task for the whole monitor instead of a task, a timer and
/// a cancellation token per peer (issue 24). Ends when the monitor stops,
/// after closing every connection.
///
/// [`MissedTickBehavior::Delay`]: tokio::time::MissedTickBehavior::Delay
async fn schedule<P: Probe>(
    shared: Arc<Shared<P>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let period = shared.config.interval();
    // Boxed: the queue's slab grows by doubling, which would double what an
    // idle peer costs at worst.
    let mut queue: DelayQueue<Box<PeerCheck>> = DelayQueue::new();
    let mut slots: HashMap<u64, Slot, Ids> = HashMap::default();
    let mut checks = FuturesUnordered::new();
    let mut closing: FuturesUnordered<Pin<Box<dyn Future<Output = CloseReason> + Send>>> =
        FuturesUnordered::new();
    let close = |check: Box<PeerCheck>, closing: &mut FuturesUnordered<_>| {
        if let Some(client) = check.link.client {
            closing.push(Box::pin(client.close()) as Pin<Box<dyn Future<Output = _> + Send>>);
        }
    };
    let stopped = shared.stop.cancelled();
    tokio::pin!(stopped);
    // One pass per wake-up of the task: the stop and the commands first,
    // then every check due and every check ended that is ready. (A
    // `select!` in a loop would poll the stop token and the command
    // channel again for each of them: several times per check.)
    std::future::poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            match commands.poll_recv(cx) {
                Poll::Ready(Some(Command::Watch { addr, kind, id })) => {
                    let now = Instant::now();
                    let check = Box::new(PeerCheck::new(&shared, addr, kind, id, now));
                    let key = queue.insert_at(check, now);
                    slots.insert(id, Slot::Idle(key));
                }
                Poll::Ready(Some(Command::Remove(id))) => match slots.remove(&id) {
                    Some(Slot::Idle(key)) => close(queue.remove(&key).into_inner(), &mut closing),
                    // Its check sees it is no longer watched.
                    Some(Slot::Busy) => shared.removed.notify_waiters(),
                    None => {}
                },
                // Every handle on the monitor was dropped.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(expired)) = queue.poll_expired(cx) {
            let mut check = expired.into_inner();
            // As an interval that delays missed ticks: the next is a
            // period after this one, or after now if this one is late.
            let started = check.due;
            let now = Instant::now();
            check.due = if now > started + Duration::from_millis(5) {
                now + period
            } else {
                started + period
            };
            let Some(name) = turn(&shared, &mut check) else {
                // Another monitor's share this turn: nothing in flight.
                let (id, due) = (check.id, check.due);
                slots.insert(id, Slot::Idle(queue.insert_at(check, due)));
                continue;
            };
            slots.insert(check.id, Slot::Busy);
            // A root span: the registration connection that may have
            // started watching it is long closed by now.
            let span = tracing::info_span!(parent: None, "heartbeat", peer = %check.addr);
            checks.push(run_check(&shared, check, started, name).instrument(span));
        }
        // The checks just started are polled here first (their pings sent).
        while let Poll::Ready(Some((check, flow))) = checks.poll_next_unpin(cx) {
            let id = check.id;
            match (flow, slots.get_mut(&id)) {
                (Flow::Continue, Some(slot)) => {
                    let due = check.due;
                    *slot = Slot::Idle(queue.insert_at(check, due));
                }
                _ => {
                    slots.remove(&id);
                    close(check, &mut closing);
                }
            }
        }
        while let Poll::Ready(Some(_)) = closing.poll_next_unpin(cx) {}
        Poll::Pending
    })
    .await;
    // Stopped: the checks in flight end at once, every connection is
    // closed.
    shared.removed.notify_waiters();
    while let Some((check, _)) = checks.next().await {
        close(check, &mut closing);
    }
    for (_, slot) in slots.drain() {
        if let Slot::Idle(key) = slot {
            close(queue.remove(&key).into_inner(), &mut closing);
        }
    }
    while closing.next().await.is_some() {}
}

/// One check of a peer, with the probe its kind needs; the peer's state
/// back, and whether its checks go on.
fn run_check<P: Probe>(
    shared: &Arc<Shared<P>>,
    mut check: Box<PeerCheck>,
    started: Instant,
    name: Option<String>,
) -> impl Future<Output = (Box<PeerCheck>, Flow)> + Send + '_ {
    // Made now, not when first polled: it sees every removal from now on.
    let removed = shared.removed.notified();
    async move {
        let flow = match check.kind {
            PeerKind::Typed => {
                check_once(shared, &shared.probe, &mut check, started, name, removed).await
            }
            PeerKind::Go => {
                check_once(shared, &TextProbe, &mut check, started, name, removed).await
            }
        };
        (check, flow)
    }
}

/// Whether this monitor checks `peer` at this turn: always alone (`Some(None)`:
/// no name needed); in a cluster, while it is one of the peer's watchers
/// (`Some(Some(name))`), `None` otherwise. Keeps `PeerInfo::checking`.
fn turn<P: Probe>(shared: &Arc<Shared<P>>, peer: &mut PeerCheck) -> Option<Option<String>> {
    let config = shared.config;
    let addr = peer.addr;
    // The name is needed in a cluster only (no copy per check alone).
    let name = match &shared.cluster {
        Some(_) => shared.lock().by_addr.get(&addr).map(|w| w.name.clone()),
        None => None,
    };
    let mine = match (&shared.cluster, &name) {
        (Some(cluster), Some(name)) => cluster.watches(name),
        _ => true,
    };
    if mine != peer.checking {
        peer.checking = mine;
        if let Some(watched) = shared.lock().by_addr.get_mut(&addr) {
            if watched.id == peer.id {
                watched.checking = mine;
            }
        }
    }
    if let (Some(cluster), Some(name)) = (&shared.cluster, &name) {
        if !mine {
            // Another monitor's share: start afresh if it comes back.
            if peer.watching {
                peer.watching = false;
                peer.judge = Judge::new(&config, Instant::now());
                peer.link.client = None;
                cluster.withdraw(shared, name);
            }
            peer.ready_at = Instant::now();
            return None;
        }
        peer.watching = true;
    }
    Some(name)
}

/// The check of `peer` due at `started` (`name`: in a cluster).
async fn check_once<'a, P: Probe, Q: Probe>(
    shared: &'a Arc<Shared<P>>,
    probe: &Q,
    peer: &mut PeerCheck,
    started: Instant,
    name: Option<String>,
    removed: tokio::sync::futures::Notified<'a>,
) -> Flow {
    let config = shared.config;
    let addr = peer.addr;
    peer.seq += 1;
    let seq = peer.seq;
    bump(&shared.counters.checks);
    let late = Instant::now().saturating_duration_since(started.max(peer.ready_at));
    if late > config.interval() / 2 {
        // An overloaded monitor: its own timers fire late.
        bump(&shared.counters.late_checks);
        shared.health.raise();
    }
    let message = match peer.judge.suspected() {
        Some(incarnation) => {
            peer.suspect_checks += 1;
            match probe.suspect(seq, incarnation) {
                Some(message) if peer.suspect_checks % 2 == 1 => message,
                _ => probe.ping(seq),
            }
        }
        None => {
            peer.suspect_checks = 0;
            probe.ping(seq)
        }
    };
    let check = {
        let ping = ping(shared, probe, &mut peer.link, addr, seq, &message);
        tokio::pin!(ping, removed);
        loop {
            tokio::select! {
                _ = &mut removed => {
                    // Some peer was removed, or the monitor stopped: this
                    // one? (Waiting again first: no removal is missed.)
                    removed.set(shared.removed.notified());
                    if shared.stop.is_cancelled() || !shared.is_watched(addr, peer.id) {
                        return Flow::Stop;
                    }
                }
                check = &mut ping => break check,
            }
        }
    };
    let now = Instant::now();
    let judge = &mut peer.judge;
    let verdict = match check {
        Ok(incarnation) => {
            peer.dead_since = None;
            shared.health.lower();
            judge.answered_at(now, incarnation)
        }
        Err(error) => {
            tracing::debug!(seq, why = %crate::wire::error::Report(&error), "heartbeat missed");
            bump(&shared.counters.misses);
            // A fresh connection next time: a late answer never shifts
            // the next ones.
            if let Some(client) = peer.link.client.take() {
                drop(client);
            }
            if probe.request_ids_fallback() {
                // It may have restarted with the other way.
                peer.link.request_ids = None;
            }
            // Judged with the score other checks made (its own miss
            // aside): one dead peer among answering ones is not
            // widened, a monitor whose probes all fail is.
            let widen = shared.health.widen();
            // Boxed, as connecting is (see `ping`): rare, and large.
            match Box::pin(indirect(shared, addr, peer.kind, name.as_deref())).await {
                // Another monitor reached it: this one may be cut off.
                Indirect::Reached => judge.answered_at(Instant::now(), None),
                // Another monitor answered that it could not reach it
                // either (a nack): this monitor's messages get through,
                // its health is not raised (Lifeguard).
                Indirect::Nack => judge.missed_widened(now, widen.max(shared.health.widen())),
                Indirect::Silent => {
                    let widen = widen.max(shared.health.widen());
                    shared.health.raise();
                    judge.missed_widened(now, widen)
                }
            }
        }
    };
    peer.ready_at = Instant::now();
    let recorded = shared.record(
        addr,
        peer.id,
        verdict,
        judge.deadline(started, config.timeout()),
        judge.incarnation(),
    );
    if !recorded {
        // No longer watched.
        return Flow::Stop;
    }
    if matches!(verdict.state, PeerState::Dead { .. }) {
        let since = *peer.dead_since.get_or_insert(now);
        if config
            .forget_dead_after()
            .is_some_and(|after| now.saturating_duration_since(since) >= after)
        {
            tracing::info!("dead too long: forgotten");
            shared.forget(addr);
            return Flow::Stop;
        }
    }
    Flow::Continue
}

/// Asks another live monitor to probe the peer (in a cluster, with
/// indirect probes on): whether it reached it, answered that it could not
/// (a nack), or did not answer.
async fn indirect<P: Probe>(
    shared: &Arc<Shared<P>>,
    addr: SocketAddr,
    kind: PeerKind,
    name: Option<&str>,
) -> Indirect {
    let (Some(cluster), Some(name)) = (&shared.cluster, name) else {
        return Indirect::Silent;
    };
    if !cluster.indirect {
        return Indirect::Silent;
    }
    let Some(client) = cluster
        .helpers(name)
        .iter()
        .find_map(|member| member.client.lock().ok()?.clone())
    else {
        return Indirect::Silent;
    };
    bump(&cluster.counters.indirect_probes);
    let ask = ClusterMessage::Probe {
        addr,
        go: kind == PeerKind::Go,
    };
    // Its probe takes at most a timeout; the way there and back, a little
    // more.
    let within = shared.config.timeout() + shared.config.timeout() / 2;
    match client.request_within(&ask, within).await {
        Ok(ClusterMessage::ProbeResult { ok: true }) => {
            bump(&cluster.counters.indirect_answered);
            Indirect::Reached
        }
        Ok(ClusterMessage::ProbeResult { ok: false }) => {
            bump(&cluster.counters.indirect_nacks);
            Indirect::Nack
        }
        _ => Indirect::Silent,
    }
}

/// One probe of `addr` for another monitor, on a connection of its own.
async fn probe_once<P: Probe, Q: Probe>(shared: &Shared<P>, probe: &Q, addr: SocketAddr) -> bool {
    let mut link = Link {
        client: None,
        request_ids: (!probe.request_ids_fallback()).then_some(false),
    };
    let message = probe.ping(0);
    let checked = ping(shared, probe, &mut link, addr, 0, &message).await;
    if let Some(client) = link.client.take() {
        client.close().await;
    }
    checked.is_ok()
}

impl<P: Probe> Local for Arc<Shared<P>> {
    fn learn(&self, name: String, addr: SocketAddr, go: bool) {
        let kind = if go { PeerKind::Go } else { PeerKind::Typed };
        if let Err(error) = self.watch(name, addr, kind, false) {
            tracing::warn!(%addr, %error, "node learned from another monitor not watched");
        }
    }

    fn probe_once(&self, addr: SocketAddr, go: bool) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if go {
                probe_once(self, &TextProbe, addr).await
            } else {
                probe_once(self, &self.probe, addr).await
            }
        })
    }

    fn nodes(&self) -> Vec<(String, SocketAddr, bool)> {
        self.lock()
            .by_addr
            .iter()
            .map(|(addr, w)| (w.name.clone(), *addr, w.kind == PeerKind::Go))
            .collect()
    }

    fn emit(&self, node: &str, state: Combined, previous: Option<Combined>) -> bool {
        let state_of = |c: Combined| match c {
            Combined::Alive => PeerState::Alive,
            Combined::Suspect {
                misses,
                incarnation,
            } => PeerState::Suspect {
                misses,
                incarnation,
            },
            Combined::Dead { misses } => PeerState::Dead { misses },
        };
        let (state, previous) = (state_of(state), previous.map(state_of));
        let Some(addr) = self.lock().by_name.get(node).copied() else {
            return false;
        };
        if matches!(state, PeerState::Dead { .. }) {
            bump(&self.counters.deaths);
        }
        Shared::emit(
            self,
            PeerEvent {
                name: node.to_owned(),
                addr,
                state,
                previous,
                suspicion: 0.0,
                at: SystemTime::now(),
            },
        );
        true
    }
}

/// Connects to another monitor's cluster server.
async fn connect_cluster<P: Probe>(
    shared: &Shared<P>,
    addr: SocketAddr,
) -> Result<Client<ClusterMessage>, Error> {
    let timeout = shared.config.interval();
    let builder = Client::<ClusterMessage>::builder()
        .request_ids()
        .connect_timeout(timeout)
        .write_stall_timeout(Some(timeout * 3))
        .close_timeout(timeout);
    Ok(match &shared.dialer {
        None => builder.connect(addr).await?,
        Some(dialer) => {
            let io = dialer.dial(addr).await?;
            builder.connect_io(io, Addr::from(addr)).await?
        }
    })
}

/// Keeps a connection to one other monitor: on each connect, sends it
/// every node and this monitor's votes; then a heartbeat every interval
/// and every queued message. Connects again after a failure, when it has
/// not been heard from for 2 intervals, or when it restarted.
async fn cluster_link<P: Probe>(
    shared: Arc<Shared<P>>,
    cluster: Arc<Cluster>,
    member: Arc<Member>,
    mut queue: mpsc::Receiver<ClusterMessage>,
    epoch: u64,
) {
    let interval = shared.config.interval();
    let stop = shared.stop.clone();
    let heartbeat = ClusterMessage::Heartbeat {
        from: cluster.me.clone(),
        epoch,
    };
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = connect_cluster(&shared, member.addr) => connected,
        };
        if let Ok(client) = connected {
            let client = Arc::new(client);
            *member.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
            // What was queued before is in the sync (every message is
            // queued after its change is made, see `Shared::watch`).
            while queue.try_recv().is_ok() {}
            let mut sync = vec![heartbeat.clone()];
            sync.extend(cluster.sync(&shared));
            let mut ok = client.send_all(sync.iter()).await.is_ok();
            let connected_at = Instant::now();
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while ok {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = member.reset.notified() => ok = false,
                    _ = member.resync.notified() => {
                        // A message toward it was dropped: everything
                        // again (what is queued is in it, as above).
                        while queue.try_recv().is_ok() {}
                        let sync = cluster.sync(&shared);
                        ok = client.send_all(sync.iter()).await.is_ok();
                    }
                    _ = ticker.tick() => {
                        // Silent for 2 intervals since well after the
                        // connect: the connection may be dead one way.
                        let silent = connected_at.elapsed() > interval * 4
                            && !cluster.is_live(&member);
                        if silent {
                            // It may be its connection to this one that
                            // died (one way): it sees this close, and dials.
                            member.cut_inbound();
                        }
                        ok = !silent && client.send(&heartbeat).await.is_ok();
                    }
                    message = queue.recv() => match message {
                        Some(message) => {
                            bump(&cluster.counters.sent);
                            ok = client.send(&message).await.is_ok();
                        }
                        None => return,
                    },
                }
            }
            *member.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Ok(client) = Arc::try_unwrap(client) {
                drop(client);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Every interval: the cluster's verdicts again (its membership may have
/// changed).
async fn cluster_tick<P: Probe>(shared: Arc<Shared<P>>, cluster: Arc<Cluster>) {
    let mut ticker = tokio::time::interval(shared.config.interval());
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ticker.tick() => cluster.combine_all(&shared),
        }
    }
}

/// Sends one ping and waits for its answer, within the timeout,
/// connecting first if needed (both ways at once if the peer may answer
/// with or without request ids).
async fn ping<P: Probe, Q: Probe>(
    shared: &Shared<P>,
    probe: &Q,
    link: &mut Link,
    addr: SocketAddr,
    seq: u64,
    message: &Q::Ping,
) -> Result<Option<u64>, Error> {
    if let Some(client) = link.client.as_ref() {
        // The client's request timeout is the check's timeout (see
        // `first_check`): no timer of our own. Boxed: a request's future
        // is held only while the check is in flight, not for the peer's
        // whole life in its task (one allocation per check is cheaper
        // than the memory).
        let timeout = shared.config.timeout();
        return Box::pin(ask(probe, client, timeout, seq, message)).await;
    }
    // Boxed: connecting is rare, and its future (two connects at once) is
    // several times the size of a check on an open connection, which every
    // peer's task would otherwise carry for its whole life.
    let timeout = shared.config.timeout();
    let connect = connect_and_ask(shared, probe, link, addr, seq, message);
    Box::pin(tokio::time::timeout(timeout, connect))
        .await
        .unwrap_or(Err(Error::RequestTimeout(timeout)))
}

/// [`ping`] with no connection open: connects and makes the check.
async fn connect_and_ask<P: Probe, Q: Probe>(
    shared: &Shared<P>,
    probe: &Q,
    link: &mut Link,
    addr: SocketAddr,
    seq: u64,
    message: &Q::Ping,
) -> Result<Option<u64>, Error> {
    let ((client, incarnation), request_ids) = match link.request_ids {
        Some(request_ids) => (
            first_check(shared, probe, addr, seq, message, request_ids).await?,
            request_ids,
        ),
        None => {
            let plain = first_check(shared, probe, addr, seq, message, false);
            let with_ids = first_check(shared, probe, addr, seq, message, true);
            tokio::pin!(plain, with_ids);
            let (mut plain_failed, mut ids_failed) = (None, None);
            loop {
                tokio::select! {
                    checked = &mut plain, if plain_failed.is_none() => match checked {
                        Ok(client) => break (client, false),
                        Err(error) => plain_failed = Some(error),
                    },
                    checked = &mut with_ids, if ids_failed.is_none() => match checked {
                        Ok(client) => break (client, true),
                        Err(error) => ids_failed = Some(error),
                    },
                }
                if let (Some(error), Some(_)) = (&mut plain_failed, &ids_failed) {
                    // Both failed: the plain way's error says why.
                    return Err(std::mem::replace(error, Error::Closed));
                }
            }
        }
    };
    link.client = Some(client);
    link.request_ids = Some(request_ids);
    Ok(incarnation)
}

/// Connects (with or without request ids) and makes the check on the new
/// connection; the connection if it was answered.
async fn first_check<P: Probe, Q: Probe>(
    shared: &Shared<P>,
    probe: &Q,
    addr: SocketAddr,
    seq: u64,
    message: &Q::Ping,
    request_ids: bool,
) -> Result<(Owned, Option<u64>), Error> {
    let connector = shared.connector(probe, request_ids)?;
    let client = match &shared.dialer {
        None => connector.connect(addr).await?,
        Some(dialer) => {
            let io = dialer.dial(addr).await?;
            connector.connect_io(io, Addr::from(addr)).await?
        }
    };
    let timeout = shared.config.timeout();
    let incarnation = ask(probe, &client, timeout, seq, message).await?;
    Ok((client, incarnation))
}

/// One ping on `client`, and its answer checked: the incarnation it
/// carries, if any.
async fn ask<Q: Probe>(
    probe: &Q,
    client: &Owned,
    timeout: Duration,
    seq: u64,
    message: &Q::Ping,
) -> Result<Option<u64>, Error> {
    // The probe pairs its ping and pong types itself (a Go peer's text
    // included), and checks the answer: untyped.
    let pong: Q::Pong = client
        .handle()
        .request_untyped::<Q::Ping, Q::Pong>(message, timeout)
        .await?;
    if probe.is_answer(seq, &pong) {
        Ok(probe.incarnation(&pong))
    } else {
        Err(Error::Handler(format!("wrong answer to ping {seq}").into()))
    }
}

/// The handler of a monitor's registration server: each registration (one
/// per connection, EOF-framed) starts watching that node.
///
/// A registration is a [`Register`] message (checked with the monitor's
/// probe, and answered with a [`Registered`]), or (with a Go port
/// configured) the Go original's `hello`, for which the node is checked at
/// the connection's IP and the Go port with [`TextProbe`]. A typed
/// registration must name the connection's own IP unless configured
/// otherwise ([`RegisteredIp`]); addresses are compared canonically (a
/// dual-stack server's `::ffff:a.b.c.d` is `a.b.c.d`). Refusals are
/// handler errors on the server's error stream, and every refusal is
/// counted in [`MonitorStats`].
pub struct Registrar {
    shared: Arc<dyn Registry>,
    /// Registration connections open (slots taken by the accept filter).
    open: Arc<AtomicUsize>,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What the registrar needs of a monitor, whatever its probe.
trait Registry: Send + Sync + 'static {
    /// Takes a registration; what to answer, if anything.
    fn register(&self, bytes: &[u8], peer: &Addr) -> Result<Option<Registered>, BoxError>;
    fn deadline(&self) -> Duration;
    fn counters(&self) -> &Counters;
}

impl<P: Probe> Registry for Arc<Shared<P>> {
    fn register(&self, bytes: &[u8], peer: &Addr) -> Result<Option<Registered>, BoxError> {
        let counters = &self.counters;
        let peer_ip = peer.ip().map(canonical_ip);
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        let (name, addr, kind) = if trimmed == GO_HELLO {
            let (Some(port), Some(ip)) = (self.config.go_port(), peer_ip) else {
                bump(&counters.refused_invalid);
                return Err("a Go `hello` registration, but no Go port is configured".into());
            };
            let addr = SocketAddr::new(ip, port);
            (addr.to_string(), addr, PeerKind::Go)
        } else {
            let codec = <<Register as crate::codec::Message>::Codec as Default>::default();
            let registration: Register = match codec.decode(Bytes::copy_from_slice(bytes)) {
                Ok(registration) => registration,
                Err(error) => {
                    bump(&counters.refused_invalid);
                    return Err(error.into());
                }
            };
            let addr = canonical(registration.addr);
            let same_ip = peer_ip == Some(addr.ip());
            if self.config.registered_ip() == RegisteredIp::SameAsConnection && !same_ip {
                bump(&counters.refused_ip);
                return Err(format!(
                    "registration names {} from another address",
                    registration.addr
                )
                .into());
            }
            (registration.name, addr, PeerKind::Typed)
        };
        self.watch(name, addr, kind, true)?;
        bump(&counters.registrations);
        // A Go node closes at once and expects nothing back.
        Ok((kind == PeerKind::Typed).then_some(Registered {
            interval: self.config.interval(),
        }))
    }

    fn deadline(&self) -> Duration {
        self.registration_deadline
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// A registration connection's state, shared with its deadline's timer.
#[derive(Debug, Default)]
struct Pending {
    /// A whole registration arrived (taken or refused).
    read: AtomicBool,
    /// The deadline closed the connection.
    cut: AtomicBool,
}

impl Handler for Registrar {
    type Message = Bytes;

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let pending = Arc::new(Pending::default());
        ctx.set_session(pending.clone());
        let handle: ConnectionHandle = ctx.handle();
        let deadline = self.shared.deadline();
        tokio::spawn(async move {
            tokio::select! {
                _ = handle.closed() => {}
                _ = tokio::time::sleep(deadline) => {
                    pending.cut.store(true, Ordering::Release);
                    tracing::debug!(peer = %handle.peer_addr(), ?deadline, "registration connection closed: past its deadline");
                    handle.close();
                }
            }
        });
        Ok(())
    }

    async fn handle(&self, registration: Bytes, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if let Some(pending) = ctx.session::<Arc<Pending>>() {
            pending.read.store(true, Ordering::Release);
        }
        if let Some(registered) = self.shared.register(&registration, &ctx.peer_addr())? {
            // Old nodes ignore it (their client takes any frame).
            ctx.send(&registered)?;
        }
        Ok(())
    }

    async fn on_close(&self, mut closed: Closed) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let Some(pending) = closed.take_session::<Arc<Pending>>() else {
            return;
        };
        if pending.read.load(Ordering::Acquire) {
            return;
        }
        let counters = self.shared.counters();
        if pending.cut.load(Ordering::Acquire) {
            bump(&counters.refused_slow);
        } else if closed.reason() == CloseReason::Failed {
            bump(&counters.refused_unread);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a watched peer costs the monitor between its checks (its
    /// [`PeerCheck`], in the scheduler's timer queue) and while one is in
    /// flight (the check's future) is most of what it costs besides the
    /// connection kept open to it (issue 24: at most 4 KB a peer in all).
    /// Until issue 24 each peer had a task of its own (904 B of future, a
    /// timer and a cancellation token besides); now one scheduler drives
    /// every peer's checks from a timer queue. The kept-open connection is
    /// its handle only (a [`Connector`] shared by every peer holds the
    /// client settings, wire, counters and events a [`Client`] holds for
    /// its one connection). With rustc 1.95: 288 B between checks (boxed),
    /// 760 B for a check in flight. The bounds leave room for
    /// compiler changes, not for a task per peer again.
    #[test]
    fn a_check_task_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let config = HeartbeatConfig::builder().build().unwrap();
        let (monitor, _events) = Monitor::new(config);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let now = Instant::now();
        let peer = Box::new(PeerCheck::new(
            &monitor.shared,
            addr,
            PeerKind::Typed,
            1,
            now,
        ));
        let kept = std::mem::size_of_val(&*peer);
        let check = run_check(&monitor.shared, peer, now, None);
        let size = std::mem::size_of_val(&check);
        assert!(kept <= 320, "a peer takes {kept} B between checks");
        assert!(size <= 832, "a check in flight takes {size} B");
        let link = std::mem::size_of::<Link>();
        assert!(link <= 32, "a kept-open connection takes {link} B in it");
    }

    /// Watched peers share the monitor's one scheduler task (issue 24): no
    /// task (nor timer, nor cancellation token) per peer.
    #[test]
    fn watched_peers_share_one_task() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = HeartbeatConfig::builder()
                .interval(Duration::from_secs(60))
                .build()
                .unwrap();
            let (monitor, _events) = Monitor::new(config);
            let metrics = tokio::runtime::Handle::current().metrics();
            let before = metrics.num_alive_tasks();
            for port in 1..=100 {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                monitor.watch(format!("n{port}"), addr).unwrap();
            }
            let tasks = metrics.num_alive_tasks() - before;
            assert!(tasks <= 1, "{tasks} tasks for 100 watched peers");
            monitor.stop().await;
        });
    }

    /// A peer unwatched while its check is in flight: the check ends, and
    /// its connections close, at once, not when the check would time out.
    #[tokio::test]
    async fn unwatching_ends_a_check_in_flight() {
        // Bounds on work that takes milliseconds (over 5x that on a busy
        // machine); the check's own timeout is far longer.
        const WAIT: Duration = Duration::from_secs(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = HeartbeatConfig::builder()
            .interval(Duration::from_secs(600))
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let (monitor, _events) = Monitor::new(config);
        monitor.watch("n", addr).unwrap();
        // Its first check connects (both ways at once: with and without
        // request ids) and pings; nothing answers.
        let (mut first, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut first, &mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, 1, "the ping");
        assert!(monitor.unwatch(addr));
        // Closed (EOF or reset) well before the check's timeout.
        let closed = tokio::time::timeout(WAIT, async {
            let mut rest = [0u8; 256];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut first, &mut rest).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the check's connection stayed open");
        assert_eq!(monitor.peer(addr), None);
        tokio::time::timeout(WAIT, monitor.stop()).await.unwrap();
    }
}
