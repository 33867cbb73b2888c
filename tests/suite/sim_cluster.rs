//! Several monitors sharing the watch, in turmoil (fixed seeds, simulated
//! time, a 50 ms tick): 3 monitors, k = 2, 200 nodes, 5–50 ms latency,
//! interval 1 s, check timeout 500 ms, miss limit 3. Each node registers
//! once, with one monitor. Every stream is counted (bytes per host).
//!
//! The partition run ([`Plan::Partition`]):
//! - 3–6 s: no fault (bytes per second measured);
//! - 6–26 s: monitor m1 is partitioned from every node (not from the other
//!   monitors);
//! - 27 s: node 0 crashes for good;
//! - 33 s: monitor m3 crashes; 39 s: it restarts knowing nothing;
//! - the run ends at 48 s (at 33 s with one monitor).
//!
//! The loss run ([`Plan::Loss`]): 3–33 s, every link (monitor–node and
//! monitor–monitor) is held for random windows covering 30 % of the time
//! (see [`LossLink`]); node 0 crashes at 15 s; the run ends at 36 s. It
//! runs with and without the adaptive settings: without, healthy nodes are
//! declared dead (the loss bites); with, none.
//!
//! The silent run ([`Plan::Silent`], 30 nodes): at 6 s the connections
//! between m1 and m2 go silent without closing; the run ends at 16 s.
//! The one-way run ([`Plan::SilentOneWay`]): the same, but only the
//! connection m1 dialled to m2 dies, one way (m1's writes swallowed).
//!
//! The overload run ([`Plan::Overload`]): 6–26 s, monitor m1 is overloaded:
//! every message to and from it (nodes and the other monitors) is held for
//! 2 intervals, then delivered at once, every 3 s (what a monitor stalled
//! for 2 intervals at a time sees: all its checks fail together, and every
//! answer and every heartbeat comes 2 intervals late; turmoil cannot make
//! one host's timers late); node 0 crashes at 16 s; the run ends at 34 s.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chitchat_net::heartbeat::{
    ClusterConfig, HeartbeatConfig, KeepRegistered, Monitor, MonitorStats, PeerState, Register,
    Registration, Responder,
};
use chitchat_net::{Addr, Server};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The nodes of the partition and loss runs (issue 24's goal).
const NODES: usize = 200;
const MONITORS: [&str; 3] = ["m1", "m2", "m3"];
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);
const MAX_LATENCY: Duration = Duration::from_millis(50);
/// Simulated time per step: messages are delivered, and every host run, at
/// this granularity (every message takes about one tick). turmoil's cost is
/// per step and grows with the hosts squared (each host's delivery scans
/// the link of every pair of hosts, 20,503 at 203): at 10 ms one run took
/// minutes in a debug build. Not 100 ms: an indirect probe (ask, connect,
/// ping, answer, reply: 5 messages) then no longer fits in the 500 ms
/// timeout, and the adaptive runs lose what indirect probes give.
const TICK: Duration = Duration::from_millis(50);
const REGISTRATION_PORT: u16 = 7000;
const CLUSTER_PORT: u16 = 7100;
const NODE_PORT: u16 = 9000;
const CRASHED: usize = 0;
/// Bytes are measured over this fault-free window (seconds).
const QUIET: (u64, u64) = (3, 6);
/// The crash is found (dead by quorum) within: a miss limit of 3 at both
/// watchers (4 checks, 4.5 s), a suspicion of 2 s, an interval of sharing.
const CRASH_FOUND_WITHIN: Duration = Duration::from_secs(9);

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// A stream whose bytes, both ways, are added to a host's counter. Once
/// `silent` is set it is a connection dead without a close: what is written
/// is swallowed (added to `swallowed`), nothing is ever read. Once `mute`
/// is set it is dead one way: what is written is swallowed, what comes is
/// read (a close from the other side included).
struct Counted<S> {
    inner: S,
    bytes: Arc<AtomicU64>,
    silent: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
    swallowed: Arc<AtomicU64>,
}

/// A connection dialled: by which host, to where, its `silent` switch.
struct Dialed {
    from: String,
    to: SocketAddr,
    silent: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
}

/// Every connection dialled in a run, and the bytes silent ones swallowed.
#[derive(Clone, Default)]
struct Dials {
    all: Arc<Mutex<Vec<Dialed>>>,
    swallowed: Arc<AtomicU64>,
}

impl Dials {
    /// How many connections `from` dialled to `to`.
    fn count(&self, from: &str, to: SocketAddr) -> usize {
        let all = self.all.lock().unwrap();
        all.iter().filter(|d| d.from == from && d.to == to).count()
    }

    /// Silences every connection `from` dialled to `to` so far: how many.
    fn silence(&self, from: &str, to: SocketAddr) -> usize {
        let all = self.all.lock().unwrap();
        let dialed = all.iter().filter(|d| d.from == from && d.to == to);
        dialed
            .map(|d| d.silent.store(true, Ordering::Relaxed))
            .count()
    }

    /// Mutes every connection `from` dialled to `to` so far (writes
    /// swallowed, reads go on): how many.
    fn mute(&self, from: &str, to: SocketAddr) -> usize {
        let all = self.all.lock().unwrap();
        let dialed = all.iter().filter(|d| d.from == from && d.to == to);
        dialed
            .map(|d| d.mute.store(true, Ordering::Relaxed))
            .count()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.silent.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.bytes.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.silent.load(Ordering::Relaxed) || self.mute.load(Ordering::Relaxed) {
            self.swallowed
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.silent.load(Ordering::Relaxed) || self.mute.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepted turmoil connections, counted, as `serve` takes them.
fn incoming(
    listener: turmoil::net::TcpListener,
    bytes: Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = io::Result<(Counted<turmoil::net::TcpStream>, Addr)>> {
    futures_util::stream::unfold(listener, move |listener| {
        let bytes = bytes.clone();
        async move {
            let accepted = listener.accept().await.map(|(stream, peer)| {
                let stream = Counted {
                    inner: stream,
                    bytes,
                    silent: Arc::default(),
                    mute: Arc::default(),
                    swallowed: Arc::default(),
                };
                (stream, Addr::from(peer))
            });
            Some((accepted, listener))
        }
    })
}

/// Dials turmoil connections, counted, from host `from`.
fn dialer(
    bytes: Arc<AtomicU64>,
    from: String,
    dials: Dials,
) -> impl Fn(
    SocketAddr,
) -> Pin<
    Box<dyn std::future::Future<Output = io::Result<Counted<turmoil::net::TcpStream>>> + Send>,
> + Send
       + Sync
       + 'static {
    move |addr| {
        let (bytes, from, dials) = (bytes.clone(), from.clone(), dials.clone());
        Box::pin(async move {
            let inner = turmoil::net::TcpStream::connect(addr).await?;
            let silent = Arc::<AtomicBool>::default();
            let mute = Arc::<AtomicBool>::default();
            dials.all.lock().unwrap().push(Dialed {
                from,
                to: addr,
                silent: silent.clone(),
                mute: mute.clone(),
            });
            Ok(Counted {
                inner,
                bytes,
                silent,
                mute,
                swallowed: dials.swallowed,
            })
        })
    }
}

#[derive(Debug, Clone)]
struct Seen {
    at: Duration,
    node: usize,
    state: PeerState,
}

/// A monitor started or stopped checking a node (`PeerInfo::checking`,
/// sampled every 100 ms).
#[derive(Debug, Clone)]
struct Checking {
    monitor: usize,
    at: Duration,
    node: usize,
    checking: bool,
}

/// How the monitors are set up.
#[derive(Debug, Clone, Copy)]
struct Setup {
    monitors: usize,
    nodes: usize,
    indirect: bool,
    /// Suspicion (2 s) and local health (8): the adaptive settings.
    adaptive: bool,
}

/// Which faults a run injects (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Plan {
    Partition,
    Loss,
    /// The connections between m1 and m2 go silent without closing at
    /// [`SILENT_AT`]; no node crashes; the run ends at 16 s.
    Silent,
    /// As [`Plan::Silent`], but only the connection m1 dialled to m2 goes
    /// dead, one way: what m1 writes on it is swallowed, what m2 writes
    /// still arrives.
    SilentOneWay,
    /// m1 overloaded over [`OVERLOAD`]: every message to and from it held
    /// for [`OVERLOAD_HELD`] every [`OVERLOAD_PERIOD`].
    Overload,
}

impl Plan {
    fn crash_at(self) -> Duration {
        Duration::from_secs(match self {
            Plan::Partition => 27,
            Plan::Loss => 15,
            Plan::Overload => 16,
            // Never.
            Plan::Silent | Plan::SilentOneWay => 3600,
        })
    }

    fn end(self) -> Duration {
        Duration::from_secs(match self {
            Plan::Partition => 48,
            Plan::Loss => 36,
            Plan::Overload => 34,
            Plan::Silent | Plan::SilentOneWay => 16,
        })
    }
}

/// The silent run: when m1's and m2's connections to each other go silent.
const SILENT_AT: Duration = Duration::from_secs(6);

/// The partition run's monitor crash and restart.
const M3_CRASH: Duration = Duration::from_secs(33);
const M3_RESTART: Duration = Duration::from_secs(39);

/// The overload run: when m1 is overloaded (seconds), and how: every
/// message to and from it held for 2 intervals, every 3 s.
const OVERLOAD: (u64, u64) = (6, 26);
const OVERLOAD_PERIOD: Duration = Duration::from_secs(3);
const OVERLOAD_HELD: Duration = Duration::from_secs(2);

/// Loss: 30 % of the time, every link.
const LOSS: (u64, u64) = (3, 33);
/// A held window's retransmission is lost again with this probability.
const LOSS_AGAIN: f64 = 0.5;
/// A held window lasts at most this many retransmission timeouts.
const LOSS_MAX_TRIES: u32 = 5;
/// Healthy gaps between windows: uniform below this (milliseconds).
const LOSS_GAP_MS: u64 = 4667;

/// What one run gives back.
struct Run {
    /// Connections m1 dialled to m2's cluster server, and m2 to m1's,
    /// since [`SILENT_AT`] (since the start in the other runs).
    redials: (usize, usize),
    /// The silent run: connections silenced, bytes they swallowed.
    silenced: usize,
    swallowed: u64,
    nodes: usize,
    seen: Vec<Seen>,
    checking: Vec<Checking>,
    stats: Vec<MonitorStats>,
    /// Bytes (both ways) per host over [`QUIET`]: monitors, then nodes.
    quiet_bytes: (Vec<u64>, Vec<u64>),
    /// Loss and overload: windows opened, messages held by them.
    windows: u64,
    held: u64,
}

/// splitmix64: the loss windows' own random numbers, from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }

    /// Uniform in `0..1`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A held window (see [`LossLink`]).
    fn window(&mut self) -> Duration {
        let mut tries = 1;
        while tries < LOSS_MAX_TRIES && self.unit() < LOSS_AGAIN {
            tries += 1;
        }
        Duration::from_millis(200 * ((1 << tries) - 1))
    }
}

/// One link's loss, modelled as what TCP makes of a lost segment: it comes
/// a retransmission timeout later (200 ms at least on Linux), doubling each
/// time the retransmission is lost too. A window holds the link for
/// `200 ms * (2^n - 1)` (n retransmissions, each lost again with the loss
/// rate: P(n + 1 | n) = [`LOSS_AGAIN`], capped at [`LOSS_MAX_TRIES`]: 0.2,
/// 0.6, 1.4, 3, 6.2 s), and windows are separated by healthy gaps uniform in
/// `0..LOSS_GAP_MS` (mean 2.33 s against a mean window of 1 s: held 30 % of
/// the time).
struct LossLink {
    a: String,
    b: String,
    ips: (IpAddr, IpAddr),
    held: bool,
    next: Duration,
}

fn run(setup: Setup, seed: u64, plan: Plan) -> Run {
    let end = match plan {
        // One monitor: no monitor to crash after the node's crash.
        Plan::Partition if setup.monitors == 1 => Duration::from_secs(33),
        plan => plan.end(),
    };
    let dials = Dials::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(MAX_LATENCY)
        .tick_duration(TICK)
        // A socket's buffer, and a listener's backlog: 200 nodes register
        // at once at the start (turmoil panics past the default 64).
        .tcp_capacity(1024)
        .simulation_duration(end + Duration::from_secs(10))
        .build();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let checking: Arc<Mutex<Vec<Checking>>> = Arc::default();
    let stats: Arc<Mutex<Vec<MonitorStats>>> =
        Arc::new(Mutex::new(vec![MonitorStats::default(); setup.monitors]));
    let monitors = &MONITORS[..setup.monitors];
    let registrations: Arc<Vec<AtomicU64>> =
        Arc::new((0..setup.nodes).map(|_| AtomicU64::new(0)).collect());
    let mut quiet_registrations = Vec::new();
    let bytes: HashMap<String, Arc<AtomicU64>> = monitors
        .iter()
        .map(|m| m.to_string())
        .chain((0..setup.nodes).map(node_name))
        .map(|host| (host, Arc::default()))
        .collect();
    let mut builder = HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .miss_limit(3);
    if setup.adaptive {
        builder = builder.suspicion(Duration::from_secs(2)).local_health(8);
    }
    let config = builder.build().unwrap();
    for (m, &me) in monitors.iter().enumerate() {
        let (log, watch_log, last) = (seen.clone(), checking.clone(), stats.clone());
        let counter = bytes[me].clone();
        let dials = dials.clone();
        sim.host(me, move || {
            let (log, watch_log, last) = (log.clone(), watch_log.clone(), last.clone());
            let counter = counter.clone();
            let dials = dials.clone();
            async move {
                let dial = dialer(counter.clone(), me.to_string(), dials.clone());
                let mut builder = Monitor::builder(config).dialer(dial);
                if monitors.len() > 1 {
                    let mut cluster = ClusterConfig::new(me)
                        .watchers(2)
                        .indirect_probes(setup.indirect);
                    for &other in monitors.iter().filter(|o| **o != me) {
                        let addr = SocketAddr::new(turmoil::lookup(other), CLUSTER_PORT);
                        cluster = cluster.monitor(other, addr);
                    }
                    builder = builder.cluster(cluster);
                }
                let (monitor, mut events) = builder.build();
                let ip = turmoil::lookup(me);
                let listener =
                    turmoil::net::TcpListener::bind(("0.0.0.0", REGISTRATION_PORT)).await?;
                let _registrations = monitor.registration_server().serve(
                    SocketAddr::new(ip, REGISTRATION_PORT),
                    incoming(listener, counter.clone()),
                )?;
                let _cluster = match monitor.cluster_server() {
                    Some(server) => {
                        let listener =
                            turmoil::net::TcpListener::bind(("0.0.0.0", CLUSTER_PORT)).await?;
                        Some(server.serve(
                            SocketAddr::new(ip, CLUSTER_PORT),
                            incoming(listener, counter.clone()),
                        )?)
                    }
                    None => None,
                };
                let nodes: Vec<SocketAddr> = (0..setup.nodes)
                    .map(|i| SocketAddr::new(turmoil::lookup(node_name(i)), NODE_PORT))
                    .collect();
                let mut was = vec![false; setup.nodes];
                loop {
                    let event = tokio::select! {
                        event = events.recv() => event,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            last.lock().unwrap()[m] = monitor.stats();
                            let at = turmoil::sim_elapsed().unwrap_or_default();
                            for (node, addr) in nodes.iter().enumerate() {
                                let now = monitor.peer(*addr).is_some_and(|p| p.checking);
                                if now != was[node] {
                                    was[node] = now;
                                    watch_log.lock().unwrap().push(Checking {
                                        monitor: m,
                                        at,
                                        node,
                                        checking: now,
                                    });
                                }
                            }
                            continue;
                        }
                    };
                    let Some(event) = event else { break };
                    let node = event.name.trim_start_matches("node-").parse().unwrap();
                    log.lock().unwrap().push(Seen {
                        at: turmoil::sim_elapsed().unwrap_or_default(),
                        node,
                        state: event.state,
                    });
                }
                Ok(())
            }
        });
    }
    for i in 0..setup.nodes {
        let registrar = monitors[i % monitors.len()];
        let counter = bytes[&node_name(i)].clone();
        let registered = registrations.clone();
        let dials = dials.clone();
        sim.host(node_name(i), move || {
            let counter = counter.clone();
            let registered = registered.clone();
            let dials = dials.clone();
            async move {
                let ip: IpAddr = turmoil::lookup(node_name(i));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", NODE_PORT)).await?;
                let addr = SocketAddr::new(ip, NODE_PORT);
                let responder = Responder::new();
                let _server = Server::builder(responder.clone())
                    .serve(addr, incoming(listener, counter.clone()))?;
                let monitor = SocketAddr::new(turmoil::lookup(registrar), REGISTRATION_PORT);
                let registration = Registration::Typed(Register {
                    name: node_name(i),
                    addr,
                });
                let keeper = KeepRegistered::builder(monitor, registration)
                    .interval(INTERVAL)
                    .dialer(dialer(counter, node_name(i), dials.clone()))
                    .seed(seed ^ i as u64)
                    .spawn(responder);
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    registered[i].store(keeper.registrations(), Ordering::Relaxed);
                }
            }
        });
    }
    let secs = Duration::from_secs;
    let nodes: Vec<String> = (0..setup.nodes).map(node_name).collect();
    let count = |names: &[&str]| -> Vec<u64> {
        names
            .iter()
            .map(|h| bytes[*h].load(Ordering::Relaxed))
            .collect()
    };
    let hosts: Vec<&str> = monitors.to_vec();
    let node_hosts: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let mut quiet_start = None;
    let mut quiet_bytes = (Vec::new(), Vec::new());
    // Every link that carries traffic: monitor–node and monitor–monitor.
    let mut rng = Rng(seed);
    let mut links: Vec<LossLink> = Vec::new();
    for (j, &m) in monitors.iter().enumerate() {
        let others = monitors[j + 1..].iter().map(|o| o.to_string());
        for other in nodes.iter().cloned().chain(others) {
            let ips = (sim.lookup(m), sim.lookup(other.as_str()));
            let ips = (ips.0.min(ips.1), ips.0.max(ips.1));
            let next = secs(LOSS.0) + rng.millis(0, LOSS_GAP_MS);
            links.push(LossLink {
                a: m.to_string(),
                b: other,
                ips,
                held: false,
                next,
            });
        }
    }
    let (mut windows, mut held) = (0u64, 0u64);
    let mut silenced = 0;
    let mut dialled_before = (0, 0);
    let cluster_addr =
        |sim: &turmoil::Sim<'_>, m: &str| SocketAddr::new(sim.lookup(m), CLUSTER_PORT);
    let mut done = [false; 4];
    let mut crashed = false;
    // The overload run: every host m1 talks to, and whether its links are
    // held now.
    let m1_peers: Vec<&str> = node_hosts
        .iter()
        .copied()
        .chain(monitors.iter().copied().filter(|m| *m != "m1"))
        .collect();
    let mut holding = false;
    while sim.elapsed() < end {
        let now = sim.elapsed();
        if now >= secs(QUIET.0) && quiet_start.is_none() {
            quiet_start = Some((count(&hosts), count(&node_hosts)));
            quiet_registrations = registrations
                .iter()
                .map(|r| r.load(Ordering::Relaxed))
                .collect();
        }
        if now >= secs(QUIET.1) && quiet_bytes.0.is_empty() {
            let (m0, n0) = quiet_start.clone().unwrap_or_default();
            let (m1, n1) = (count(&hosts), count(&node_hosts));
            // Registered once, and not again while nothing fails.
            let now: Vec<u64> = registrations
                .iter()
                .map(|r| r.load(Ordering::Relaxed))
                .collect();
            assert_eq!(
                now, quiet_registrations,
                "registrations between {QUIET:?} s"
            );
            assert!(
                now.iter().all(|&r| r == 1),
                "registrations at {:?} s: {now:?}",
                QUIET.0
            );
            quiet_bytes = (
                m1.iter().zip(&m0).map(|(a, b)| a - b).collect(),
                n1.iter().zip(&n0).map(|(a, b)| a - b).collect(),
            );
        }
        match plan {
            Plan::Partition => {
                if now >= secs(6) && !done[0] {
                    done[0] = true;
                    for node in &nodes {
                        sim.partition("m1", node.as_str());
                    }
                }
                if now >= secs(26) && !done[1] {
                    done[1] = true;
                    for node in &nodes {
                        sim.repair("m1", node.as_str());
                    }
                }
                if setup.monitors == 3 && now >= M3_CRASH && !done[2] {
                    done[2] = true;
                    sim.crash("m3");
                }
                if setup.monitors == 3 && now >= M3_RESTART && !done[3] {
                    done[3] = true;
                    sim.bounce("m3");
                }
            }
            Plan::Silent | Plan::SilentOneWay => {
                if now >= SILENT_AT && !done[0] {
                    done[0] = true;
                    dialled_before = (
                        dials.count("m1", cluster_addr(&sim, "m2")),
                        dials.count("m2", cluster_addr(&sim, "m1")),
                    );
                    if plan == Plan::Silent {
                        silenced += dials.silence("m1", cluster_addr(&sim, "m2"));
                        silenced += dials.silence("m2", cluster_addr(&sim, "m1"));
                    } else {
                        silenced += dials.mute("m1", cluster_addr(&sim, "m2"));
                    }
                }
            }
            Plan::Overload => {
                let into =
                    now.saturating_sub(secs(OVERLOAD.0)).as_millis() % OVERLOAD_PERIOD.as_millis();
                let overloaded = now >= secs(OVERLOAD.0)
                    && now < secs(OVERLOAD.1)
                    && into < OVERLOAD_HELD.as_millis();
                if overloaded && !holding {
                    holding = true;
                    windows += 1;
                    for &peer in &m1_peers {
                        sim.hold("m1", peer);
                    }
                } else if !overloaded && holding {
                    holding = false;
                    let m1 = sim.lookup("m1");
                    sim.links(|all| {
                        for link in all {
                            let (a, b) = link.pair();
                            if a == m1 || b == m1 {
                                held += link.count() as u64;
                            }
                        }
                    });
                    for &peer in &m1_peers {
                        sim.release("m1", peer);
                    }
                }
            }
            Plan::Loss => {
                let lossy = now < secs(LOSS.1);
                let mut releasing = Vec::new();
                for link in links.iter_mut() {
                    if link.held && now >= link.next {
                        link.held = false;
                        releasing.push(link.ips);
                        link.next = now + rng.millis(0, LOSS_GAP_MS);
                    } else if !link.held && lossy && now >= link.next {
                        link.held = true;
                        windows += 1;
                        sim.hold(link.a.as_str(), link.b.as_str());
                        link.next = now + rng.window();
                    }
                }
                if !releasing.is_empty() {
                    sim.links(|all| {
                        for link in all {
                            if releasing.contains(&link.pair()) {
                                held += link.count() as u64;
                            }
                        }
                    });
                    for link in links.iter().filter(|l| releasing.contains(&l.ips)) {
                        sim.release(link.a.as_str(), link.b.as_str());
                    }
                }
            }
        }
        if now >= plan.crash_at() && !crashed {
            crashed = true;
            sim.crash(node_name(CRASHED));
        }
        sim.step().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let checking = checking.lock().unwrap().clone();
    let stats = stats.lock().unwrap().clone();
    let redials = (
        dials.count("m1", cluster_addr(&sim, "m2")) - dialled_before.0,
        dials.count("m2", cluster_addr(&sim, "m1")) - dialled_before.1,
    );
    Run {
        redials,
        silenced,
        swallowed: dials.swallowed.load(Ordering::Relaxed),
        nodes: setup.nodes,
        seen,
        checking,
        stats,
        quiet_bytes,
        windows,
        held,
    }
}

#[derive(Debug)]
struct Outcome {
    false_deaths: usize,
    crash_found_after: Option<Duration>,
    misses_m1: u64,
    misses: u64,
    indirect_answered: u64,
    /// Indirect probes answered "could not reach it" (nacks).
    indirect_nacks: u64,
    /// Bytes per second per node and per monitor over [`QUIET`].
    node_rate: f64,
    monitor_rate: f64,
}

fn judge(run: &Run, plan: Plan) -> Outcome {
    let dead = |s: &Seen| matches!(s.state, PeerState::Dead { .. });
    let quiet = (QUIET.1 - QUIET.0) as f64;
    let (monitors, nodes) = &run.quiet_bytes;
    Outcome {
        false_deaths: run
            .seen
            .iter()
            .filter(|s| dead(s) && s.node != CRASHED)
            .count(),
        crash_found_after: run
            .seen
            .iter()
            .filter(|s| s.node == CRASHED && dead(s) && s.at >= plan.crash_at())
            .map(|s| s.at - plan.crash_at())
            .min(),
        misses_m1: run.stats[0].misses,
        misses: run.stats.iter().map(|s| s.misses).sum(),
        indirect_answered: run.stats.iter().map(|s| s.indirect_answered).sum(),
        indirect_nacks: run.stats.iter().map(|s| s.indirect_nacks).sum(),
        node_rate: nodes.iter().sum::<u64>() as f64 / nodes.len() as f64 / quiet,
        monitor_rate: monitors.iter().sum::<u64>() as f64 / monitors.len() as f64 / quiet,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Runs `setup` with seeds 1 and 2 (the loss run) or 1 (the partition
/// run: at a 50 ms tick every message takes one tick whatever its drawn
/// latency, so seed 2 gave the very same figures) and prints the README
/// table's rows.
fn compare(name: &str, setup: Setup, plan: Plan) -> Vec<(Outcome, Run)> {
    let mut rows = String::new();
    let mut outcomes = Vec::new();
    let seeds: &[u64] = match plan {
        Plan::Loss => &[1, 2],
        Plan::Partition | Plan::Silent | Plan::SilentOneWay | Plan::Overload => &[1],
    };
    for &seed in seeds {
        let run = run(setup, seed, plan);
        let o = judge(&run, plan);
        rows.push_str(&format!(
            "| {name} | {seed} | {} | {} | {} | {:.0} B/s | {:.0} B/s |\n",
            o.false_deaths,
            secs(o.crash_found_after),
            o.indirect_answered,
            o.node_rate,
            o.monitor_rate,
        ));
        outcomes.push((o, run));
    }
    print!("{rows}");
    outcomes
}

// | setup | seed | false deaths | crash found after | indirect probes answered | bytes/s per node | bytes/s per monitor |

/// Who checks `node` at `at`, from the samples of `PeerInfo::checking`.
fn checkers(run: &Run, node: usize, at: Duration) -> Vec<usize> {
    (0..MONITORS.len())
        .filter(|&m| {
            // A crashed monitor checks nothing (its last sample stays).
            let down = m == 2 && at >= M3_CRASH && at < M3_RESTART;
            !down
                && run
                    .checking
                    .iter()
                    .rev()
                    .find(|c| c.monitor == m && c.node == node && c.at <= at)
                    .is_some_and(|c| c.checking)
        })
        .collect()
}

/// A monitor crash: its share is checked by the others within 3
/// intervals; after its restart it checks its share again, and the others
/// let go of what is not theirs.
fn assert_handover(run: &Run) {
    // m3's share just before the crash (settled long before: no fault
    // touched the monitors' links since the start).
    let before = M3_CRASH - Duration::from_millis(100);
    let share: Vec<usize> = (1..NODES)
        .filter(|&n| checkers(run, n, before).contains(&2))
        .collect();
    assert!(share.len() >= NODES / 3, "m3 checked only {share:?}");
    for n in 1..NODES {
        assert_eq!(
            checkers(run, n, before).len(),
            2,
            "node {n} before the crash"
        );
    }
    // Within 3 intervals (and the 100 ms sampling), m1 and m2 check
    // every node.
    let after = M3_CRASH + 3 * INTERVAL + Duration::from_millis(100);
    for n in 1..NODES {
        assert_eq!(checkers(run, n, after), vec![0, 1], "node {n} at {after:?}");
    }
    let taken_over = run
        .checking
        .iter()
        .filter(|c| c.at > M3_CRASH && c.at <= after && c.checking && c.monitor != 2)
        .count();
    assert_eq!(taken_over, share.len(), "{:?}", run.checking);
    // Back: m3 checks its share again, and each node has 2 checkers again,
    // within 5 intervals of the restart (it connects, is sent every node,
    // is heard as live).
    let back = M3_RESTART + 5 * INTERVAL;
    for n in 1..NODES {
        let now = checkers(run, n, back);
        assert_eq!(now.len(), 2, "node {n} at {back:?}: {now:?}");
        assert_eq!(now.contains(&2), share.contains(&n), "node {n}: {now:?}");
    }
}

#[test]
fn three_monitors_with_indirect_probes_and_suspicion_declare_no_false_death() {
    let setup = Setup {
        nodes: NODES,
        monitors: 3,
        indirect: true,
        adaptive: true,
    };
    let name = "3 monitors, k = 2, indirect + suspicion + local health";
    for (o, run) in compare(name, setup, Plan::Partition) {
        // The fault fired: m1 missed its checks while cut off.
        assert!(o.misses_m1 > 0, "{o:?}");
        assert_eq!(o.false_deaths, 0, "{o:?}");
        let found = o.crash_found_after.expect("crash never found");
        assert!(found <= CRASH_FOUND_WITHIN, "{o:?}");
        assert_handover(&run);
    }
}

#[test]
fn three_monitors_without_indirect_probes_or_suspicion() {
    let setup = Setup {
        nodes: NODES,
        monitors: 3,
        indirect: false,
        adaptive: false,
    };
    for (o, run) in compare("3 monitors, k = 2, plain", setup, Plan::Partition) {
        assert!(o.misses_m1 > 0, "{o:?}");
        assert_eq!(o.false_deaths, 0, "{o:?}");
        assert!(o.crash_found_after.is_some(), "{o:?}");
        assert_handover(&run);
    }
}

#[test]
fn one_monitor_cut_off_declares_every_node_dead() {
    let setup = Setup {
        nodes: NODES,
        monitors: 1,
        indirect: false,
        adaptive: false,
    };
    for (o, _) in compare("1 monitor", setup, Plan::Partition) {
        assert!(o.misses_m1 > 0, "{o:?}");
        assert!(o.false_deaths >= NODES - 1, "{o:?}");
    }
}

/// The loss run's faults fired: windows opened, messages held, checks
/// missed.
fn assert_loss_fired(o: &Outcome, run: &Run) {
    println!(
        "loss: {} windows, {} messages held, {} misses, {:?}",
        run.windows, run.held, o.misses, o
    );
    assert!(run.windows > 1000, "{} windows", run.windows);
    assert!(run.held > 100, "{} messages held", run.held);
    assert!(o.misses > 0, "{o:?}");
}

/// 30 % loss on every link for 30 s, without indirect probes, suspicion or
/// local health: healthy nodes are declared dead (this is what shows the
/// loss run bites, and what the adaptive settings save).
#[test]
fn thirty_percent_loss_declares_false_deaths_without_the_adaptive_settings() {
    let setup = Setup {
        nodes: NODES,
        monitors: 3,
        indirect: false,
        adaptive: false,
    };
    let name = "3 monitors, 30 % loss, plain";
    for (o, run) in compare(name, setup, Plan::Loss) {
        assert_loss_fired(&o, &run);
        assert!(o.false_deaths > 0, "the loss never bit: {o:?}");
    }
}

/// The crash during the loss is found within (simulated time, so a busy
/// machine does not stretch it; issue 24's goal). Measured 18.6 and 20.2 s
/// when every failed check raised local health (a third of them failing
/// under the loss widened the miss limit and the suspicion window); with
/// Lifeguard's nack rule (a failed check whose indirect probe another
/// monitor answered "could not reach it" does not raise it): see README.
const CRASH_FOUND_UNDER_LOSS: Duration = Duration::from_secs(15);

/// 30 % loss on every link for 30 s: no false death with the adaptive
/// settings, and a node crashed during the loss is found within
/// [`CRASH_FOUND_UNDER_LOSS`].
#[test]
fn thirty_percent_loss_declares_no_false_death_and_finds_a_crash() {
    let setup = Setup {
        nodes: NODES,
        monitors: 3,
        indirect: true,
        adaptive: true,
    };
    let name = "3 monitors, 30 % loss, adaptive";
    for (o, run) in compare(name, setup, Plan::Loss) {
        assert_loss_fired(&o, &run);
        // The nack rule had something to act on.
        assert!(o.indirect_nacks > 0, "{o:?}");
        assert_eq!(o.false_deaths, 0, "{o:?}");
        let found = o.crash_found_after.expect("crash never found");
        assert!(found <= CRASH_FOUND_UNDER_LOSS, "{o:?}");
    }
}

/// `cluster_link`'s rule: a monitor not heard from for 2 intervals, once
/// the link to it has been up for 4, is dialled again (a connection may be
/// dead without a close). At 6 s m1's and m2's connections to each other go
/// silent without closing (what is written is swallowed, nothing comes):
/// each stops hearing the other and takes over part of its share; each
/// dials again, and the share is back as it was before the silence.
#[test]
fn a_silent_link_between_monitors_is_dialled_again_and_the_share_recovers() {
    let setup = Setup {
        nodes: 30,
        monitors: 3,
        indirect: true,
        adaptive: true,
    };
    for seed in [1, 2] {
        let run = run(setup, seed, Plan::Silent);
        let o = judge(&run, Plan::Silent);
        // The fault fired: the connection each way silenced, bytes
        // swallowed, and the monitors felt it (checkers changed).
        assert!(run.silenced >= 2, "{} silenced", run.silenced);
        assert!(run.swallowed > 0, "nothing swallowed");
        let moved = run.checking.iter().filter(|c| c.at > SILENT_AT).count();
        assert!(moved > 0, "no checker changed after the silence");
        // Dialled again, both ways.
        assert!(
            run.redials.0 >= 1 && run.redials.1 >= 1,
            "seed {seed}: dialled again {:?}",
            run.redials
        );
        // The share back as before: 9 s of simulated time after the
        // silence (2 intervals unheard, a tick, an interval before the
        // dial, the sync; simulated, so a busy machine does not stretch it).
        let before = SILENT_AT - Duration::from_millis(100);
        let back = Plan::Silent.end() - INTERVAL;
        for n in 0..run.nodes {
            let was = checkers(&run, n, before);
            assert_eq!(was.len(), 2, "node {n} before: {was:?}");
            assert_eq!(
                checkers(&run, n, back),
                was,
                "seed {seed}: node {n} at {back:?}"
            );
        }
        assert_eq!(o.false_deaths, 0, "{o:?}");
    }
}

/// The same rule when only one direction dies: at 6 s the connection m1
/// dialled to m2 goes dead one way (what m1 writes is swallowed, what m2
/// writes arrives; m2's own connection to m1 stays healthy). m2 stops
/// hearing m1; dialling its own (healthy) link again would not help, so it
/// also closes the connection m1 dialled: m1 sees the close, dials again,
/// and the share is back as it was before.
#[test]
fn a_link_between_monitors_silent_one_way_is_dialled_again_by_its_own_side() {
    let setup = Setup {
        nodes: 30,
        monitors: 3,
        indirect: true,
        adaptive: true,
    };
    for seed in [1, 2] {
        let run = run(setup, seed, Plan::SilentOneWay);
        let o = judge(&run, Plan::SilentOneWay);
        // The fault fired: m1's connection to m2 muted, bytes swallowed,
        // and m2 felt it (checkers changed).
        assert!(run.silenced >= 1, "{} muted", run.silenced);
        assert!(run.swallowed > 0, "nothing swallowed");
        let moved = run.checking.iter().filter(|c| c.at > SILENT_AT).count();
        assert!(moved > 0, "no checker changed after the silence");
        // m1, whose connection died, dialled again.
        assert!(
            run.redials.0 >= 1,
            "seed {seed}: m1 never dialled m2 again: {:?}",
            run.redials
        );
        // The share back as before: 9 s of simulated time after the
        // silence (2 intervals unheard, a tick, the close, an interval
        // before m1 dials, the sync; simulated, so a busy machine does not
        // stretch it).
        let before = SILENT_AT - Duration::from_millis(100);
        let back = Plan::SilentOneWay.end() - INTERVAL;
        for n in 0..run.nodes {
            let was = checkers(&run, n, before);
            assert_eq!(was.len(), 2, "node {n} before: {was:?}");
            assert_eq!(
                checkers(&run, n, back),
                was,
                "seed {seed}: node {n} at {back:?}"
            );
        }
        assert_eq!(o.false_deaths, 0, "{o:?}");
    }
}

/// A node crashed while m1 is overloaded is found dead within this of the
/// crash: issue 24's bound under loss (simulated time, so a busy machine
/// does not stretch it). Measured 8.5 s: found 1.5 s before the overload
/// ends (6.7 s in the partition run, 4.5 s checks + 2 s suspicion).
const CRASH_FOUND_UNDER_OVERLOAD: Duration = Duration::from_secs(15);

/// One overloaded monitor among three (issue 24's goal): over 20 s, every
/// message to and from m1 (nodes and monitors) is held for 2 intervals
/// every 3 s. No node is declared dead by any monitor, and node 0, crashed
/// in the middle of it, is found within [`CRASH_FOUND_UNDER_OVERLOAD`].
/// How often checkers changed during the overload is printed, not asserted
/// (598 with seed 1, all at m1: not hearing m2 and m3 for 2 intervals in
/// the first holds, it counts them gone and checks all 200 nodes itself,
/// then hands them back; see README).
#[test]
fn an_overloaded_monitor_among_three_declares_no_false_death() {
    let setup = Setup {
        nodes: NODES,
        monitors: 3,
        indirect: true,
        adaptive: true,
    };
    let name = "3 monitors, m1 overloaded, adaptive";
    for (o, run) in compare(name, setup, Plan::Overload) {
        let during = |c: &&Checking| {
            c.at >= Duration::from_secs(OVERLOAD.0) && c.at < Duration::from_secs(OVERLOAD.1)
        };
        let moved = run.checking.iter().filter(during).count();
        let by_monitor: Vec<usize> = (0..MONITORS.len())
            .map(|m| {
                run.checking
                    .iter()
                    .filter(during)
                    .filter(|c| c.monitor == m)
                    .count()
            })
            .collect();
        let crash_at = Plan::Overload.crash_at() - Duration::from_millis(100);
        println!(
            "overload: {} windows, {} messages held, checkers changed {moved} times \
             (by monitor {by_monitor:?}), dialled m1 → m2, m2 → m1 {:?}, \
             node 0 checked by {:?}, {:?}",
            run.windows,
            run.held,
            run.redials,
            checkers(&run, CRASHED, crash_at),
            o
        );
        // The fault fired: m1's links held, messages held, m1 missed.
        assert!(run.windows >= 6, "{} windows", run.windows);
        assert!(run.held > 0, "no message held");
        assert!(o.misses_m1 > 0, "{o:?}");
        assert_eq!(o.false_deaths, 0, "{o:?}");
        let found = o.crash_found_after.expect("crash never found");
        assert!(found <= CRASH_FOUND_UNDER_OVERLOAD, "{o:?}");
    }
}
