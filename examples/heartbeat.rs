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
//!
//! With Go chitchat peers (the original's text heartbeat):
//!
//! ```text
//! # watch Go nodes (the Go demo uses port 7939 on both sides): they register
//! # with `hello` and answer `heartbeat ping` on 7939; typed nodes may register too
//! cargo run --example heartbeat -- --mode monitor --listen 0.0.0.0:7939 --go-port 7939
//! # answer a Go master: `hello` to it, `heartbeat pong` on --listen
//! cargo run --example heartbeat -- --mode node --go --listen 0.0.0.0:7939 --monitor 10.0.0.1:7939
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat_net::heartbeat::{
    register, Detector, HeartbeatConfig, KeepRegistered, Monitor, PeerEvent, PeerEvents, PeerState,
    PhiAccrual, Register, Registrar, Registration, Responder, TextProbe, TextResponder,
};
use chitchat_net::{Framing, Server};

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
    /// Monitor: probe with the Go text heartbeat.
    text_probe: bool,
    /// Monitor: accept Go `hello` registrations, checked on this port.
    go_port: Option<u16>,
    /// Phi accrual at this threshold instead of the miss limit.
    phi: Option<f64>,
    /// Node: behave as a Go node (text heartbeat, `hello`).
    go: bool,
}

const USAGE: &str = "usage: heartbeat [--mode demo|monitor|node] [--nodes N] [--interval-ms MS]
                 [--miss-limit N] [--healthy-rounds N] [--run-time-s S]
                 [--listen ADDR] [--monitor ADDR] [--name NAME]
                 [--probe beat|text] [--go-port PORT] [--phi THRESHOLD] [--go]

  demo     (default) a monitor and --nodes nodes on loopback; one node is stopped
           after --healthy-rounds rounds; exits 0 once it is reported dead
  monitor  a monitor taking registrations on --listen; prints peer states
  node     a node answering pings on --listen, kept registered with --monitor
           (registers again when no ping came for 3 of the pinger's periods:
           told by the monitor, learned from the pings; a Go master: 3 s)

  --probe text    (monitor) check typed registrations with the Go text heartbeat
  --go-port PORT  (monitor) accept Go `hello` registrations, checked on PORT
                  with the Go text heartbeat (whatever --probe)
  --phi T         (monitor, demo) phi accrual detector with threshold T
  --go            (node) a Go-style node: answers `heartbeat ping`, registers
                  with `hello` (works with a Go chitchat master)";

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
        text_probe: false,
        go_port: None,
        phi: None,
        go: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        if flag == "--go" {
            args.go = true;
            continue;
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
            "--probe" => {
                args.text_probe = match value.as_str() {
                    "beat" => false,
                    "text" => true,
                    other => return Err(format!("unknown probe {other}")),
                }
            }
            "--go-port" => {
                args.go_port = Some(value.parse().map_err(|_| format!("bad port {value}"))?)
            }
            "--phi" => {
                args.phi = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--phi: not a number: {value}"))?,
                )
            }
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
    let mut line = format!("{:<10} {:<16} {}", event.name, event.addr, event.state);
    if event.state != PeerState::Alive {
        line.push_str(&format!(" (suspicion {:.2})", event.suspicion));
    }
    println!("{}  {line}", stamp(event.at, start));
}

fn config(args: &Args) -> Result<HeartbeatConfig, Box<dyn std::error::Error>> {
    let detector = match args.phi {
        Some(threshold) => Detector::PhiAccrual(PhiAccrual::new(threshold)),
        None => Detector::MissLimit(args.miss_limit),
    };
    let mut builder = HeartbeatConfig::builder()
        .interval(args.interval)
        .detector(detector);
    if let Some(port) = args.go_port {
        builder = builder.go_port(port);
    }
    Ok(builder.build()?)
}

fn describe(config: &HeartbeatConfig) -> String {
    match config.detector() {
        Detector::PhiAccrual(phi) => format!("dead at phi >= {}", phi.threshold()),
        Detector::MissLimit(limit) => format!("dead after more than {limit} misses"),
        other => format!("{other:?}"),
    }
}

async fn demo(args: Args, start: Instant) -> Result<bool, Box<dyn std::error::Error>> {
    let config = config(&args)?;
    let (monitor, mut events) = Monitor::new(config);
    let registrations = monitor.listen_registrations(&args.listen).await?;
    log(
        start,
        format!(
            "monitor: registrations on {}, checking every {:?}, {}",
            registrations.local_addr(),
            args.interval,
            describe(&config)
        ),
    );

    let mut nodes: Vec<(String, Server<Responder>)> = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("node-{i}");
        let node = Server::listen("127.0.0.1:0", Responder::new()).await?;
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
    let config = config(&args)?;
    if args.text_probe {
        let (monitor, events) = Monitor::builder(config).probe(TextProbe).build();
        let registrations = monitor.listen_registrations(&args.listen).await?;
        watch_events(&args, start, &registrations, &config, events, "text").await;
        monitor.stop().await;
        registrations.cut().await;
    } else {
        let (monitor, events) = Monitor::new(config);
        let registrations = monitor.listen_registrations(&args.listen).await?;
        watch_events(&args, start, &registrations, &config, events, "typed").await;
        monitor.stop().await;
        registrations.cut().await;
    }
    Ok(true)
}

/// Prints the monitor's events until the run time is over or Ctrl-C.
async fn watch_events(
    args: &Args,
    start: Instant,
    registrations: &Server<Registrar>,
    config: &HeartbeatConfig,
    mut events: PeerEvents,
    probe: &str,
) {
    let go = match config.go_port() {
        Some(port) => format!(", Go `hello` checked on port {port}"),
        None => String::new(),
    };
    log(
        start,
        format!(
            "monitor: registrations on {}, {probe} probe, {}{go}",
            registrations.local_addr(),
            describe(config)
        ),
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
}

async fn run_node(args: Args, start: Instant) -> Result<bool, Box<dyn std::error::Error>> {
    // The monitor tells its interval (a Go master's is 3 s), and the pings
    // show their real period: no --interval-ms here.
    let monitor = args.monitor.clone();
    let (answered, server, keeper): (Box<dyn Fn() -> u64>, _, _) = if args.go {
        let responder = TextResponder::new();
        let node = Server::builder(responder.clone())
            .framing(Framing::lines())
            .listen(&args.listen)
            .await?;
        let keeper = KeepRegistered::builder(monitor.as_str(), Registration::GoHello)
            .spawn(responder.clone());
        log(
            start,
            format!(
                "{}: Go-style node, answering `heartbeat ping` on {}, `hello` to {monitor}",
                args.name,
                node.local_addr()
            ),
        );
        let count = responder.clone();
        (
            Box::new(move || count.answered()),
            NodeServer::Text(node),
            keeper,
        )
    } else {
        let responder = Responder::new();
        let node = Server::listen(&args.listen, responder.clone()).await?;
        let addr = node.local_addr().tcp().ok_or("not a TCP address")?;
        let registration = Registration::Typed(Register {
            name: args.name.clone(),
            addr,
        });
        let keeper =
            KeepRegistered::builder(monitor.as_str(), registration).spawn(responder.clone());
        log(
            start,
            format!(
                "{}: answering on {addr}, kept registered with {monitor}",
                args.name
            ),
        );
        let count = responder.clone();
        (
            Box::new(move || count.answered()),
            NodeServer::Typed(node),
            keeper,
        )
    };
    tokio::select! {
        _ = tokio::time::sleep(args.run_time) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    log(
        start,
        format!(
            "{}: answered {} pings, registered {} times",
            args.name,
            answered(),
            keeper.registrations()
        ),
    );
    keeper.stop().await;
    match server {
        NodeServer::Typed(server) => server.cut().await,
        NodeServer::Text(server) => server.cut().await,
    }
    Ok(true)
}

/// A node's server, typed or Go-style.
enum NodeServer {
    Typed(Server<Responder>),
    Text(Server<TextResponder>),
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
