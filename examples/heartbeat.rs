//! The main job: typed heartbeats on loopback.
//!
//! With no arguments it runs a demo that ends by itself: a monitor and three
//! nodes; the nodes register with the monitor (one EOF-framed message each,
//! as in the Go original); after a few healthy rounds one node is stopped,
//! and the demo ends with exit code 0 once the monitor reports it dead.
//!
//! ```text
//! cargo run --example heartbeat                      # the demo
//! cargo run --example heartbeat -- --nodes 5 --interval-ms 200 --run-time-s 20
//! cargo run --example heartbeat -- --mode monitor --listen 127.0.0.1:7100
//! cargo run --example heartbeat -- --mode node --listen 127.0.0.1:7101 --monitor 127.0.0.1:7100
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat_net::heartbeat::{
    register, HeartbeatConfig, Monitor, PeerEvent, PeerState, Responder,
};
use chitchat_net::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Demo,
    Monitor,
    Node,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    nodes: usize,
    interval: Duration,
    miss_limit: u32,
    healthy_rounds: u32,
    run_time: Duration,
    listen: String,
    monitor: String,
    name: String,
}

const USAGE: &str = "usage: heartbeat [--mode demo|monitor|node] [--nodes N] [--interval-ms MS]
                 [--miss-limit N] [--healthy-rounds N] [--run-time-s S]
                 [--listen ADDR] [--monitor ADDR] [--name NAME]

  demo     (default) a monitor and --nodes nodes on loopback; one node is stopped
           after --healthy-rounds rounds; exits 0 once it is reported dead
  monitor  a monitor taking registrations on --listen; prints peer states
  node     a node answering pings on --listen, registered with --monitor";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: Mode::Demo,
        nodes: 3,
        interval: Duration::from_millis(400),
        miss_limit: 3,
        healthy_rounds: 4,
        run_time: Duration::from_secs(15),
        listen: "127.0.0.1:0".into(),
        monitor: String::new(),
        name: format!("node-{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--mode" => {
                args.mode = match value.as_str() {
                    "demo" => Mode::Demo,
                    "monitor" => Mode::Monitor,
                    "node" => Mode::Node,
                    other => return Err(format!("unknown mode {other}")),
                }
            }
            "--nodes" => args.nodes = number(&value)?.max(1) as usize,
            "--interval-ms" => args.interval = Duration::from_millis(number(&value)?.max(1)),
            "--miss-limit" => args.miss_limit = number(&value)? as u32,
            "--healthy-rounds" => args.healthy_rounds = number(&value)? as u32,
            "--run-time-s" => args.run_time = Duration::from_secs(number(&value)?),
            "--listen" => args.listen = value,
            "--monitor" => args.monitor = value,
            "--name" => args.name = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.mode == Mode::Node && args.monitor.is_empty() {
        return Err("--mode node needs --monitor ADDR".into());
    }
    Ok(args)
}

/// `HH:MM:SS.mmm` (UTC) and seconds since `start`.
fn stamp(at: SystemTime, start: Instant) -> String {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() % 86_400;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let ms = since_epoch.subsec_millis();
    let elapsed = start.elapsed().as_secs_f64();
    format!("{h:02}:{m:02}:{s:02}.{ms:03}Z +{elapsed:6.3}s")
}

fn log(start: Instant, text: impl std::fmt::Display) {
    println!("{}  {text}", stamp(SystemTime::now(), start));
}

fn log_event(start: Instant, event: &PeerEvent) {
    let line = format!("{:<10} {:<16} {}", event.name, event.addr, event.state);
    println!("{}  {line}", stamp(event.at, start));
}

fn config(args: &Args) -> HeartbeatConfig {
    HeartbeatConfig {
        miss_limit: args.miss_limit,
        ..HeartbeatConfig::with_interval(args.interval)
    }
}

async fn demo(args: Args, start: Instant) -> Result<bool, Box<dyn std::error::Error>> {
    let (monitor, mut events) = Monitor::new(config(&args));
    let registrations = monitor.listen_registrations(&args.listen).await?;
    log(
        start,
        format!(
            "monitor: registrations on {}, checking every {:?}, dead after more than {} misses",
            registrations.local_addr(),
            args.interval,
            args.miss_limit
        ),
    );

    let mut nodes: Vec<(String, Server<Responder>)> = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("node-{i}");
        let node = Server::listen("127.0.0.1:0", Responder::default()).await?;
        register(registrations.local_addr(), name.clone(), node.local_addr()).await?;
        log(
            start,
            format!("{name}: answering on {}, registered", node.local_addr()),
        );
        nodes.push((name, node));
    }
    let victim = nodes[0].1.local_addr();
    let victim_name = nodes[0].0.clone();

    let deadline = tokio::time::sleep(args.run_time);
    tokio::pin!(deadline);
    let mut healthy_rounds = 0;
    let mut stopped = false;
    let mut round = tokio::time::interval(args.interval);
    round.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                log(start, format!("run time of {:?} is over before {victim_name} was reported dead", args.run_time));
                return Ok(false);
            }
            event = events.recv() => {
                let Some(event) = event else { return Ok(false) };
                log_event(start, &event);
                if event.addr == victim && matches!(event.state, PeerState::Dead { .. }) {
                    break;
                }
            }
            _ = round.tick(), if !stopped => {
                let peers = monitor.peers();
                let all_alive = peers.len() == nodes.len()
                    && peers.iter().all(|(_, _, state)| *state == Some(PeerState::Alive));
                if all_alive {
                    healthy_rounds += 1;
                    log(start, format!("round {healthy_rounds}: all {} nodes alive", nodes.len()));
                }
                if healthy_rounds >= args.healthy_rounds {
                    log(start, format!("{healthy_rounds} healthy rounds: stopping {victim_name} ({victim})"));
                    nodes[0].1.cut().await;
                    stopped = true;
                }
            }
        }
    }
    for (name, node) in &nodes[1..] {
        log(
            start,
            format!("{name}: answered {} pings", node.handler().answered()),
        );
    }
    monitor.stop().await;
    registrations.cut().await;
    for (_, node) in &nodes {
        node.cut().await;
    }
    log(start, "demo over: the stopped node was detected dead");
    Ok(true)
}

async fn run_monitor(args: Args, start: Instant) -> Result<bool, Box<dyn std::error::Error>> {
    let (monitor, mut events) = Monitor::new(config(&args));
    let registrations = monitor.listen_registrations(&args.listen).await?;
    log(
        start,
        format!("monitor: registrations on {}", registrations.local_addr()),
    );
    let deadline = tokio::time::sleep(args.run_time);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => match event {
                Some(event) => log_event(start, &event),
                None => break,
            },
        }
    }
    monitor.stop().await;
    registrations.cut().await;
    Ok(true)
}

async fn run_node(args: Args, start: Instant) -> Result<bool, Box<dyn std::error::Error>> {
    let node = Server::listen(&args.listen, Responder::default()).await?;
    let addr = node.local_addr();
    register(&args.monitor, args.name.clone(), addr.clone()).await?;
    log(
        start,
        format!(
            "{}: answering on {addr}, registered with {}",
            args.name, args.monitor
        ),
    );
    tokio::select! {
        _ = tokio::time::sleep(args.run_time) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    log(
        start,
        format!(
            "{}: answered {} pings",
            args.name,
            node.handler().answered()
        ),
    );
    node.cut().await;
    Ok(true)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            if !why.is_empty() {
                eprintln!("heartbeat: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let outcome = match args.mode {
        Mode::Demo => demo(args, start).await,
        Mode::Monitor => run_monitor(args, start).await,
        Mode::Node => run_node(args, start).await,
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("heartbeat: {error}");
            ExitCode::FAILURE
        }
    }
}
