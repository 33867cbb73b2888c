//! The node side: answering pings, registering with a monitor, and staying
//! registered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::probe::{Dialer, TEXT_PING, TEXT_PONG};
use super::{Beat, Register};
use crate::base::addr::Addr;
use crate::client::reconnect::Reconnect;
use crate::client::Client;
use crate::codec::Message;
use crate::conn::handler::{Context, Handler};
use crate::wire::error::{BoxError, Error};
use crate::wire::frame::Framing;

/// Pings answered and when the last one came, shared by a responder's
/// clones.
#[derive(Debug, Default)]
struct Answered {
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Answered {
    fn tick(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(Instant::now());
    }

    fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A responder that can say when it last answered a ping: what
/// [`KeepRegistered`] watches.
pub trait LastPing: Send + Sync + 'static {
    /// When the last ping was answered (`None`: never).
    fn last_ping(&self) -> Option<Instant>;
}

/// Answers every [`Beat::Ping`] with a [`Beat::Pong`] of the same sequence
/// number (as a reply: it works with or without request ids on its
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
}

impl LastPing for Responder {
    fn last_ping(&self) -> Option<Instant> {
        self.answered.last()
    }
}

impl Handler for Responder {
    type Message = Beat;

    async fn handle(&self, beat: Beat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match beat {
            Beat::Ping { seq } => {
                ctx.reply(&Beat::Pong { seq })?;
                self.answered.tick();
                Ok(())
            }
            Beat::Pong { seq } => Err(format!("unexpected pong {seq} at a responder").into()),
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
}

impl Handler for TextResponder {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if line != TEXT_PING {
            return Err(format!("expected {TEXT_PING:?}, got {line:?}").into());
        }
        ctx.reply(&TEXT_PONG.to_string())?;
        self.answered.tick();
        Ok(())
    }
}

/// Registers a node (`name`, listening on `node`) with the monitor whose
/// registration server is at `monitor`: one [`Register`] message in EOF
/// framing, delivered when the connection closes.
///
/// `node` is a TCP address, such as the node server's
/// [`local_addr`](crate::Server::local_addr). By default a monitor accepts
/// it only from a connection with the same IP.
///
/// # Errors
///
/// [`Error::Io`] or [`Error::ConnectTimeout`] if the monitor cannot be
/// reached; `InvalidInput` if `node` is not a TCP address.
pub async fn register(
    monitor: impl crate::base::addr::ConnectAddr,
    name: impl Into<String>,
    node: impl Into<Addr>,
) -> Result<(), Error> {
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
        .connect(monitor)
        .await?;
    deliver(client, &registration).await
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
    deliver(client, &"hello".to_string()).await
}

/// Sends `msg`, closes (which delivers it in EOF framing), and reports the
/// connection's first error.
async fn deliver<M: Message>(client: Client<M>, msg: &M) -> Result<(), Error> {
    client.send(msg).await?;
    client.close().await;
    match client.errors().try_recv() {
        Some(event) => Err(event.error),
        None => Ok(()),
    }
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
/// intervals (the monitor restarted and forgot the node, or a partition
/// made it forget), retrying with exponential backoff and full jitter
/// ([`Reconnect`]'s delays) until the monitor takes it and pings again.
///
/// After a monitor comes back, every node that lost it registers again
/// within `missed_pings × interval` (counted from its last ping, while the
/// monitor was down) plus one interval plus the largest backoff delay
/// (default: twice the interval). Stops when dropped or
/// [`stop`](Self::stop)ped.
///
/// # Examples
///
/// ```no_run
/// use chitchat_net::heartbeat::{KeepRegistered, Register, Registration, Responder};
/// use chitchat_net::Server;
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), chitchat_net::Error> {
/// let responder = Responder::new();
/// let node = Server::listen("127.0.0.1:7101", responder.clone()).await?;
/// let registration = Registration::Typed(Register {
///     name: "node-1".into(),
///     addr: node.local_addr().tcp().unwrap(),
/// });
/// let keeper = KeepRegistered::builder("127.0.0.1:7100".parse().unwrap(), registration)
///     .interval(Duration::from_secs(3))
///     .spawn(responder);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct KeepRegistered {
    stop: CancellationToken,
    registered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepRegistered {
    /// Starts configuring: keep `registration` registered with the
    /// registration server at `monitor`.
    pub fn builder(monitor: SocketAddr, registration: Registration) -> KeepRegisteredBuilder {
        KeepRegisteredBuilder {
            monitor,
            registration,
            interval: super::config::DEFAULT_INTERVAL,
            missed_pings: 3,
            backoff: None,
            dialer: None,
            seed: None,
        }
    }

    /// Successful registrations so far.
    pub fn registrations(&self) -> u64 {
        self.registered.load(Ordering::Relaxed)
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
    monitor: SocketAddr,
    registration: Registration,
    interval: Duration,
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

impl KeepRegisteredBuilder {
    /// The monitor's check interval (default 3 s); zero is taken as 1 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Registers again after this many intervals without a ping (default
    /// 3; at least 1).
    pub fn missed_pings(mut self, intervals: u32) -> Self {
        self.missed_pings = intervals.max(1);
        self
    }

    /// The delays between failed tries (default: 100 ms doubling up to
    /// twice the interval, with full jitter).
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
        let registered = Arc::new(AtomicU64::new(0));
        let seed = self
            .seed
            .unwrap_or_else(|| (crate::client::reconnect::jitter() * u64::MAX as f64) as u64);
        let keeper = Keeper {
            backoff: self.backoff.unwrap_or_else(|| {
                Reconnect::new()
                    .initial_delay(Duration::from_millis(100).min(self.interval))
                    .max_delay(self.interval * 2)
            }),
            grace: self.interval * self.missed_pings,
            interval: self.interval,
            monitor: self.monitor,
            registration: self.registration,
            dialer: self.dialer,
            rng: seed,
            registered: registered.clone(),
        };
        let span = tracing::info_span!(parent: None, "keep_registered", monitor = %self.monitor);
        let task = tokio::spawn(keeper.run(node, stop.clone()).instrument(span));
        KeepRegistered {
            stop,
            registered,
            task,
        }
    }
}

struct Keeper {
    monitor: SocketAddr,
    registration: Registration,
    interval: Duration,
    /// No ping for this long after the last ping or registration: register
    /// again.
    grace: Duration,
    backoff: Reconnect,
    dialer: Option<Arc<dyn Dialer>>,
    /// splitmix64 state, for the jitter.
    rng: u64,
    registered: Arc<AtomicU64>,
}

impl Keeper {
    async fn run(mut self, node: impl LastPing, stop: CancellationToken) {
        let mut registered_at: Option<Instant> = None;
        // Tries since the last ping: the backoff grows while the monitor
        // is down, or takes the registration but never pings.
        let mut tries = 0u32;
        let mut seen_ping: Option<Instant> = None;
        loop {
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
            let stale = heard.is_none_or(|at| now.saturating_duration_since(at) >= self.grace);
            let wait = if stale {
                if tries > 0 {
                    let unit = self.unit();
                    let delay = self.backoff.delay(tries - 1, unit);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                tries = tries.saturating_add(1);
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    outcome = tokio::time::timeout(self.interval.max(Duration::from_secs(1)), self.register()) => outcome,
                };
                match outcome {
                    Ok(Ok(())) => {
                        registered_at = Some(Instant::now());
                        self.registered.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("registered");
                        self.interval
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
                self.interval
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

    async fn register(&self) -> Result<(), Error> {
        match &self.registration {
            Registration::Typed(registration) => {
                let client = self.client::<Register>().await?;
                deliver(client, registration).await
            }
            Registration::GoHello => {
                let client = self.client::<String>().await?;
                deliver(client, &"hello".to_string()).await
            }
        }
    }

    async fn client<M: Message>(&self) -> Result<Client<M>, Error> {
        let builder = Client::<M>::builder()
            .framing(Framing::eof())
            .connect_timeout(self.interval)
            .close_timeout(self.interval);
        let client = match &self.dialer {
            None => builder.connect(self.monitor).await?,
            Some(dialer) => {
                let io = dialer.dial(self.monitor).await?;
                builder.connect_io(io, Addr::from(self.monitor)).await?
            }
        };
        Ok(client)
    }
}
