//! The floor under the heartbeat monitor's CPU per check: the same shape of
//! work as `heartbeat_scale` (one client process keeping a TCP connection
//! open to each of thousands of loopback nodes, one small request and its
//! answer per connection and second), done with nothing but tokio: each
//! connection a plain `TcpStream` driven by a task of its own, writing a
//! fixed frame and reading the echo; the nodes, in child processes, echo
//! what they read. No codec, no request table, no timeout per check.
//!
//! What it prints is the cost of one TCP round trip per check through
//! tokio, split into user and system time, measured as `heartbeat_scale`
//! measures the monitor (its own process only: the nodes run elsewhere):
//!
//! ```text
//! cargo run --release --example check_floor -- 9000
//! cargo run --release --example check_floor -- 9000 --bytes 24 --rounds 10
//! cargo run --release --example check_floor -- 9000 --current-thread
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NODES_ENV: &str = "CHECK_FLOOR_NODES";
const FIRST_ENV: &str = "CHECK_FLOOR_FIRST";
const NODES_PER_PROCESS: usize = 5000;
const INTERVAL: Duration = Duration::from_secs(1);

/// The process's user and system CPU time, from `/proc/self/stat`.
fn cpu_times() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime, in clock ticks of 1/100 s on Linux.
    (
        Duration::from_millis(ticks(11) * 10),
        Duration::from_millis(ticks(12) * 10),
    )
}

/// A child: `n` echo nodes on loopback, their addresses on stdout, until
/// stdin closes.
async fn nodes(n: usize, first: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    for i in first..first + n {
        // Spread over 127.0.0.x as heartbeat_scale does.
        let ip = format!("127.0.0.{}", 2 + i % 200);
        let listener = TcpListener::bind((ip.as_str(), 0)).await?;
        writeln!(out, "{}", listener.local_addr()?)?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => {
                                if stream.write_all(&buf[..read]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line).await?;
    Ok(())
}

fn start_nodes(n: usize) -> Result<(Vec<Child>, Vec<SocketAddr>), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut addrs = Vec::with_capacity(n);
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
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line == "ready" {
                break;
            }
            addrs.push(line.parse()?);
        }
        first += count;
    }
    if addrs.len() != n {
        return Err(format!("{} of {n} nodes started", addrs.len()).into());
    }
    Ok((children, addrs))
}

async fn run(n: usize, bytes: usize, rounds: u32) -> Result<(), Box<dyn std::error::Error>> {
    let (mut children, addrs) = start_nodes(n)?;
    let checks = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, addr) in addrs.iter().enumerate() {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let checks = checks.clone();
        // The first checks spread over the first second, as a monitor's.
        let first = start + INTERVAL.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(first, INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let frame = vec![7u8; bytes];
            // Larger than the answer: a read that fills less than the
            // buffer tells tokio the socket is drained, so the next read
            // waits for readiness instead of trying `recvfrom` first (one
            // `recvfrom` per check, as the monitor's connections make).
            let mut answer = [0u8; 256];
            loop {
                ticker.tick().await;
                if stream.write_all(&frame).await.is_err() {
                    return;
                }
                let mut got = 0;
                while got < bytes {
                    match stream.read(&mut answer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => got += read,
                    }
                }
                checks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Two rounds more, so that every connection is open and warm.
    tokio::time::sleep(INTERVAL * 2).await;
    let ((user0, sys0), checks0, wall0) =
        (cpu_times(), checks.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(INTERVAL * rounds).await;
    let ((user1, sys1), checks1, wall) =
        (cpu_times(), checks.load(Ordering::Relaxed), wall0.elapsed());
    let done = (checks1 - checks0).max(1) as f64;
    let user = (user1 - user0).as_secs_f64() / done * 1e6;
    let sys = (sys1 - sys0).as_secs_f64() / done * 1e6;
    println!("| connections | bytes each way | checks/s | CPU per check | user | system |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {bytes} | {:.0} | {:.1} µs | {user:.1} µs | {sys:.1} µs |",
        done / wall.as_secs_f64(),
        user + sys,
    );
    for task in tasks {
        task.abort();
    }
    for child in &mut children {
        drop(child.stdin.take());
    }
    for child in &mut children {
        child.wait()?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // The nodes and, by default, the client on a multi-threaded runtime
    // (as `heartbeat_scale`'s); `--current-thread` runs the client on one
    // thread: no worker wakes another.
    let current_thread = std::env::var_os(NODES_ENV).is_none()
        && std::env::args().any(|arg| arg == "--current-thread");
    let runtime = if current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let outcome = match runtime {
        Ok(runtime) => runtime.block_on(start()),
        Err(error) => Err(error.into()),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("check_floor: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var(NODES_ENV) {
        Ok(n) => {
            let first = std::env::var(FIRST_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            nodes(n.parse().unwrap_or(0), first).await
        }
        Err(_) => {
            let mut n = 9000;
            let mut bytes = 24;
            let mut rounds = 10;
            let mut args = std::env::args().skip(1);
            while let Some(arg) = args.next() {
                let mut value = || args.next().and_then(|v| v.parse::<usize>().ok());
                match arg.as_str() {
                    "--bytes" => bytes = value().unwrap_or(bytes).clamp(1, 256),
                    "--rounds" => rounds = value().unwrap_or(10).max(1) as u32,
                    "--current-thread" => {}
                    other => {
                        n = other.parse().map_err(|_| {
                            "usage: check_floor [CONNECTIONS] [--bytes B] [--rounds R] [--current-thread]"
                        })?
                    }
                }
            }
            run(n, bytes, rounds).await
        }
    }
}
