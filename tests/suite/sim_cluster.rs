//! Several monitors sharing the watch, in turmoil (fixed seeds, simulated
//! time): 3 monitors, k = 2, 30 nodes, 5–50 ms latency, interval 1 s,
//! check timeout 500 ms. Each node registers once, with one monitor.
//!
//! - 5–25 s: monitor m1 is partitioned from every node (not from the other
//!   monitors);
//! - 30 s: node 0 crashes for good;
//! - 40 s: monitor m3 crashes; 50 s: it restarts knowing nothing;
//! - the run ends at 60 s.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::heartbeat::{
    ClusterConfig, HeartbeatConfig, KeepRegistered, Monitor, MonitorStats, PeerState, Register,
    Registration, Responder,
};
use chitchat_net::{Addr, Server};

/// 200 nodes take minutes of debug time in turmoil (every host is stepped
/// every tick): 30 keep each run in seconds.
const NODES: usize = 30;
const MONITORS: [&str; 3] = ["m1", "m2", "m3"];
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);
const REGISTRATION_PORT: u16 = 7000;
const CLUSTER_PORT: u16 = 7100;
const NODE_PORT: u16 = 9000;
const CRASHED: usize = 0;
const CRASH_AT: u64 = 30;
/// The crash is found (dead by quorum) within: a miss limit of 3 at both
/// watchers (4 checks, 4.5 s), a suspicion of 2 s, an interval of sharing.
const CRASH_FOUND_WITHIN: Duration = Duration::from_secs(9);

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

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

#[derive(Debug, Clone)]
struct Seen {
    monitor: &'static str,
    at: Duration,
    node: usize,
    state: PeerState,
}

/// How the monitors are set up.
#[derive(Debug, Clone, Copy)]
struct Setup {
    monitors: usize,
    indirect: bool,
    suspicion: bool,
}

fn run(setup: Setup, seed: u64) -> (Vec<Seen>, Vec<MonitorStats>) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(50))
        .tick_duration(Duration::from_millis(5))
        .simulation_duration(Duration::from_secs(80))
        .build();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stats: Arc<Mutex<Vec<MonitorStats>>> =
        Arc::new(Mutex::new(vec![MonitorStats::default(); setup.monitors]));
    let monitors = &MONITORS[..setup.monitors];
    let mut builder = HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .miss_limit(3);
    if setup.suspicion {
        builder = builder.suspicion(Duration::from_secs(2)).local_health(8);
    }
    let config = builder.build().unwrap();
    for (m, &me) in monitors.iter().enumerate() {
        let (log, last) = (seen.clone(), stats.clone());
        sim.host(me, move || {
            let (log, last) = (log.clone(), last.clone());
            async move {
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
                let _registrations = monitor
                    .registration_server()
                    .serve(SocketAddr::new(ip, REGISTRATION_PORT), incoming(listener))?;
                let _cluster = match monitor.cluster_server() {
                    Some(server) => {
                        let listener =
                            turmoil::net::TcpListener::bind(("0.0.0.0", CLUSTER_PORT)).await?;
                        Some(server.serve(SocketAddr::new(ip, CLUSTER_PORT), incoming(listener))?)
                    }
                    None => None,
                };
                loop {
                    let event = tokio::select! {
                        event = events.recv() => event,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            last.lock().unwrap()[m] = monitor.stats();
                            continue;
                        }
                    };
                    let Some(event) = event else { break };
                    let node = event.name.trim_start_matches("node-").parse().unwrap();
                    log.lock().unwrap().push(Seen {
                        monitor: me,
                        at: turmoil::sim_elapsed().unwrap_or_default(),
                        node,
                        state: event.state,
                    });
                }
                Ok(())
            }
        });
    }
    for i in 0..NODES {
        let registrar = monitors[i % monitors.len()];
        sim.host(node_name(i), move || async move {
            let ip: IpAddr = turmoil::lookup(node_name(i));
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", NODE_PORT)).await?;
            let addr = SocketAddr::new(ip, NODE_PORT);
            let responder = Responder::new();
            let _server = Server::builder(responder.clone()).serve(addr, incoming(listener))?;
            let monitor = SocketAddr::new(turmoil::lookup(registrar), REGISTRATION_PORT);
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
    let nodes: Vec<String> = (0..NODES).map(node_name).collect();
    until(&mut sim, 5);
    for node in &nodes {
        sim.partition("m1", node.as_str());
    }
    until(&mut sim, 25);
    for node in &nodes {
        sim.repair("m1", node.as_str());
    }
    until(&mut sim, CRASH_AT);
    sim.crash(node_name(CRASHED));
    if setup.monitors == 3 {
        until(&mut sim, 40);
        sim.crash("m3");
        until(&mut sim, 50);
        sim.bounce("m3");
    }
    until(&mut sim, 60);
    let seen = seen.lock().unwrap().clone();
    let stats = stats.lock().unwrap().clone();
    (seen, stats)
}

#[derive(Debug)]
struct Outcome {
    false_deaths: usize,
    crash_found_after: Option<Duration>,
    misses_m1: u64,
    indirect_answered: u64,
}

fn judge(seen: &[Seen], stats: &[MonitorStats]) -> Outcome {
    let dead = |s: &Seen| matches!(s.state, PeerState::Dead { .. });
    Outcome {
        false_deaths: seen.iter().filter(|s| dead(s) && s.node != CRASHED).count(),
        crash_found_after: seen
            .iter()
            .filter(|s| s.node == CRASHED && dead(s) && s.at >= Duration::from_secs(CRASH_AT))
            .map(|s| s.at - Duration::from_secs(CRASH_AT))
            .min(),
        misses_m1: stats[0].misses,
        indirect_answered: stats.iter().map(|s| s.indirect_answered).sum(),
    }
}

fn compare(name: &str, setup: Setup) -> Vec<Outcome> {
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    let mut rows = String::new();
    let mut outcomes = Vec::new();
    for seed in [1u64, 2] {
        let (seen, stats) = run(setup, seed);
        let o = judge(&seen, &stats);
        rows.push_str(&format!(
            "| {name} | {seed} | {} | {} | {} |\n",
            o.false_deaths,
            ms(o.crash_found_after),
            o.indirect_answered
        ));
        outcomes.push(o);
    }
    print!("{rows}");
    outcomes
}

// | setup | seed | false deaths | crash found after | indirect probes answered |

#[test]
fn three_monitors_with_indirect_probes_and_suspicion_declare_no_false_death() {
    let setup = Setup {
        monitors: 3,
        indirect: true,
        suspicion: true,
    };
    for o in compare("3 monitors, k = 2, indirect + suspicion", setup) {
        // The fault fired: m1 missed its checks while cut off.
        assert!(o.misses_m1 > 0, "{o:?}");
        assert_eq!(o.false_deaths, 0, "{o:?}");
        let found = o.crash_found_after.expect("crash never found");
        assert!(found <= CRASH_FOUND_WITHIN, "{o:?}");
    }
}

#[test]
fn three_monitors_without_indirect_probes_or_suspicion() {
    let setup = Setup {
        monitors: 3,
        indirect: false,
        suspicion: false,
    };
    for o in compare("3 monitors, k = 2, plain", setup) {
        assert!(o.misses_m1 > 0, "{o:?}");
        assert_eq!(o.false_deaths, 0, "{o:?}");
        assert!(o.crash_found_after.is_some(), "{o:?}");
    }
}

#[test]
fn one_monitor_cut_off_declares_every_node_dead() {
    let setup = Setup {
        monitors: 1,
        indirect: false,
        suspicion: false,
    };
    for o in compare("1 monitor", setup) {
        assert!(o.misses_m1 > 0, "{o:?}");
        assert!(o.false_deaths >= NODES - 1, "{o:?}");
    }
}
