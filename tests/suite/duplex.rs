//! Integration tests of a connection that reads and writes at the same time:
//! both ends streaming at once, handlers that send to other connections,
//! replies racing large frames, a slow reader and the write stall timeout, a peer
//! that comes back from the same address, and a close that is called twice.
//!
//! Each of these needs a connection core whose reading never waits on its
//! writing (and the reverse). Every wait is bounded: a deadlock shows as a
//! failed test naming where it stalled, not as a hung test.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::{
    handler_fn, Addr, BoxError, Client, ConnectionHandle, Context, Error, Handler, Server,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

// ------------------------------------------------------- both ways at once --

/// Two peers that both stream while both handle what they receive: a client
/// sends 64 MiB in 1 KiB lines to an echo server and counts the echoes (64
/// MiB each way). Each side's socket fills with the other's data, so this
/// only completes if neither connection stops reading while its own write
/// waits. Before the full-duplex core (at 2db3587) both connection tasks end up blocked in a write and the
/// echoes stop after a few MB (reported as a stall after 10 s).
///
/// On one thread, like the next two tests: with worker threads, a sender
/// slowed down by other tests running alongside lets a connection's flush
/// run dry and read in between, and the old core's deadlock then comes only now
/// and then (this test passed in 7 of 12 runs of the file with two worker
/// threads, and failed in every run on one).
#[tokio::test(flavor = "current_thread")]
async fn two_peers_stream_64_mib_each_way_with_handlers_on_both_sides() {
    const LINE: usize = 1024; // on the wire, with its `\n`
    const LINES: u64 = 64 * 1024; // 64 MiB
    let echo = handler_fn(
        |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&line)?;
            Ok(())
        },
    );
    // No write stall timeout on either side: a deadlock hangs (and the wait below
    // reports it) instead of being broken by a timeout.
    let server = Server::builder(echo)
        .write_stall_timeout(None)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let tally = Arc::new(Tally::default());
    let client = Client::<String>::builder()
        .handler(counting(tally.clone()))
        .write_stall_timeout(None)
        .connect(server.local_addr())
        .await
        .unwrap();

    stream_through_echo(&client, &tally, LINES, LINE - 1).await;
    assert_no_event("server", &server.errors());
    assert_no_event("client", &client.errors());
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}

/// Pongs counted by a [`ping_ponger`]: how many, and the sum of their
/// numbers.
#[derive(Debug, Default)]
struct Pongs {
    count: AtomicU64,
    sum: AtomicU64,
}

/// Answers `ping N ...` with `pong N`; counts each `pong N`.
fn ping_ponger(pongs: Arc<Pongs>) -> impl Handler<Message = String> {
    handler_fn(
        move |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Some(rest) = line.strip_prefix("ping ") {
                let n = rest.split(' ').next().unwrap_or_default();
                ctx.send(&format!("pong {n}"))?;
            } else if let Some(n) = line.strip_prefix("pong ") {
                pongs.sum.fetch_add(n.parse::<u64>()?, Ordering::Relaxed);
                pongs.count.fetch_add(1, Ordering::Relaxed);
            } else {
                return Err(format!("unexpected line {line:?}").into());
            }
            Ok(())
        },
    )
}

/// Both ends ping each other at the same time, with pipelined batches of
/// large pings (48 MiB each way per round), and each answers the other's
/// pings while its own are going out: every pong of every round arrives.
/// Before the full-duplex core the two connection tasks each wait to write their pings while
/// neither reads, and the first round stalls with no pong at all (with two
/// worker threads it got through in 1 of 12 runs of the file).
#[tokio::test(flavor = "current_thread")]
async fn ping_pong_storm_every_reply_arrives() {
    // Each way, a round must hold more than the kernel can buffer: on
    // loopback up to the send buffer's maximum (4 MiB) plus the receive
    // buffer's (`tcp_rmem`, 32 MiB on the test machine). 1,000 pings of
    // 48 KiB are 48 MiB each way per round. On the old core rounds of 4 or 8 KiB pings
    // pass (they fit in the buffers) and rounds of 16 KiB stall (24 KiB with
    // worker threads). The old core stalled in the first round; four rounds
    // (about 400 MB in all) show it holds round after round, for a fraction
    // of the time of twenty.
    const ROUNDS: u64 = 4;
    const PINGS: u64 = 1000;
    let pad = ".".repeat(48 * 1024);
    let server_pongs = Arc::new(Pongs::default());
    let client_pongs = Arc::new(Pongs::default());
    let server = Server::listen("127.0.0.1:0", ping_ponger(server_pongs.clone()))
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .handler(ping_ponger(client_pongs.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    let me = client.local_addr();
    wait_until("the server knows the client", || {
        server.connection(me.clone()).is_ok()
    })
    .await;
    let to_client: ConnectionHandle = server.connection(me).unwrap();
    let to_server = client.handle();

    for round in 0..ROUNDS {
        let pings: Arc<Vec<String>> = Arc::new(
            (round * PINGS..(round + 1) * PINGS)
                .map(|n| format!("ping {n} {pad}"))
                .collect(),
        );
        let (c, s) = (pings.clone(), pings.clone());
        let (h1, h2) = (to_server.clone(), to_client.clone());
        let from_client = tokio::spawn(async move { h1.send_all(c.iter()).await });
        let from_server = tokio::spawn(async move { h2.send_all(s.iter()).await });
        let target = (round + 1) * PINGS;
        let both = || {
            server_pongs.count.load(Ordering::Relaxed) + client_pongs.count.load(Ordering::Relaxed)
        };
        let what = format!("pongs of round {round} (both sides)");
        wait_for_count(&what, 2 * target, both).await;
        within("the client's pings", from_client)
            .await
            .unwrap()
            .unwrap();
        within("the server's pings", from_server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(server_pongs.count.load(Ordering::Relaxed), target);
        assert_eq!(client_pongs.count.load(Ordering::Relaxed), target);
    }
    let sum = (0..ROUNDS * PINGS).sum::<u64>();
    assert_eq!(server_pongs.sum.load(Ordering::Relaxed), sum);
    assert_eq!(client_pongs.sum.load(Ordering::Relaxed), sum);
    assert_no_event("server", &server.errors());
    assert_no_event("client", &client.errors());
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}

// ------------------------------------------------------------------ relay --

/// Forwards every line from one of the first two connections to the other,
/// waiting (inside the handler) while the other's queue is full.
#[derive(Debug, Default)]
struct Relay {
    peers: Mutex<Vec<ConnectionHandle>>,
}

impl Handler for Relay {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let me = ctx.peer_addr();
        let other = self
            .peers
            .lock()
            .unwrap()
            .iter()
            .find(|peer| peer.peer_addr() != me)
            .cloned()
            .ok_or("no other peer yet")?;
        other.send(&line).await?;
        Ok(())
    }

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let mut peers = self.peers.lock().unwrap();
        if peers.len() < 2 {
            peers.push(ctx.handle());
        }
        Ok(())
    }
}

/// A relay: each of two clients streams 100,000 lines to the server at the
/// same time, and the server's handler forwards each to the other client
/// through its handle, awaiting the send. Each connection's handler waits on
/// the other connection's queue, so this only flows if a connection keeps
/// writing its queue while its handler waits. Both clients get every line
/// of the other, in order, and a graceful shutdown then finishes in time.
/// On the old core the relay stopped in its first second (with two worker threads it
/// got through in 4 of 12 runs of the file).
#[tokio::test(flavor = "current_thread")]
async fn relay_between_two_connections_through_handles() {
    const LINES: u64 = 100_000;
    const LEN: usize = 100;
    let server = Server::listen("127.0.0.1:0", Relay::default())
        .await
        .unwrap();
    let (tally_a, tally_b) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let a = Client::<String>::builder()
        .handler(counting(tally_a.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    let b = Client::<String>::builder()
        .handler(counting(tally_b.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    wait_until("the relay knows both clients", || {
        server.handler().peers.lock().unwrap().len() == 2
    })
    .await;

    let lines: Arc<Vec<String>> = Arc::new((0..LINES).map(|seq| numbered_line(seq, LEN)).collect());
    let send = |handle: ConnectionHandle| {
        let lines = lines.clone();
        tokio::spawn(async move { handle.send_all(lines.iter()).await })
    };
    let (send_a, send_b) = (send(a.handle()), send(b.handle()));
    let both = || tally_a.lines.load(Ordering::Relaxed) + tally_b.lines.load(Ordering::Relaxed);
    wait_for_count("relayed lines (both clients)", 2 * LINES, both).await;
    within("a's sends", send_a).await.unwrap().unwrap();
    within("b's sends", send_b).await.unwrap().unwrap();
    for (name, tally) in [("a", &tally_a), ("b", &tally_b)] {
        assert_eq!(tally.lines.load(Ordering::Relaxed), LINES, "{name}");
        assert_eq!(
            tally.bytes.load(Ordering::Relaxed),
            LINES * LEN as u64,
            "{name}"
        );
        assert_eq!(tally.out_of_order.load(Ordering::Relaxed), 0, "{name}");
    }
    assert_no_event("server", &server.errors());
    assert_no_event("client a", &a.errors());
    assert_no_event("client b", &b.errors());
    let finished = within("shutdown", server.shutdown(Duration::from_secs(5)))
        .await
        .finished;
    assert!(finished, "the graceful shutdown passed its deadline");
    within("a's close", a.close()).await;
    within("b's close", b.close()).await;
}

// ------------------------------------------------- replies and big frames --

/// Size of the large lines of the interleaving tests (without the `\n`).
const BIG: usize = 512 * 1024;
/// How many large lines they send (20 MiB).
const BIGS: usize = 40;
/// Interval between two pings of their raw peer.
const PING_EVERY: Duration = Duration::from_micros(200);

/// What the raw peer of the interleaving tests read.
#[derive(Debug, Default)]
struct Seen {
    bigs: usize,
    pongs: usize,
    /// The first line that was neither a large line nor `PONG`.
    bad: Option<String>,
    /// The stream has ended.
    eof: bool,
    /// Bytes after the last `\n` at the end of the stream.
    trailing: usize,
}

/// Describes a line that is neither a large line nor `PONG`.
fn describe(line: &[u8]) -> String {
    let tail = &line[line.len().saturating_sub(16)..];
    let head = &line[..line.len().min(16)];
    format!(
        "len {}, starts with {:?}, ends with {:?}",
        line.len(),
        String::from_utf8_lossy(head),
        String::from_utf8_lossy(tail)
    )
}

/// The raw peer's reading side, on a thread of its own (a blocking socket):
/// reads slowly (64 KiB at a time, 1 ms pause between reads) and checks
/// that every line is exactly a large line of x's or exactly `PONG`.
struct SlowReader {
    stream: std::net::TcpStream,
    /// The start of a line not finished yet.
    pending: Vec<u8>,
    seen: Seen,
}

impl SlowReader {
    fn new(stream: std::net::TcpStream) -> Self {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        SlowReader {
            stream,
            pending: Vec::new(),
            seen: Seen::default(),
        }
    }

    /// Reads (on a blocking thread) until `done(&seen)` holds, the stream
    /// ends or a line is bad.
    fn spawn_until(
        self,
        done: impl Fn(&Seen) -> bool + Send + 'static,
    ) -> tokio::task::JoinHandle<SlowReader> {
        tokio::task::spawn_blocking(move || self.read_until(done))
    }

    fn read_until(mut self, done: impl Fn(&Seen) -> bool) -> Self {
        use std::io::{ErrorKind, Read};
        let mut buf = vec![0u8; 64 * 1024];
        while !done(&self.seen) && self.seen.bad.is_none() && !self.seen.eof {
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if is_reset(&e) => 0,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("no byte for {WAIT:?} ({:?})", self.seen)
                }
                Err(e) => panic!("raw read failed: {e} ({:?})", self.seen),
            };
            if n == 0 {
                self.seen.eof = true;
                self.seen.trailing = self.pending.len();
                break;
            }
            self.check(&buf[..n]);
            // A slow reader.
            std::thread::sleep(Duration::from_millis(1));
        }
        self
    }

    fn check(&mut self, bytes: &[u8]) {
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b != b'\n' {
                continue;
            }
            self.pending.extend_from_slice(&bytes[start..i]);
            start = i + 1;
            let line = &self.pending;
            if line == b"PONG" {
                self.seen.pongs += 1;
            } else if line.len() == BIG && line.iter().all(|&b| b == b'x') {
                self.seen.bigs += 1;
            } else if self.seen.bad.is_none() {
                self.seen.bad = Some(describe(line));
            }
            self.pending.clear();
        }
        self.pending.extend_from_slice(&bytes[start..]);
    }
}

/// Writes `ping\n` every [`PING_EVERY`] (on a thread of its own, for an
/// interval finer than the runtime's 1 ms timer) until `stop` is set or the
/// socket fails; returns how many it wrote.
fn spawn_pinger(
    mut stream: std::net::TcpStream,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    use std::io::Write;
    tokio::task::spawn_blocking(move || {
        let mut pings = 0;
        while !stop.load(Ordering::Relaxed) {
            if stream.write_all(b"ping\n").is_err() {
                break;
            }
            pings += 1;
            std::thread::sleep(PING_EVERY);
        }
        pings
    })
}

/// The raw server of the interleaving tests: accepts one connection and
/// runs its reader and its pinger on threads of their own (blocking
/// sockets), apart from the runtime under test. Returns the reader (not
/// started yet), the pinger and the pinger's stop flag.
async fn raw_pinging_peer(
    listener: &tokio::net::TcpListener,
) -> (SlowReader, tokio::task::JoinHandle<usize>, Arc<AtomicBool>) {
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_nodelay(true).unwrap();
    // Bounded blocking writes (the option is the socket's: both clones).
    stream.set_write_timeout(Some(WAIT)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = spawn_pinger(stream.try_clone().unwrap(), stop.clone());
    (SlowReader::new(stream), pinger, stop)
}

/// A client whose handler answers each `ping` with `PONG`.
async fn ponging_client(addr: SocketAddr) -> Client<String> {
    let pong = handler_fn(
        move |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            if line == "ping" {
                ctx.send(&"PONG".to_string())?;
            }
            Ok(())
        },
    );
    Client::<String>::builder()
        .handler(pong)
        .connect(addr)
        .await
        .unwrap()
}

/// Sends the large lines, failing as soon as `reader` stops (a bad line, or
/// the stream ended) before they are all queued.
async fn send_bigs(client: &Client<String>, reader: &mut tokio::task::JoinHandle<SlowReader>) {
    let line = "x".repeat(BIG);
    let sends = async {
        for _ in 0..BIGS {
            client.send(&line).await.unwrap();
        }
    };
    tokio::select! {
        () = within("the sends", sends) => {}
        stopped = reader => {
            let seen = stopped.unwrap().seen;
            match seen.bad {
                Some(bad) => panic!("interleaved line: {bad} ({} large lines before it)", seen.bigs),
                None => panic!("the raw reader stopped during the sends: {seen:?}"),
            }
        }
    }
}

/// A client streams 40 lines of 512 KiB while its handler answers pings from
/// the server, and the server reads slowly: replies go between frames, never
/// inside one, and every ping is answered.
///
/// On the old core a send could write part of a frame to the socket itself and leave the
/// rest to the connection task, which may write a reply first: the peer then
/// reads a line of a few hundred KB of x's ending in `PONG`. That takes a
/// ping read in the few microseconds between the connection task's look at
/// its queue and its start on what it read, hence pings every 200 µs from a
/// thread outside the runtime (with pings every few ms from a runtime task
/// it failed in only about one run of four; this way, 30 of 30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_and_replies_never_interleave() {
    let (listener, addr) = raw_listener().await;
    let client = ponging_client(addr).await;
    let (reader, pinger, stop) = raw_pinging_peer(&listener).await;
    let mut reader = reader.spawn_until(|seen| seen.bigs == BIGS);

    send_bigs(&client, &mut reader).await;
    let reader = within("the large lines", reader).await.unwrap();
    let seen = &reader.seen;
    assert!(seen.bad.is_none(), "interleaved line: {seen:?}");
    assert_eq!(seen.bigs, BIGS, "{seen:?}");
    // Every ping gets its PONG.
    stop.store(true, Ordering::Relaxed);
    let pings = within("the pinger", pinger).await.unwrap();
    let reader = within(
        "the last PONGs",
        reader.spawn_until(move |seen| seen.pongs >= pings),
    )
    .await
    .unwrap();
    let seen = &reader.seen;
    assert!(seen.bad.is_none(), "interleaved line: {seen:?}");
    assert_eq!((seen.bigs, seen.pongs), (BIGS, pings), "{seen:?}");
    assert_no_event("client", &client.errors());
    drop(reader);
    within("close", client.close()).await;
}

/// As [`large_frames_and_replies_never_interleave`], but the client closes
/// right after its last send, while pings keep arriving: the close answers
/// what has arrived, and those replies too go between frames. The raw side
/// reads to EOF, checking every line, then closes its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_and_replies_never_interleave_through_close() {
    let (listener, addr) = raw_listener().await;
    let client = ponging_client(addr).await;
    let (reader, pinger, stop) = raw_pinging_peer(&listener).await;
    let mut reader = reader.spawn_until(|_| false);

    send_bigs(&client, &mut reader).await;
    let raw_side = async {
        let reader = within("the end of the client's stream", reader)
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        within("the pinger", pinger).await.unwrap();
        // The raw side closes its socket.
        let _ = reader.stream.shutdown(std::net::Shutdown::Both);
        reader
    };
    // Closing starts at once (first poll), while the raw side goes on.
    let ((), reader) = tokio::join!(within("close", client.close()), raw_side);
    let seen = &reader.seen;
    assert!(seen.bad.is_none(), "interleaved line: {seen:?}");
    assert!(seen.eof, "{seen:?}");
    assert_eq!(seen.bigs, BIGS, "{seen:?}");
    assert_eq!(seen.trailing, 0, "a partial line at EOF: {seen:?}");
    drop(reader);
    assert_no_event("client", &client.errors());
}

// ------------------------------------------------- same address, new peer --

/// A probe whose `on_close` waits until the test releases it, and says when
/// it starts and when it returns.
#[derive(Debug)]
struct SlowClose {
    entered: mpsc::UnboundedSender<Addr>,
    returned: mpsc::UnboundedSender<Addr>,
    release: watch::Receiver<bool>,
}

impl Handler for SlowClose {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match line.as_str() {
            "ping" => ctx.send(&"pong".to_string())?,
            _ => ctx.send(&line)?,
        }
        Ok(())
    }

    async fn on_close(&self, closed: chitchat_net::Closed) {
        let peer = closed.peer_addr().clone();
        let _ = self.entered.send(peer.clone());
        let mut release = self.release.clone();
        // Bounded, so that a failed test does not leave it hanging.
        let _ = tokio::time::timeout(3 * WAIT, release.wait_for(|go| *go)).await;
        let _ = self.returned.send(peer);
    }
}

/// Connects to `server` from `local` (reusing the address), retrying while
/// the port is still taken.
async fn connect_from(local: SocketAddr, server: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        let attempt = match socket.bind(local) {
            Ok(()) => within("connect", socket.connect(server)).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(stream) => return stream,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("connect from {local} failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not connect from {local}: {e}"),
        }
    }
}

/// A peer resets its connection and reconnects from the same address and
/// port while the old connection's `on_close` is still running. The new
/// connection is registered under that address, and the old one's end must
/// not unregister it: afterwards the server still counts, lists, reaches
/// and closes the new connection. On the old core the old task's end removed the new
/// connection's entry (count 0, `close_remote` fails with `UnknownPeer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_source_port_reconnect_while_old_on_close_runs() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (returned_tx, mut returned) = mpsc::unbounded_channel();
    let (release, release_rx) = watch::channel(false);
    let handler = SlowClose {
        entered: entered_tx,
        returned: returned_tx,
        release: release_rx,
    };
    let server = Server::listen("127.0.0.1:0", handler).await.unwrap();
    let server_addr = tcp(server.local_addr());

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let local = socket.local_addr().unwrap();
    let stream = within("connect", socket.connect(server_addr))
        .await
        .unwrap();
    stream.set_zero_linger().unwrap();
    let mut old = RawPeer::from_stream(stream);
    old.ping().await;
    drop(old); // RST
    let closing = within("the old on_close", entered.recv()).await.unwrap();
    assert_eq!(closing, Addr::from(local));

    let mut new = RawPeer::from_stream(connect_from(local, server_addr).await);
    assert_eq!(new.local_addr(), local);
    new.ping().await;

    release.send(true).unwrap();
    let ended = within("the old on_close to return", returned.recv())
        .await
        .unwrap();
    assert_eq!(ended, Addr::from(local));
    // The old connection has ended once the open count is back to one.
    wait_until("the old connection has ended", || {
        server.stats().connections_open == 1
    })
    .await;
    new.ping().await;

    assert_eq!(
        server.connection_count(),
        1,
        "the old connection's end unregistered the new one: remote_addrs {:?}",
        server.remote_addrs()
    );
    assert_eq!(server.remote_addrs(), [Addr::from(local)]);
    assert_eq!(server.broadcast(&"hello".to_string()).unwrap(), 1);
    assert_eq!(new.read_text_line().await, "hello");
    server.close_remote(local).unwrap();
    new.expect_end().await;
    within("cut", server.cut()).await;
}

// -------------------------------------------------- write stall timeout --

/// Bytes of each frame the write-timeout tests queue (with its `\n`).
const FRAME: usize = 1 << 20;
/// Frames they queue: 24 MiB.
const FRAMES: usize = 24;

/// The byte at `pos` of the stream of [`FRAMES`] frames: frame `i` is
/// `FRAME - 1` copies of a letter for `i`, then `\n`.
fn expected_byte(pos: usize) -> u8 {
    if pos % FRAME == FRAME - 1 {
        b'\n'
    } else {
        b'a' + (pos / FRAME % 26) as u8
    }
}

/// A server with a 2 s write stall timeout and room to queue 24 MiB for one raw
/// peer, the peer (known to the server after a round trip), and a handle on
/// its connection with the 24 MiB queued at once.
async fn queued_for_a_raw_peer() -> (Server<Probe>, TcpStream, SocketAddr) {
    let server = Server::builder(Probe::new())
        .write_stall_timeout(Some(Duration::from_secs(2)))
        .queue_bytes(32 << 20)
        .max_frame_length(2 << 20)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut peer = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    let local = peer.local_addr().unwrap();
    peer.write_all(b"ping\n").await.unwrap();
    let mut pong = [0u8; 5];
    within("pong", peer.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"pong\n");
    let handle = server.connection(local).unwrap();
    // Made first, queued after: from the first frame queued the server
    // waits on the peer, and the write stall timeout runs; building 24 MiB
    // of frames on a loaded machine must not eat into it.
    let frames: Vec<String> = (0..FRAMES)
        .map(|i| {
            let letter = char::from(b'a' + (i % 26) as u8);
            std::iter::repeat_n(letter, FRAME - 1).collect()
        })
        .collect();
    for frame in &frames {
        handle.try_send(frame).unwrap();
    }
    (server, peer, local)
}

/// Reads up to `limit` bytes at a steady 4 MiB/s on average (paced by
/// the clock: after a pause, as a loaded machine gives, it catches up
/// rather than falling behind), checking each against [`expected_byte`].
/// Returns how many it read before `limit` or the end of the stream; fails
/// if a read waits [`STALL`] for a byte (a progress bound).
async fn read_paced(peer: &mut TcpStream, limit: usize) -> usize {
    const BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0;
    let start = Instant::now();
    while pos < limit {
        let allowed = (start.elapsed().as_secs_f64() * BYTES_PER_SEC) as usize;
        if allowed <= pos {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let want = buf.len().min(limit - pos).min(allowed - pos);
        let read = tokio::time::timeout(STALL, peer.read(&mut buf[..want]))
            .await
            .unwrap_or_else(|_| panic!("no byte for {STALL:?} after {pos} bytes"));
        let n = match read {
            Ok(n) => n,
            Err(e) if is_reset(&e) => 0,
            Err(e) => panic!("raw read failed: {e}"),
        };
        if n == 0 {
            return pos;
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != expected_byte(pos + i)) {
            panic!("wrong byte {:?} at offset {}", buf[i] as char, pos + i);
        }
        pos += n;
    }
    pos
}

/// A peer that reads steadily but slowly (4 MiB/s) gets all 24 MiB
/// queued for it, although that takes several times the 2 s write stall timeout:
/// the timeout is about a write that makes no progress, not about how long
/// a queue takes to drain. On the old core the timeout bounded the whole flush, and the
/// reader was cut off with a `WriteTimeout` event after about 10 MB (3.7 s
/// in, counting the 2 s from the first send).
///
/// On loopback the kernel send buffer grows to 4 MiB and a writer waiting
/// for room is woken only after about a third of it has drained; with a 2 s
/// timeout a reader must take more than ~0.7 MiB/s to show progress in
/// time. 4 MiB/s, held on average by the clock even when the machine is
/// loaded, is over 5× that; the 24 MiB still take 6 s, 3 timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_slow_reader_is_not_cut_by_the_write_stall_timeout() {
    let (server, mut peer, local) = queued_for_a_raw_peer().await;
    let total = FRAME * FRAMES;
    let start = Instant::now();
    let read = read_paced(&mut peer, total).await;
    let events: Vec<String> = std::iter::from_fn(|| server.errors().try_recv())
        .map(|event| format!("{event} ({:?})", event.error))
        .collect();
    assert_eq!(
        read,
        total,
        "the server ended the connection after {read} of {total} bytes, {:?} in; events: {events:?}",
        start.elapsed()
    );
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(server.remote_addrs(), [Addr::from(local)]);
    drop(peer);
    within("cut", server.cut()).await;
}

/// The counterpart: a peer that stops reading (after 3 MiB) is cut after
/// the write stall timeout, with a `WriteStalled` event, and its connection is
/// gone. (This one passed on the old core too: it keeps the fix from dropping the
/// timeout altogether.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_cut_after_the_write_stall_timeout() {
    let (server, mut peer, local) = queued_for_a_raw_peer().await;
    let read = read_paced(&mut peer, 3 * FRAME).await;
    assert_eq!(read, 3 * FRAME);
    // Stop reading, keep the socket open.
    let events = server.errors();
    // The cut comes 2 s after the last byte the server wrote (the writer is
    // woken when a third of the send buffer drained, so up to ~1 s later on
    // loopback); 20 s is over 5× that on a loaded machine.
    let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("no event within 20 s of the reader stopping")
        .expect("the event stream ended");
    assert_peer(&event, local);
    assert!(
        matches!(event.error, Error::WriteStalled(_)),
        "{event} ({:?})",
        event.error
    );
    wait_until("the connection is gone", || server.connection_count() == 0).await;
    drop(peer);
    within("cut", server.cut()).await;
}

// ------------------------------------------------------------------ close --

/// A close that was cancelled (its future dropped by a timeout) and is then
/// called again waits for the same end as the first: it returns only after
/// the server has closed its side. On the old core the first call took the
/// connection task with it, and the second returned at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_cancelled_then_called_again_waits_for_the_same_end() {
    let (listener, addr) = raw_listener().await;
    let client = Client::<String>::builder()
        .close_timeout(Duration::from_secs(5))
        .connect(addr)
        .await
        .unwrap();
    let closed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let server_closed = Arc::new(AtomicBool::new(false));
    let (at, flag) = (closed_at.clone(), server_closed.clone());
    let server = tokio::spawn(async move {
        let (mut stream, _) = within("accept", listener.accept()).await.unwrap();
        let mut got = Vec::new();
        within("the client's EOF", stream.read_to_end(&mut got))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        *at.lock().unwrap() = Some(Instant::now());
        flag.store(true, Ordering::SeqCst);
        drop(stream);
        got
    });
    client.send(&"bye".to_string()).await.unwrap();

    // The server closes its side 700 ms after our EOF: 7× longer than this
    // first close is given, so it cannot have closed in time unless this
    // runtime stalled for over 600 ms.
    let first = tokio::time::timeout(Duration::from_millis(100), client.close()).await;
    assert!(
        first.is_err(),
        "the first close returned before the server closed"
    );
    within("the second close", client.close()).await;
    let returned = Instant::now();
    assert!(
        server_closed.load(Ordering::SeqCst),
        "the second close returned before the server closed its side"
    );
    let at = closed_at.lock().unwrap().expect("closed, so recorded");
    assert!(at <= returned);
    assert_eq!(within("the raw server", server).await.unwrap(), b"bye\n");
}
