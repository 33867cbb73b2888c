//! Monitors watching thousands of real loopback nodes: the CPU per check
//! and the memory per watched peer.
//!
//! The nodes run in child processes (this executable again, with
//! `HEARTBEAT_SCALE_NODES` set), at most 5,000 per process, because each
//! node holds two descriptors (its listener and the monitor's connection)
//! and the open-file limit is per process. The parent runs the monitors:
//! one alone, or several in a cluster where each node is checked by `k` of
//! them. It watches every node (spread over the monitors, as nodes would
//! register with any of them, in batches so that connecting stays
//! bounded), waits until all are alive, then measures its own CPU time,
//! heap and resident memory over a number of check rounds.
//!
//! ```text
//! cargo run --release --example heartbeat_scale -- 9000                  # one monitor
//! cargo run --release --example heartbeat_scale -- 10000 --monitors 3 --watchers 1
//! ```
//!
//! The parent holds one descriptor per node and watcher: `nodes × k` must
//! stay under the open-file limit (10,000 nodes with `k = 2` need 20,000).
//!
//! It prints one row: nodes, monitors, watchers per node, checks per
//! second, CPU per check, heap and RSS per watched peer (the monitors'
//! growth from before the first watch to after every node is alive,
//! divided by `nodes × k`: one watcher's share of a node).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chitchat_net::heartbeat::{ClusterConfig, HeartbeatConfig, Monitor, PeerState, Responder};
use chitchat_net::{Addr, Server};

/// Counts the heap in use, so that the heap can be reported beside the RSS
/// (which also holds what the allocator keeps after `free`).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const NODES_ENV: &str = "HEARTBEAT_SCALE_NODES";
const FIRST_ENV: &str = "HEARTBEAT_SCALE_FIRST";
const NODES_PER_PROCESS: usize = 5000;
/// Nodes watched before waiting for them to be alive: each first check
/// may open two connections at once (with and without request ids).
const BATCH: usize = 1000;
const INTERVAL: Duration = Duration::from_secs(1);

/// The process's CPU time (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; in
    // clock ticks of 1/100 s on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Resident memory in KiB, from `/proc/self/status`.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The child: `n` responders on loopback (the `first`-th node onwards),
/// their addresses on stdout, until stdin closes.
async fn nodes(n: usize, first: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut servers = Vec::with_capacity(n);
    let mut out = std::io::stdout().lock();
    for i in first..first + n {
        // Spread over 127.0.0.x so no address runs short of ports.
        let ip = format!("127.0.0.{}", 2 + i % 200);
        let server = Server::listen((ip.as_str(), 0), Responder::new()).await?;
        writeln!(out, "{}", server.local_addr())?;
        servers.push(server);
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line).await?;
    for server in &servers {
        server.cut().await;
    }
    Ok(())
}

/// Starts the node processes; their children and the nodes' addresses.
fn start_nodes(n: usize) -> Result<(Vec<Child>, Vec<SocketAddr>), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let count = NODES_PER_PROCESS.min(n - first);
        let mut child = Command::new(&exe)
            .env(NODES_ENV, count.to_string())
            .env(FIRST_ENV, first.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        children.push(child);
        let before = addrs.len();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "ready" {
                break;
            }
            addrs.push(line.parse()?);
        }
        if addrs.len() - before != count {
            let started = addrs.len() - before;
            return Err(format!("a node process started {started} of {count} nodes").into());
        }
        first += count;
    }
    Ok((children, addrs))
}

/// The settings from the command line.
struct Options {
    nodes: usize,
    monitors: usize,
    watchers: usize,
    rounds: u32,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        nodes: 9000,
        monitors: 1,
        watchers: 2,
        rounds: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(format!("{name} takes a number"))
        };
        match arg.as_str() {
            "--monitors" => options.monitors = value("--monitors")?.max(1),
            "--watchers" => options.watchers = value("--watchers")?.max(1),
            "--rounds" => options.rounds = value("--rounds")?.max(1) as u32,
            n => {
                options.nodes = n.parse().map_err(|_| {
                    "usage: heartbeat_scale [NODES] [--monitors M] [--watchers K] [--rounds R]"
                        .to_string()
                })?
            }
        }
    }
    options.watchers = options.watchers.min(options.monitors);
    Ok(options)
}

/// Stderr: what each monitor knows of the nodes not yet reported alive.
fn diagnose(monitors: &[Monitor], alive: &HashSet<String>, addrs: &[SocketAddr]) {
    eprintln!("-- {} alive of {} watched so far", alive.len(), addrs.len());
    for (i, monitor) in monitors.iter().enumerate() {
        let stats = monitor.stats();
        let (mut known, mut checking, mut alive_here, mut none) = (0, 0, 0, 0);
        for (j, addr) in addrs.iter().enumerate() {
            if alive.contains(&format!("n{j}")) {
                continue;
            }
            if let Some(info) = monitor.peer(*addr) {
                known += 1;
                checking += usize::from(info.checking);
                alive_here += usize::from(info.state == Some(PeerState::Alive));
                none += usize::from(info.state.is_none());
            }
        }
        eprintln!(
            "m{i}: watched {} checks {} misses {} cluster_dropped {} dropped_events {} deaths {} | of the missing: known {known} checking {checking} alive {alive_here} unchecked {none}",
            stats.watched, stats.checks, stats.misses, stats.cluster_dropped, stats.dropped_events, stats.deaths
        );
    }
}

async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let Options {
        nodes: n,
        monitors: m,
        watchers: k,
        rounds,
    } = options;
    let (mut children, addrs) = start_nodes(n)?;
    let config = HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(Duration::from_secs(5))
        .max_peers(n)
        .build()?;
    let heap_before = ALLOCATOR.allocated();
    let rss_before = rss_kib();
    // The monitors (and, in a cluster, the servers they reach each other
    // on, bound first so that each knows the others' addresses).
    let mut listeners = Vec::new();
    for _ in 0..m {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let cluster_addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let mut monitors = Vec::new();
    let mut events = Vec::new();
    let mut servers = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut builder = Monitor::builder(config);
        if m > 1 {
            let mut cluster = ClusterConfig::new(format!("m{i}")).watchers(k);
            for (j, addr) in cluster_addrs.iter().enumerate().filter(|(j, _)| *j != i) {
                cluster = cluster.monitor(format!("m{j}"), *addr);
            }
            builder = builder.cluster(cluster);
        }
        let (monitor, stream) = builder.build();
        if let Some(server) = monitor.cluster_server() {
            let incoming = futures_util::stream::unfold(listener, |listener| async move {
                let accepted = listener
                    .accept()
                    .await
                    .map(|(io, peer)| (io, Addr::from(peer)));
                Some((accepted, listener))
            });
            servers.push(server.serve(cluster_addrs[i], incoming)?);
        }
        monitors.push(monitor);
        events.push(stream);
    }
    // The first monitor's events count the nodes alive (every monitor of a
    // cluster reports the cluster's verdicts); the others' are read and
    // dropped.
    let mut counted = events.remove(0);
    for mut other in events {
        tokio::spawn(async move { while other.recv().await.is_some() {} });
    }
    let mut alive = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        for &i in batch {
            monitors[i % m].watch(format!("n{i}"), addrs[i])?;
        }
        let want = batch[batch.len() - 1] + 1;
        while alive.len() < want {
            let wait = deadline.min(tokio::time::Instant::now() + Duration::from_secs(10));
            let Ok(event) = tokio::time::timeout_at(wait, counted.recv()).await else {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("only {} of {n} alive after 300 s", alive.len()).into());
                }
                diagnose(&monitors, &alive, &addrs[..want]);
                continue;
            };
            match event {
                Some(e) if e.state == PeerState::Alive => {
                    alive.insert(e.name);
                }
                Some(e) => return Err(format!("{} is {}", e.addr, e.state).into()),
                None => return Err("monitor stopped".into()),
            }
        }
    }
    // Two rounds more, so that every connection is open and warm.
    tokio::time::sleep(INTERVAL * 2).await;
    let heap_watching = ALLOCATOR.allocated();
    let rss_watching = rss_kib();
    let checks = || monitors.iter().map(|m| m.stats().checks).sum::<u64>();
    let (cpu0, checks0, wall0) = (cpu_time(), checks(), Instant::now());
    tokio::time::sleep(INTERVAL * rounds).await;
    let (cpu1, checks1, wall) = (cpu_time(), checks(), wall0.elapsed());
    let misses: u64 = monitors.iter().map(|m| m.stats().misses).sum();
    let checks = checks1 - checks0;
    let per_check = (cpu1 - cpu0).as_secs_f64() / checks.max(1) as f64;
    let watched = (n * k) as f64;
    let heap = heap_watching.saturating_sub(heap_before) as f64 / watched;
    let rss = rss_watching.saturating_sub(rss_before) as f64 * 1024.0 / watched;
    println!("| watched nodes | monitors | watchers per node | checks/s | CPU per check | heap per watched peer | RSS per watched peer | misses |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {m} | {k} | {:.0} | {:.1} µs | {:.2} KB | {:.2} KB | {misses} |",
        checks as f64 / wall.as_secs_f64(),
        per_check * 1e6,
        heap / 1000.0,
        rss / 1000.0,
    );
    for monitor in &monitors {
        monitor.stop().await;
    }
    for server in &servers {
        server.cut().await;
    }
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        child.wait()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = match std::env::var(NODES_ENV) {
        Ok(n) => {
            let first = std::env::var(FIRST_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            nodes(n.parse().unwrap_or(0), first).await
        }
        Err(_) => match options() {
            Ok(options) => run(options).await,
            Err(usage) => Err(usage.into()),
        },
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("heartbeat_scale: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
