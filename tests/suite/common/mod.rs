//! Helpers shared by `tests/server.rs` and `tests/client.rs`: bounded waits,
//! a raw TCP peer, a probe handler and a few message types.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chitchat_net::{
    handler_fn, Addr, BoxError, Codec, Context, Error, ErrorEvent, ErrorEvents, Handler, Message,
    PodCodec,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// Upper bound of a wait for one event (a connection, a reply, an error
/// event, a close): these take milliseconds, a second or two at worst on a
/// loaded 2-CPU machine, so this is over 5× what the work needs. Bulk work
/// (thousands of frames, megabytes) is bounded by its progress instead
/// ([`with_progress`]), not by a total time.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long bulk work may go without any progress (no byte, no frame
/// moved) before the test fails: a progress bound. On a loaded machine the
/// work still moves every few milliseconds; a stall this long is a hang.
pub const STALL: Duration = WAIT;

/// A request timeout longer than any wait of the tests: a request that
/// would end in its timeout fails the test (at [`within`]) instead of
/// passing by luck.
pub const NEVER: Duration = Duration::from_secs(60);

/// A reconnect backoff that a test would notice: an hour before any try
/// after the first. A client that waited it would time the test out.
pub fn hour_backoff() -> chitchat_net::Reconnect {
    chitchat_net::Reconnect::new()
        .initial_delay(Duration::from_secs(3600))
        .max_delay(Duration::from_secs(3600))
}

/// A raw TCP listener on a free loopback port, standing in for a server to
/// check a client's bytes.
pub async fn raw_listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Awaits `fut`, bulk work whose progress `progress()` counts (bytes or
/// frames moved: any count that grows while the work moves), failing the
/// test only if the count stays the same for [`STALL`]: a progress bound,
/// not a total time, so a busy machine makes it slower, never red.
pub async fn with_progress<F: Future>(what: &str, progress: impl Fn() -> u64, fut: F) -> F::Output {
    tokio::pin!(fut);
    let mut last = progress();
    let mut since = Instant::now();
    loop {
        tokio::select! {
            out = &mut fut => return out,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                let now = progress();
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                assert!(
                    since.elapsed() < STALL,
                    "stalled: no progress for {STALL:?} waiting for {what} (progress at {now})"
                );
            }
        }
    }
}

/// Polls `cond` until it holds, failing the test if `progress()` stays the
/// same for [`STALL`] meanwhile (see [`with_progress`]).
pub async fn until_with_progress(
    what: &str,
    progress: impl Fn() -> u64,
    mut cond: impl FnMut() -> bool,
) {
    with_progress(what, progress, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next error event, within [`WAIT`]; fails if the stream ends.
pub async fn next_event(events: &ErrorEvents) -> ErrorEvent {
    within("an error event", events.recv())
        .await
        .expect("the event stream ended")
}

/// Asserts that the event stream ends (after draining nothing more).
pub async fn assert_events_end(events: &ErrorEvents) {
    if let Some(event) = within("the end of the event stream", events.recv()).await {
        panic!("unexpected event: {event} ({:?})", event.error);
    }
}

/// A plain TCP peer, to check bytes on the wire.
#[derive(Debug)]
pub struct RawPeer {
    stream: BufReader<TcpStream>,
    local: SocketAddr,
}

impl RawPeer {
    pub async fn connect(addr: impl Into<Addr>) -> RawPeer {
        let addr = addr.into().tcp().expect("a TCP address");
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        RawPeer::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> RawPeer {
        stream.set_nodelay(true).unwrap();
        let local = stream.local_addr().unwrap();
        RawPeer {
            stream: BufReader::new(stream),
            local,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within("a write", self.stream.write_all(bytes))
            .await
            .expect("write");
        self.stream.flush().await.unwrap();
    }

    /// Ends our write side (the peer reads EOF); we can still read.
    pub async fn shutdown(&mut self) {
        within("shutdown", self.stream.shutdown())
            .await
            .expect("shutdown");
    }

    /// The next `\n`-terminated line, delimiter included.
    pub async fn read_line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        let n = within("a line", self.stream.read_until(b'\n', &mut line))
            .await
            .expect("read");
        assert!(
            n > 0 && line.ends_with(b"\n"),
            "stream ended while waiting for a line (got {:?})",
            String::from_utf8_lossy(&line)
        );
        line
    }

    /// The next line as text, without its `\n`.
    pub async fn read_text_line(&mut self) -> String {
        let mut line = self.read_line().await;
        line.pop();
        String::from_utf8(line).expect("utf-8 line")
    }

    pub async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        within("bytes", self.stream.read_exact(&mut buf))
            .await
            .expect("read_exact");
        buf
    }

    /// Reads until the peer ends the stream (EOF or reset); returns the bytes
    /// read before the end.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match within("the end of the stream", self.stream.read(&mut buf)).await {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if is_reset(&e) => return all,
                Err(e) => panic!("unexpected read error: {e}"),
            }
        }
    }

    /// Asserts the peer ends the stream without sending anything more.
    pub async fn expect_end(&mut self) {
        let rest = self.read_to_end().await;
        assert!(
            rest.is_empty(),
            "expected the end of the stream, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// A round trip with the probe: proves the connection is registered and
    /// served.
    pub async fn ping(&mut self) {
        self.write(b"ping\n").await;
        assert_eq!(self.read_line().await, b"pong\n");
    }
}

pub fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// A text handler with a command per line, recording what it sees.
///
/// - `ping` → `pong`
/// - `fail` → returns an error (`requested failure`)
/// - `panic` → panics (`requested panic`)
/// - `bye` → sends `goodbye`, then closes the connection
/// - `addrs` → sends `"{peer} {local}"` from the context
/// - `typed` → sends [`Pair::TYPED`] (a typed, non-text message)
/// - `bytes` → `send_bytes(b"some bytes")`
/// - `wait` → signals `entered`, waits for `go` from any connection, sends
///   `released`
/// - `go` → releases a `wait`, sends `went`
/// - `hang` → never returns
/// - anything else is echoed.
#[derive(Debug)]
pub struct Probe {
    /// Sends `hello {peer}` when a connection opens.
    pub greet: bool,
    pub seen: Mutex<Vec<(Addr, String)>>,
    pub count: AtomicUsize,
    pub entered: Notify,
    pub release: Notify,
    closed_tx: mpsc::UnboundedSender<Addr>,
    closed_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Addr>>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe::new()
    }
}

impl Probe {
    pub fn new() -> Probe {
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        Probe {
            greet: false,
            seen: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            entered: Notify::new(),
            release: Notify::new(),
            closed_tx,
            closed_rx: tokio::sync::Mutex::new(closed_rx),
        }
    }

    pub fn greeting() -> Probe {
        Probe {
            greet: true,
            ..Probe::new()
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Messages seen from `peer`, in order.
    pub fn seen_from(&self, peer: impl Into<Addr>) -> Vec<String> {
        let peer = peer.into();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The peer of the next connection that ends (`on_close`).
    pub async fn next_closed(&self) -> Addr {
        let mut rx = self.closed_rx.lock().await;
        within("on_close", rx.recv()).await.expect("closed channel")
    }
}

impl Handler for Probe {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.seen
            .lock()
            .unwrap()
            .push((ctx.peer_addr(), line.clone()));
        self.count.fetch_add(1, Ordering::SeqCst);
        match line.as_str() {
            "ping" => ctx.send(&"pong".to_string())?,
            "fail" => return Err("requested failure".into()),
            "panic" => panic!("requested panic"),
            "bye" => {
                ctx.send(&"goodbye".to_string())?;
                ctx.close();
            }
            "addrs" => ctx.send(&format!("{} {}", ctx.peer_addr(), ctx.local_addr()))?,
            "typed" => ctx.send(&Pair::TYPED)?,
            "bytes" => ctx.send_bytes(b"some bytes")?,
            "wait" => {
                self.entered.notify_one();
                tokio::time::timeout(WAIT, self.release.notified())
                    .await
                    .map_err(|_| "wait was never released")?;
                ctx.send(&"released".to_string())?;
            }
            "go" => {
                self.release.notify_one();
                ctx.send(&"went".to_string())?;
            }
            "hang" => std::future::pending::<()>().await,
            _ => ctx.send(&line)?,
        }
        Ok(())
    }

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if self.greet {
            ctx.send(&format!("hello {}", ctx.peer_addr()))?;
        }
        Ok(())
    }

    async fn on_close(&self, closed: chitchat_net::Closed) {
        let _ = self.closed_tx.send(closed.peer_addr().clone());
    }
}

/// Counts messages, per peer, without replying.
#[derive(Debug, Default)]
pub struct Counter {
    pub total: AtomicUsize,
    pub per_peer: Mutex<HashMap<Addr, Vec<String>>>,
}

impl Handler for Counter {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.per_peer
            .lock()
            .unwrap()
            .entry(ctx.peer_addr())
            .or_default()
            .push(line);
        self.total.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A plain-old-data message (binary: escaped in `Framing::lines()`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Pair {
    pub a: u32,
    pub b: u32,
}

impl Message for Pair {
    type Codec = PodCodec;
}

impl Pair {
    /// Bytes `ABCDEFGH` on a little-endian machine; no delimiter either way.
    pub const TYPED: Pair = Pair {
        a: u32::from_ne_bytes(*b"ABCD"),
        b: u32::from_ne_bytes(*b"EFGH"),
    };

    pub fn bytes(&self) -> Vec<u8> {
        bytemuck::bytes_of(self).to_vec()
    }
}

/// A serde message whose default codec is bincode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub sensor: u32,
    pub label: String,
}

impl Message for Reading {
    type Codec = chitchat_net::Bincode;
}

/// A small text codec for [`Reading`]: `sensor,label`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Csv;

impl Codec<Reading> for Csv {
    fn name(&self) -> &'static str {
        "csv"
    }

    fn is_binary(&self) -> bool {
        false
    }

    fn encode(&self, item: &Reading, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(format!("{},{}", item.sensor, item.label).as_bytes());
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<Reading, Error> {
        let text = std::str::from_utf8(&frame).map_err(|e| Error::decode("csv", e))?;
        let (sensor, label) = text
            .split_once(',')
            .ok_or_else(|| Error::decode("csv", "no comma"))?;
        let sensor = sensor.parse().map_err(|e| Error::decode("csv", e))?;
        Ok(Reading {
            sensor,
            label: label.to_owned(),
        })
    }
}

/// A handler that forwards every message it gets into a channel.
pub fn collector<M: Message>() -> (impl Handler<Message = M>, mpsc::UnboundedReceiver<M>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler_fn(
        move |msg: M, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(msg).map_err(|_| "collector receiver dropped")?;
            Ok(())
        },
    );
    (handler, rx)
}

/// The next message a [`collector`] got, within [`WAIT`].
pub async fn recv<M>(rx: &mut mpsc::UnboundedReceiver<M>) -> M {
    within("a message", rx.recv())
        .await
        .expect("channel closed")
}

/// An address where nothing listens (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Asserts an event is the given kind for the given peer.
#[track_caller]
/// The TCP socket address of `addr` (every test server here is TCP).
pub fn tcp(addr: impl Into<Addr>) -> SocketAddr {
    addr.into().tcp().expect("a TCP address")
}

pub fn assert_peer(event: &ErrorEvent, peer: impl Into<Addr>) {
    assert_eq!(
        event.peer,
        Some(peer.into()),
        "event {event} names the wrong peer"
    );
}

/// Waits until `progress()` reaches `target`, failing the test if it makes
/// no progress for [`STALL`] (a deadlock). No bound on the total time: a
/// loaded machine makes bulk work slower, not wrong. `what` names the count
/// in the failure message.
pub async fn wait_for_count(what: &str, target: u64, progress: impl Fn() -> u64) {
    let start = Instant::now();
    let mut last = progress();
    let mut last_change = start;
    while last < target {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = progress();
        let at = Instant::now();
        if now != last {
            last = now;
            last_change = at;
        }
        assert!(
            at - last_change < STALL,
            "stalled: {what} stuck at {last} of {target} for {STALL:?} ({:?} in all)",
            at - start
        );
    }
}

/// Asserts that no error event is waiting on `events`.
#[track_caller]
pub fn assert_no_event(side: &str, events: &chitchat_net::ErrorEvents) {
    if let Some(event) = events.try_recv() {
        panic!("unexpected {side} event: {event} ({:?})", event.error);
    }
}

/// What a counting handler has seen: lines, payload bytes, and lines that
/// came out of order (by their leading sequence number).
#[derive(Debug, Default)]
pub struct Tally {
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    pub out_of_order: AtomicU64,
}

/// A handler that counts lines starting with an 8-digit sequence number and
/// checks they come in order.
pub fn counting(tally: Arc<Tally>) -> impl Handler<Message = String> {
    handler_fn(
        move |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            let seq: u64 = line
                .get(..8)
                .and_then(|s| s.parse().ok())
                .ok_or("no sequence number")?;
            if seq != tally.lines.load(Ordering::Relaxed) {
                tally.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            tally.bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
            tally.lines.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
    )
}

/// `len` bytes: `seq` in 8 digits, then padding.
pub fn numbered_line(seq: u64, len: usize) -> String {
    let mut line = format!("{seq:08}");
    line.extend(std::iter::repeat_n('.', len - line.len()));
    line
}

/// Sends `lines` numbered lines of `len` bytes from `client` (whose handler
/// is [`counting`] into `tally`) to an echo server, 1,024 per `send_all`,
/// while the echoes come back; waits until every echo has arrived (failing
/// on a stall of [`STALL`]), then checks the count, the bytes and the order,
/// and that neither side saw an error event.
pub async fn stream_through_echo(
    client: &chitchat_net::Client<String>,
    tally: &Tally,
    lines: u64,
    len: usize,
) {
    const CHUNK: u64 = 1024;
    let handle = client.handle();
    let sender = tokio::spawn(async move {
        let mut seq = 0;
        while seq < lines {
            let end = (seq + CHUNK).min(lines);
            let chunk: Vec<String> = (seq..end).map(|seq| numbered_line(seq, len)).collect();
            handle.send_all(&chunk).await?;
            seq = end;
        }
        Ok::<(), Error>(())
    });
    wait_for_count("echoed lines", lines, || {
        tally.lines.load(Ordering::Relaxed)
    })
    .await;
    within("the sender", sender).await.unwrap().unwrap();
    assert_eq!(tally.lines.load(Ordering::Relaxed), lines);
    assert_eq!(tally.bytes.load(Ordering::Relaxed), lines * len as u64);
    assert_eq!(tally.out_of_order.load(Ordering::Relaxed), 0);
    assert_no_event("client", &client.errors());
}

/// Samples `value` every 20 ms until it has not changed for `quiet`;
/// returns the settled value (fails after twice [`WAIT`] in all): how a
/// test sees that sends have stopped at a bound. Give it a `quiet` of a
/// second or more: a sender that can move moves within tens of
/// milliseconds even on a loaded machine, so a second of stillness means
/// it is held.
pub async fn settled(quiet: Duration, value: impl Fn() -> u64) -> u64 {
    let started = Instant::now();
    let mut last = value();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = value();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(started.elapsed() < 2 * WAIT, "never settled (at {now})");
    }
}
