//! One monitor watching thousands of real loopback nodes: the CPU per check
//! and the memory per watched peer.
//!
//! The nodes run in a child process (this executable again, with
//! `HEARTBEAT_SCALE_NODES` set), because each node holds two descriptors
//! (its listener and the monitor's connection) and the open-file limit is
//! per process. The parent starts them, watches every one with the typed
//! probe, waits until all are alive, then measures its own CPU time and
//! resident memory over a number of check rounds.
//!
//! ```text
//! cargo run --release --example heartbeat_scale -- 9000     # nodes (default 9000)
//! ```
//!
//! It prints one row: nodes, checks per second, CPU per check, memory per
//! watched peer.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chitchat_net::heartbeat::{HeartbeatConfig, Monitor, PeerState, Responder};
use chitchat_net::Server;

const NODES_ENV: &str = "HEARTBEAT_SCALE_NODES";
const INTERVAL: Duration = Duration::from_secs(1);
const ROUNDS: u32 = 10;

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

/// The child: `n` responders on loopback, their addresses on stdout, until
/// stdin closes.
async fn nodes(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut servers = Vec::with_capacity(n);
    let mut out = std::io::stdout().lock();
    for i in 0..n {
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

async fn monitor(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(NODES_ENV, n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(n);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "ready" {
            break;
        }
        addrs.push(line.parse()?);
    }
    if addrs.len() != n {
        return Err(format!("the node process started {} of {n} nodes", addrs.len()).into());
    }
    let config = HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(Duration::from_secs(5))
        .max_peers(n)
        .build()?;
    let (monitor, mut events) = Monitor::new(config);
    let rss_before = rss_kib();
    for (i, addr) in addrs.iter().enumerate() {
        monitor.watch(format!("n{i}"), *addr)?;
    }
    let mut alive = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(120));
    tokio::pin!(deadline);
    while alive < n {
        tokio::select! {
            _ = &mut deadline => return Err(format!("only {alive} of {n} alive after 120 s").into()),
            event = events.recv() => match event {
                Some(e) if e.state == PeerState::Alive => alive += 1,
                Some(e) => return Err(format!("{} is {}", e.addr, e.state).into()),
                None => return Err("monitor stopped".into()),
            },
        }
    }
    // Two rounds more, so that every connection is open and warm.
    tokio::time::sleep(INTERVAL * 2).await;
    let rss_watching = rss_kib();
    let (cpu0, checks0, wall0) = (cpu_time(), monitor.stats().checks, Instant::now());
    tokio::time::sleep(INTERVAL * ROUNDS).await;
    let (cpu1, checks1, wall) = (cpu_time(), monitor.stats().checks, wall0.elapsed());
    let stats = monitor.stats();
    let checks = checks1 - checks0;
    let per_check = (cpu1 - cpu0).as_secs_f64() / checks.max(1) as f64;
    let per_peer = (rss_watching.saturating_sub(rss_before)) as f64 * 1024.0 / n as f64;
    println!("| watched nodes | checks/s | CPU per check | memory per watched peer | misses |");
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.0} | {:.1} µs | {:.1} KB | {} |",
        checks as f64 / wall.as_secs_f64(),
        per_check * 1e6,
        per_peer / 1000.0,
        stats.misses,
    );
    monitor.stop().await;
    drop(child.stdin.take());
    child.wait()?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = match std::env::var(NODES_ENV) {
        Ok(n) => nodes(n.parse().unwrap_or(0)).await,
        Err(_) => {
            let n = std::env::args()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(9000);
            monitor(n).await
        }
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("heartbeat_scale: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
