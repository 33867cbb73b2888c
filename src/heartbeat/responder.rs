//! The node side: answering pings, registering with a monitor, and staying
//! registered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::probe::{Dialer, TEXT_PING, TEXT_PONG};
use super::{Beat, Register, Registered};
use crate::base::addr::sealed::Target;
use crate::base::addr::{Addr, ConnectAddr};
use crate::client::reconnect::Reconnect;
use crate::client::Client;
use crate::codec::Message;
use crate::conn::handler::{Context, Handler};
use crate::wire::error::{BoxError, Error};
use crate::wire::frame::Framing;

/// Times between two pings kept to learn the pinger's period.
const GAPS: usize = 5;

/// Pings answered, when the last one came, and the last times between two
/// of them, shared by a responder's clones.
#[derive(Debug, Default)]
struct Answered {
    count: AtomicU64,
    /// The node's incarnation: raised above every suspicion it refutes.
    incarnation: AtomicU64,
    pings: Mutex<Pings>,
}

#[derive(Debug, Default)]
struct Pings {
    last: Option<Instant>,
    /// The last [`GAPS`] times between two pings, oldest first.
    gaps: std::collections::VecDeque<Duration>,
}

/// When the last ping came on one connection (a [`Responder`]'s session).
#[derive(Debug, Default)]
struct PingedHere(Option<Instant>);

impl Answered {
    /// A ping answered now; `here`: when the last one came on the same
    /// connection, if pings are told apart by connection (`None`: the last
    /// one on any).
    fn tick(&self, here: Option<&mut PingedHere>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut pings = self.pings.lock().unwrap_or_else(|p| p.into_inner());
        let previous = match here {
            Some(here) => here.0.replace(now),
            None => pings.last,
        };
        if let Some(last) = previous {
            if pings.gaps.len() == GAPS {
                pings.gaps.pop_front();
            }
            pings.gaps.push_back(now.saturating_duration_since(last));
        }
        pings.last = Some(now);
    }

    fn last(&self) -> Option<Instant> {
        self.pings.lock().unwrap_or_else(|p| p.into_inner()).last
    }

    /// The median of the last times between two pings.
    fn period(&self) -> Option<Duration> {
        let pings = self.pings.lock().unwrap_or_else(|p| p.into_inner());
        let mut gaps: Vec<Duration> = pings.gaps.iter().copied().collect();
        gaps.sort_unstable();
        gaps.get(gaps.len() / 2).copied()
    }
}

/// A responder that can say when it last answered a ping: what
/// [`KeepRegistered`] watches.
pub trait LastPing: Send + Sync + 'static {
    /// When the last ping was answered (`None`: never).
    fn last_ping(&self) -> Option<Instant>;

    /// The pinger's real period, as seen: the median of the last times
    /// between two pings (`None` before two pings; the default); a
    /// [`Responder`] counts the time between two pings on one connection,
    /// so that a node watched by several monitors (each pinging on its
    /// own connection, at its own phase) learns their period, not the
    /// time between two monitors' pings. With it,
    /// [`KeepRegistered`] waits for pings at the pace they really come.
    fn ping_period(&self) -> Option<Duration> {
        None
    }
}

/// Answers every [`Beat::Ping`] with a [`Beat::Pong`] of the same sequence
/// number, and every [`Beat::Suspect`] with a [`Beat::Alive`] at an
/// incarnation above the suspected one (SWIM's refutation; see
/// [`incarnation`](Responder::incarnation)) (as a reply: it works with or without request ids on its
/// server). Serve it with [`Server`](crate::Server) on the node's address.
/// Clones share their counters: keep one to watch them (or give it to
/// [`KeepRegistered`]).
#[derive(Debug, Default, Clone)]
pub struct Responder {
    answered: Arc<Answered>,
}

impl Responder {
    /// A responder that has answered nothing yet.
    pub fn new() -> Self {
        Responder::default()
    }

    /// How many pings were answered, over all connections.
    pub fn answered(&self) -> u64 {
        self.answered.count.load(Ordering::Relaxed)
    }

    /// When the last ping was answered (`None`: never).
    pub fn last_ping(&self) -> Option<Instant> {
        self.answered.last()
    }

    /// The node's incarnation: 0 until a monitor suspected it, then one
    /// above the highest incarnation it was suspected at (each
    /// [`Beat::Suspect`] answered with a [`Beat::Alive`] refutes it).
    pub fn incarnation(&self) -> u64 {
        self.answered.incarnation.load(Ordering::Relaxed)
    }
}

impl LastPing for Responder {
    fn last_ping(&self) -> Option<Instant> {
        self.answered.last()
    }

    fn ping_period(&self) -> Option<Duration> {
        self.answered.period()
    }
}

impl Handler for Responder {
    type Message = Beat;

    async fn handle(&self, beat: Beat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match beat {
            Beat::Ping { seq } => {
                ctx.reply(&Beat::Pong { seq })?;
                // Each monitor watching the node pings on its own
                // connection: the period is learned per connection.
                self.answered
                    .tick(Some(ctx.session_or_default::<PingedHere>()));
                Ok(())
            }
            Beat::Suspect { seq, incarnation } => {
                // Above the suspected incarnation, and never lower than
                // ours: the refutation wins over the suspicion.
                let suspected = incarnation.saturating_add(1);
                let previous = self
                    .answered
                    .incarnation
                    .fetch_max(suspected, Ordering::AcqRel);
                let incarnation = previous.max(suspected);
                tracing::debug!(seq, incarnation, "suspected: refuted");
                ctx.reply(&Beat::Alive { seq, incarnation })?;
                self.answered
                    .tick(Some(ctx.session_or_default::<PingedHere>()));
                Ok(())
            }
            Beat::Pong { seq } | Beat::Alive { seq, .. } => {
                Err(format!("unexpected answer {seq} at a responder").into())
            }
        }
    }
}

/// Answers the Go original's text heartbeat: `heartbeat ping` with
/// `heartbeat pong`, in `\n` framing (raw, as the original writes it):
/// serve it with `Server::builder(TextResponder::new()).framing(Framing::lines())`
/// on the port a Go master checks. Clones share their counters.
#[derive(Debug, Default, Clone)]
pub struct TextResponder {
    answered: Arc<Answered>,
}

impl TextResponder {
    /// A responder that has answered nothing yet.
    pub fn new() -> Self {
        TextResponder::default()
    }

    /// How many pings were answered, over all connections.
    pub fn answered(&self) -> u64 {
        self.answered.count.load(Ordering::Relaxed)
    }

    /// When the last ping was answered (`None`: never).
    pub fn last_ping(&self) -> Option<Instant> {
        self.answered.last()
    }
}

impl LastPing for TextResponder {
    fn last_ping(&self) -> Option<Instant> {
        self.answered.last()
    }

    fn ping_period(&self) -> Option<Duration> {
        self.answered.period()
    }
}

impl Handler for TextResponder {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if line != TEXT_PING {
            return Err(format!("expected {TEXT_PING:?}, got {line:?}").into());
        }
        ctx.reply(&TEXT_PONG.to_string())?;
        self.answered.tick(None);
        Ok(())
    }
}

/// Registers a node (`name`, listening on `node`) with the monitor whose
/// registration server is at `monitor`: one [`Register`] message in EOF
/// framing, delivered when the connection closes.
///
/// `node` is a TCP address, such as the node server's
/// [`local_addr`](crate::Server::local_addr). By default a monitor accepts
/// it only from a connection with the same IP. The name is the node's
/// identity: registering it again from another address replaces the old
/// entry.
///
/// Returns what the monitor answered: its check interval
/// ([`Registered`]), or `None` from a monitor that answers nothing (older
/// versions).
///
/// # Errors
///
/// [`Error::Io`] or [`Error::ConnectTimeout`] if the monitor cannot be
/// reached; `InvalidInput` if `node` is not a TCP address.
pub async fn register(
    monitor: impl crate::base::addr::ConnectAddr,
    name: impl Into<String>,
    node: impl Into<Addr>,
) -> Result<Option<Registered>, Error> {
    let Some(node) = node.into().tcp() else {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a node registers the TCP address it answers on",
        )));
    };
    let registration = Register {
        name: name.into(),
        addr: node,
    };
    let client = Client::<Register>::builder()
        .framing(Framing::eof())
        .receive::<Registered>(1)
        .connect(monitor)
        .await?;
    deliver_typed(client, &registration).await
}

/// Registers with a monitor the Go original's way: `hello`, EOF-framed.
/// The monitor (a Go chitchat master, or a [`Monitor`](super::Monitor)
/// with a [Go port](super::HeartbeatConfigBuilder::go_port)) then checks
/// the connection's IP on its configured port, with the text probe: serve a
/// [`TextResponder`] there.
///
/// # Errors
///
/// [`Error::Io`] or [`Error::ConnectTimeout`] if the monitor cannot be
/// reached.
pub async fn register_go(monitor: impl crate::base::addr::ConnectAddr) -> Result<(), Error> {
    let client = Client::<String>::builder()
        .framing(Framing::eof())
        .connect(monitor)
        .await?;
    deliver(&client, &"hello".to_string()).await
}

/// Sends `msg`, closes (which delivers it in EOF framing), and reports the
/// connection's first error.
async fn deliver<M: Message, R>(client: &Client<M, R>, msg: &M) -> Result<(), Error> {
    client.send(msg).await?;
    client.close().await;
    match client.errors().try_recv() {
        Some(event) => Err(event.error),
        None => Ok(()),
    }
}

/// Delivers a typed registration, and takes the monitor's answer if it
/// sent one.
async fn deliver_typed(
    client: Client<Register, Registered>,
    registration: &Register,
) -> Result<Option<Registered>, Error> {
    deliver(&client, registration).await?;
    Ok(client.try_recv())
}

/// What a node registers with: see [`KeepRegistered`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Registration {
    /// A [`Register`] message: a name and the address answering pings.
    Typed(Register),
    /// The Go original's `hello`: the monitor checks the connection's IP on
    /// its own configured port.
    GoHello,
}

/// Keeps a node registered with a monitor, in the background: registers at
/// once, then again whenever no ping has been answered for `missed_pings`
/// periods (the monitor restarted and forgot the node, or a partition
/// made it forget), retrying with exponential backoff and full jitter
/// ([`Reconnect`]'s delays) until the monitor takes it and pings again.
///
/// The period it waits pings for follows the pinger: the real time
/// between pings once two have come ([`LastPing::ping_period`]), else the
/// interval the monitor told at registration ([`Registered`]), else the
/// configured [`interval`](KeepRegisteredBuilder::interval) (default 3 s;
/// toward a Go master, which pings every 3 s and starts one more checker
/// for every `hello`, never less than 3 s). See
/// [`interval`](Self::interval).
///
/// After a monitor comes back, every node that lost it registers again
/// within `missed_pings × period` (counted from its last ping, while the
/// monitor was down) plus one period plus the largest backoff delay
/// (default: twice the period). Stops when dropped or
/// [`stop`](Self::stop)ped.
///
/// # Examples
///
/// ```no_run
/// use chitchat_net::heartbeat::{KeepRegistered, Register, Registration, Responder};
/// use chitchat_net::Server;
///
/// # async fn run() -> Result<(), chitchat_net::Error> {
/// let responder = Responder::new();
/// let node = Server::listen("127.0.0.1:7101", responder.clone()).await?;
/// let registration = Registration::Typed(Register {
///     name: "node-1".into(),
///     addr: node.local_addr().tcp().unwrap(),
/// });
/// // The monitor tells its interval when the node registers.
/// let keeper = KeepRegistered::builder("127.0.0.1:7100", registration).spawn(responder);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KeepRegistered {
    stop: CancellationToken,
    state: Arc<KeeperState>,
    task: tokio::task::JoinHandle<()>,
}

/// What a keeper shares with its handle.
#[derive(Debug, Default)]
struct KeeperState {
    registered: AtomicU64,
    /// The period followed now, in nanoseconds.
    period: AtomicU64,
}

impl KeepRegistered {
    /// Starts configuring: keep `registration` registered with the
    /// registration server at `monitor` (`"host:port"`, a `SocketAddr`,
    /// ..., resolved at each registration).
    pub fn builder(monitor: impl ConnectAddr, registration: Registration) -> KeepRegisteredBuilder {
        KeepRegisteredBuilder {
            monitor: monitor.target(),
            registration,
            interval: None,
            missed_pings: 3,
            backoff: None,
            dialer: None,
            seed: None,
        }
    }

    /// Successful registrations so far.
    pub fn registrations(&self) -> u64 {
        self.state.registered.load(Ordering::Relaxed)
    }

    /// The period it waits pings for now: learned from the pings, else
    /// told by the monitor, else configured (see [`KeepRegistered`]).
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.state.period.load(Ordering::Relaxed))
    }

    /// Stops and waits for the background task to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for KeepRegistered {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Configures a [`KeepRegistered`]; made by [`KeepRegistered::builder`].
#[must_use = "nothing happens until `spawn` is called"]
pub struct KeepRegisteredBuilder {
    monitor: Target,
    registration: Registration,
    /// `None`: the default.
    interval: Option<Duration>,
    missed_pings: u32,
    backoff: Option<Reconnect>,
    dialer: Option<Arc<dyn Dialer>>,
    seed: Option<u64>,
}

impl std::fmt::Debug for KeepRegisteredBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeepRegisteredBuilder")
            .field("monitor", &self.monitor)
            .field("registration", &self.registration)
            .field("interval", &self.interval)
            .field("missed_pings", &self.missed_pings)
            .field("backoff", &self.backoff)
            .field("dialer", &self.dialer.is_some())
            .finish()
    }
}

/// The Go original's master pings every 3 s.
const GO_MASTER_INTERVAL: Duration = super::config::DEFAULT_INTERVAL;

impl KeepRegisteredBuilder {
    /// The monitor's check interval, until the monitor tells its own or the
    /// pings show their real period (default 3 s; toward a Go master at
    /// least 3 s); zero is taken as 1 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// Registers again after this many periods without a ping (default
    /// 3; at least 1).
    pub fn missed_pings(mut self, intervals: u32) -> Self {
        self.missed_pings = intervals.max(1);
        self
    }

    /// The delays between failed tries (default: 100 ms doubling up to
    /// twice the period, with full jitter).
    pub fn backoff(mut self, policy: Reconnect) -> Self {
        self.backoff = Some(policy);
        self
    }

    /// Reaches the monitor through `dialer` instead of TCP.
    pub fn dialer(mut self, dialer: impl Dialer) -> Self {
        self.dialer = Some(Arc::new(dialer));
        self
    }

    /// Seeds the jitter (default: random), for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts keeping the node registered; `node` says when it was last
    /// pinged ([`Responder`] or [`TextResponder`]). Call within a tokio
    /// runtime.
    pub fn spawn(self, node: impl LastPing) -> KeepRegistered {
        let stop = CancellationToken::new();
        let seed = self
            .seed
            .unwrap_or_else(|| (crate::client::reconnect::jitter() * u64::MAX as f64) as u64);
        let configured = match self.registration {
            Registration::GoHello => self
                .interval
                .unwrap_or(GO_MASTER_INTERVAL)
                .max(GO_MASTER_INTERVAL),
            Registration::Typed(_) => self.interval.unwrap_or(super::config::DEFAULT_INTERVAL),
        };
        let state = Arc::new(KeeperState::default());
        let keeper = Keeper {
            backoff: self.backoff,
            configured,
            told: None,
            missed_pings: self.missed_pings,
            monitor: self.monitor,
            registration: self.registration,
            dialer: self.dialer,
            rng: seed,
            state: state.clone(),
        };
        keeper.publish(keeper.configured);
        let span = tracing::info_span!(parent: None, "keep_registered", monitor = ?keeper.monitor);
        let task = tokio::spawn(keeper.run(node, stop.clone()).instrument(span));
        KeepRegistered { stop, state, task }
    }
}

struct Keeper {
    monitor: Target,
    registration: Registration,
    /// The period before the monitor tells one or the pings show one.
    configured: Duration,
    /// The interval the monitor told at the last registration.
    told: Option<Duration>,
    /// No ping for this many periods after the last ping or registration:
    /// register again.
    missed_pings: u32,
    /// `None`: from the period.
    backoff: Option<Reconnect>,
    dialer: Option<Arc<dyn Dialer>>,
    /// splitmix64 state, for the jitter.
    rng: u64,
    state: Arc<KeeperState>,
}

impl Keeper {
    /// The period followed now: learned, told, or configured.
    fn period(&self, node: &impl LastPing) -> Duration {
        let period = node
            .ping_period()
            .or(self.told)
            .unwrap_or(self.configured)
            .max(Duration::from_millis(1));
        match self.registration {
            // A Go master pings every 3 s, whatever it is told.
            Registration::GoHello if node.ping_period().is_none() => period.max(GO_MASTER_INTERVAL),
            _ => period,
        }
    }

    fn publish(&self, period: Duration) {
        let nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        self.state.period.store(nanos, Ordering::Relaxed);
    }

    async fn run(mut self, node: impl LastPing, stop: CancellationToken) {
        let mut registered_at: Option<Instant> = None;
        // Tries since the last ping: the backoff grows while the monitor
        // is down, or takes the registration but never pings.
        let mut tries = 0u32;
        let mut seen_ping: Option<Instant> = None;
        loop {
            let period = self.period(&node);
            self.publish(period);
            let grace = period * self.missed_pings;
            let now = Instant::now();
            let last_ping = node.last_ping();
            if last_ping != seen_ping {
                // Pinged since we last looked: the monitor has us.
                seen_ping = last_ping;
                tries = 0;
            }
            let heard = match (last_ping, registered_at) {
                (Some(ping), Some(at)) => Some(ping.max(at)),
                (ping, at) => ping.or(at),
            };
            let stale = heard.is_none_or(|at| now.saturating_duration_since(at) >= grace);
            let wait = if stale {
                if tries > 0 {
                    let unit = self.unit();
                    let backoff = self.backoff.unwrap_or_else(|| {
                        Reconnect::new()
                            .initial_delay(Duration::from_millis(100).min(period))
                            .max_delay(period * 2)
                    });
                    let delay = backoff.delay(tries - 1, unit);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                tries = tries.saturating_add(1);
                let limit = period.max(Duration::from_secs(1));
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    outcome = tokio::time::timeout(limit, self.register(limit)) => outcome,
                };
                match outcome {
                    Ok(Ok(told)) => {
                        registered_at = Some(Instant::now());
                        self.state.registered.fetch_add(1, Ordering::Relaxed);
                        if let Some(told) = told {
                            self.told = Some(told.interval.max(Duration::from_millis(1)));
                        }
                        tracing::info!(told = ?self.told, "registered");
                        self.period(&node)
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(error = %crate::wire::error::Report(&error), "registration failed");
                        Duration::ZERO
                    }
                    Err(_) => {
                        tracing::debug!("registration timed out");
                        Duration::ZERO
                    }
                }
            } else {
                period
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A uniform number in [0, 1] (splitmix64).
    fn unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One registration; what the monitor told, if anything.
    async fn register(&self, limit: Duration) -> Result<Option<Registered>, Error> {
        match &self.registration {
            Registration::Typed(registration) => {
                let builder = Client::<Register>::builder().receive::<Registered>(1);
                let client = self.connect(builder, limit).await?;
                deliver_typed(client, registration).await
            }
            Registration::GoHello => {
                let client = self.connect(Client::<String>::builder(), limit).await?;
                deliver(&client, &"hello".to_string()).await.map(|()| None)
            }
        }
    }

    async fn connect<M: Message, H: crate::conn::handler::Handler, R: Send + 'static>(
        &self,
        builder: crate::client::ClientBuilder<M, H, R>,
        limit: Duration,
    ) -> Result<Client<M, R>, Error> {
        let builder = builder
            .framing(Framing::eof())
            .connect_timeout(limit)
            .close_timeout(limit);
        let addrs = match &self.monitor {
            Target::Tcp(addrs) => addrs.clone(),
            Target::Name(name) => tokio::net::lookup_host(name.as_str())
                .await
                .map_err(Error::Io)?
                .collect(),
            _ => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "KeepRegistered reaches its monitor at a TCP address",
                )))
            }
        };
        let client = match &self.dialer {
            None => builder.connect(&addrs[..]).await?,
            Some(dialer) => {
                let Some(&addr) = addrs.first() else {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the monitor's name resolved to no address",
                    )));
                };
                let io = dialer.dial(addr).await?;
                builder.connect_io(io, Addr::from(addr)).await?
            }
        };
        Ok(client)
    }
}
