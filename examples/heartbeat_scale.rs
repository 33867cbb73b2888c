//! Monitors watching thousands of real loopback nodes: the CPU per check
//! and the memory per watched peer.
//!
//! The nodes run in child processes (this executable again, with
//! `HEARTBEAT_SCALE_NODES` set), at most 5,000 per process, because each
//! node holds a descriptor for its listener and one per connection of a
//! monitor (two at a first check, which tries both ways of matching
//! replies; in a cluster, every monitor may check a node for a while, until
//! the monitors hear each other), and the open-file limit is per process:
//! `18,000 / (1 + 2 × monitors)` nodes per process in a cluster. The
//! parent runs the monitors:
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
//! The monitors hold one descriptor per node and watcher: `nodes × k` in
//! all, over the open-file limit of one process past 10,000 nodes with
//! `k = 2`. With `--processes` each monitor runs in a child process of its
//! own (this executable again, with `HEARTBEAT_SCALE_MONITOR` set, driven
//! over its stdin and stdout), so each holds only its share:
//!
//! ```text
//! cargo run --release --example heartbeat_scale -- 10000 --monitors 3 --watchers 2 --processes
//! ```
//!
//! A run stops by itself: it fails if not every node is alive within
//! 300 s, printing what each monitor knows every 10 s without progress.
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

use chitchat_net::heartbeat::{
    ClusterConfig, ClusterHandler, HeartbeatConfig, Monitor, PeerEvents, PeerState, Responder,
};
use chitchat_net::{Addr, Server};

/// Counts the heap in use, so that the heap can be reported beside the RSS
/// (which also holds what the allocator keeps after `free`).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const NODES_ENV: &str = "HEARTBEAT_SCALE_NODES";
/// Set in a monitor's process (`--processes`): "i m k n", monitor `i` of
/// `m`, `k` watchers per node, `n` nodes.
const MONITOR_ENV: &str = "HEARTBEAT_SCALE_MONITOR";
const FIRST_ENV: &str = "HEARTBEAT_SCALE_FIRST";
const NODES_PER_PROCESS: usize = 5000;
/// Descriptors a node process may use, under the limit of 20,000.
const NODE_DESCRIPTORS: usize = 18_000;
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
fn start_nodes(
    n: usize,
    monitors: usize,
) -> Result<(Vec<Child>, Vec<SocketAddr>), Box<dyn std::error::Error>> {
    let per_process = if monitors > 1 {
        NODES_PER_PROCESS.min(NODE_DESCRIPTORS / (1 + 2 * monitors))
    } else {
        NODES_PER_PROCESS
    };
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let count = per_process.min(n - first);
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
    /// Each monitor in a process of its own.
    processes: bool,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        nodes: 9000,
        monitors: 1,
        watchers: 2,
        rounds: 10,
        processes: false,
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
            "--processes" => options.processes = true,
            n => {
                options.nodes = n.parse().map_err(|_| {
                    "usage: heartbeat_scale [NODES] [--monitors M] [--watchers K] [--rounds R] [--processes]"
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

/// The monitors' configuration.
fn monitor_config(n: usize) -> Result<HeartbeatConfig, Box<dyn std::error::Error>> {
    Ok(HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(Duration::from_secs(5))
        .max_peers(n)
        .build()?)
}

/// A monitor, its events, and its cluster server (in a cluster).
type Started = (Monitor, PeerEvents, Option<Server<ClusterHandler>>);

/// Monitor `i` of `m` (named `m{i}`), in a cluster with the others at
/// `cluster_addrs` if `m > 1`, its cluster server served on `listener`.
fn start_monitor(
    config: HeartbeatConfig,
    i: usize,
    k: usize,
    cluster_addrs: &[SocketAddr],
    listener: tokio::net::TcpListener,
) -> Result<Started, Box<dyn std::error::Error>> {
    let m = cluster_addrs.len();
    let mut builder = Monitor::builder(config);
    if m > 1 {
        let mut cluster = ClusterConfig::new(format!("m{i}")).watchers(k);
        for (j, addr) in cluster_addrs.iter().enumerate().filter(|(j, _)| *j != i) {
            cluster = cluster.monitor(format!("m{j}"), *addr);
        }
        builder = builder.cluster(cluster);
    }
    let (monitor, stream) = builder.build();
    let mut server = None;
    if let Some(builder) = monitor.cluster_server() {
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener
                .accept()
                .await
                .map(|(io, peer)| (io, Addr::from(peer)));
            Some((accepted, listener))
        });
        server = Some(builder.serve(cluster_addrs[i], incoming)?);
    }
    Ok((monitor, stream, server))
}

/// A monitor's process (`--processes`). Lines on stdout: `addr A` (its
/// cluster address), `ready`, then (monitor 0 only) `alive NAME` or
/// `state NAME STATE` for each event, `marked`, `report ...`. Lines on
/// stdin: `cluster A0 A1 ...` (every monitor's cluster address), then
/// `watch NAME ADDR`, `mark` (the baseline, every node alive), `report`
/// (CPU, checks and memory since the mark), `diagnose` (counters on
/// stderr), `stop`.
async fn monitor_process(spec: &str) -> Result<(), Box<dyn std::error::Error>> {
    let spec: Vec<usize> = spec
        .split_whitespace()
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    let [i, _m, k, n] = spec[..] else {
        return Err(format!("{MONITOR_ENV}: want i m k n").into());
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    // One writer of stdout, for every task.
    let (out, mut lines_out) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        while let Some(line) = lines_out.blocking_recv() {
            if writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return;
            }
        }
    });
    out.send(format!("addr {}", listener.local_addr()?))?;
    let mut stdin =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tokio::io::stdin()));
    let line = stdin.next_line().await?.ok_or("no cluster line")?;
    let cluster_addrs: Vec<SocketAddr> = line
        .split_whitespace()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let heap_before = ALLOCATOR.allocated();
    let rss_before = rss_kib();
    let (monitor, mut events, server) =
        start_monitor(monitor_config(n)?, i, k, &cluster_addrs, listener)?;
    let reporter = out.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if i == 0 {
                let line = match e.state {
                    PeerState::Alive => format!("alive {}", e.name),
                    state => format!("state {} {state}", e.name),
                };
                let _ = reporter.send(line);
            }
        }
    });
    out.send("ready".into())?;
    let mut mark = None;
    while let Some(line) = stdin.next_line().await? {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("watch") => {
                let name = words.next().ok_or("watch: no name")?;
                let addr: SocketAddr = words.next().ok_or("watch: no address")?.parse()?;
                monitor.watch(name, addr)?;
            }
            Some("mark") => {
                mark = Some((
                    ALLOCATOR.allocated().saturating_sub(heap_before),
                    rss_kib().saturating_sub(rss_before),
                    cpu_time(),
                    monitor.stats().checks,
                ));
                out.send("marked".into())?;
            }
            Some("report") => {
                let (heap, rss, cpu0, checks0) = mark.ok_or("report before mark")?;
                let stats = monitor.stats();
                out.send(format!(
                    "report {} {} {heap} {} {} {}",
                    (cpu_time() - cpu0).as_micros(),
                    stats.checks - checks0,
                    rss * 1024,
                    stats.misses,
                    stats.cluster_dropped,
                ))?;
            }
            Some("diagnose") => {
                let stats = monitor.stats();
                eprintln!(
                    "m{i}: watched {} checks {} misses {} cluster_dropped {} dropped_events {} deaths {}",
                    stats.watched, stats.checks, stats.misses, stats.cluster_dropped, stats.dropped_events, stats.deaths
                );
            }
            _ => break,
        }
    }
    monitor.stop().await;
    if let Some(server) = server {
        server.cut().await;
    }
    drop(out);
    let _ = writer.join();
    Ok(())
}

/// Reads a child's stdout lines into a channel, on a thread of its own.
fn lines_of(stdout: std::process::ChildStdout) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next line of a monitor's process, within `within`.
async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    within: Duration,
) -> Result<String, Box<dyn std::error::Error>> {
    Ok(tokio::time::timeout(within, lines.recv())
        .await
        .map_err(|_| "a monitor process is silent")?
        .ok_or("a monitor process ended")?)
}

/// As [`run`], each monitor in a process of its own (so that each holds
/// only its share of the descriptors).
async fn run_processes(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let Options {
        nodes: n,
        monitors: m,
        watchers: k,
        rounds,
        ..
    } = options;
    let (mut children, addrs) = start_nodes(n, m)?;
    let exe = std::env::current_exe()?;
    let mut monitors = Vec::new();
    for i in 0..m {
        let mut child = Command::new(&exe)
            .env(MONITOR_ENV, format!("{i} {m} {k} {n}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let lines = lines_of(child.stdout.take().ok_or("no stdout")?);
        let stdin = std::io::BufWriter::new(child.stdin.take().ok_or("no stdin")?);
        monitors.push((child, stdin, lines));
    }
    let startup = Duration::from_secs(30);
    let mut cluster = String::from("cluster");
    for (_, _, lines) in &mut monitors {
        let line = next_line(lines, startup).await?;
        let addr = line.strip_prefix("addr ").ok_or("no address")?;
        cluster.push(' ');
        cluster.push_str(addr);
    }
    for (_, stdin, lines) in &mut monitors {
        writeln!(stdin, "{cluster}")?;
        stdin.flush()?;
        if next_line(lines, startup).await? != "ready" {
            return Err("a monitor process is not ready".into());
        }
    }
    let mut alive = HashSet::new();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    for batch in (0..n).collect::<Vec<_>>().chunks(BATCH) {
        for &i in batch {
            writeln!(monitors[i % m].1, "watch n{i} {}", addrs[i])?;
        }
        for (_, stdin, _) in &mut monitors {
            stdin.flush()?;
        }
        let want = batch[batch.len() - 1] + 1;
        while alive.len() < want {
            let wait = deadline.min(tokio::time::Instant::now() + Duration::from_secs(10));
            let Ok(line) = tokio::time::timeout_at(wait, monitors[0].2.recv()).await else {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("only {} of {n} alive after 300 s", alive.len()).into());
                }
                eprintln!("-- {} alive of {want} watched so far", alive.len());
                for (_, stdin, _) in &mut monitors {
                    writeln!(stdin, "diagnose")?;
                    stdin.flush()?;
                }
                continue;
            };
            let line = line.ok_or("monitor 0 ended")?;
            match line.strip_prefix("alive ") {
                Some(name) => {
                    alive.insert(name.to_owned());
                }
                None => return Err(line.into()),
            }
        }
    }
    let all_alive = started.elapsed();
    // Two rounds more, so that every connection is open and warm.
    tokio::time::sleep(INTERVAL * 2).await;
    for (_, stdin, _) in &mut monitors {
        writeln!(stdin, "mark")?;
        stdin.flush()?;
    }
    for (_, _, lines) in &mut monitors {
        if next_line(lines, startup).await? != "marked" {
            return Err("a monitor process did not mark".into());
        }
    }
    let wall0 = Instant::now();
    tokio::time::sleep(INTERVAL * rounds).await;
    for (_, stdin, _) in &mut monitors {
        writeln!(stdin, "report")?;
        stdin.flush()?;
    }
    let wall = wall0.elapsed();
    // CPU µs, checks, heap bytes, RSS bytes, misses, cluster messages
    // dropped: summed.
    let mut sums = [0u64; 6];
    for (_, _, lines) in &mut monitors {
        let line = next_line(lines, startup).await?;
        let values: Vec<u64> = line
            .strip_prefix("report ")
            .ok_or("no report")?
            .split_whitespace()
            .map(|v| v.parse())
            .collect::<Result<_, _>>()?;
        for (sum, value) in sums.iter_mut().zip(values) {
            *sum += value;
        }
    }
    let [cpu_us, checks, heap, rss, misses, dropped] = sums;
    let watched = (n * k) as f64;
    println!("| watched nodes | monitors (a process each) | watchers per node | checks/s | CPU per check | heap per watched peer | RSS per watched peer | misses |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {m} | {k} | {:.0} | {:.1} µs | {:.2} KB | {:.2} KB | {misses} |",
        checks as f64 / wall.as_secs_f64(),
        cpu_us as f64 / checks.max(1) as f64,
        heap as f64 / watched / 1000.0,
        rss as f64 / watched / 1000.0,
    );
    println!(
        "all {n} alive {:.1} s after the first watch; cluster messages dropped: {dropped}",
        all_alive.as_secs_f64()
    );
    for (child, stdin, _) in &mut monitors {
        writeln!(stdin, "stop")?;
        stdin.flush()?;
        child.wait()?;
    }
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        child.wait()?;
    }
    Ok(())
}

async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    if options.processes {
        return run_processes(options).await;
    }
    let Options {
        nodes: n,
        monitors: m,
        watchers: k,
        rounds,
        ..
    } = options;
    let (mut children, addrs) = start_nodes(n, m)?;
    let config = monitor_config(n)?;
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
        let (monitor, stream, server) = start_monitor(config, i, k, &cluster_addrs, listener)?;
        servers.extend(server);
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
    let started = Instant::now();
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
    let all_alive = started.elapsed();
    // Two rounds more, so that every connection is open and warm.
    tokio::time::sleep(INTERVAL * 2).await;
    let heap_watching = ALLOCATOR.allocated();
    let rss_watching = rss_kib();
    let checks = || monitors.iter().map(|m| m.stats().checks).sum::<u64>();
    let (cpu0, checks0, wall0) = (cpu_time(), checks(), Instant::now());
    tokio::time::sleep(INTERVAL * rounds).await;
    let (cpu1, checks1, wall) = (cpu_time(), checks(), wall0.elapsed());
    let misses: u64 = monitors.iter().map(|m| m.stats().misses).sum();
    let dropped: u64 = monitors.iter().map(|m| m.stats().cluster_dropped).sum();
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
    println!(
        "all {n} alive {:.1} s after the first watch; cluster messages dropped: {dropped}",
        all_alive.as_secs_f64()
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
    // Logs on stderr with RUST_LOG set (e.g. `chitchat_net::heartbeat=debug`).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let outcome = match std::env::var(NODES_ENV) {
        Err(_) if std::env::var(MONITOR_ENV).is_ok() => {
            let spec = std::env::var(MONITOR_ENV).unwrap_or_default();
            monitor_process(&spec).await
        }
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
