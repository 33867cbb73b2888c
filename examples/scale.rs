//! The two-process scale test: many concurrent connections, each sending
//! heartbeats and reading the replies, against chitchat-net's server and a
//! plain tokio-util `Framed` echo server. The server runs in a child process
//! (this executable started again), so that its memory is measured alone.
//!
//! ```text
//! cargo run --release --example scale -- [--conns 9000] [--rounds 100]
//!     [--server ours|framed|both] [--large-conns 1000] [--large-bytes 262144]
//!     [--parallel 64] [--timeout-s 120]
//! cargo run --release --example scale -- --serve ours --listen 127.0.0.1:7100
//! ```
//!
//! It prints, for each server: connections reached, replies received, the
//! time of each phase, the CPU time of both processes, and the server's RSS
//! and heap in use per connection (idle, after the heartbeats, after large
//! frames). `CHITCHAT_SCALE_BACKLOG=N` gives the `framed` server a listen
//! backlog of N instead of tokio's 128. It exits 1 if a connection or a reply is
//! missing. `--serve` runs only a server in the foreground (stdin commands:
//! `count`, `quit`), for use with other clients.

#[allow(dead_code)]
#[path = "../benches/support/mod.rs"]
mod support;

use std::time::Duration;

use support::scale::{self, ScaleConfig, ServerKind};

/// Counts the heap in use, so that the server can report it beside its RSS
/// (the RSS also holds what the allocator keeps after `free`).
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn usage() -> ! {
    eprintln!(
        "usage: scale [--conns N] [--rounds N] [--server ours|framed|both] [--large-conns N] \
         [--large-bytes N] [--parallel N] [--timeout-s S]\n       scale --serve ours|framed [--listen ADDR]"
    );
    std::process::exit(2)
}

fn number<T: std::str::FromStr>(value: Option<String>) -> T {
    value
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let _ = scale::HEAP_IN_USE.set(|| ALLOCATOR.allocated());
    scale::maybe_run_server();
    let mut config = ScaleConfig {
        conns: 9_000,
        rounds: 100,
        connect_parallel: 64,
        large_conns: 1_000,
        large_bytes: 256 * 1024,
        phase_timeout: Duration::from_secs(120),
    };
    let mut kinds = vec![ServerKind::Ours, ServerKind::Framed];
    let mut serve = None;
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--conns" => config.conns = number(args.next()),
            "--rounds" => config.rounds = number(args.next()),
            "--parallel" => config.connect_parallel = number(args.next()),
            "--large-conns" => config.large_conns = number(args.next()),
            "--large-bytes" => config.large_bytes = number(args.next()),
            "--timeout-s" => config.phase_timeout = Duration::from_secs(number(args.next())),
            "--server" => {
                kinds = match args.next().as_deref() {
                    Some("both") => vec![ServerKind::Ours, ServerKind::Framed],
                    Some(kind) => vec![ServerKind::parse(kind).unwrap_or_else(|| usage())],
                    None => usage(),
                }
            }
            "--serve" => {
                serve = Some(
                    args.next()
                        .and_then(|k| ServerKind::parse(&k))
                        .unwrap_or_else(|| usage()),
                )
            }
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    if let Some(kind) = serve {
        if let Err(error) = scale::run_server(kind, &listen) {
            eprintln!("scale server: {error}");
            std::process::exit(1);
        }
        return;
    }
    config.large_conns = config.large_conns.min(config.conns);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut complete = true;
    for kind in kinds {
        match scale::run(&runtime, kind, &config) {
            Ok(report) => {
                report.print();
                complete &= report.complete();
            }
            Err(error) => {
                eprintln!("scale[{}]: {error}", kind.name());
                complete = false;
            }
        }
    }
    if !complete {
        std::process::exit(1);
    }
}
