//! Deterministic network simulations of the heartbeat monitor (turmoil):
//! one monitor and 15 nodes as simulated hosts, 5–50 ms latency with
//! jitter, over `ServerBuilder::serve` and `ClientBuilder::connect_io`.
//!
//! One seeded run goes through, in simulated time (interval 1 s, check
//! timeout 500 ms):
//!
//! - 0–8 s: every node registers (kept registered) and is checked;
//! - 8–18 s: nodes 10–14 are partitioned from the monitor, then healed;
//! - 20 s: node 3 crashes for good;
//! - 24–27 s: node 7 pauses for 3 intervals (a long GC pause: everything
//!   to and from it is held, then delivered);
//! - 30 s: the monitor crashes; 35 s: it restarts knowing nothing, and
//!   every node must register again;
//! - the run ends at 45 s.
//!
//! `detectors_compared_on_the_same_seeded_runs` prints the table in the
//! README (`cargo test -p chitchat-net-tests --test suite -- sim_heartbeat --nocapture`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::heartbeat::{
    Detector, HeartbeatConfig, KeepRegistered, Monitor, PeerState, PhiAccrual, Register,
    Registration, Responder,
};
use chitchat_net::{Addr, Server};

/// Enough for every role (a crashed node, a paused one, five partitioned,
/// the rest healthy) and every node's re-registration: the simulation
/// steps every host at every tick, so its cost grows with the nodes.
const NODES: usize = 15;
/// Simulated time per step: messages are delivered at this granularity.
const TICK: Duration = Duration::from_millis(5);
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);
const REGISTRATION_PORT: u16 = 7000;
const NODE_PORT: u16 = 9000;

const PARTITIONED: std::ops::Range<usize> = 10..15;
const PARTITION_AT: u64 = 8;
const HEAL_AT: u64 = 18;
const CRASHED: usize = 3;
const CRASH_AT: u64 = 20;
const PAUSED: usize = 7;
const PAUSE_AT: u64 = 24;
const MONITOR_DOWN_AT: u64 = 30;
const MONITOR_UP_AT: u64 = 35;
const END_AT: u64 = 45;

/// The phi accrual threshold the simulations assert at.
const PHI_THRESHOLD: f64 = 8.0;

/// Bounds asserted (simulated time).
const CRASH_DETECTED_WITHIN: Duration = Duration::from_secs(8);
const PARTITION_DETECTED_WITHIN: Duration = Duration::from_secs(8);
const HEALED_WITHIN: Duration = Duration::from_secs(3);
/// After the restart: 3 intervals without a ping (counted from the last
/// ping, 5 s before the restart) + 1 interval + the largest backoff (2
/// intervals) + a check.
const REREGISTERED_WITHIN: Duration = Duration::from_secs(5);

/// One event seen by a monitor: its incarnation, when, which node, state.
#[derive(Debug, Clone, Copy)]
struct Seen {
    incarnation: u32,
    at: Duration,
    node: usize,
    state: PeerState,
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn config(detector: Detector) -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .detector(detector)
        .build()
        .unwrap()
}

/// Accepted turmoil connections, as `serve` takes them.
fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<(turmoil::net::TcpStream, Addr)>> {
    futures_util::stream::unfold(listener, |listener| async move {
        let accepted = listener
            .accept()
            .await
            .map(|(stream, peer)| (stream, Addr::from(peer)));
        Some((accepted, listener))
    })
}

async fn dial(addr: SocketAddr) -> std::io::Result<turmoil::net::TcpStream> {
    turmoil::net::TcpStream::connect(addr).await
}

/// Runs the scenario with `detector` and `seed`: every event the monitor's
/// incarnations reported.
fn run(detector: Detector, seed: u64) -> Vec<Seen> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(50))
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(END_AT + 10))
        .build();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let incarnations = Arc::new(AtomicU32::new(0));
    let config = config(detector);

    let log = seen.clone();
    sim.host("monitor", move || {
        let log = log.clone();
        let incarnation = incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let (monitor, mut events) = Monitor::builder(config).dialer(dial).build();
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", REGISTRATION_PORT)).await?;
            let local = SocketAddr::from((turmoil::lookup("monitor"), REGISTRATION_PORT));
            let _registrations = monitor
                .registration_server()
                .serve(local, incoming(listener))?;
            while let Some(event) = events.recv().await {
                let node = event.name.trim_start_matches("node-").parse().unwrap();
                log.lock().unwrap().push(Seen {
                    incarnation,
                    at: turmoil::sim_elapsed().unwrap_or_default(),
                    node,
                    state: event.state,
                });
            }
            Ok(())
        }
    });
    for i in 0..NODES {
        sim.host(node_name(i), move || async move {
            let ip: IpAddr = turmoil::lookup(node_name(i));
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", NODE_PORT)).await?;
            let addr = SocketAddr::new(ip, NODE_PORT);
            let responder = Responder::new();
            let _server = Server::builder(responder.clone()).serve(addr, incoming(listener))?;
            let monitor = SocketAddr::from((turmoil::lookup("monitor"), REGISTRATION_PORT));
            let registration = Registration::Typed(Register {
                name: node_name(i),
                addr,
            });
            let _keeper = KeepRegistered::builder(monitor, registration)
                .interval(INTERVAL)
                .dialer(dial)
                .seed(seed ^ i as u64)
                .spawn(responder);
            std::future::pending::<()>().await;
            Ok(())
        });
    }

    let secs = Duration::from_secs;
    let until = |sim: &mut turmoil::Sim<'_>, t: u64| {
        while sim.elapsed() < secs(t) {
            sim.step().unwrap();
        }
    };
    let partitioned: Vec<String> = PARTITIONED.map(node_name).collect();
    until(&mut sim, PARTITION_AT);
    for name in &partitioned {
        sim.partition("monitor", name.as_str());
    }
    until(&mut sim, HEAL_AT);
    for name in &partitioned {
        sim.repair("monitor", name.as_str());
    }
    until(&mut sim, CRASH_AT);
    sim.crash(node_name(CRASHED));
    until(&mut sim, PAUSE_AT);
    sim.hold("monitor", node_name(PAUSED));
    until(&mut sim, PAUSE_AT + 3);
    sim.release("monitor", node_name(PAUSED));
    until(&mut sim, MONITOR_DOWN_AT);
    sim.crash("monitor");
    until(&mut sim, MONITOR_UP_AT);
    sim.bounce("monitor");
    until(&mut sim, END_AT);
    let seen = seen.lock().unwrap().clone();
    seen
}

/// What one run shows.
#[derive(Debug)]
struct Outcome {
    /// Deaths of nodes that were up and reachable all along (the paused
    /// one excluded).
    false_deaths: usize,
    /// Whether the paused node was declared dead.
    paused_declared_dead: bool,
    crash_detected_after: Option<Duration>,
    /// The slowest partitioned node's time to be declared dead.
    partition_detected_after: Option<Duration>,
    /// The slowest partitioned node's time to be alive after the heal.
    healed_after: Option<Duration>,
    /// The slowest node's time to be alive at the restarted monitor.
    reregistered_after: Option<Duration>,
}

fn judge(seen: &[Seen]) -> Outcome {
    let secs = Duration::from_secs;
    let dead = |s: &Seen| matches!(s.state, PeerState::Dead { .. });
    let special = |n: usize| n == CRASHED || n == PAUSED || PARTITIONED.contains(&n);
    let false_deaths = seen.iter().filter(|s| dead(s) && !special(s.node)).count();
    let paused_declared_dead = seen.iter().any(|s| dead(s) && s.node == PAUSED);
    let first = |node: usize, after: u64, what: &dyn Fn(&Seen) -> bool| {
        seen.iter()
            .find(|s| s.node == node && s.at >= secs(after) && what(s))
            .map(|s| s.at - secs(after))
    };
    let crash_detected_after = first(CRASHED, CRASH_AT, &dead);
    let slowest = |times: Vec<Option<Duration>>| {
        times
            .into_iter()
            .try_fold(Duration::ZERO, |max, t| t.map(|t| t.max(max)))
    };
    let partition_detected_after = slowest(
        PARTITIONED
            .map(|n| first(n, PARTITION_AT, &|s| dead(s) && s.at < secs(HEAL_AT)))
            .collect(),
    );
    let alive = |s: &Seen| s.state == PeerState::Alive;
    let healed_after = slowest(
        PARTITIONED
            .map(|n| first(n, HEAL_AT, &|s| alive(s) && s.incarnation == 1))
            .collect(),
    );
    let reregistered_after = slowest(
        (0..NODES)
            .filter(|&n| n != CRASHED)
            .map(|n| first(n, MONITOR_UP_AT, &|s| alive(s) && s.incarnation == 2))
            .collect(),
    );
    Outcome {
        false_deaths,
        paused_declared_dead,
        crash_detected_after,
        partition_detected_after,
        healed_after,
        reregistered_after,
    }
}

fn phi() -> Detector {
    Detector::PhiAccrual(PhiAccrual::new(PHI_THRESHOLD))
}

fn misses() -> Detector {
    Detector::MissLimit(3)
}

fn assert_scenario(outcome: &Outcome) {
    assert_eq!(outcome.false_deaths, 0, "{outcome:?}");
    let crash = outcome.crash_detected_after.expect("crash never detected");
    assert!(crash <= CRASH_DETECTED_WITHIN, "{outcome:?}");
    let partition = outcome
        .partition_detected_after
        .expect("a partitioned node was never declared dead during the partition");
    assert!(partition <= PARTITION_DETECTED_WITHIN, "{outcome:?}");
    let healed = outcome
        .healed_after
        .expect("a partitioned node never came back");
    assert!(healed <= HEALED_WITHIN, "{outcome:?}");
    let back = outcome
        .reregistered_after
        .expect("a node never registered with the restarted monitor");
    assert!(back <= REREGISTERED_WITHIN, "{outcome:?}");
}

/// Seeds of the runs; every detector sees the same runs.
const SEEDS: [u64; 2] = [1, 2];

/// Runs the scenario on every seed with `detector`, prints the README
/// table's rows, and returns the outcomes.
fn compare(name: &str, detector: Detector) -> Vec<Outcome> {
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let outcomes: Vec<Outcome> = SEEDS.iter().map(|&s| judge(&run(detector, s))).collect();
    let mut rows = String::new();
    for (seed, o) in SEEDS.iter().zip(&outcomes) {
        rows.push_str(&format!(
            "| {name} | {seed} | {} | {} | {} | {} | {} | {} |\n",
            o.false_deaths,
            if o.paused_declared_dead { "yes" } else { "no" },
            ms(o.crash_detected_after),
            ms(o.partition_detected_after),
            ms(o.healed_after),
            ms(o.reregistered_after),
        ));
    }
    // One print, so that rows of tests running in parallel do not mix.
    print!("{rows}");
    outcomes
}

// The table's header:
// | detector | seed | false deaths | paused node declared dead | crash detected after | partition detected after (slowest) | healed after | re-registered after monitor restart (slowest) |

#[test]
fn phi_accrual_at_8_declares_no_healthy_node_dead_and_finds_crashes_and_partitions() {
    for outcome in compare("phi accrual, threshold 8", phi()) {
        assert_scenario(&outcome);
        assert!(!outcome.paused_declared_dead, "{outcome:?}");
    }
}

#[test]
fn miss_limit_on_the_same_runs() {
    for outcome in compare("misses > 3 (Go rule)", misses()) {
        assert_scenario(&outcome);
    }
}

#[test]
fn phi_accrual_at_3_detects_sooner_on_the_same_runs() {
    let detector = Detector::PhiAccrual(PhiAccrual::new(3.0));
    for outcome in compare("phi accrual, threshold 3", detector) {
        assert_scenario(&outcome);
    }
}
