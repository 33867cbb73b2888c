//! Suspect before dead (SWIM) and local health (Lifeguard), in turmoil:
//! one monitor, a few nodes, 5–50 ms latency, interval 1 s, check timeout
//! 500 ms, simulated time (fixed seeds).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::heartbeat::{HeartbeatConfig, Monitor, MonitorStats, PeerState, Responder};
use chitchat_net::{Addr, Server};

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);
const NODE_PORT: u16 = 9000;

fn node_name(i: usize) -> String {
    format!("node-{i}")
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

#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Duration,
    node: usize,
    state: PeerState,
}

/// What one run gives back: the events, the monitor's stats at the end,
/// each node's incarnation at the end.
struct Run {
    seen: Vec<Seen>,
    stats: MonitorStats,
    incarnations: Vec<u64>,
}

/// `nodes` nodes watched by one monitor with `config`, stepped every
/// `tick`; `faults` is called at every step with the simulated time to
/// inject faults.
fn run(
    seed: u64,
    tick: Duration,
    nodes: usize,
    config: HeartbeatConfig,
    end: Duration,
    mut faults: impl FnMut(&mut turmoil::Sim<'_>, Duration),
) -> Run {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(50))
        .tick_duration(tick)
        // A socket's buffer, and a listener's backlog (default 64).
        .tcp_capacity(1024)
        .simulation_duration(end + Duration::from_secs(10))
        .build();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stats: Arc<Mutex<MonitorStats>> = Arc::default();
    let responders: Vec<Responder> = (0..nodes).map(|_| Responder::new()).collect();
    for (i, responder) in responders.iter().enumerate() {
        let responder = responder.clone();
        sim.host(node_name(i), move || {
            let responder = responder.clone();
            async move {
                let ip: IpAddr = turmoil::lookup(node_name(i));
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", NODE_PORT)).await?;
                let addr = SocketAddr::new(ip, NODE_PORT);
                let _server = Server::builder(responder).serve(addr, incoming(listener))?;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let (log, last) = (seen.clone(), stats.clone());
    sim.host("monitor", move || {
        let (log, last) = (log.clone(), last.clone());
        async move {
            let (monitor, mut events) = Monitor::builder(config).dialer(dial).build();
            for i in 0..nodes {
                let addr = SocketAddr::new(turmoil::lookup(node_name(i)), NODE_PORT);
                monitor.watch(node_name(i), addr).unwrap();
            }
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        *last.lock().unwrap() = monitor.stats();
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
    while sim.elapsed() < end {
        let now = sim.elapsed();
        faults(&mut sim, now);
        sim.step().unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let stats = *stats.lock().unwrap();
    Run {
        seen,
        stats,
        incarnations: responders.iter().map(Responder::incarnation).collect(),
    }
}

fn states(seen: &[Seen], node: usize) -> Vec<(Duration, PeerState)> {
    seen.iter()
        .filter(|s| s.node == node)
        .map(|s| (s.at, s.state))
        .collect()
}

const SLOW: usize = 0;
const CRASHED: usize = 1;
const SLOW_AT: Duration = Duration::from_secs(5);
const CRASH_AT: Duration = Duration::from_secs(12);
const WINDOW: Duration = Duration::from_secs(3);

/// Suspect at the first miss (miss limit 0), dead after 3 s of suspicion.
fn suspect_config() -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .miss_limit(0)
        .suspicion(WINDOW)
        .build()
        .unwrap()
}

/// Node 0 is slow for one interval (everything to and from it held, then
/// delivered), node 1 crashes for good.
fn slow_and_crashed(config: HeartbeatConfig, seed: u64) -> Run {
    let mut held = false;
    let mut crashed = false;
    let (tick, end) = (Duration::from_millis(5), Duration::from_secs(22));
    run(seed, tick, 3, config, end, |sim, now| {
        if now >= SLOW_AT && !held {
            held = true;
            sim.hold("monitor", node_name(SLOW));
        }
        if held && now >= SLOW_AT + INTERVAL {
            sim.release("monitor", node_name(SLOW));
        }
        if now >= CRASH_AT && !crashed {
            crashed = true;
            sim.crash(node_name(CRASHED));
        }
    })
}

#[test]
fn a_node_slow_for_one_interval_is_suspect_then_alive_never_dead_and_a_crashed_one_dies() {
    for seed in [1, 2] {
        let run = slow_and_crashed(suspect_config(), seed);
        let slow = states(&run.seen, SLOW);
        let dead = |s: &PeerState| matches!(s, PeerState::Dead { .. });
        assert!(!slow.iter().any(|(_, s)| dead(s)), "seed {seed}: {slow:?}");
        let suspect = slow
            .iter()
            .position(|(at, s)| *at >= SLOW_AT && matches!(s, PeerState::Suspect { .. }))
            .unwrap_or_else(|| panic!("seed {seed}: never suspect: {slow:?}"));
        assert!(
            slow[suspect + 1..]
                .first()
                .is_some_and(|(_, s)| *s == PeerState::Alive),
            "seed {seed}: {slow:?}"
        );
        // It refuted the suspicion: its incarnation went up.
        assert!(run.incarnations[SLOW] >= 1, "seed {seed}");
        assert!(run.stats.refuted >= 1, "seed {seed}: {:?}", run.stats);
        // The healthy node was never even suspect.
        assert!(states(&run.seen, 2)
            .iter()
            .all(|(_, s)| *s == PeerState::Alive));

        // The crashed node: suspect at its first miss (within an interval
        // and a timeout of the crash), then dead once suspect for the
        // window: within interval + timeout + window + interval.
        let crashed = states(&run.seen, CRASHED);
        let after = |what: &dyn Fn(&PeerState) -> bool| {
            crashed
                .iter()
                .find(|(at, s)| *at >= CRASH_AT && what(s))
                .map(|(at, _)| *at - CRASH_AT)
        };
        let suspect = after(&|s| matches!(s, PeerState::Suspect { .. })).expect("never suspect");
        let dead = after(&dead).expect("never dead");
        assert!(suspect <= INTERVAL + TIMEOUT, "{crashed:?}");
        assert!(dead >= suspect + WINDOW, "{crashed:?}");
        assert!(
            dead <= INTERVAL + TIMEOUT + WINDOW + INTERVAL,
            "{crashed:?}"
        );
    }
}

#[test]
fn without_suspicion_the_slow_node_is_declared_dead() {
    // The same run and detector without a suspicion window: what the
    // suspect state saves.
    let config = HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .miss_limit(0)
        .build()
        .unwrap();
    let run = slow_and_crashed(config, 1);
    assert!(states(&run.seen, SLOW)
        .iter()
        .any(|(_, s)| matches!(s, PeerState::Dead { .. })));
    assert!(run
        .seen
        .iter()
        .all(|s| !matches!(s.state, PeerState::Suspect { .. })));
}

/// Nodes of the overloaded monitor.
const OVERLOADED_NODES: usize = 200;

/// Lifeguard: every message to and from the monitor is held for 2
/// intervals, every 6 s (what an overloaded monitor sees: all its probes
/// fail at once, and every answer comes 2 intervals late); node 0 crashes
/// at 20 s. 200 nodes, stepped every 50 ms (turmoil's cost per step grows
/// with the hosts squared; the holds are 2 s). Returns the run and how many
/// times the links were held.
fn overloaded(config: HeartbeatConfig, seed: u64) -> (Run, u32) {
    const NODES: usize = OVERLOADED_NODES;
    let nodes: Vec<String> = (0..NODES).map(node_name).collect();
    let mut holds = 0;
    let mut holding = false;
    let mut crashed = false;
    let (tick, end) = (Duration::from_millis(50), Duration::from_secs(34));
    let run = run(seed, tick, NODES, config, end, |sim, now| {
        let phase = now.as_millis() % 6000;
        let in_overload = now >= Duration::from_secs(5) && (500..2500).contains(&phase);
        if in_overload && !holding {
            holding = true;
            holds += 1;
            for node in &nodes {
                sim.hold("monitor", node.as_str());
            }
        } else if !in_overload && holding {
            holding = false;
            for node in &nodes {
                sim.release("monitor", node.as_str());
            }
        }
        if now >= Duration::from_secs(20) && !crashed {
            crashed = true;
            sim.crash(node_name(0));
        }
    });
    (run, holds)
}

fn lifeguard_config(local_health: u32) -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .miss_limit(1)
        .local_health(local_health)
        .build()
        .unwrap()
}

#[test]
fn an_overloaded_monitor_widens_its_limits_instead_of_declaring_deaths() {
    for seed in [1, 2] {
        let (run, holds) = overloaded(lifeguard_config(8), seed);
        // The faults fired: 5 overloads, every node missed checks.
        assert!(holds >= 4, "{holds}");
        let misses = OVERLOADED_NODES as u64 * 4;
        assert!(run.stats.misses >= misses, "{:?}", run.stats);
        let false_deaths: Vec<_> = run
            .seen
            .iter()
            .filter(|s| s.node != 0 && matches!(s.state, PeerState::Dead { .. }))
            .collect();
        assert!(false_deaths.is_empty(), "seed {seed}: {false_deaths:?}");
        // The crashed node is still found once the monitor is healthy
        // again: within 8 s (2 misses, plus an overload of 2 s widening
        // the limit, plus the time to recover).
        let found = run
            .seen
            .iter()
            .find(|s| s.node == 0 && matches!(s.state, PeerState::Dead { .. }))
            .map(|s| s.at)
            .expect("the crash was never found");
        assert!(found <= Duration::from_secs(28), "seed {seed}: {found:?}");
    }
}

#[test]
fn without_local_health_the_overloaded_monitor_declares_every_node_dead() {
    let (run, _) = overloaded(lifeguard_config(0), 1);
    let dead: std::collections::HashSet<usize> = run
        .seen
        .iter()
        .filter(|s| s.node != 0 && matches!(s.state, PeerState::Dead { .. }))
        .map(|s| s.node)
        .collect();
    assert_eq!(dead.len(), OVERLOADED_NODES - 1, "{dead:?}");
}
