//! The monitor side: checks peers every interval and reports state changes.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::config::{HeartbeatConfig, RegisteredIp};
use super::detector::{Judge, Verdict};
use super::probe::{BeatProbe, Dialer, Probe};
use super::Register;
use crate::base::addr::Addr;
use crate::client::Client;
use crate::codec::Codec;
use crate::conn::handler::{Context, Handler};
use crate::server::{Server, ServerBuilder};
use crate::wire::error::{BoxError, Error};
use crate::wire::frame::Framing;

/// Peer events buffered for a reader before new ones are dropped.
const EVENT_CAPACITY: usize = 1024;
/// Registration connections open at once, at most.
const MAX_REGISTRATION_CONNECTIONS: usize = 1024;
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
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::Alive => write!(f, "alive"),
            PeerState::Missed { misses } => write!(f, "missed {misses} in a row"),
            PeerState::Dead { misses } => write!(f, "DEAD after {misses} misses"),
            PeerState::Forgotten => write!(f, "forgotten"),
        }
    }
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
}

#[derive(Debug, Default)]
struct Counters {
    registrations: AtomicU64,
    refused_full: AtomicU64,
    refused_ip: AtomicU64,
    refused_filter: AtomicU64,
    refused_invalid: AtomicU64,
    forgotten: AtomicU64,
    checks: AtomicU64,
    misses: AtomicU64,
    deaths: AtomicU64,
    dropped_events: AtomicU64,
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
    /// Stops the monitor when the last handle goes (check tasks and the
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
            .field("watched", &self.shared.lock().len())
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
    /// Watched peers.
    peers: Mutex<HashMap<SocketAddr, Watched>>,
    /// Where state changes go (dropped when nobody reads them).
    events: mpsc::Sender<PeerEvent>,
    /// Every check task.
    tasks: TaskTracker,
    /// Stops every check task.
    stop: CancellationToken,
    counters: Counters,
}

#[derive(Debug)]
struct Watched {
    name: String,
    state: Option<PeerState>,
    stop: CancellationToken,
}

/// Configures a [`Monitor`]: made by [`Monitor::builder`].
#[must_use = "a monitor builder does nothing until `build` is called"]
pub struct MonitorBuilder<P = BeatProbe> {
    config: HeartbeatConfig,
    probe: P,
    dialer: Option<Arc<dyn Dialer>>,
    filter: Option<Filter>,
}

impl<P: fmt::Debug> fmt::Debug for MonitorBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorBuilder")
            .field("config", &self.config)
            .field("probe", &self.probe)
            .field("dialer", &self.dialer.is_some())
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl<P: Probe> MonitorBuilder<P> {
    /// Probes peers with `probe` (default [`BeatProbe`]): for example
    /// [`TextProbe`](super::TextProbe) for Go nodes.
    pub fn probe<Q: Probe>(self, probe: Q) -> MonitorBuilder<Q> {
        MonitorBuilder {
            config: self.config,
            probe,
            dialer: self.dialer,
            filter: self.filter,
        }
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
        let shared = Arc::new(Shared {
            config: self.config,
            probe: self.probe,
            dialer: self.dialer,
            filter: self.filter,
            peers: Mutex::new(HashMap::new()),
            events,
            tasks: TaskTracker::new(),
            stop: stop.clone(),
            counters: Counters::default(),
        });
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
        }
    }
}

impl<P: Probe> Monitor<P> {
    /// The monitor's settings.
    pub fn config(&self) -> HeartbeatConfig {
        self.shared.config
    }

    /// Starts checking the responder at `addr`. Watching an address already
    /// watched only renames it.
    ///
    /// # Errors
    ///
    /// [`WatchError::Full`] if the monitor watches its maximum of peers
    /// already (counted in [`MonitorStats::refused_full`]),
    /// [`WatchError::Stopped`] once stopped.
    pub fn watch(&self, name: impl Into<String>, addr: SocketAddr) -> Result<(), WatchError> {
        self.shared.watch(name.into(), addr)
    }

    /// Stops checking `addr`; returns whether it was watched.
    pub fn unwatch(&self, addr: SocketAddr) -> bool {
        match self.shared.lock().remove(&addr) {
            Some(watched) => {
                watched.stop.cancel();
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
            .iter()
            .map(|(addr, w)| (w.name.clone(), *addr, w.state))
            .collect()
    }

    /// The monitor's counters.
    pub fn stats(&self) -> MonitorStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MonitorStats {
            watched: self.shared.lock().len() as u64,
            registrations: get(&c.registrations),
            refused_full: get(&c.refused_full),
            refused_ip: get(&c.refused_ip),
            refused_filter: get(&c.refused_filter),
            refused_invalid: get(&c.refused_invalid),
            forgotten: get(&c.forgotten),
            checks: get(&c.checks),
            misses: get(&c.misses),
            deaths: get(&c.deaths),
            dropped_events: get(&c.dropped_events),
        }
    }

    /// The registration server, configured (EOF framing, registrations of
    /// at most 4 KiB, at most 1024 connections at once, an idle timeout,
    /// the registration filter) but not started: start it with
    /// [`listen`](ServerBuilder::listen), or
    /// [`serve`](ServerBuilder::serve) over any stream of connections.
    /// Each connection carries one registration: a [`Register`] (see
    /// [`register`](super::register)) or, with a Go port configured, the
    /// Go original's `hello`.
    pub fn registration_server(&self) -> ServerBuilder<Registrar> {
        let registrar = Registrar {
            shared: Arc::new(self.shared.clone()),
        };
        let idle = self
            .shared
            .config
            .interval()
            .max(std::time::Duration::from_secs(10));
        let builder = Server::builder(registrar)
            .framing(Framing::eof().max_frame_length(MAX_REGISTRATION_BYTES))
            .idle_timeout(idle)
            .max_connections(MAX_REGISTRATION_CONNECTIONS);
        match self.shared.filter.clone() {
            None => builder,
            Some(allow) => {
                let shared = Arc::downgrade(&self.shared);
                builder.accept_filter(move |peer| {
                    let allowed = allow(peer);
                    if !allowed {
                        if let Some(shared) = shared.upgrade() {
                            bump(&shared.counters.refused_filter);
                        }
                    }
                    allowed
                })
            }
        }
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
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Watched>> {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn watch(self: &Arc<Self>, name: String, addr: SocketAddr) -> Result<(), WatchError> {
        let mut peers = self.lock();
        if let Some(watched) = peers.get_mut(&addr) {
            watched.name = name;
            return Ok(());
        }
        if self.stop.is_cancelled() {
            return Err(WatchError::Stopped);
        }
        let max = self.config.max_peers();
        if peers.len() >= max {
            bump(&self.counters.refused_full);
            return Err(WatchError::Full { max });
        }
        let stop = self.stop.child_token();
        tracing::info!(%addr, %name, "watching peer");
        peers.insert(
            addr,
            Watched {
                name,
                state: None,
                stop: stop.clone(),
            },
        );
        drop(peers);
        // A root span: the registration connection that may have started
        // this check is long closed by the time it runs.
        let span = tracing::info_span!(parent: None, "heartbeat", peer = %addr);
        let check = check_peer(self.clone(), addr, stop);
        self.tasks.spawn(check.instrument(span));
        Ok(())
    }

    /// Records `verdict` for `addr` and reports it if the state changed.
    fn record(&self, addr: SocketAddr, verdict: Verdict) {
        let mut peers = self.lock();
        let Some(watched) = peers.get_mut(&addr) else {
            return;
        };
        let state = verdict.state;
        let previous = watched.state.replace(state);
        if previous == Some(state) {
            return;
        }
        if matches!(state, PeerState::Dead { .. }) {
            bump(&self.counters.deaths);
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
        self.emit(event);
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
    fn forget(&self, addr: SocketAddr) {
        let Some(watched) = self.lock().remove(&addr) else {
            return;
        };
        bump(&self.counters.forgotten);
        self.emit(PeerEvent {
            name: watched.name,
            addr,
            state: PeerState::Forgotten,
            previous: watched.state,
            suspicion: 0.0,
            at: SystemTime::now(),
        });
    }
}

/// Checks one peer every interval until stopped (or forgotten).
async fn check_peer<P: Probe>(shared: Arc<Shared<P>>, addr: SocketAddr, stop: CancellationToken) {
    let config = shared.config;
    let mut ticker = tokio::time::interval(config.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link: Option<Client<P::Ping>> = None;
    let mut judge = Judge::new(&config, Instant::now());
    let mut dead_since: Option<Instant> = None;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        seq += 1;
        bump(&shared.counters.checks);
        let check = tokio::select! {
            _ = stop.cancelled() => break,
            check = tokio::time::timeout(config.timeout(), ping(&shared, &mut link, addr, seq)) => check,
        };
        let now = Instant::now();
        let verdict = match check {
            Ok(Ok(())) => {
                dead_since = None;
                judge.answered(now)
            }
            failed => {
                let why = match failed {
                    Ok(Err(error)) => crate::wire::error::Report(&error).to_string(),
                    _ => format!("no answer within {:?}", config.timeout()),
                };
                tracing::debug!(seq, %why, "heartbeat missed");
                bump(&shared.counters.misses);
                // A fresh connection next time: a late answer never shifts
                // the next ones.
                if let Some(client) = link.take() {
                    drop(client);
                }
                judge.missed(now)
            }
        };
        shared.record(addr, verdict);
        if matches!(verdict.state, PeerState::Dead { .. }) {
            let since = *dead_since.get_or_insert(now);
            if config
                .forget_dead_after()
                .is_some_and(|after| now.saturating_duration_since(since) >= after)
            {
                tracing::info!("dead too long: forgotten");
                shared.forget(addr);
                break;
            }
        }
    }
    if let Some(client) = link {
        client.close().await;
    }
}

/// Sends one ping and waits for its answer, connecting first if needed.
async fn ping<P: Probe>(
    shared: &Shared<P>,
    link: &mut Option<Client<P::Ping>>,
    addr: SocketAddr,
    seq: u64,
) -> Result<(), Error> {
    let timeout = shared.config.timeout();
    if link.is_none() {
        let builder = shared
            .probe
            .client()
            .connect_timeout(timeout)
            .request_timeout(timeout)
            .write_stall_timeout(Some(timeout))
            .close_timeout(timeout);
        let client = match &shared.dialer {
            None => builder.connect(addr).await?,
            Some(dialer) => {
                let io = dialer.dial(addr).await?;
                builder.connect_io(io, Addr::from(addr)).await?
            }
        };
        *link = Some(client);
    }
    let Some(client) = link.as_ref() else {
        return Err(Error::Closed);
    };
    // The probe pairs its ping and pong types itself (a Go peer's text
    // included), and checks the answer: untyped.
    let pong: P::Pong = client
        .request_untyped::<P::Pong>(&shared.probe.ping(seq))
        .await?;
    if shared.probe.is_answer(seq, &pong) {
        Ok(())
    } else {
        Err(Error::Handler(format!("wrong answer to ping {seq}").into()))
    }
}

/// The handler of a monitor's registration server: each registration (one
/// per connection, EOF-framed) starts watching that node.
///
/// A registration is a [`Register`] message, or (with a Go port
/// configured) the Go original's `hello`, for which the node is checked at
/// the connection's IP and the Go port. A typed registration must name the
/// connection's own IP unless configured otherwise
/// ([`RegisteredIp`]). Refusals are handler errors on the server's error
/// stream, and counted in [`MonitorStats`].
pub struct Registrar {
    shared: Arc<dyn Registry>,
}

impl fmt::Debug for Registrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registrar").finish_non_exhaustive()
    }
}

/// What the registrar needs of a monitor, whatever its probe.
trait Registry: Send + Sync + 'static {
    fn register(&self, bytes: &[u8], peer: &Addr) -> Result<(), BoxError>;
}

impl<P: Probe> Registry for Arc<Shared<P>> {
    fn register(&self, bytes: &[u8], peer: &Addr) -> Result<(), BoxError> {
        let counters = &self.counters;
        let peer_ip = peer.ip();
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
        let (name, addr) = if trimmed == GO_HELLO {
            let (Some(port), Some(ip)) = (self.config.go_port(), peer_ip) else {
                bump(&counters.refused_invalid);
                return Err("a Go `hello` registration, but no Go port is configured".into());
            };
            let addr = SocketAddr::new(ip, port);
            (addr.to_string(), addr)
        } else {
            let codec = <<Register as crate::codec::Message>::Codec as Default>::default();
            let registration: Register = match codec.decode(Bytes::copy_from_slice(bytes)) {
                Ok(registration) => registration,
                Err(error) => {
                    bump(&counters.refused_invalid);
                    return Err(error.into());
                }
            };
            let same_ip = peer_ip == Some(registration.addr.ip());
            if self.config.registered_ip() == RegisteredIp::SameAsConnection && !same_ip {
                bump(&counters.refused_ip);
                return Err(format!(
                    "registration names {} from another address",
                    registration.addr
                )
                .into());
            }
            (registration.name, registration.addr)
        };
        self.watch(name, addr)?;
        bump(&counters.registrations);
        Ok(())
    }
}

impl Handler for Registrar {
    type Message = Bytes;

    async fn handle(&self, registration: Bytes, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.shared.register(&registration, &ctx.peer_addr())
    }
}
