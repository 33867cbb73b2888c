//! The monitor side: checks peers every interval and reports state changes.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{Beat, Register};
use crate::{BoxError, Client, Context, Error, Framing, Handler, Server};

/// Peer events buffered for a reader before new ones are dropped.
const EVENT_CAPACITY: usize = 1024;

/// How often, how patiently and how forgivingly a [`Monitor`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Time between two checks of a peer (default 3 s, as the Go original).
    pub interval: Duration,
    /// How long a check may take: connecting (if needed), ping, pong
    /// (default: the interval).
    pub timeout: Duration,
    /// A peer is dead after more than this many misses in a row (default 3,
    /// as the Go original).
    pub miss_limit: u32,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig::with_interval(Duration::from_secs(3))
    }
}

impl HeartbeatConfig {
    /// Checks every `interval`, with a timeout of one interval and the
    /// default miss limit.
    pub fn with_interval(interval: Duration) -> Self {
        HeartbeatConfig {
            interval,
            timeout: interval,
            miss_limit: 3,
        }
    }
}

/// What a monitor knows of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// It answered the last check.
    Alive,
    /// It missed the last `misses` checks in a row, not yet more than the
    /// miss limit.
    Missed {
        /// Misses in a row.
        misses: u32,
    },
    /// It missed more than the miss limit in a row. Checks go on: an answer
    /// makes it [`PeerState::Alive`] again.
    Dead {
        /// Misses in a row when it was declared dead.
        misses: u32,
    },
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::Alive => write!(f, "alive"),
            PeerState::Missed { misses } => write!(f, "missed {misses} in a row"),
            PeerState::Dead { misses } => write!(f, "DEAD after {misses} misses"),
        }
    }
}

/// A change in a peer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEvent {
    /// The name the peer registered with.
    pub name: String,
    /// The peer's responder address.
    pub addr: SocketAddr,
    /// Its new state.
    pub state: PeerState,
    /// The state before, `None` for the first check.
    pub previous: Option<PeerState>,
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
    /// The next state change; `None` once the monitor has stopped and every
    /// event has been read.
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

/// Checks a set of peers with [`Beat`] ping/pong and reports their state
/// changes. Cloning gives another handle on the same monitor.
#[derive(Debug, Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: HeartbeatConfig,
    /// Watched peers and the signal that stops each one's checks.
    peers: Mutex<HashMap<SocketAddr, Watched>>,
    /// Where state changes go (dropped when nobody reads them).
    events: mpsc::Sender<PeerEvent>,
    /// Every check task.
    tasks: TaskTracker,
    /// Stops every check task.
    stop: CancellationToken,
}

#[derive(Debug)]
struct Watched {
    name: String,
    state: Option<PeerState>,
    stop: CancellationToken,
}

impl Monitor {
    /// A monitor with no peers yet, and the stream of its events.
    pub fn new(config: HeartbeatConfig) -> (Monitor, PeerEvents) {
        let (events, rx) = mpsc::channel(EVENT_CAPACITY);
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            config,
            peers: Mutex::new(HashMap::new()),
            events,
            tasks: TaskTracker::new(),
            stop: stop.clone(),
        });
        let stopped = stop;
        (Monitor { inner }, PeerEvents { rx, stopped })
    }

    /// The monitor's settings.
    pub fn config(&self) -> HeartbeatConfig {
        self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Watched>> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts checking the responder at `addr`. Watching an address already
    /// watched only renames it.
    pub fn watch(&self, name: impl Into<String>, addr: SocketAddr) {
        let name = name.into();
        let mut peers = self.lock();
        if let Some(watched) = peers.get_mut(&addr) {
            watched.name = name;
            return;
        }
        if self.inner.stop.is_cancelled() {
            return;
        }
        let stop = self.inner.stop.child_token();
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
        let check = check_peer(self.clone(), addr, stop);
        let span = tracing::info_span!("heartbeat", peer = %addr);
        self.inner.tasks.spawn(check.instrument(span));
    }

    /// Stops checking `addr`; returns whether it was watched.
    pub fn unwatch(&self, addr: SocketAddr) -> bool {
        match self.lock().remove(&addr) {
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
        self.lock()
            .iter()
            .map(|(addr, w)| (w.name.clone(), *addr, w.state))
            .collect()
    }

    /// Serves registrations on `addr`: each [`Register`] message received
    /// (EOF-framed, one per connection) starts watching that node.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address cannot be bound.
    pub async fn listen_registrations(
        &self,
        addr: impl crate::ConnectAddr,
    ) -> Result<Server<Registrar>, Error> {
        let registrar = Registrar {
            monitor: self.clone(),
        };
        Server::builder(registrar)
            .framing(Framing::eof().max_frame_length(64 * 1024))
            .idle_timeout(self.inner.config.interval.max(Duration::from_secs(10)))
            .listen(addr)
            .await
    }

    /// Stops every check and waits for the checks to end. The event stream
    /// ends once drained.
    pub async fn stop(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Records `state` for `addr` and reports it if it changed.
    fn record(&self, addr: SocketAddr, state: PeerState) {
        let mut peers = self.lock();
        let Some(watched) = peers.get_mut(&addr) else {
            return;
        };
        let previous = watched.state.replace(state);
        let dead_still = matches!(
            (previous, state),
            (Some(PeerState::Dead { .. }), PeerState::Dead { .. })
        );
        if previous == Some(state) || dead_still {
            return;
        }
        let event = PeerEvent {
            name: watched.name.clone(),
            addr,
            state,
            previous,
            at: SystemTime::now(),
        };
        drop(peers);
        tracing::info!(peer = %addr, %state, "peer state changed");
        if self.inner.events.try_send(event).is_err() {
            tracing::warn!(peer = %addr, "peer events are not being read: event dropped");
        }
    }
}

/// Checks one peer every interval until stopped.
async fn check_peer(monitor: Monitor, addr: SocketAddr, stop: CancellationToken) {
    let config = monitor.inner.config;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut link: Option<Link> = None;
    let mut seq = 0u64;
    let mut misses = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        seq += 1;
        let check = tokio::select! {
            _ = stop.cancelled() => break,
            check = tokio::time::timeout(config.timeout, ping(&mut link, addr, seq, config)) => check,
        };
        let state = match check {
            Ok(Ok(())) => {
                misses = 0;
                PeerState::Alive
            }
            failed => {
                let why = match failed {
                    Ok(Err(error)) => crate::error::Report(&error).to_string(),
                    _ => format!("no answer within {:?}", config.timeout),
                };
                tracing::debug!(seq, %why, "heartbeat missed");
                link = None;
                misses += 1;
                if misses > config.miss_limit {
                    PeerState::Dead { misses }
                } else {
                    PeerState::Missed { misses }
                }
            }
        };
        monitor.record(addr, state);
    }
    if let Some(link) = link {
        link.client.close().await;
    }
}

/// A kept-open connection to a peer and the pongs it has received.
struct Link {
    client: Client<Beat>,
    pongs: mpsc::Receiver<u64>,
}

/// Sends one ping and waits for its pong, connecting first if needed.
async fn ping(
    link: &mut Option<Link>,
    addr: SocketAddr,
    seq: u64,
    config: HeartbeatConfig,
) -> Result<(), Error> {
    if link.is_none() {
        let (tx, pongs) = mpsc::channel(16);
        let client = Client::<Beat>::builder()
            .handler(PongCollector { pongs: tx })
            .connect_timeout(config.timeout)
            .write_stall_timeout(Some(config.timeout))
            .close_timeout(config.timeout)
            .connect(addr)
            .await?;
        *link = Some(Link { client, pongs });
    }
    let Some(link) = link.as_mut() else {
        return Err(Error::Closed);
    };
    link.client.send(&Beat::Ping { seq }).await?;
    // Pongs of earlier, timed-out pings may still arrive: skip them.
    loop {
        match link.pongs.recv().await {
            Some(answer) if answer == seq => return Ok(()),
            Some(_) => continue,
            None => return Err(Error::Closed),
        }
    }
}

/// The monitor's handler on each link: passes pongs to the check.
#[derive(Debug)]
struct PongCollector {
    pongs: mpsc::Sender<u64>,
}

impl Handler for PongCollector {
    type Message = Beat;

    async fn handle(&self, beat: Beat, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match beat {
            Beat::Pong { seq } => {
                // A full queue means the check is gone or far behind.
                let _ = self.pongs.try_send(seq);
                Ok(())
            }
            Beat::Ping { seq } => Err(format!("unexpected ping {seq} at a monitor").into()),
        }
    }
}

/// The handler of a monitor's registration server: each [`Register`]
/// message starts watching that node.
#[derive(Debug)]
pub struct Registrar {
    monitor: Monitor,
}

impl Handler for Registrar {
    type Message = Register;

    async fn handle(&self, registration: Register, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.monitor.watch(registration.name, registration.addr);
        Ok(())
    }
}
