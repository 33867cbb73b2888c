//! End-to-end comparisons of issue 5: every figure is a ratio against a
//! baseline measured in the same run (the machine is shared and noisy).
//!
//! ```text
//! cargo bench -p chitchat-net-benches --bench compare                            # full run (a few minutes)
//! cargo bench -p chitchat-net-benches --bench compare -- --quick                 # under a minute
//! cargo bench -p chitchat-net-benches --bench compare -- --only pingpong,decode
//! cargo bench -p chitchat-net-benches --bench compare -- --quick --only streams  # reply streams
//! cargo bench -p chitchat-net-benches --bench compare -- --only inflight,deadline
//! ```
//!
//! It prints a table, then one line per target, `ratio <name> <value> <goal>`,
//! oriented so that higher is better and the target holds when
//! `value >= goal` (latency and memory: baseline / ours). See BENCHMARKS.md.
//!
//! It exits non-zero only if a scenario loses messages or fails to run:
//! speed is reported, not judged.

mod inflight;
mod support;

use std::future::Future;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use bytes::{Bytes, BytesMut};
use chitchat_net::{
    handler_fn, Bincode, BoxError, Client, Context, FrameCodec, Framing, Handler, Message,
    PodCodec, ReplySink, Server,
};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_util::codec::{AnyDelimiterCodec, Decoder, Encoder, Framed};

use support::scale::{self, ScaleConfig, ScaleReport, ServerKind};
use support::{fmt_duration, Heartbeat, TypedBincode};

/// `--ours-only` / `--baseline-only`: skip one side (for profiling).
static OURS_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static BASELINE_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the ping-pongs run their round trips in a spawned task rather
/// than in the `block_on` future (the informative "spawned" rows).
static PINGER_SPAWNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Bound of every single measurement.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Messages

/// 16 bytes of plain old data: target 1. (Serde too, for the typed
/// `Framed` + bincode baseline.)
#[derive(Debug, Clone, Copy, Pod, Zeroable, Serialize, Deserialize)]
#[repr(C)]
struct Sample16 {
    seq: u64,
    value: u64,
}

impl Message for Sample16 {
    type Codec = PodCodec;
}

/// About 32 bytes of bincode: target 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Telemetry {
    node: u16,
    seq: u64,
    value: f64,
    name: String,
}

impl Message for Telemetry {
    type Codec = Bincode;
}

/// 1 KiB of plain old data (escaped framing): an extra row of target 2.
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Block1k {
    bytes: [u8; 1024],
}

impl Message for Block1k {
    type Codec = PodCodec;
}

// ---------------------------------------------------------------------------
// The plan

#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    /// Repetitions of each comparison (the value is the median ratio).
    reps: usize,
    /// Messages per one-way run.
    oneway_msgs: u64,
    /// Bytes per 1 KiB bulk run.
    bulk_bytes: u64,
    /// Passes over a 1 MiB buffer per decode run.
    decode_passes: usize,
    /// Round trips per ping-pong run (after 1,000 warm-up ones).
    ping_rounds: usize,
    /// The scale scenario.
    scale: ScaleConfig,
    /// Repetitions of the scale scenario.
    scale_reps: usize,
    only: Option<Vec<String>>,
    /// Skip the baselines (`--ours-only`, for profiling our side).
    ours_only: bool,
}

impl Plan {
    fn from_args() -> Plan {
        let mut quick = false;
        let mut only = None;
        let mut conns = None;
        let mut msgs = None;
        let mut ours_only = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--only" => {
                    let list = args.next().unwrap_or_default();
                    only = Some(list.split(',').map(str::to_owned).collect());
                }
                "--conns" => conns = args.next().and_then(|n| n.parse().ok()),
                "--msgs" => msgs = args.next().and_then(|n| n.parse().ok()),
                "--ours-only" => ours_only = true,
                "--baseline-only" => BASELINE_ONLY.store(true, Ordering::Relaxed),
                // Passed by `cargo bench`; anything else is a filter we ignore.
                _ => {}
            }
        }
        let mut plan = if quick {
            Plan {
                quick,
                reps: 1,
                oneway_msgs: 400_000,
                bulk_bytes: 128 << 20,
                decode_passes: 100,
                ping_rounds: 5_000,
                scale: ScaleConfig {
                    conns: 1_000,
                    rounds: 100,
                    connect_parallel: 64,
                    large_conns: 100,
                    large_bytes: 256 * 1024,
                    phase_timeout: Duration::from_secs(30),
                },
                scale_reps: 1,
                only,
                ours_only,
            }
        } else {
            Plan {
                quick,
                reps: 3,
                oneway_msgs: 3_000_000,
                bulk_bytes: 512 << 20,
                decode_passes: 500,
                ping_rounds: 20_000,
                scale: ScaleConfig {
                    conns: 9_000,
                    rounds: 100,
                    connect_parallel: 64,
                    large_conns: 1_000,
                    large_bytes: 256 * 1024,
                    phase_timeout: Duration::from_secs(120),
                },
                scale_reps: 2,
                only,
                ours_only,
            }
        };
        if let Some(msgs) = msgs {
            plan.oneway_msgs = msgs;
        }
        if let Some(conns) = conns {
            plan.scale.conns = conns;
            plan.scale.large_conns = plan.scale.large_conns.min(conns);
        }
        plan
    }

    /// Whether `--only` selects `group` or one of its cases (`group_*`).
    fn wants(&self, group: &str) -> bool {
        self.only.as_ref().is_none_or(|list| {
            list.iter()
                .any(|g| g == group || g.strip_prefix(group).is_some_and(|r| r.starts_with('_')))
        })
    }

    /// Whether `--only` selects `group` as a whole or its case `case`.
    fn wants_case(&self, group: &str, case: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|list| list.iter().any(|g| g == group || g == case))
    }
}

// ---------------------------------------------------------------------------
// Results

/// One row of the table.
struct Row {
    /// The issue's target number.
    target: &'static str,
    /// The `ratio` line's name; `None` for informative rows.
    name: Option<&'static str>,
    what: String,
    ours: String,
    baseline: String,
    /// Higher is better.
    value: f64,
    goal: Option<f64>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Report {
    fn print(&self) {
        println!();
        println!(
            "{:<3} {:<54} {:>16} {:>16} {:>7} {:>6}  met",
            "#", "measurement", "ours", "baseline", "ratio", "goal"
        );
        for row in &self.rows {
            let (goal, met) = match row.goal {
                Some(goal) => (
                    format!("{goal:.2}"),
                    if row.value >= goal { "yes" } else { "NO" },
                ),
                None => ("-".to_owned(), "(info)"),
            };
            println!(
                "{:<3} {:<54} {:>16} {:>16} {:>7.3} {:>6}  {}",
                row.target, row.what, row.ours, row.baseline, row.value, goal, met
            );
        }
        println!();
        for row in &self.rows {
            if let (Some(name), Some(goal)) = (row.name, row.goal) {
                println!("ratio {name} {:.4} {goal:.2}", row.value);
            }
        }
        for failure in &self.failures {
            println!("FAILED {failure}");
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn si(value: f64, unit: &str) -> String {
    let (v, prefix) = if value >= 1e9 {
        (value / 1e9, "G")
    } else if value >= 1e6 {
        (value / 1e6, "M")
    } else if value >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    format!("{v:.2} {prefix}{unit}")
}

/// Runs `baseline` and `ours` `reps` times, alternating which goes first,
/// and returns the medians of each and of the per-repetition ratio
/// `ours / baseline` (both higher-is-better rates).
fn compare_rates(
    reps: usize,
    label: &str,
    mut baseline: impl FnMut() -> f64,
    mut ours: impl FnMut() -> f64,
) -> (f64, f64, f64) {
    let (mut b, mut o, mut r) = (Vec::new(), Vec::new(), Vec::new());
    let skip = OURS_ONLY.load(Ordering::Relaxed);
    let mut baseline = move || if skip { f64::NAN } else { baseline() };
    let skip = BASELINE_ONLY.load(Ordering::Relaxed);
    let mut ours = move || if skip { f64::NAN } else { ours() };
    for rep in 0..reps {
        let (x, y) = if rep % 2 == 0 {
            let x = baseline();
            (x, ours())
        } else {
            let y = ours();
            (baseline(), y)
        };
        eprintln!(
            "  {label} rep {rep}: ours {y:.4e}, baseline {x:.4e}, ratio {:.3}",
            y / x
        );
        b.push(x);
        o.push(y);
        r.push(y / x);
    }
    (median(&mut o), median(&mut b), median(&mut r))
}

/// [`compare_rates`] against several baselines in one go: each repetition
/// runs every baseline and ours (rotating which goes first). Returns the
/// median of ours, then for each baseline its median and the median of the
/// per-repetition ratio `ours / baseline`.
fn compare_many(
    reps: usize,
    label: &str,
    baselines: &mut [(&str, &mut dyn FnMut() -> f64)],
    ours: &mut dyn FnMut() -> f64,
) -> (f64, Vec<(f64, f64)>) {
    let skip_base = OURS_ONLY.load(Ordering::Relaxed);
    let skip_ours = BASELINE_ONLY.load(Ordering::Relaxed);
    let k = baselines.len();
    let mut o = Vec::new();
    let mut b: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut r: Vec<Vec<f64>> = vec![Vec::new(); k];
    for rep in 0..reps {
        // Position of ours in this repetition's order.
        let at = rep % (k + 1);
        let mut got = vec![f64::NAN; k];
        let mut y = f64::NAN;
        for slot in 0..=k {
            if slot == at {
                if !skip_ours {
                    y = ours();
                }
                continue;
            }
            let i = if slot < at { slot } else { slot - 1 };
            if !skip_base {
                got[i] = (baselines[i].1)();
            }
        }
        let line: Vec<String> = baselines
            .iter()
            .zip(&got)
            .map(|((name, _), x)| format!("{name} {x:.4e} (ratio {:.3})", y / x))
            .collect();
        eprintln!("  {label} rep {rep}: ours {y:.4e}; {}", line.join(", "));
        o.push(y);
        for i in 0..k {
            b[i].push(got[i]);
            r[i].push(y / got[i]);
        }
    }
    let per_baseline = (0..k)
        .map(|i| (median(&mut b[i]), median(&mut r[i])))
        .collect();
    (median(&mut o), per_baseline)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn bounded<F: Future>(rt: &Runtime, what: &str, fut: F) -> F::Output {
    match rt.block_on(async { tokio::time::timeout(MEASURE_TIMEOUT, fut).await }) {
        Ok(out) => out,
        Err(_) => panic!("{what} took longer than {MEASURE_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------
// Target 1 and 2: one way, through the whole client → server path

/// Counts frames; wakes `done` at the `target`th.
struct Count<M> {
    frames: AtomicU64,
    target: u64,
    done: Notify,
    _message: PhantomData<fn(M)>,
}

impl<M> Count<M> {
    fn new(target: u64) -> Self {
        Count {
            frames: AtomicU64::new(0),
            target,
            done: Notify::new(),
            _message: PhantomData,
        }
    }
}

impl<M: Message> Handler for Count<M> {
    type Message = M;

    async fn handle(&self, _msg: M, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if self.frames.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// Messages per `Client::send_all` call in the batched one-way runs.
const ONEWAY_BATCH: usize = 1024;

/// How the one-way client hands its messages over.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sending {
    /// One `Client::send` per message.
    PerMessage,
    /// `Client::send_all` of [`ONEWAY_BATCH`] messages at a time (filled by
    /// `step` into a reused vector, inside the clock): the counterpart of the
    /// baseline's feed-then-flush.
    Batched,
}

/// chitchat-net: `n` sends of `msg` (updated by `step` before each) from a
/// `Client` to a counting `Server`. Returns messages per second.
fn oneway_ours<M: Message + Sync + Clone>(
    rt: &Runtime,
    n: u64,
    framing: Framing,
    msg: M,
    step: impl Fn(&mut M, u64) + Send + 'static,
) -> f64 {
    oneway_ours_with(rt, n, framing, msg, step, Sending::PerMessage)
}

/// [`oneway_ours`], per message or batched.
fn oneway_ours_with<M: Message + Sync + Clone>(
    rt: &Runtime,
    n: u64,
    framing: Framing,
    mut msg: M,
    step: impl Fn(&mut M, u64) + Send + 'static,
    sending: Sending,
) -> f64 {
    bounded(rt, "one-way (ours)", async move {
        let server = Server::builder(Count::<M>::new(n))
            .framing(framing)
            .listen("127.0.0.1:0")
            .await
            .expect("listen");
        let errors = server.errors();
        let client = Client::<M>::builder()
            .framing(framing)
            .connect(server.local_addr())
            .await
            .expect("connect");
        let done = server.handler().done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        let started = Instant::now();
        match sending {
            Sending::PerMessage => {
                for i in 0..n {
                    step(&mut msg, i);
                    client.send(&msg).await.expect("send");
                }
            }
            Sending::Batched => {
                let mut batch = vec![msg; ONEWAY_BATCH.min(n as usize)];
                let mut i = 0;
                while i < n {
                    let len = (n - i).min(ONEWAY_BATCH as u64) as usize;
                    for m in &mut batch[..len] {
                        step(m, i);
                        i += 1;
                    }
                    client.send_all(&batch[..len]).await.expect("send_all");
                }
            }
        }
        tokio::select! {
            _ = &mut done => {}
            event = errors.recv() => panic!("server error: {event:?}"),
        }
        let elapsed = started.elapsed();
        client.close().await;
        server.cut().await;
        n as f64 / elapsed.as_secs_f64()
    })
}

/// tokio-util: `Framed<TcpStream, AnyDelimiterCodec>` feeding `n` frames and
/// flushing once; the server counts frames with the same codec. Returns
/// frames per second.
fn oneway_framed(rt: &Runtime, n: u64, payload: &'static str) -> f64 {
    bounded(rt, "one-way (framed)", async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counter = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let codec = AnyDelimiterCodec::new(b"\n".to_vec(), b"\n".to_vec());
            let mut framed = Framed::new(stream, codec);
            let mut count = 0;
            while let Some(frame) = framed.next().await {
                frame.expect("frame");
                count += 1;
                if count == n {
                    break;
                }
            }
            (count, Instant::now())
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let codec = AnyDelimiterCodec::new(b"\n".to_vec(), b"\n".to_vec());
        let mut framed = Framed::new(stream, codec);
        let started = Instant::now();
        for _ in 0..n {
            framed.feed(payload).await.expect("feed");
        }
        SinkExt::<&str>::flush(&mut framed).await.expect("flush");
        let (count, ended) = counter.await.expect("counter");
        assert_eq!(count, n);
        n as f64 / (ended - started).as_secs_f64()
    })
}

/// Raw loopback, blocking std sockets, 64 KiB writes. Returns bytes per second.
fn bulk_raw(total: u64) -> f64 {
    const CHUNK: usize = 64 * 1024;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(MEASURE_TIMEOUT))
            .expect("timeout");
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while got < total {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        (got, Instant::now())
    });
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_write_timeout(Some(MEASURE_TIMEOUT))
        .expect("timeout");
    let chunk = vec![b'x'; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        stream.write_all(&chunk).expect("write");
        sent += CHUNK as u64;
    }
    let (got, ended) = reader.join().expect("reader");
    assert!(got >= total, "raw loopback: {got} of {total} bytes");
    got as f64 / (ended - started).as_secs_f64()
}

/// A 1 KiB payload of text-like bytes (no `\n`).
fn text_1k() -> Bytes {
    (0..1024u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// `n` pseudo-random bytes (xorshift; the same every run).
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Target 3: decoding from memory

/// What the decode payloads hold.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// Random bytes: in escaped mode about 8 escapes per KiB.
    Random,
    /// Random bytes but `\n` (raw mode refuses the delimiter).
    NoDelimiter,
    /// Printable ASCII: nothing to escape.
    Text,
}

/// `frames` frames of `payload_len` bytes each, encoded with `encoder`.
fn wire_of(
    frames: usize,
    payload_len: usize,
    payload: Payload,
    encoder: &mut FrameCodec,
) -> BytesMut {
    let mut wire = BytesMut::new();
    for i in 0..frames {
        let random = random_bytes(payload_len, 0x9E37_79B9_7F4A_7C15 ^ i as u64);
        let payload: Vec<u8> = match payload {
            Payload::Random => random,
            Payload::NoDelimiter => random
                .into_iter()
                .map(|b| if b == b'\n' { b'n' } else { b })
                .collect(),
            Payload::Text => random.into_iter().map(|b| b' ' + b % 95).collect(),
        };
        encoder.encode(&payload[..], &mut wire).expect("encode");
    }
    wire
}

/// Decodes `passes` copies of `wire` with a fresh decoder each; returns
/// wire bytes per second (the copies are made outside the timing).
fn decode_rate<D>(wire: &[u8], frames: usize, passes: usize, mut fresh: impl FnMut() -> D) -> f64
where
    D: Decoder<Item = Bytes>,
    D::Error: std::fmt::Debug,
{
    let mut busy = Duration::ZERO;
    for _ in 0..passes {
        let mut buf = BytesMut::from(wire);
        let mut decoder = fresh();
        let started = Instant::now();
        let mut count = 0;
        while let Some(frame) = decoder.decode(&mut buf).expect("decode") {
            std::hint::black_box(frame);
            count += 1;
        }
        busy += started.elapsed();
        assert_eq!(count, frames);
    }
    (wire.len() * passes) as f64 / busy.as_secs_f64()
}

fn any_delimiter() -> AnyDelimiterCodec {
    AnyDelimiterCodec::new(b"\n".to_vec(), b"\n".to_vec())
}

/// The typed baseline: `Framed<TcpStream, TypedBincode<M>>` (length
/// delimited, bincode: the tokio-serde way) feeding `n` values (updated by
/// `step` before each) and flushing once; the server decodes each frame
/// into `M` and counts. Returns messages per second.
fn oneway_typed<M>(rt: &Runtime, n: u64, mut msg: M, step: fn(&mut M, u64)) -> f64
where
    M: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    bounded(rt, "one-way (typed framed)", async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counter = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut framed = Framed::new(stream, TypedBincode::<M>::default());
            let mut count = 0;
            while let Some(value) = framed.next().await {
                std::hint::black_box(value.expect("value"));
                count += 1;
                if count == n {
                    break;
                }
            }
            (count, Instant::now())
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut framed = Framed::new(stream, TypedBincode::<M>::default());
        let started = Instant::now();
        for i in 0..n {
            step(&mut msg, i);
            framed.feed(&msg).await.expect("feed");
        }
        SinkExt::<&M>::flush(&mut framed).await.expect("flush");
        let (count, ended) = counter.await.expect("counter");
        assert_eq!(count, n);
        n as f64 / (ended - started).as_secs_f64()
    })
}

// ---------------------------------------------------------------------------
// Target 4: ping-pong

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> bool {
    // SAFETY: `set` is a plain bit set owned by this frame; the call only
    // reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

const PING_WARMUP: usize = 1_000;

/// Latency percentiles of `samples` in microseconds: (p50, p99).
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.5), at(0.99))
}

/// Raw std `TcpStream` ping-pong, 17-byte messages, both threads pinned to
/// `cpu`. Returns the round-trip times.
fn pingpong_std(rounds: usize, cpu: usize) -> Vec<Duration> {
    const LEN: usize = 17;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let total = PING_WARMUP + rounds;
    let echo = std::thread::spawn(move || {
        pin_to(cpu);
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(MEASURE_TIMEOUT))
            .expect("timeout");
        let mut buf = [0u8; LEN];
        for _ in 0..total {
            stream.read_exact(&mut buf).expect("read");
            stream.write_all(&buf).expect("write");
        }
    });
    let samples = std::thread::spawn(move || {
        pin_to(cpu);
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(MEASURE_TIMEOUT))
            .expect("timeout");
        let mut msg = [b'p'; LEN];
        msg[LEN - 1] = b'\n';
        let mut buf = [0u8; LEN];
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..total {
            let started = Instant::now();
            stream.write_all(&msg).expect("write");
            stream.read_exact(&mut buf).expect("read");
            if i >= PING_WARMUP {
                samples.push(started.elapsed());
            }
        }
        samples
    })
    .join()
    .expect("pinger");
    echo.join().expect("echo");
    samples
}

/// Both ends on one current-thread runtime pinned to `cpu`: `build` returns
/// a future doing the round trips.
///
/// The round trips run in the `block_on` future itself, as in a program's
/// `main`, unless [`PINGER_SPAWNED`] is set: then in a task of their own.
fn on_one_cpu<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
    cpu: usize,
    build: impl FnOnce() -> F + Send + 'static,
) -> T {
    let spawned = PINGER_SPAWNED.load(Ordering::Relaxed);
    std::thread::spawn(move || {
        pin_to(cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let run = tokio::time::timeout(MEASURE_TIMEOUT, build());
            let done = if spawned {
                tokio::spawn(run).await.expect("pinger task")
            } else {
                run.await
            };
            done.expect("ping-pong timed out")
        })
    })
    .join()
    .expect("ping-pong thread")
}

/// chitchat-net: a `Client<Heartbeat>` whose handler signals each reply, and
/// a `Server` answering each heartbeat, on one thread.
fn pingpong_ours(rounds: usize, cpu: usize) -> Vec<Duration> {
    struct Reply {
        count: AtomicU64,
        arrived: Notify,
    }
    struct Pong;
    impl Handler for Pong {
        type Message = Heartbeat;
        async fn handle(&self, hb: Heartbeat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
            ctx.send(&hb)?;
            Ok(())
        }
    }
    on_one_cpu(cpu, move || async move {
        let server = Server::builder(Pong)
            .listen("127.0.0.1:0")
            .await
            .expect("listen");
        let reply = Arc::new(Reply {
            count: AtomicU64::new(0),
            arrived: Notify::new(),
        });
        let signal = reply.clone();
        let client = Client::<Heartbeat>::builder()
            .handler(handler_fn(
                move |_hb: Heartbeat, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
                    signal.count.fetch_add(1, Ordering::Release);
                    signal.arrived.notify_one();
                    Ok(())
                },
            ))
            .connect(server.local_addr())
            .await
            .expect("connect");
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..(PING_WARMUP + rounds) as u64 {
            let started = Instant::now();
            let hb = Heartbeat {
                seq: i,
                node: 1,
                flags: 0,
            };
            client.send(&hb).await.expect("send");
            while reply.count.load(Ordering::Acquire) <= i {
                reply.arrived.notified().await;
            }
            if i as usize >= PING_WARMUP {
                samples.push(started.elapsed());
            }
        }
        client.close().await;
        server.cut().await;
        samples
    })
}

/// chitchat-net request/reply: `Client::request` (request ids on) against
/// a `Server` whose handler answers with `ctx.reply`, on one thread.
fn pingpong_request(rounds: usize, cpu: usize) -> Vec<Duration> {
    struct Pong;
    impl Handler for Pong {
        type Message = Heartbeat;
        async fn handle(&self, hb: Heartbeat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
            ctx.reply(&hb)?;
            Ok(())
        }
    }
    on_one_cpu(cpu, move || async move {
        let server = Server::builder(Pong)
            .request_ids()
            .listen("127.0.0.1:0")
            .await
            .expect("listen");
        let client = Client::<Heartbeat>::builder()
            .request_ids()
            .connect(server.local_addr())
            .await
            .expect("connect");
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..(PING_WARMUP + rounds) as u64 {
            let started = Instant::now();
            let hb = Heartbeat {
                seq: i,
                node: 1,
                flags: 0,
            };
            let reply: Heartbeat = client.request(&hb).await.expect("reply");
            assert_eq!(reply.seq, i, "a reply answered another request");
            if i as usize >= PING_WARMUP {
                samples.push(started.elapsed());
            }
        }
        client.close().await;
        server.cut().await;
        samples
    })
}

/// tokio-util: `Framed<TcpStream, AnyDelimiterCodec>` at both ends, one
/// thread (informative: what tokio itself costs).
fn pingpong_framed(rounds: usize, cpu: usize) -> Vec<Duration> {
    on_one_cpu(cpu, move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let echo = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut framed = Framed::new(stream, support::EchoCodec::lines());
            while let Some(Ok(frame)) = framed.next().await {
                if framed.send(frame).await.is_err() {
                    break;
                }
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut framed = Framed::new(stream, any_delimiter());
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..PING_WARMUP + rounds {
            let started = Instant::now();
            framed.send("pppppppppppppppp").await.expect("send");
            framed.next().await.expect("reply").expect("frame");
            if i >= PING_WARMUP {
                samples.push(started.elapsed());
            }
        }
        drop(framed);
        let _ = echo.await;
        samples
    })
}

/// The typed baseline: `Framed<TcpStream, TypedBincode<Heartbeat>>` at both
/// ends (length delimited, bincode), the echo decoding each heartbeat and
/// sending it back, one thread.
fn pingpong_typed(rounds: usize, cpu: usize) -> Vec<Duration> {
    on_one_cpu(cpu, move || async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let echo = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut framed = Framed::new(stream, TypedBincode::<Heartbeat>::default());
            while let Some(Ok(hb)) = framed.next().await {
                if framed.send(&hb).await.is_err() {
                    break;
                }
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut framed = Framed::new(stream, TypedBincode::<Heartbeat>::default());
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..(PING_WARMUP + rounds) as u64 {
            let started = Instant::now();
            let hb = Heartbeat {
                seq: i,
                node: 1,
                flags: 0,
            };
            framed.send(&hb).await.expect("send");
            let reply = framed.next().await.expect("reply").expect("frame");
            assert_eq!(reply.seq, i, "a reply answered another request");
            if i as usize >= PING_WARMUP {
                samples.push(started.elapsed());
            }
        }
        drop(framed);
        let _ = echo.await;
        samples
    })
}

// ---------------------------------------------------------------------------
// Reply streams (issue 23, item 6): items per second through reply streams

/// A subscription to `n` [`Sample16`] items.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[message(codec = "bincode", stream = Sample16)]
struct Feed {
    n: u64,
}

/// Answers a [`Feed`] with its items, from a task of its own.
#[derive(Handler)]
#[handler(message = Feed)]
struct Feeder;

impl FeedHandler for Feeder {
    async fn feed(
        &self,
        msg: Feed,
        mut sink: ReplySink<Sample16>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        tokio::spawn(async move {
            let mut item = Sample16 { seq: 0, value: 7 };
            for i in 0..msg.n {
                item.seq = i;
                if sink.send(&item).await.is_err() {
                    return;
                }
            }
            sink.end();
        });
        Ok(())
    }
}

/// chitchat-net: `n` items in all through `subscribers` reply streams on
/// one connection (a window of `window` items each), each read to its end
/// and checked in order. Returns items per second.
fn streams_ours(rt: &Runtime, n: u64, subscribers: u64, window: u64) -> f64 {
    bounded(rt, "reply streams (ours)", async move {
        let server = Server::builder(Feeder)
            .request_ids()
            .listen("127.0.0.1:0")
            .await
            .expect("listen");
        let client = Arc::new(
            Client::<Feed>::builder()
                .request_ids()
                .connect(server.local_addr())
                .await
                .expect("connect"),
        );
        let each = n / subscribers;
        let started = Instant::now();
        let readers: Vec<_> = (0..subscribers)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut stream = client
                        .subscribe_with(&Feed { n: each }, window)
                        .await
                        .expect("subscribe");
                    let mut expected = 0;
                    while let Some(item) = stream.next().await {
                        let item = item.expect("an item");
                        assert_eq!(item.seq, expected, "items out of order");
                        expected += 1;
                    }
                    assert_eq!(expected, each, "items lost");
                })
            })
            .collect();
        for reader in readers {
            reader.await.expect("a reader");
        }
        let elapsed = started.elapsed();
        client.close().await;
        server.cut().await;
        (each * subscribers) as f64 / elapsed.as_secs_f64()
    })
}

fn target_streams(plan: &Plan, rt: &Runtime, report: &mut Report) {
    let n = plan.oneway_msgs;
    eprintln!("reply streams: {n} items per run");
    let cases: [(u64, u64, &str); 3] = [
        (
            1,
            chitchat_net::DEFAULT_STREAM_WINDOW,
            "1 subscriber, window 32",
        ),
        (1, 1024, "1 subscriber, window 1024"),
        (
            100,
            chitchat_net::DEFAULT_STREAM_WINDOW,
            "100 subscribers, window 32",
        ),
    ];
    for (subscribers, window, what) in cases {
        let (ours, base, ratio) = compare_rates(
            plan.reps,
            &format!("streams {what}"),
            || {
                let msg = Sample16 { seq: 0, value: 7 };
                let step = |m: &mut Sample16, i| m.seq = i;
                oneway_ours_with(rt, n, Framing::lines(), msg, step, Sending::Batched)
            },
            || streams_ours(rt, n, subscribers, window),
        );
        report.rows.push(Row {
            target: "s6",
            name: None,
            what: format!("reply stream Pod 16 B, {what} vs one-way send_all"),
            ours: si(ours, "item/s"),
            baseline: si(base, "msg/s"),
            value: ratio,
            goal: None,
        });
    }
}

// ---------------------------------------------------------------------------
// The targets

fn target_oneway(plan: &Plan, rt: &Runtime, report: &mut Report) {
    let n = plan.oneway_msgs;
    eprintln!("one-way: {n} messages per run");
    if plan.wants_case("oneway", "oneway_pod16") {
        let msg = Sample16 { seq: 0, value: 7 };
        let step = |m: &mut Sample16, i| m.seq = i;
        oneway_rows(
            plan,
            rt,
            report,
            "oneway_pod16",
            "oneway_pod16_vs_typed",
            Some("oneway_per_send"),
            "Pod 16 B",
            msg,
            step,
            "0123456789abcdef",
        );
    }
    if !plan.wants_case("oneway", "oneway_bincode") {
        return;
    }

    // A millisecond timestamp as the sequence: a 9-byte varint, 33 bytes in all.
    const EPOCH_MS: u64 = 1_700_000_000_000;
    let telemetry = Telemetry {
        node: 7,
        seq: EPOCH_MS,
        value: 21.5,
        name: "node-0007.rack".to_owned(),
    };
    let mut sized = BytesMut::new();
    chitchat_net::Codec::encode(&Bincode, &telemetry, &mut sized).expect("encode");
    let len = sized.len();
    let payload: &'static str = Box::leak("t".repeat(len).into_boxed_str());
    let step = |m: &mut Telemetry, i| m.seq = EPOCH_MS + i;
    let what = format!("bincode {len} B");
    oneway_rows(
        plan,
        rt,
        report,
        "oneway_bincode",
        "oneway_bincode_vs_typed",
        None,
        &what,
        telemetry,
        step,
        payload,
    );
}

/// The one-way rows of one message type (`name`: the target's `ratio`
/// name): the target, batched (`send_all`, as the baselines feed a batch
/// and flush once), against the Framed frame counter (`payload`, a frame of
/// the same length) and against the typed `Framed` + bincode loop (the
/// same values); then one `send` per message against the frame counter.
#[allow(clippy::too_many_arguments)]
fn oneway_rows<M>(
    plan: &Plan,
    rt: &Runtime,
    report: &mut Report,
    name: &'static str,
    typed_name: &'static str,
    per_send_name: Option<&'static str>,
    what: &str,
    msg: M,
    step: fn(&mut M, u64),
    payload: &'static str,
) where
    M: Message + Sync + Clone + Serialize + serde::de::DeserializeOwned,
{
    let case = name.strip_prefix("oneway_").unwrap_or(name);
    let n = plan.oneway_msgs;
    let (ours, per_baseline) = compare_many(
        plan.reps,
        &format!("{case} send_all"),
        &mut [
            ("framed", &mut || oneway_framed(rt, n, payload)),
            ("typed", &mut || oneway_typed(rt, n, msg.clone(), step)),
        ],
        &mut || {
            let m = msg.clone();
            oneway_ours_with(rt, n, Framing::lines(), m, step, Sending::Batched)
        },
    );
    let [(framed, framed_ratio), (typed, typed_ratio)] = per_baseline[..] else {
        unreachable!("two baselines")
    };
    report.rows.push(Row {
        target: "1",
        name: Some(name),
        what: format!("one-way {what}, escaped, send_all x{ONEWAY_BATCH} msg/s"),
        ours: si(ours, "msg/s"),
        baseline: si(framed, "frame/s"),
        value: framed_ratio,
        goal: Some(1.0),
    });
    report.rows.push(Row {
        target: "1",
        name: Some(typed_name),
        what: "  the same vs typed Framed + bincode (msg/s)".to_owned(),
        ours: si(ours, "msg/s"),
        baseline: si(typed, "msg/s"),
        value: typed_ratio,
        goal: Some(1.5),
    });
    let (ours, base, ratio) = compare_rates(
        plan.reps,
        &format!("{case} send"),
        || oneway_framed(rt, n, payload),
        || {
            oneway_ours_with(
                rt,
                n,
                Framing::lines(),
                msg.clone(),
                step,
                Sending::PerMessage,
            )
        },
    );
    report.rows.push(Row {
        target: "1",
        name: per_send_name,
        what: format!("one-way {what}, escaped, one send per msg msg/s"),
        ours: si(ours, "msg/s"),
        baseline: si(base, "frame/s"),
        value: ratio,
        goal: per_send_name.map(|_| 0.5),
    });
}

fn target_bulk(plan: &Plan, rt: &Runtime, report: &mut Report) {
    let total = plan.bulk_bytes;
    let n = total / 1024;
    eprintln!("bulk: {total} bytes per run");
    let payload = text_1k();
    let (ours, base, ratio) = compare_rates(
        plan.reps,
        "bulk 1k raw",
        || bulk_raw(total),
        || {
            let p = payload.clone();
            let rate = oneway_ours(rt, n, Framing::lines(), p.clone(), |_, _| {});
            rate * 1024.0
        },
    );
    report.rows.push(Row {
        target: "2",
        name: Some("bulk_1k"),
        what: "1 KiB frames one way, lines (raw) B/s".into(),
        ours: si(ours, "B/s"),
        baseline: si(base, "B/s"),
        value: ratio,
        goal: Some(0.5),
    });

    let block = Block1k {
        bytes: random_bytes(1024, 42).try_into().expect("1024 bytes"),
    };
    let (ours, base, ratio) = compare_rates(
        1,
        "bulk 1k escaped",
        || bulk_raw(total),
        || oneway_ours(rt, n, Framing::lines(), block, |m, i| m.bytes[0] = i as u8) * 1024.0,
    );
    report.rows.push(Row {
        target: "2",
        name: None,
        what: "1 KiB Pod random bytes, lines (escaped) B/s".into(),
        ours: si(ours, "B/s"),
        baseline: si(base, "B/s"),
        value: ratio,
        goal: None,
    });

    let text: &'static str = Box::leak(
        String::from_utf8(payload.to_vec())
            .expect("ascii")
            .into_boxed_str(),
    );
    let (framed, base, ratio) = compare_rates(
        1,
        "bulk 1k framed",
        || bulk_raw(total),
        || oneway_framed(rt, n, text) * 1024.0,
    );
    report.rows.push(Row {
        target: "2",
        name: None,
        what: "(tokio-util Framed, 1 KiB frames) B/s".into(),
        ours: si(framed, "B/s"),
        baseline: si(base, "B/s"),
        value: ratio,
        goal: None,
    });
}

fn target_decode(plan: &Plan, report: &mut Report) {
    const FRAMES: usize = 1024;
    let passes = plan.decode_passes;
    eprintln!("decode: {passes} passes over {FRAMES} frames of 1 KiB");
    /// What is measured, its `ratio` name, the framing, the payload, the goal.
    type Case = (
        &'static str,
        Option<&'static str>,
        Framing,
        Payload,
        Option<f64>,
    );
    let cases: [Case; 3] = [
        (
            "decode 1 KiB, raw, from memory B/s",
            Some("decode_1k_raw"),
            Framing::lines().raw(),
            Payload::NoDelimiter,
            Some(5.0),
        ),
        (
            "decode 1 KiB, escaped, random bytes B/s",
            Some("decode_1k_escaped"),
            Framing::lines().escaped(),
            Payload::Random,
            Some(3.0),
        ),
        (
            "decode 1 KiB, escaped, text (no escapes) B/s",
            None,
            Framing::lines().escaped(),
            Payload::Text,
            None,
        ),
    ];
    for (what, name, framing, payload, goal) in cases {
        let wire = wire_of(FRAMES, 1024, payload, &mut FrameCodec::new(framing));
        let (ours, base, ratio) = compare_rates(
            plan.reps,
            what,
            || decode_rate(&wire, FRAMES, passes, any_delimiter),
            || decode_rate(&wire, FRAMES, passes, || FrameCodec::new(framing)),
        );
        report.rows.push(Row {
            target: "3",
            name,
            what: what.into(),
            ours: si(ours, "B/s"),
            baseline: si(base, "B/s"),
            value: ratio,
            goal,
        });
    }
}

fn target_pingpong(plan: &Plan, report: &mut Report) {
    let rounds = plan.ping_rounds;
    let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    eprintln!("ping-pong: {rounds} round trips per run, pinned to CPU {cpu}");
    let run_std = !plan.ours_only && plan.wants_case("pingpong", "pingpong_std");
    let run_ours = plan.wants_case("pingpong", "pingpong_ours");
    let run_framed = !plan.ours_only && plan.wants_case("pingpong", "pingpong_framed");
    let run_typed = !plan.ours_only && plan.wants_case("pingpong", "pingpong_typed");
    let run_request = plan.wants_case("pingpong", "pingpong_request");
    let measure = |run: bool, f: fn(usize, usize) -> Vec<Duration>| {
        if run {
            percentiles(&mut f(rounds, cpu))
        } else {
            (f64::NAN, f64::NAN)
        }
    };
    // Per repetition: (p50, p99) of std, ours, framed, typed, request.
    type Percentiles = [(f64, f64); 5];
    let mut runs: Vec<Percentiles> = Vec::new();
    for rep in 0..plan.reps {
        let mut cases = [
            (run_std, pingpong_std as fn(usize, usize) -> Vec<Duration>),
            (run_ours, pingpong_ours),
            (run_framed, pingpong_framed),
            (run_typed, pingpong_typed),
            (run_request, pingpong_request),
        ]
        .map(|(run, f)| (run, f, (f64::NAN, f64::NAN)));
        // Rotate the order between repetitions (the machine drifts).
        for k in 0..cases.len() {
            let i = (k + rep) % cases.len();
            let (run, f, _) = cases[i];
            cases[i].2 = measure(run, f);
        }
        let r = cases.map(|(_, _, p)| p);
        eprintln!(
            "  ping-pong rep {rep}: p50 std {:.1} µs, ours {:.1} µs, framed {:.1} µs, typed {:.1} µs, request {:.1} µs; p99 std {:.1}, ours {:.1}, framed {:.1}, request {:.1}",
            r[0].0, r[1].0, r[2].0, r[3].0, r[4].0, r[0].1, r[1].1, r[2].1, r[4].1
        );
        runs.push(r);
    }
    // The median over repetitions of `f`.
    let pick = |f: &dyn Fn(&Percentiles) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        median(&mut v)
    };
    const STD: usize = 0;
    const OURS: usize = 1;
    const FRAMED: usize = 2;
    const TYPED: usize = 3;
    const REQUEST: usize = 4;
    let us = |v: f64| format!("{v:.1} µs");
    // (ratio name, what, ours, baseline, p99 rather than p50, goal): each
    // row's value is the median over repetitions of baseline / ours.
    type Spec = (
        Option<&'static str>,
        &'static str,
        usize,
        usize,
        bool,
        Option<f64>,
    );
    let rows: [Spec; 8] = [
        (
            Some("pingpong_p50"),
            "ping-pong p50, one CPU (std/ours)",
            OURS,
            STD,
            false,
            Some(1.0 / 1.1),
        ),
        (
            None,
            "ping-pong p99, one CPU (std/ours)",
            OURS,
            STD,
            true,
            None,
        ),
        (
            None,
            "(tokio-util Framed ping-pong p50, std/framed)",
            FRAMED,
            STD,
            false,
            None,
        ),
        (
            Some("pingpong_vs_framed"),
            "ping-pong p50 (Framed/ours)",
            OURS,
            FRAMED,
            false,
            Some(1.0),
        ),
        (
            None,
            "ping-pong p50 (typed Framed + bincode/ours)",
            OURS,
            TYPED,
            false,
            None,
        ),
        (
            Some("request_p50_vs_framed"),
            "Client::request round trip p50 (Framed/request)",
            REQUEST,
            FRAMED,
            false,
            Some(1.0),
        ),
        (
            None,
            "Client::request round trip p99 (Framed/request)",
            REQUEST,
            FRAMED,
            true,
            None,
        ),
        (
            None,
            "Client::request p50 (typed Framed + bincode/request)",
            REQUEST,
            TYPED,
            false,
            None,
        ),
    ];
    for (name, what, ours, base, tail, goal) in rows {
        let at = |r: &Percentiles, i: usize| if tail { r[i].1 } else { r[i].0 };
        report.rows.push(Row {
            target: "4",
            name,
            what: what.into(),
            ours: us(pick(&|r| at(r, ours))),
            baseline: us(pick(&|r| at(r, base))),
            value: pick(&|r| at(r, base) / at(r, ours)),
            goal,
        });
    }
    if !(run_ours && run_framed && run_request) {
        return;
    }
    // The same with the pinger in a spawned task instead of the `block_on`
    // future: a task woken by another task is run at once, while a woken
    // `block_on` future costs the current-thread scheduler a poll of its
    // driver first (BENCHMARKS.md, "What limits the goals still unmet").
    PINGER_SPAWNED.store(true, Ordering::Relaxed);
    let mut spawned: Vec<[f64; 3]> = Vec::new();
    for rep in 0..plan.reps {
        let mut r = [f64::NAN; 3];
        let cases: [fn(usize, usize) -> Vec<Duration>; 3] =
            [pingpong_ours, pingpong_framed, pingpong_request];
        for k in 0..3 {
            let i = (k + rep) % 3;
            r[i] = measure(true, cases[i]).0;
        }
        eprintln!(
            "  ping-pong (spawned pinger) rep {rep}: p50 ours {:.1} µs, framed {:.1} µs, request {:.1} µs",
            r[0], r[1], r[2]
        );
        spawned.push(r);
    }
    PINGER_SPAWNED.store(false, Ordering::Relaxed);
    let pick = |f: &dyn Fn(&[f64; 3]) -> f64| {
        let mut v: Vec<f64> = spawned.iter().map(f).collect();
        median(&mut v)
    };
    report.rows.push(Row {
        target: "4",
        name: None,
        what: "ping-pong p50, pinger in a spawned task (Framed/ours)".into(),
        ours: us(pick(&|r| r[0])),
        baseline: us(pick(&|r| r[1])),
        value: pick(&|r| r[1] / r[0]),
        goal: None,
    });
    report.rows.push(Row {
        target: "4",
        name: None,
        what: "request p50, pinger in a spawned task (Framed/request)".into(),
        ours: us(pick(&|r| r[2])),
        baseline: us(pick(&|r| r[1])),
        value: pick(&|r| r[1] / r[2]),
        goal: None,
    });
}

fn target_scale(plan: &Plan, rt: &Runtime, report: &mut Report) {
    let config = &plan.scale;
    eprintln!(
        "scale: {} connections x {} heartbeats, server in a child process",
        config.conns, config.rounds
    );
    let mut runs: Vec<(ScaleReport, ScaleReport)> = Vec::new();
    for rep in 0..plan.scale_reps {
        let run = |kind| match scale::run(rt, kind, config) {
            Ok(r) => {
                r.print();
                Some(r)
            }
            Err(error) => {
                eprintln!("scale[{}]: {error}", kind.name());
                None
            }
        };
        let pair = if rep % 2 == 0 {
            let f = run(ServerKind::Framed);
            (run(ServerKind::Ours), f)
        } else {
            let o = run(ServerKind::Ours);
            (o, run(ServerKind::Framed))
        };
        match pair {
            (Some(o), Some(f)) => {
                for r in [&o, &f] {
                    if !r.complete() {
                        report.failures.push(format!(
                            "scale[{}]: {} of {} connected, {} of {} replies",
                            r.kind.name(),
                            r.connected,
                            r.config.conns,
                            r.replies,
                            r.expected_replies()
                        ));
                    }
                }
                runs.push((o, f));
            }
            _ => report.failures.push("scale: a run failed to start".into()),
        }
    }
    if runs.is_empty() {
        return;
    }
    let pick = |f: &dyn Fn(&(ScaleReport, ScaleReport)) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        median(&mut v)
    };
    let conns = config.conns;
    let ours_idle = pick(&|(o, _)| o.idle_bytes_per_conn());
    let framed_idle = pick(&|(_, f)| f.idle_bytes_per_conn());
    report.rows.push(Row {
        target: "5",
        name: Some("memory_idle"),
        what: format!("server RSS per idle conn, {conns} (4096/ours)"),
        ours: format!("{ours_idle:.0} B"),
        baseline: "4096 B budget".into(),
        value: 4096.0 / ours_idle,
        goal: Some(1.0),
    });
    report.rows.push(Row {
        target: "5",
        name: None,
        what: "server RSS per idle conn (framed/ours)".into(),
        ours: format!("{ours_idle:.0} B"),
        baseline: format!("{framed_idle:.0} B"),
        value: framed_idle / ours_idle,
        goal: None,
    });
    let ours_busy = pick(&|(o, _)| o.busy_bytes_per_conn());
    let framed_busy = pick(&|(_, f)| f.busy_bytes_per_conn());
    report.rows.push(Row {
        target: "5",
        name: None,
        what: "server RSS per conn after heartbeats (f/o)".into(),
        ours: format!("{ours_busy:.0} B"),
        baseline: format!("{framed_busy:.0} B"),
        value: framed_busy / ours_busy,
        goal: None,
    });
    let ours_large = pick(&|(o, _)| o.large_bytes_per_conn());
    let framed_large = pick(&|(_, f)| f.large_bytes_per_conn());
    report.rows.push(Row {
        target: "5",
        name: Some("memory_after_large"),
        what: format!(
            "server RSS per conn after {} x {} KiB frames (f/o)",
            config.large_conns,
            config.large_bytes / 1024
        ),
        ours: format!("{ours_large:.0} B"),
        baseline: format!("{framed_large:.0} B"),
        value: framed_large / ours_large,
        goal: Some(1.0),
    });
    let ours_time = pick(&|(o, _)| o.total_time().as_secs_f64());
    let framed_time = pick(&|(_, f)| f.total_time().as_secs_f64());
    let complete = runs.iter().all(|(o, f)| o.complete() && f.complete());
    let ours_cpu = pick(&|(o, _)| o.server_cpu_per_heartbeat_us());
    let framed_cpu = pick(&|(_, f)| f.server_cpu_per_heartbeat_us());
    report.rows.push(Row {
        target: "6",
        name: Some("scale_cpu_per_heartbeat"),
        what: format!("{conns} conns: server CPU per heartbeat (framed/ours)"),
        ours: format!("{ours_cpu:.1} µs"),
        baseline: format!("{framed_cpu:.1} µs"),
        value: pick(&|(o, f)| f.server_cpu_per_heartbeat_us() / o.server_cpu_per_heartbeat_us()),
        goal: Some(1.0),
    });
    report.rows.push(Row {
        target: "6",
        name: None,
        what: format!(
            "  {conns} conns x {} heartbeats, total time (framed/ours)",
            config.rounds
        ),
        ours: fmt_duration(Duration::from_secs_f64(ours_time)),
        baseline: fmt_duration(Duration::from_secs_f64(framed_time)),
        value: if complete {
            framed_time / ours_time
        } else {
            0.0
        },
        goal: None,
    });
    let ours_connect = pick(&|(o, _)| o.connect_time.as_secs_f64());
    let framed_connect = pick(&|(_, f)| f.connect_time.as_secs_f64());
    report.rows.push(Row {
        target: "6",
        name: None,
        what: "  of which connect (framed/ours)".into(),
        ours: fmt_duration(Duration::from_secs_f64(ours_connect)),
        baseline: fmt_duration(Duration::from_secs_f64(framed_connect)),
        value: framed_connect / ours_connect,
        goal: None,
    });
    let ours_hb = pick(&|(o, _)| o.heartbeat_time.as_secs_f64());
    let framed_hb = pick(&|(_, f)| f.heartbeat_time.as_secs_f64());
    report.rows.push(Row {
        target: "6",
        name: None,
        what: "  of which heartbeats (framed/ours)".into(),
        ours: fmt_duration(Duration::from_secs_f64(ours_hb)),
        baseline: fmt_duration(Duration::from_secs_f64(framed_hb)),
        value: framed_hb / ours_hb,
        goal: None,
    });
}

fn main() {
    scale::maybe_run_server();
    let plan = Plan::from_args();
    OURS_ONLY.store(plan.ours_only, Ordering::Relaxed);
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "chitchat-net compare ({} mode): {cpus} CPUs, loopback; every ratio against a baseline of this run",
        if plan.quick { "quick" } else { "full" }
    );
    let rt = runtime();
    let mut report = Report::default();
    if plan.wants("oneway") {
        target_oneway(&plan, &rt, &mut report);
    }
    if plan.wants("bulk") {
        target_bulk(&plan, &rt, &mut report);
    }
    if plan.wants("decode") {
        target_decode(&plan, &mut report);
    }
    if plan.wants("pingpong") {
        target_pingpong(&plan, &mut report);
    }
    if plan.wants("scale") {
        target_scale(&plan, &rt, &mut report);
    }
    if plan.wants("streams") {
        target_streams(&plan, &rt, &mut report);
    }
    if plan.wants("inflight") {
        inflight::target_inflight(&plan, &mut report);
    }
    if plan.wants("deadline") {
        inflight::target_deadline(&plan, &mut report);
    }
    report.print();
    println!("finished in {}", fmt_duration(started.elapsed()));
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
}
