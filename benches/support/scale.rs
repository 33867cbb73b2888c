//! The two-process scale scenario (issue 5, targets 5 and 6).
//!
//! The server runs in a child process (this same executable, started again
//! with [`SERVER_ENV`] set), so that its memory can be read from
//! `/proc/<pid>/status` without the clients' memory in it, and so that each
//! process stays under the open-file limit. The parent:
//!
//! 1. starts the server and reads its resident set size;
//! 2. opens `conns` connections (at most `connect_parallel` connecting at
//!    once), waits until the server has them all, reads its RSS again: the
//!    growth divided by `conns` is the memory of an idle connection;
//! 3. on every connection at once, sends `rounds` heartbeats, each after the
//!    reply to the previous one, and counts the replies;
//! 4. sends one large frame on `large_conns` connections, then a heartbeat
//!    (whose reply shows that the large frame was read), and reads the RSS
//!    again: the buffers must have shrunk back;
//! 5. closes every connection.
//!
//! The client side is always chitchat-net's [`Client`], so that the only
//! difference between two runs is the server: chitchat-net's [`Server`]
//! answering each heartbeat with a typed heartbeat, or a plain tokio-util
//! `Framed` echo server (`AnyDelimiterCodec`, one `send` per frame).
//!
//! The child reads commands on stdin, one per line (`count`: print the
//! number of open connections; `quit`), and answers on stdout.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat_net::{handler_fn, BoxError, Client, Context, Handler, Server};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::Framed;

use super::{cpu_time, fmt_duration, rss_kib, tcp_ext, EchoCodec, Heartbeat};

/// Set to `ours` or `framed` to make this executable a scale server.
pub const SERVER_ENV: &str = "CHITCHAT_SCALE_SERVER";
/// The address the scale server binds (default `127.0.0.1:0`).
pub const LISTEN_ENV: &str = "CHITCHAT_SCALE_LISTEN";
/// If set, the listen backlog of the `framed` baseline server (default:
/// tokio's `TcpListener::bind`, 128), to show what the backlog costs.
pub const BACKLOG_ENV: &str = "CHITCHAT_SCALE_BACKLOG";

/// Bytes of heap in use, if the executable counts them (the scale example
/// installs a counting global allocator and sets this; the `compare` bench
/// does not, so that its timings carry no counting).
pub static HEAP_IN_USE: std::sync::OnceLock<fn() -> usize> = std::sync::OnceLock::new();

fn heap_in_use() -> usize {
    HEAP_IN_USE.get().map_or(0, |f| f())
}

/// Which server answers the heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// chitchat-net's `Server`, replying with a typed `Heartbeat`.
    Ours,
    /// A plain tokio-util `Framed` echo server.
    Framed,
}

impl ServerKind {
    /// `ours` or `framed`.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Ours => "ours",
            ServerKind::Framed => "framed",
        }
    }

    /// The inverse of [`name`](Self::name).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ours" => Some(ServerKind::Ours),
            "framed" => Some(ServerKind::Framed),
            _ => None,
        }
    }
}

/// If [`SERVER_ENV`] is set, runs the scale server and exits the process;
/// otherwise returns at once. Call it first thing in `main`.
pub fn maybe_run_server() {
    let Ok(kind) = std::env::var(SERVER_ENV) else {
        return;
    };
    let Some(kind) = ServerKind::parse(&kind) else {
        eprintln!("{SERVER_ENV} must be `ours` or `framed`, not {kind:?}");
        std::process::exit(2);
    };
    let listen = std::env::var(LISTEN_ENV).unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    match run_server(kind, &listen) {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("scale server: {error}");
            std::process::exit(1);
        }
    }
}

/// Answers every heartbeat with a heartbeat (chitchat-net's server).
struct Pong;

impl Handler for Pong {
    type Message = Heartbeat;

    async fn handle(&self, hb: Heartbeat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.send(&hb)?;
        Ok(())
    }
}

/// Runs a scale server of `kind` on `listen` until stdin says `quit` or
/// closes. Prints `ready <addr>` once it accepts connections.
pub fn run_server(kind: ServerKind, listen: &str) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let open = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(AtomicU64::new(0));
        let (addr, ours) = match kind {
            ServerKind::Ours => {
                let server = Server::builder(Pong)
                    .listen(listen)
                    .await
                    .map_err(std::io::Error::other)?;
                let errors = server.errors();
                let counted = events.clone();
                tokio::spawn(async move {
                    while errors.recv().await.is_some() {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                });
                (server.local_addr().to_string(), Some(server))
            }
            ServerKind::Framed => {
                let listener = match std::env::var(BACKLOG_ENV) {
                    Ok(backlog) => {
                        let backlog = backlog.parse().map_err(std::io::Error::other)?;
                        let addr: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
                        let socket = if addr.is_ipv4() {
                            tokio::net::TcpSocket::new_v4()?
                        } else {
                            tokio::net::TcpSocket::new_v6()?
                        };
                        socket.set_reuseaddr(true)?;
                        socket.bind(addr)?;
                        socket.listen(backlog)?
                    }
                    Err(_) => TcpListener::bind(listen).await?,
                };
                let addr = listener.local_addr()?;
                tokio::spawn(framed_echo_server(listener, open.clone()));
                (addr.to_string(), None)
            }
        };
        println!("ready {addr}");
        std::io::stdout().flush()?;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines.next_line().await? {
            match line.trim() {
                "count" => {
                    let n = match &ours {
                        Some(server) => server.connection_count(),
                        None => open.load(Ordering::Relaxed),
                    };
                    let events = events.load(Ordering::Relaxed);
                    println!("count {n} events {events} heap {}", heap_in_use());
                }
                "quit" => break,
                other => println!("error unknown command {other:?}"),
            }
            std::io::stdout().flush()?;
        }
        if let Some(server) = ours {
            server.cut().await;
        }
        Ok(())
    })
}

/// The baseline: a plain tokio-util `Framed` echo server.
async fn framed_echo_server(listener: TcpListener, open: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.fetch_add(1, Ordering::Relaxed);
        let open = open.clone();
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, EchoCodec::lines());
            while let Some(Ok(frame)) = framed.next().await {
                if framed.send(frame).await.is_err() {
                    break;
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The scale server, seen from the parent process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts this executable again as a scale server of `kind`.
    pub fn spawn(kind: ServerKind, listen: &str) -> std::io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(SERVER_ENV, kind.name())
            .env(LISTEN_ENV, listen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other(format!(
                "the scale server did not start: {line:?}"
            )));
        };
        Ok(ServerProcess {
            child,
            stdin,
            stdout,
            addr,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(&self.pid().to_string()).unwrap_or(0)
    }

    /// The server's open connections, error events so far, and heap in use
    /// (0 unless the executable counts it).
    pub fn count(&mut self) -> std::io::Result<(usize, u64, usize)> {
        writeln!(self.stdin, "count")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["count", n, "events", e, "heap", h] => Ok((
                n.parse().map_err(std::io::Error::other)?,
                e.parse().map_err(std::io::Error::other)?,
                h.parse().map_err(std::io::Error::other)?,
            )),
            _ => Err(std::io::Error::other(format!("bad answer {line:?}"))),
        }
    }

    /// Polls until the server has `n` open connections or `timeout` passes;
    /// returns the last count.
    pub fn wait_count(&mut self, n: usize, timeout: Duration) -> std::io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let (open, _, _) = self.count()?;
            if open == n || Instant::now() >= deadline {
                return Ok(open);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks the server to stop and waits (bounded) for it to exit.
    pub fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drop kills it.
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The size of a scale run.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// Concurrent connections.
    pub conns: usize,
    /// Heartbeats per connection, each after the previous reply.
    pub rounds: u64,
    /// Connections being opened at once.
    pub connect_parallel: usize,
    /// Connections that send one large frame (step 4).
    pub large_conns: usize,
    /// The large frame's size in bytes.
    pub large_bytes: usize,
    /// Bound of each phase.
    pub phase_timeout: Duration,
}

/// What a scale run measured.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// Which server.
    pub kind: ServerKind,
    /// The configuration.
    pub config: ScaleConfig,
    /// Connections the clients opened.
    pub connected: usize,
    /// Connections the server reported open.
    pub server_open: usize,
    /// Heartbeat replies received, out of `connected * rounds`.
    pub replies: u64,
    /// Time to open every connection.
    pub connect_time: Duration,
    /// Time for every connection's heartbeats.
    pub heartbeat_time: Duration,
    /// Time to close every connection.
    pub close_time: Duration,
    /// Server RSS before any connection (KiB).
    pub rss_start_kib: u64,
    /// Server RSS with every connection open and idle (KiB).
    pub rss_idle_kib: u64,
    /// Server RSS after the heartbeats (KiB).
    pub rss_busy_kib: u64,
    /// Server RSS after the large frames (KiB).
    pub rss_large_kib: u64,
    /// Client process RSS growth per connection (bytes).
    pub client_bytes_per_conn: f64,
    /// Server heap in use (bytes) at the same four points as the RSS, if
    /// the executable counts it (else zeros).
    pub heap: [usize; 4],
    /// Error events the server reported (the large frames are not
    /// heartbeats: one each on our server).
    pub server_events: u64,
    /// CPU time of the server process during the heartbeats.
    pub server_cpu: Duration,
    /// CPU time of the client process during the heartbeats.
    pub client_cpu: Duration,
    /// Connections the kernel dropped during the connect phase because an
    /// accept queue was full (`TcpExt ListenOverflows`, system-wide).
    pub listen_overflows: u64,
}

impl ScaleReport {
    /// Connect, heartbeats and close.
    pub fn total_time(&self) -> Duration {
        self.connect_time + self.heartbeat_time + self.close_time
    }

    /// Replies expected.
    pub fn expected_replies(&self) -> u64 {
        self.config.conns as u64 * self.config.rounds
    }

    /// Whether every connection was made and every reply arrived.
    pub fn complete(&self) -> bool {
        self.connected == self.config.conns
            && self.server_open == self.config.conns
            && self.replies == self.expected_replies()
    }

    fn per_conn(&self, kib: u64) -> f64 {
        (kib.saturating_sub(self.rss_start_kib) * 1024) as f64 / self.connected.max(1) as f64
    }

    /// Server RSS growth per idle connection, in bytes.
    pub fn idle_bytes_per_conn(&self) -> f64 {
        self.per_conn(self.rss_idle_kib)
    }

    /// Server RSS growth per connection after the heartbeats, in bytes.
    pub fn busy_bytes_per_conn(&self) -> f64 {
        self.per_conn(self.rss_busy_kib)
    }

    /// Server RSS growth per connection after the large frames, in bytes.
    pub fn large_bytes_per_conn(&self) -> f64 {
        self.per_conn(self.rss_large_kib)
    }

    /// Server CPU time per heartbeat round trip, in microseconds.
    pub fn server_cpu_per_heartbeat_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.replies.max(1) as f64
    }

    /// One line per measurement.
    pub fn print(&self) {
        let c = &self.config;
        println!(
            "scale[{}]: {} of {} connected (server saw {}), {} of {} replies, {} server events",
            self.kind.name(),
            self.connected,
            c.conns,
            self.server_open,
            self.replies,
            self.expected_replies(),
            self.server_events,
        );
        println!(
            "scale[{}]: connect {} ({} accept-queue overflows), {} heartbeats each {}, close {}, total {}",
            self.kind.name(),
            fmt_duration(self.connect_time),
            self.listen_overflows,
            c.rounds,
            fmt_duration(self.heartbeat_time),
            fmt_duration(self.close_time),
            fmt_duration(self.total_time()),
        );
        println!(
            "scale[{}]: CPU during the heartbeats: server {} ({:.1} µs per round trip), client {}",
            self.kind.name(),
            fmt_duration(self.server_cpu),
            self.server_cpu_per_heartbeat_us(),
            fmt_duration(self.client_cpu),
        );
        println!(
            "scale[{}]: server RSS {} KiB -> idle {} KiB ({:.0} B/conn) -> after heartbeats {} KiB ({:.0} B/conn) -> after {} x {} B frames {} KiB ({:.0} B/conn); client {:.0} B/conn",
            self.kind.name(),
            self.rss_start_kib,
            self.rss_idle_kib,
            self.idle_bytes_per_conn(),
            self.rss_busy_kib,
            self.busy_bytes_per_conn(),
            c.large_conns,
            c.large_bytes,
            self.rss_large_kib,
            self.large_bytes_per_conn(),
            self.client_bytes_per_conn,
        );
        if self.heap.iter().any(|&h| h > 0) {
            let per =
                |h: usize| h.saturating_sub(self.heap[0]) as f64 / self.connected.max(1) as f64;
            println!(
                "scale[{}]: server heap in use {} KiB -> idle {:.0} B/conn -> after heartbeats {:.0} B/conn -> after large frames {:.0} B/conn",
                self.kind.name(),
                self.heap[0] / 1024,
                per(self.heap[1]),
                per(self.heap[2]),
                per(self.heap[3]),
            );
        }
    }
}

/// Counts the replies of one connection and wakes its driver.
#[derive(Debug, Default)]
struct Replies {
    count: AtomicU64,
    arrived: Notify,
}

impl Replies {
    /// Waits until more than `seen` replies have arrived.
    async fn wait_past(&self, seen: u64) {
        while self.count.load(Ordering::Acquire) <= seen {
            self.arrived.notified().await;
        }
    }
}

struct Conn {
    client: Client<Heartbeat>,
    replies: Arc<Replies>,
}

async fn connect_one(addr: SocketAddr) -> Result<Conn, chitchat_net::Error> {
    let replies = Arc::new(Replies::default());
    let counted = replies.clone();
    let on_reply = handler_fn(
        move |_hb: Heartbeat, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            counted.count.fetch_add(1, Ordering::Release);
            counted.arrived.notify_one();
            Ok(())
        },
    );
    let client = Client::<Heartbeat>::builder()
        .handler(on_reply)
        .connect_timeout(Duration::from_secs(20))
        .connect(addr)
        .await?;
    Ok(Conn { client, replies })
}

async fn connect_all(addr: SocketAddr, config: &ScaleConfig) -> Vec<Conn> {
    let gate = Arc::new(Semaphore::new(config.connect_parallel.max(1)));
    let mut tasks = JoinSet::new();
    for _ in 0..config.conns {
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        tasks.spawn(async move {
            let conn = connect_one(addr).await;
            drop(permit);
            conn
        });
    }
    let mut conns = Vec::with_capacity(config.conns);
    let mut failures = 0usize;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(error)) => {
                failures += 1;
                first_error.get_or_insert(error.to_string());
            }
            Err(error) => {
                failures += 1;
                first_error.get_or_insert(error.to_string());
            }
        }
    }
    if failures > 0 {
        eprintln!(
            "scale: {failures} connections failed, first: {}",
            first_error.unwrap_or_default()
        );
    }
    conns
}

/// Every connection sends `rounds` heartbeats, each after the previous
/// reply. Returns the connections that finished in time.
async fn heartbeats(conns: Vec<Conn>, rounds: u64, timeout: Duration) -> Vec<Conn> {
    let mut tasks = JoinSet::new();
    for (node, conn) in conns.into_iter().enumerate() {
        tasks.spawn(async move {
            let seen = conn.replies.count.load(Ordering::Acquire);
            for seq in 0..rounds {
                let hb = Heartbeat {
                    seq,
                    node: node as u32,
                    flags: 0,
                };
                if conn.client.send(&hb).await.is_err() {
                    break;
                }
                conn.replies.wait_past(seen + seq).await;
            }
            conn
        });
    }
    collect_within(tasks, timeout).await
}

/// Each connection sends one frame of `bytes` raw bytes, then a heartbeat,
/// and waits for the heartbeat's reply.
async fn large_frames(conns: Vec<Conn>, bytes: usize, timeout: Duration) -> Vec<Conn> {
    let payload = vec![b'x'; bytes];
    let payload = Arc::new(payload);
    let mut tasks = JoinSet::new();
    for conn in conns {
        let payload = payload.clone();
        tasks.spawn(async move {
            let seen = conn.replies.count.load(Ordering::Acquire);
            let hb = Heartbeat {
                seq: u64::MAX,
                node: 0,
                flags: 0,
            };
            if conn.client.send_bytes(&payload).await.is_ok() && conn.client.send(&hb).await.is_ok()
            {
                conn.replies.wait_past(seen).await;
            }
            conn
        });
    }
    collect_within(tasks, timeout).await
}

async fn collect_within(mut tasks: JoinSet<Conn>, timeout: Duration) -> Vec<Conn> {
    let mut done = Vec::with_capacity(tasks.len());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(conn))) => done.push(conn),
            Ok(Some(Err(error))) => eprintln!("scale: a connection task failed: {error}"),
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "scale: {} connections did not finish within {timeout:?}",
                    tasks.len()
                );
                tasks.abort_all();
                break;
            }
        }
    }
    done
}

async fn close_all(conns: Vec<Conn>, timeout: Duration) {
    let mut tasks = JoinSet::new();
    for conn in conns {
        tasks.spawn(async move { conn.client.close().await });
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(timeout, all).await.is_err() {
        eprintln!("scale: closing took longer than {timeout:?}");
    }
}

/// Runs the whole scenario against a fresh server process of `kind`, with
/// the clients on `runtime`.
pub fn run(
    runtime: &Runtime,
    kind: ServerKind,
    config: &ScaleConfig,
) -> std::io::Result<ScaleReport> {
    let mut server = ServerProcess::spawn(kind, "127.0.0.1:0")?;
    let addr = server.addr;
    std::thread::sleep(Duration::from_millis(100));
    let rss_start_kib = server.rss_kib();
    let heap_start = server.count()?.2;
    let client_start = rss_kib("self").unwrap_or(0);

    let overflows_before = tcp_ext("ListenOverflows").unwrap_or(0);
    let started = Instant::now();
    let conns = runtime.block_on(connect_all(addr, config));
    let connect_time = started.elapsed();
    let listen_overflows = tcp_ext("ListenOverflows")
        .unwrap_or(0)
        .saturating_sub(overflows_before);
    let connected = conns.len();
    let server_open = server.wait_count(connected, config.phase_timeout)?;
    // Let every connection task reach its first wait.
    std::thread::sleep(Duration::from_millis(200));
    let rss_idle_kib = server.rss_kib();
    let heap_idle = server.count()?.2;
    let client_idle = rss_kib("self").unwrap_or(0);

    let all_replies: Vec<Arc<Replies>> = conns.iter().map(|c| c.replies.clone()).collect();
    let server_pid = server.pid().to_string();
    let cpu_before = (cpu_time(&server_pid), cpu_time("self"));
    let started = Instant::now();
    let conns = runtime.block_on(heartbeats(conns, config.rounds, config.phase_timeout));
    let heartbeat_time = started.elapsed();
    let cpu_after = (cpu_time(&server_pid), cpu_time("self"));
    let spent = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b),
        _ => Duration::ZERO,
    };
    let server_cpu = spent(cpu_before.0, cpu_after.0);
    let client_cpu = spent(cpu_before.1, cpu_after.1);
    let replies = all_replies
        .iter()
        .map(|r| r.count.load(Ordering::Acquire))
        .sum();
    std::thread::sleep(Duration::from_millis(100));
    let rss_busy_kib = server.rss_kib();
    let heap_busy = server.count()?.2;

    let large = config.large_conns.min(conns.len());
    let mut conns = conns;
    let rest = conns.split_off(large);
    let mut conns = runtime.block_on(large_frames(
        conns,
        config.large_bytes,
        config.phase_timeout,
    ));
    conns.extend(rest);
    std::thread::sleep(Duration::from_millis(100));
    let rss_large_kib = server.rss_kib();
    let (_, server_events, heap_large) = server.count()?;

    let started = Instant::now();
    runtime.block_on(close_all(conns, config.phase_timeout));
    let close_time = started.elapsed();
    server.quit();

    Ok(ScaleReport {
        kind,
        config: config.clone(),
        connected,
        server_open,
        replies,
        connect_time,
        heartbeat_time,
        close_time,
        rss_start_kib,
        rss_idle_kib,
        rss_busy_kib,
        rss_large_kib,
        client_bytes_per_conn: (client_idle.saturating_sub(client_start) * 1024) as f64
            / connected.max(1) as f64,
        heap: [heap_start, heap_idle, heap_busy, heap_large],
        server_events,
        server_cpu,
        client_cpu,
        listen_overflows,
    })
}
