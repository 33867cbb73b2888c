//! The peer benchmark of issue 25: the same request/reply service on
//! chitchat-net, tarpc and tonic, measured side by side in one run.
//!
//! ```text
//! cargo run --release --manifest-path peer-bench/Cargo.toml                   # three full runs, median (min-max)
//! cargo run --release --manifest-path peer-bench/Cargo.toml -- --quick        # every stack runs (seconds)
//! cargo run --release --manifest-path peer-bench/Cargo.toml -- --runs 1 --only c256_100 --stacks ours
//! ```
//!
//! **Process model.** One process. The server of every stack runs on a
//! tokio multi-thread runtime of its own with 2 worker threads (threads
//! named `srv-rt`), its clients on another one with 2 worker threads
//! (`cli-rt`); both share the machine's CPUs. The same for all three
//! stacks. Fresh runtimes for every measurement. Loopback only, TCP_NODELAY
//! on every socket.
//!
//! **The service.** `echo(id, body) -> (id, body)`, the body a byte string
//! of 100 B or 1 KiB (bincode bytes in chitchat-net and tarpc, protobuf
//! `bytes` in tonic). chitchat-net: a derived handler
//! (`#[message(reply = ..)]`), request ids, length-prefixed framing. tarpc:
//! `#[tarpc::service]`, bincode over tokio-serde, length-delimited frames,
//! every request spawned (tarpc's documented server loop). tonic: a unary
//! method, messages written by hand with prost's derive, the service written
//! as tonic-build would generate it. Defaults everywhere else.
//!
//! **Closed loop, without coordinated omission.** Each of the `n` in-flight
//! slots issues its next request as soon as its reply arrives; a request's
//! latency is measured from its intended send time, which in a closed loop
//! is the instant the slot's previous reply arrived (the clock starts before
//! the client library is called, so queueing inside the client counts). No
//! slot ever waits for anything but its own reply, so no request is delayed
//! behind a stall without that delay being in its latency. Throughput and
//! latency count the requests answered inside the measured window (after a
//! warm-up).
//!
//! **CPU.** Per-thread CPU time from `/proc/self/task/*/schedstat` (ns),
//! the user/system split from `.../stat` and context switches from
//! `.../status`, summed over the server's threads (and the client's), as
//! deltas over the window. (System calls are not counted here: `.../io`
//! counts only the read/write family, not the `recvfrom`/`sendto` that
//! socket reads and writes use; BENCHMARKS.md counts them with perf.)
//!
//! It prints a table, then `ratio NAME VALUE GOAL` lines oriented so that
//! higher is better (a goal holds when `VALUE >= GOAL`): rates are ours /
//! theirs, latency, CPU and memory theirs / ours. It exits non-zero only if
//! a stack fails to run or answers wrongly: speed is reported, not judged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cap::Cap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// Bound of one measurement (connect, run, drain): far above what any run
/// needs (seconds); only a hang reaches it.
const BOUND: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// chitchat-net

mod ours {
    use super::*;
    use chitchat_net::{BoxError, Client, Context, Framing, Handler, Message, Server};

    /// The request.
    #[derive(Debug, Clone, Serialize, Deserialize, Message)]
    #[message(codec = "bincode", reply = Echoed)]
    pub struct Echo {
        pub id: u64,
        #[serde(with = "serde_bytes")]
        pub body: Vec<u8>,
    }

    /// Its reply.
    #[derive(Debug, Clone, Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    pub struct Echoed {
        pub id: u64,
        #[serde(with = "serde_bytes")]
        pub body: Vec<u8>,
    }

    /// A one-way message of the streaming row.
    #[derive(Debug, Clone, Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    pub struct Item {
        pub id: u64,
        #[serde(with = "serde_bytes")]
        pub body: Vec<u8>,
    }

    #[derive(Handler)]
    #[handler(message = Echo)]
    pub struct Svc {
        pub delay: Option<Duration>,
    }

    impl EchoHandler for Svc {
        async fn echo(&self, msg: Echo, _ctx: &mut Context<'_>) -> Result<Echoed, BoxError> {
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            Ok(Echoed {
                id: msg.id,
                body: msg.body,
            })
        }
    }

    /// Counts items; wakes `done` at the `target`th.
    #[derive(Handler)]
    #[handler(message = Item)]
    pub struct Sink {
        pub count: AtomicU64,
        pub target: u64,
        pub done: Arc<Notify>,
    }

    impl ItemHandler for Sink {
        async fn item(&self, msg: Item, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            std::hint::black_box(&msg.body);
            if self.count.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
                self.done.notify_one();
            }
            Ok(())
        }
    }

    fn framing() -> Framing {
        if super::escaped() {
            Framing::default()
        } else {
            Framing::length_prefixed()
        }
    }

    pub async fn serve(delay: Option<Duration>) -> (Server<Svc>, std::net::SocketAddr) {
        let server = Server::builder(Svc { delay })
            .request_ids()
            .framing(framing())
            .max_connections(100_000)
            .listen("127.0.0.1:0")
            .await
            .expect("chitchat-net: listen");
        let addr = server.local_addr().to_string().parse().expect("an address");
        (server, addr)
    }

    pub async fn connect(addr: std::net::SocketAddr) -> Client<Echo> {
        Client::<Echo>::builder()
            .request_ids()
            .framing(framing())
            .request_timeout(BOUND)
            .connect(addr)
            .await
            .expect("chitchat-net: connect")
    }

    pub async fn call(client: &Client<Echo>, id: u64, body: Vec<u8>) -> Result<(), String> {
        let reply = client
            .request(&Echo { id, body })
            .await
            .map_err(|e| e.to_string())?;
        check(id, reply.id)
    }

    pub async fn serve_sink(
        target: u64,
        done: Arc<Notify>,
    ) -> (Server<Sink>, std::net::SocketAddr) {
        let sink = Sink {
            count: AtomicU64::new(0),
            target,
            done,
        };
        let server = Server::builder(sink)
            .framing(framing())
            .listen("127.0.0.1:0")
            .await
            .expect("chitchat-net: listen");
        let addr = server.local_addr().to_string().parse().expect("an address");
        (server, addr)
    }

    pub async fn connect_items(addr: std::net::SocketAddr) -> Client<Item> {
        Client::<Item>::builder()
            .framing(framing())
            .connect(addr)
            .await
            .expect("chitchat-net: connect")
    }
}

fn check(sent: u64, got: u64) -> Result<(), String> {
    if sent == got {
        Ok(())
    } else {
        Err(format!("request {sent} answered by the reply to {got}"))
    }
}

/// `--escaped`: chitchat-net with its default framing (lines, escaped)
/// instead of length-prefixed frames.
static ESCAPED: AtomicBool = AtomicBool::new(false);

fn escaped() -> bool {
    ESCAPED.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// tarpc

mod rpc {
    use super::*;
    use tarpc::context;
    use tarpc::server::{BaseChannel, Channel};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::tokio_util::codec::LengthDelimitedCodec;
    use tokio::net::{TcpListener, TcpStream};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Payload {
        pub id: u64,
        #[serde(with = "serde_bytes")]
        pub body: Vec<u8>,
    }

    #[tarpc::service]
    pub trait Bench {
        async fn echo(req: Payload) -> Payload;
        /// The streaming row: tarpc has no one-way call; a batch of items
        /// answered by their count is its closest form.
        async fn batch(items: Vec<Payload>) -> u64;
    }

    #[derive(Clone)]
    struct Svc {
        delay: Option<Duration>,
    }

    impl Bench for Svc {
        async fn echo(self, _: context::Context, req: Payload) -> Payload {
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            req
        }

        async fn batch(self, _: context::Context, items: Vec<Payload>) -> u64 {
            std::hint::black_box(&items);
            items.len() as u64
        }
    }

    /// Accepts connections; every connection is a channel whose requests
    /// are each spawned (tarpc's README server).
    pub async fn serve(
        delay: Option<Duration>,
    ) -> (tokio::task::JoinHandle<()>, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("tarpc: bind");
        let addr = listener.local_addr().expect("an address");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let framed = LengthDelimitedCodec::builder().new_framed(stream);
                let transport = tarpc::serde_transport::new(framed, Bincode::default());
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(channel.execute(Svc { delay }.serve()).for_each(
                    |response| async move {
                        tokio::spawn(response);
                    },
                ));
            }
        });
        (task, addr)
    }

    pub async fn connect(addr: std::net::SocketAddr) -> BenchClient {
        let stream = TcpStream::connect(addr).await.expect("tarpc: connect");
        stream.set_nodelay(true).expect("nodelay");
        let framed = LengthDelimitedCodec::builder().new_framed(stream);
        let transport = tarpc::serde_transport::new(framed, Bincode::default());
        BenchClient::new(tarpc::client::Config::default(), transport).spawn()
    }

    pub fn ctx() -> context::Context {
        let mut ctx = context::current();
        ctx.deadline = Instant::now() + BOUND;
        ctx
    }

    pub async fn call(client: &BenchClient, id: u64, body: Vec<u8>) -> Result<(), String> {
        let reply = client
            .echo(ctx(), Payload { id, body })
            .await
            .map_err(|e| e.to_string())?;
        check(id, reply.id)
    }
}

// ---------------------------------------------------------------------------
// tonic (the code tonic-build would generate for the service below, written
// by hand so that no protoc is needed)
//
//   service Bench {
//     rpc Echo(Payload) returns (Payload);
//     rpc Stream(stream Payload) returns (Count);
//   }

mod grpc {
    use super::*;
    use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Channel, Endpoint};
    use tonic_prost::ProstCodec;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(bytes = "vec", tag = "2")]
        pub body: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Count {
        #[prost(uint64, tag = "1")]
        pub n: u64,
    }

    const ECHO: &str = "/bench.Bench/Echo";
    const STREAM: &str = "/bench.Bench/Stream";

    #[derive(Clone)]
    pub struct BenchServer {
        delay: Option<Duration>,
    }

    struct EchoSvc(Option<Duration>);

    impl tonic::server::UnaryService<Payload> for EchoSvc {
        type Response = Payload;
        type Future = BoxFuture<tonic::Response<Payload>, tonic::Status>;
        fn call(&mut self, request: tonic::Request<Payload>) -> Self::Future {
            let delay = self.0;
            Box::pin(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                Ok(tonic::Response::new(request.into_inner()))
            })
        }
    }

    struct StreamSvc;

    impl tonic::server::ClientStreamingService<Payload> for StreamSvc {
        type Response = Count;
        type Future = BoxFuture<tonic::Response<Count>, tonic::Status>;
        fn call(&mut self, request: tonic::Request<tonic::Streaming<Payload>>) -> Self::Future {
            Box::pin(async move {
                let mut stream = request.into_inner();
                let mut n = 0;
                while let Some(item) = stream.message().await? {
                    std::hint::black_box(&item.body);
                    n += 1;
                }
                Ok(tonic::Response::new(Count { n }))
            })
        }
    }

    impl<B> Service<http::Request<B>> for BenchServer
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            match req.uri().path() {
                ECHO => {
                    let delay = self.delay;
                    Box::pin(async move {
                        let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                        Ok(grpc.unary(EchoSvc(delay), req).await)
                    })
                }
                STREAM => Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                    Ok(grpc.client_streaming(StreamSvc, req).await)
                }),
                _ => Box::pin(async move {
                    let mut response = http::Response::new(tonic::body::Body::default());
                    let headers = response.headers_mut();
                    headers.insert(
                        tonic::Status::GRPC_STATUS,
                        (tonic::Code::Unimplemented as i32).into(),
                    );
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        tonic::metadata::GRPC_CONTENT_TYPE,
                    );
                    Ok(response)
                }),
            }
        }
    }

    impl tonic::server::NamedService for BenchServer {
        const NAME: &'static str = "bench.Bench";
    }

    pub async fn serve(
        delay: Option<Duration>,
    ) -> (tokio::task::JoinHandle<()>, std::net::SocketAddr) {
        let incoming = TcpIncoming::bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("tonic: bind")
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().expect("an address");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(BenchServer { delay })
                .serve_with_incoming(incoming)
                .await;
        });
        (task, addr)
    }

    #[derive(Clone)]
    pub struct BenchClient {
        inner: tonic::client::Grpc<Channel>,
    }

    pub async fn connect(addr: std::net::SocketAddr) -> BenchClient {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("an endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("tonic: connect");
        BenchClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    impl BenchClient {
        pub async fn echo(&mut self, request: Payload) -> Result<Payload, tonic::Status> {
            self.inner
                .ready()
                .await
                .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
            let path = http::uri::PathAndQuery::from_static(ECHO);
            self.inner
                .unary(tonic::Request::new(request), path, ProstCodec::default())
                .await
                .map(tonic::Response::into_inner)
        }

        pub async fn stream(
            &mut self,
            items: impl futures_util::Stream<Item = Payload> + Send + 'static,
        ) -> Result<Count, tonic::Status> {
            self.inner
                .ready()
                .await
                .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
            let path = http::uri::PathAndQuery::from_static(STREAM);
            self.inner
                .client_streaming(tonic::Request::new(items), path, ProstCodec::default())
                .await
                .map(tonic::Response::into_inner)
        }
    }

    pub async fn call(client: &mut BenchClient, id: u64, body: Vec<u8>) -> Result<(), String> {
        let reply = client
            .echo(Payload { id, body })
            .await
            .map_err(|e| e.to_string())?;
        check(id, reply.id)
    }
}

// ---------------------------------------------------------------------------
// The three stacks behind one interface

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stack {
    Ours,
    Tarpc,
    Tonic,
}

const STACKS: [Stack; 3] = [Stack::Ours, Stack::Tarpc, Stack::Tonic];

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Ours => "chitchat-net",
            Stack::Tarpc => "tarpc",
            Stack::Tonic => "tonic",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Stack::Ours => "ours",
            Stack::Tarpc => "tarpc",
            Stack::Tonic => "tonic",
        }
    }
}

/// A running server (dropped on its own runtime to stop it).
enum ServerGuard {
    Ours(Box<dyn std::any::Any + Send>),
    Task(tokio::task::JoinHandle<()>),
}

/// One connection's client.
#[derive(Clone)]
enum Caller {
    Ours(Arc<chitchat_net::Client<ours::Echo>>),
    Tarpc(rpc::BenchClient),
    Tonic(grpc::BenchClient),
}

impl Caller {
    async fn call(&mut self, id: u64, body: Vec<u8>) -> Result<(), String> {
        match self {
            Caller::Ours(client) => ours::call(client, id, body).await,
            Caller::Tarpc(client) => rpc::call(client, id, body).await,
            Caller::Tonic(client) => grpc::call(client, id, body).await,
        }
    }

    async fn close(self) {
        if let Caller::Ours(client) = self {
            client.close().await;
        }
    }
}

async fn serve(stack: Stack, delay: Option<Duration>) -> (ServerGuard, std::net::SocketAddr) {
    match stack {
        Stack::Ours => {
            let (server, addr) = ours::serve(delay).await;
            (ServerGuard::Ours(Box::new(server)), addr)
        }
        Stack::Tarpc => {
            let (task, addr) = rpc::serve(delay).await;
            (ServerGuard::Task(task), addr)
        }
        Stack::Tonic => {
            let (task, addr) = grpc::serve(delay).await;
            (ServerGuard::Task(task), addr)
        }
    }
}

async fn connect(stack: Stack, addr: std::net::SocketAddr) -> Caller {
    match stack {
        Stack::Ours => Caller::Ours(Arc::new(ours::connect(addr).await)),
        Stack::Tarpc => Caller::Tarpc(rpc::connect(addr).await),
        Stack::Tonic => Caller::Tonic(grpc::connect(addr).await),
    }
}

/// A runtime of 2 worker threads named `name` (`srv-rt`, `cli-rt`).
fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn bounded<F: std::future::Future>(rt: &Runtime, what: &str, fut: F) -> F::Output {
    match rt.block_on(async { tokio::time::timeout(BOUND, fut).await }) {
        Ok(out) => out,
        Err(_) => panic!("{what} took longer than {BOUND:?}"),
    }
}

/// The server's and the client's runtimes, torn down at the end.
struct Pair {
    srv: Runtime,
    cli: Runtime,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            srv: runtime("srv-rt"),
            cli: runtime("cli-rt"),
        }
    }

    fn stop(self, callers: Vec<Caller>, server: ServerGuard) {
        bounded(&self.cli, "closing the clients", async {
            for caller in callers {
                caller.close().await;
            }
        });
        self.srv.block_on(async {
            match server {
                ServerGuard::Ours(server) => drop(server),
                ServerGuard::Task(task) => task.abort(),
            }
        });
        self.cli.shutdown_timeout(Duration::from_secs(2));
        self.srv.shutdown_timeout(Duration::from_secs(2));
    }
}

// ---------------------------------------------------------------------------
// Per-thread CPU, system calls and context switches from /proc

#[derive(Debug, Default, Clone, Copy)]
struct Threads {
    /// CPU time, ns (schedstat).
    run_ns: u64,
    /// Clock ticks in user and system mode (stat).
    utime: u64,
    stime: u64,
    /// Voluntary and involuntary context switches (status).
    vcsw: u64,
    ivcsw: u64,
}

impl Threads {
    fn minus(self, before: Threads) -> Threads {
        Threads {
            run_ns: self.run_ns.saturating_sub(before.run_ns),
            utime: self.utime.saturating_sub(before.utime),
            stime: self.stime.saturating_sub(before.stime),
            vcsw: self.vcsw.saturating_sub(before.vcsw),
            ivcsw: self.ivcsw.saturating_sub(before.ivcsw),
        }
    }
}

/// Sums over the threads whose name is `name`.
fn threads(name: &str) -> Threads {
    let mut sum = Threads::default();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return sum;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let read = |file: &str| std::fs::read_to_string(path.join(file)).unwrap_or_default();
        if let Some(ns) = read("schedstat").split_whitespace().next() {
            sum.run_ns += ns.parse::<u64>().unwrap_or(0);
        }
        let stat = read("stat");
        if let Some((_, rest)) = stat.rsplit_once(')') {
            // Fields after the name: state is field 3, utime 14, stime 15.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            sum.utime += fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0u64);
            sum.stime += fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0u64);
        }
        for line in read("status").lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                sum.vcsw += v.trim().parse().unwrap_or(0u64);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                sum.ivcsw += v.trim().parse().unwrap_or(0u64);
            }
        }
    }
    sum
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

// ---------------------------------------------------------------------------
// Measurements

/// One stack's figures in one scenario of one run.
#[derive(Debug, Default, Clone, Copy)]
struct Measure {
    /// Requests (or messages) per second.
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    /// Server CPU per request (message), µs.
    srv_cpu_us: f64,
    /// Client CPU per request (message), µs.
    cli_cpu_us: f64,
    /// Share of the server's CPU ticks in system mode.
    srv_sys: f64,
    /// Server context switches per request.
    srv_ctxsw: f64,
    /// Server CPU busy, in CPUs (run time / wall time).
    srv_cpus: f64,
    cli_cpus: f64,
    /// Heap and RSS bytes per idle connection (both ends), connected and
    /// never used.
    heap_per_conn: f64,
    rss_per_conn: f64,
    /// Heap bytes per idle connection once it has answered one request.
    heap_used_per_conn: f64,
}

impl Measure {
    fn from_threads(n: f64, wall: Duration, srv: Threads, cli: Threads) -> Measure {
        let wall_ns = wall.as_nanos() as f64;
        let ticks = (srv.utime + srv.stime) as f64;
        Measure {
            rate: n / wall.as_secs_f64(),
            srv_cpu_us: srv.run_ns as f64 / 1e3 / n,
            cli_cpu_us: cli.run_ns as f64 / 1e3 / n,
            srv_sys: if ticks > 0.0 {
                srv.stime as f64 / ticks
            } else {
                f64::NAN
            },
            srv_ctxsw: (srv.vcsw + srv.ivcsw) as f64 / n,
            srv_cpus: srv.run_ns as f64 / wall_ns,
            cli_cpus: cli.run_ns as f64 / wall_ns,
            ..Measure::default()
        }
    }
}

#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    runs: usize,
    warmup: Duration,
    window: Duration,
    stream_msgs: u64,
    idle_conns: usize,
    only: Option<Vec<String>>,
    stacks: Vec<Stack>,
}

impl Plan {
    fn from_args() -> Plan {
        let mut quick = false;
        let mut runs: Option<usize> = None;
        let mut secs = None;
        let mut only = None;
        let mut stacks = STACKS.to_vec();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--runs" => runs = args.next().and_then(|n| n.parse().ok()),
                "--secs" => secs = args.next().and_then(|n| n.parse::<f64>().ok()),
                "--only" => {
                    only = args
                        .next()
                        .map(|l| l.split(',').map(str::to_owned).collect::<Vec<_>>())
                }
                "--stacks" => {
                    let list = args.next().unwrap_or_default();
                    stacks = STACKS
                        .into_iter()
                        .filter(|s| list.split(',').any(|w| w == s.short()))
                        .collect();
                }
                "--escaped" => ESCAPED.store(true, Ordering::Relaxed),
                "--help" | "-h" => {
                    println!(
                        "peer-bench [--quick] [--runs N] [--secs WINDOW] [--only SCENARIO,..] [--stacks ours,tarpc,tonic] [--escaped]"
                    );
                    std::process::exit(0);
                }
                other => {
                    eprintln!("unknown argument {other:?} (try --help)");
                    std::process::exit(2);
                }
            }
        }
        let mut plan = if quick {
            Plan {
                quick,
                runs: 1,
                warmup: Duration::from_millis(50),
                window: Duration::from_millis(150),
                stream_msgs: 20_000,
                idle_conns: 50,
                only,
                stacks,
            }
        } else {
            Plan {
                quick,
                runs: 3,
                warmup: Duration::from_millis(500),
                window: Duration::from_secs(2),
                stream_msgs: 500_000,
                idle_conns: 1_000,
                only,
                stacks,
            }
        };
        if let Some(runs) = runs {
            plan.runs = runs.max(1);
        }
        if let Some(secs) = secs {
            plan.window = Duration::from_secs_f64(secs);
        }
        plan
    }

    fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|list| {
            list.iter()
                .any(|w| key == w || key.starts_with(&format!("{w}_")))
        })
    }
}

/// A closed-loop request scenario.
#[derive(Debug, Clone, Copy)]
struct Load {
    conns: usize,
    /// In-flight slots per connection.
    per_conn: usize,
    size: usize,
    delay: Option<Duration>,
}

impl Load {
    fn key(&self) -> String {
        let shape = match (self.conns, self.conns * self.per_conn) {
            (1, 1) => "lat1".to_owned(),
            (1, n) => format!("c{n}"),
            (c, n) => format!("c{n}x{c}"),
        };
        let sleep = if self.delay.is_some() { "sleep_" } else { "" };
        format!("{sleep}{shape}_{}", size_name(self.size))
    }

    fn what(&self) -> String {
        let flight = self.conns * self.per_conn;
        let shape = if self.conns == 1 {
            format!("{flight} in flight, 1 conn")
        } else {
            format!("{flight} in flight over {} conns", self.conns)
        };
        let handler = if self.delay.is_some() {
            ", handler sleeps 1 ms"
        } else {
            ""
        };
        format!("{shape}, {}{handler}", size_name(self.size))
    }
}

fn size_name(size: usize) -> &'static str {
    if size >= 1024 {
        "1KiB"
    } else {
        "100B"
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)] as f64 / 1e3
}

/// One slot of the closed loop: issues a request, waits for its reply,
/// issues the next one at once. Records the requests that complete inside
/// `[t0, t1)`; stops at `t1`.
async fn slot(
    mut caller: Caller,
    size: usize,
    first_id: u64,
    t0: Instant,
    t1: Instant,
) -> Result<Vec<u64>, String> {
    let body = vec![0xA5u8; size];
    let mut lat = Vec::new();
    let mut id = first_id;
    loop {
        let start = Instant::now();
        caller.call(id, body.clone()).await?;
        let end = Instant::now();
        if end >= t1 {
            return Ok(lat);
        }
        if end >= t0 {
            lat.push((end - start).as_nanos() as u64);
        }
        id += 1;
    }
}

fn run_load(plan: &Plan, stack: Stack, load: Load) -> Measure {
    let pair = Pair::new();
    let (server, addr) = bounded(&pair.srv, "starting the server", serve(stack, load.delay));
    let callers: Vec<Caller> = bounded(&pair.cli, "connecting", async {
        let mut callers = Vec::new();
        for _ in 0..load.conns {
            callers.push(connect(stack, addr).await);
        }
        callers
    });
    let begin = Instant::now() + Duration::from_millis(20);
    let t0 = begin + plan.warmup;
    let t1 = t0 + plan.window;
    let mut tasks = Vec::new();
    for (c, caller) in callers.iter().enumerate() {
        for s in 0..load.per_conn {
            let first_id = ((c * load.per_conn + s) as u64) << 40;
            tasks.push(
                pair.cli
                    .spawn(slot(caller.clone(), load.size, first_id, t0, t1)),
            );
        }
    }
    std::thread::sleep(t0.saturating_duration_since(Instant::now()));
    let (srv0, cli0, w0) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
    std::thread::sleep(t1.saturating_duration_since(Instant::now()));
    let (srv1, cli1, w1) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
    let mut lat: Vec<u64> = Vec::new();
    let joined = bounded(
        &pair.cli,
        "the closed loop",
        futures_util::future::join_all(tasks),
    );
    for result in joined {
        match result {
            Ok(Ok(samples)) => lat.extend(samples),
            Ok(Err(e)) => panic!("{} {}: a request failed: {e}", stack.name(), load.key()),
            Err(e) => panic!("{} {}: a slot panicked: {e}", stack.name(), load.key()),
        }
    }
    pair.stop(callers, server);
    if lat.is_empty() {
        panic!(
            "{} {}: no request answered in the window",
            stack.name(),
            load.key()
        );
    }
    lat.sort_unstable();
    let n = lat.len() as f64;
    // Requests per second over the nominal window; CPU over the window
    // actually read (a few µs apart).
    let mut m = Measure::from_threads(n, w1 - w0, srv1.minus(srv0), cli1.minus(cli0));
    m.rate = n / plan.window.as_secs_f64();
    m.p50_us = percentile(&lat, 0.50);
    m.p99_us = percentile(&lat, 0.99);
    m
}

/// One-way streaming of `n` 100-byte messages: chitchat-net `send_all` of
/// 64-message batches; tarpc batches of 64 answered by their count, 16
/// batches in flight; tonic one client-streaming call. Timed until the
/// server has every message.
fn run_stream(plan: &Plan, stack: Stack) -> Measure {
    const BATCH: u64 = 64;
    const SIZE: usize = 100;
    let n = plan.stream_msgs / BATCH * BATCH;
    let pair = Pair::new();
    let body = vec![0x5Au8; SIZE];
    let m = match stack {
        Stack::Ours => {
            let done = Arc::new(Notify::new());
            let (server, addr) = bounded(
                &pair.srv,
                "starting the server",
                ours::serve_sink(n, done.clone()),
            );
            let client = bounded(&pair.cli, "connecting", ours::connect_items(addr));
            let (srv0, cli0, w0) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
            let client = Arc::new(client);
            let sender = client.clone();
            let send = pair.cli.spawn(async move {
                for b in 0..n / BATCH {
                    let batch: Vec<ours::Item> = (0..BATCH)
                        .map(|i| ours::Item {
                            id: b * BATCH + i,
                            body: body.clone(),
                        })
                        .collect();
                    sender.send_all(&batch).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            });
            bounded(&pair.cli, "the stream", async {
                done.notified().await;
            });
            let (srv1, cli1, w1) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
            bounded(&pair.cli, "the sender", send)
                .expect("a sender task")
                .expect("send_all");
            let got = server.handler().count.load(Ordering::Relaxed);
            assert_eq!(got, n, "chitchat-net: the server received {got} of {n}");
            bounded(&pair.cli, "closing", client.close());
            pair.srv.block_on(async move { drop(server) });
            Measure::from_threads(n as f64, w1 - w0, srv1.minus(srv0), cli1.minus(cli0))
        }
        Stack::Tarpc => {
            const FLIGHT: usize = 16;
            let (server, addr) = bounded(&pair.srv, "starting the server", rpc::serve(None));
            let client = bounded(&pair.cli, "connecting", rpc::connect(addr));
            let next = Arc::new(AtomicU64::new(0));
            let (srv0, cli0, w0) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
            let tasks: Vec<_> = (0..FLIGHT)
                .map(|_| {
                    let client = client.clone();
                    let next = next.clone();
                    let body = body.clone();
                    pair.cli.spawn(async move {
                        let mut got = 0;
                        loop {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            if b >= n / BATCH {
                                return Ok::<u64, String>(got);
                            }
                            let batch: Vec<rpc::Payload> = (0..BATCH)
                                .map(|i| rpc::Payload {
                                    id: b * BATCH + i,
                                    body: body.clone(),
                                })
                                .collect();
                            got += client
                                .batch(rpc::ctx(), batch)
                                .await
                                .map_err(|e| e.to_string())?;
                        }
                    })
                })
                .collect();
            let counts = bounded(
                &pair.cli,
                "the stream",
                futures_util::future::join_all(tasks),
            );
            let (srv1, cli1, w1) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
            let got: u64 = counts
                .into_iter()
                .map(|r| r.expect("a batch task").expect("a batch"))
                .sum();
            assert_eq!(got, n, "tarpc: the server received {got} of {n}");
            drop(client);
            pair.srv.block_on(async move { server.abort() });
            Measure::from_threads(n as f64, w1 - w0, srv1.minus(srv0), cli1.minus(cli0))
        }
        Stack::Tonic => {
            let (server, addr) = bounded(&pair.srv, "starting the server", grpc::serve(None));
            let mut client = bounded(&pair.cli, "connecting", grpc::connect(addr));
            let (srv0, cli0, w0) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
            let items = futures_util::stream::iter(0..n).map(move |id| grpc::Payload {
                id,
                body: body.clone(),
            });
            let count = bounded(&pair.cli, "the stream", async {
                pair.cli
                    .spawn(async move { client.stream(items).await })
                    .await
            });
            let (srv1, cli1, w1) = (threads("srv-rt"), threads("cli-rt"), Instant::now());
            let got = count.expect("a stream task").expect("a stream").n;
            assert_eq!(got, n, "tonic: the server received {got} of {n}");
            pair.srv.block_on(async move { server.abort() });
            Measure::from_threads(n as f64, w1 - w0, srv1.minus(srv0), cli1.minus(cli0))
        }
    };
    pair.cli.shutdown_timeout(Duration::from_secs(2));
    pair.srv.shutdown_timeout(Duration::from_secs(2));
    m
}

/// Heap and RSS per idle connection, both ends: `k` connections made one
/// after the other, idle for 300 ms (the server has accepted and set up
/// each), then the heap is read; then each answers one request of 100 B,
/// and after another 300 ms the heap is read again.
fn run_idle(plan: &Plan, stack: Stack) -> Measure {
    let k = plan.idle_conns;
    let pair = Pair::new();
    let (server, addr) = bounded(&pair.srv, "starting the server", serve(stack, None));
    std::thread::sleep(Duration::from_millis(100));
    let (heap0, rss0) = (ALLOC.allocated(), rss_bytes());
    let mut callers = bounded(&pair.cli, "connecting", async {
        let mut callers = Vec::with_capacity(k);
        for _ in 0..k {
            callers.push(connect(stack, addr).await);
        }
        callers
    });
    std::thread::sleep(Duration::from_millis(300));
    let (heap1, rss1) = (ALLOC.allocated(), rss_bytes());
    bounded(&pair.cli, "one request each", async {
        for (i, caller) in callers.iter_mut().enumerate() {
            caller
                .call(i as u64, vec![1; 100])
                .await
                .expect("a request");
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let heap2 = ALLOC.allocated();
    pair.stop(callers, server);
    Measure {
        heap_per_conn: (heap1 as f64 - heap0 as f64) / k as f64,
        rss_per_conn: (rss1 as f64 - rss0 as f64) / k as f64,
        heap_used_per_conn: (heap2 as f64 - heap0 as f64) / k as f64,
        ..Measure::default()
    }
}

// ---------------------------------------------------------------------------
// Scenarios, ratios and the table

fn loads() -> Vec<Load> {
    let mut loads = Vec::new();
    for delay in [None, Some(Duration::from_millis(1))] {
        for size in [100, 1024] {
            for (conns, per_conn) in [(1, 1), (1, 16), (1, 256), (64, 4)] {
                loads.push(Load {
                    conns,
                    per_conn,
                    size,
                    delay,
                });
            }
        }
    }
    loads
}

/// What a ratio compares.
#[derive(Debug, Clone, Copy)]
enum Metric {
    Rate,
    P50,
    P99,
    SrvCpu,
    Heap,
}

impl Metric {
    fn get(self, m: &Measure) -> f64 {
        match self {
            Metric::Rate => m.rate,
            Metric::P50 => m.p50_us,
            Metric::P99 => m.p99_us,
            Metric::SrvCpu => m.srv_cpu_us,
            Metric::Heap => m.heap_per_conn,
        }
    }

    /// Ours against `theirs`, higher is better.
    fn ratio(self, ours: &Measure, theirs: &Measure) -> f64 {
        match self {
            Metric::Rate => self.get(ours) / self.get(theirs),
            _ => self.get(theirs) / self.get(ours),
        }
    }

    fn short(self) -> &'static str {
        match self {
            Metric::Rate => "rps",
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::SrvCpu => "cpu",
            Metric::Heap => "heap",
        }
    }
}

/// A `ratio` line of issue 25's goals (item 2): (scenario, metric, against,
/// goal).
fn goals(key: &str) -> Vec<(Metric, Stack, f64)> {
    let mut goals = Vec::new();
    if key.starts_with("stream") || key.starts_with("idle") {
        return goals;
    }
    if let Some(rest) = key.strip_prefix("sleep_") {
        // With a handler that awaits 1 ms, at 16 and 256 in flight:
        // throughput >= tarpc's and p99 <= tarpc's.
        if rest.starts_with("c16_") || rest.starts_with("c256_") {
            goals.push((Metric::Rate, Stack::Tarpc, 1.0));
            goals.push((Metric::P99, Stack::Tarpc, 1.0));
        }
        return goals;
    }
    // CPU per request <= 0.7x tarpc's in every row.
    goals.push((Metric::SrvCpu, Stack::Tarpc, 1.0 / 0.7));
    if key.starts_with("lat1_") {
        // Guard: p99 at one request in flight <= 0.5x tarpc's.
        goals.push((Metric::P99, Stack::Tarpc, 2.0));
        return goals;
    }
    // Guard: >= 4x tonic.
    goals.push((Metric::Rate, Stack::Tonic, 4.0));
    if key.starts_with("c16_") || key.starts_with("c256x64_") {
        // 16 in flight on one connection and 256 over 64 connections:
        // >= 1.5x tarpc.
        goals.push((Metric::Rate, Stack::Tarpc, 1.5));
    }
    goals
}

fn ratio_name(key: &str, metric: Metric, against: Stack) -> String {
    format!("{key}_{}_vs_{}", metric.short(), against.short())
}

/// Every run's measures: scenario → stack → one per run.
#[derive(Default)]
struct Results {
    /// (key, description) in order of first appearance.
    scenarios: Vec<(String, String)>,
    runs: BTreeMap<String, BTreeMap<Stack, Vec<Measure>>>,
}

impl Results {
    fn add(&mut self, key: &str, what: &str, stack: Stack, m: Measure) {
        if !self.scenarios.iter().any(|(k, _)| k == key) {
            self.scenarios.push((key.to_owned(), what.to_owned()));
        }
        self.runs
            .entry(key.to_owned())
            .or_default()
            .entry(stack)
            .or_default()
            .push(m);
    }

    /// Per-run ratios of `metric`, ours against `against`.
    fn ratios(&self, key: &str, metric: Metric, against: Stack) -> Vec<f64> {
        let Some(by_stack) = self.runs.get(key) else {
            return Vec::new();
        };
        let (Some(ours), Some(theirs)) = (by_stack.get(&Stack::Ours), by_stack.get(&against))
        else {
            return Vec::new();
        };
        ours.iter()
            .zip(theirs)
            .map(|(o, t)| metric.ratio(o, t))
            .collect()
    }

    fn median(&self, key: &str, stack: Stack, get: impl Fn(&Measure) -> f64) -> f64 {
        let mut values: Vec<f64> = self
            .runs
            .get(key)
            .and_then(|s| s.get(&stack))
            .map(|ms| ms.iter().map(&get).collect())
            .unwrap_or_default();
        median(&mut values)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2} M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k/s", v / 1e3)
    } else {
        format!("{v:.0} /s")
    }
}

fn fmt_us(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e4 {
        format!("{:.1} ms", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else if v >= 1.0 {
        format!("{v:.1} µs")
    } else {
        format!("{v:.2} µs")
    }
}

fn fmt_bytes(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v.abs() >= 1e4 {
        format!("{:.1} KB", v / 1e3)
    } else {
        format!("{v:.0} B")
    }
}

/// `median (min-max)` of per-run ratios; the median alone for one run.
fn fmt_ratio(values: &[f64]) -> String {
    let mut v = values.to_vec();
    if v.is_empty() {
        return "-".into();
    }
    let med = median(&mut v);
    if v.len() == 1 {
        format!("{med:.2}")
    } else {
        format!("{med:.2} ({:.2}-{:.2})", v[0], v[v.len() - 1])
    }
}

/// A row of the table: its label, what it shows and how.
type RowSpec = (&'static str, Metric, fn(f64) -> String);

fn print_table(results: &Results, runs: usize) {
    println!();
    println!(
        "Peer table ({} run{}: medians; ratios ours/theirs, higher is better, median (min-max) of the per-run ratios)",
        runs,
        if runs == 1 { "" } else { "s" }
    );
    println!(
        "{:<50} {:<8} {:>11} {:>11} {:>11} {:>18} {:>18}",
        "scenario", "metric", "chitchat", "tarpc", "tonic", "vs tarpc", "vs tonic"
    );
    for (key, what) in &results.scenarios {
        let rows: &[RowSpec] = if key.starts_with("idle") {
            &[("heap/conn", Metric::Heap, fmt_bytes)]
        } else if key.starts_with("stream") {
            &[
                ("msgs/s", Metric::Rate, fmt_rate),
                ("srv CPU", Metric::SrvCpu, fmt_us),
            ]
        } else {
            &[
                ("req/s", Metric::Rate, fmt_rate),
                ("p50", Metric::P50, fmt_us),
                ("p99", Metric::P99, fmt_us),
                ("srv CPU", Metric::SrvCpu, fmt_us),
            ]
        };
        for (i, (label, metric, fmt)) in rows.iter().enumerate() {
            let cell = |s: Stack| fmt(results.median(key, s, |m| metric.get(m)));
            let title = if i == 0 { what.as_str() } else { "" };
            println!(
                "{:<50} {:<8} {:>11} {:>11} {:>11} {:>18} {:>18}",
                title,
                label,
                cell(Stack::Ours),
                cell(Stack::Tarpc),
                cell(Stack::Tonic),
                fmt_ratio(&results.ratios(key, *metric, Stack::Tarpc)),
                fmt_ratio(&results.ratios(key, *metric, Stack::Tonic)),
            );
        }
    }

    println!();
    println!("Where the time goes (medians): server CPUs busy, server CPU share in the kernel, server context switches per request, client CPUs busy, client CPU per request");
    println!(
        "{:<20} {:<13} {:>9} {:>8} {:>9} {:>9} {:>12}",
        "scenario", "stack", "srv CPUs", "srv sys", "srv cs", "cli CPUs", "cli CPU/req"
    );
    for (key, _) in &results.scenarios {
        if key.starts_with("idle") {
            continue;
        }
        for stack in STACKS {
            if !results
                .runs
                .get(key)
                .is_some_and(|s| s.contains_key(&stack))
            {
                continue;
            }
            let med = |f: fn(&Measure) -> f64| results.median(key, stack, f);
            println!(
                "{:<20} {:<13} {:>9.2} {:>7.0}% {:>9.2} {:>9.2} {:>12}",
                key,
                stack.name(),
                med(|m| m.srv_cpus),
                med(|m| m.srv_sys) * 100.0,
                med(|m| m.srv_ctxsw),
                med(|m| m.cli_cpus),
                fmt_us(med(|m| m.cli_cpu_us)),
            );
        }
    }
    if let Some((key, _)) = results.scenarios.iter().find(|(k, _)| k == "idle") {
        let rss = |s: Stack| fmt_bytes(results.median(key, s, |m| m.rss_per_conn));
        let used = |s: Stack| fmt_bytes(results.median(key, s, |m| m.heap_used_per_conn));
        println!(
            "idle connection, both ends: RSS chitchat-net {}, tarpc {}, tonic {}; heap once it has answered one request: chitchat-net {}, tarpc {}, tonic {}",
            rss(Stack::Ours),
            rss(Stack::Tarpc),
            rss(Stack::Tonic),
            used(Stack::Ours),
            used(Stack::Tarpc),
            used(Stack::Tonic)
        );
    }

    println!();
    let mut unmet = 0;
    for (key, _) in &results.scenarios {
        for (metric, against, goal) in goals(key) {
            let mut values = results.ratios(key, metric, against);
            if values.is_empty() {
                continue;
            }
            let value = median(&mut values);
            if value < goal {
                unmet += 1;
            }
            println!(
                "ratio {} {value:.4} {goal:.2}",
                ratio_name(key, metric, against)
            );
        }
    }
    println!("goals not met: {unmet}");
}

fn main() {
    let plan = Plan::from_args();
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "chitchat-net peer benchmark ({} mode, {} run{}): {cpus} CPUs, loopback; one process, the server on a tokio runtime of 2 worker threads, the clients on another of 2 (same for all three stacks); chitchat-net framing {}",
        if plan.quick { "quick" } else { "full" },
        plan.runs,
        if plan.runs == 1 { "" } else { "s" },
        if escaped() { "lines (escaped)" } else { "length-prefixed" },
    );
    println!(
        "closed loop: each in-flight slot sends its next request when its reply arrives, latency from that instant (its intended send time); warm-up {:?}, window {:?}",
        plan.warmup, plan.window
    );
    let mut results = Results::default();
    let mut turn = 0usize;
    for run in 0..plan.runs {
        eprintln!("-- run {} of {}", run + 1, plan.runs);
        let mut order = |stacks: &[Stack]| {
            // Rotate which stack goes first, scenario by scenario.
            turn += 1;
            let mut v = stacks.to_vec();
            let len = v.len().max(1);
            v.rotate_left(turn % len);
            v
        };
        for load in loads() {
            let key = load.key();
            if !plan.wants(&key) {
                continue;
            }
            for stack in order(&plan.stacks) {
                let m = run_load(&plan, stack, load);
                eprintln!(
                    "  {key:<18} {:<13} {:>11} p50 {:>9} p99 {:>9} srv {:>8}/req cli {:>8}/req",
                    stack.name(),
                    fmt_rate(m.rate),
                    fmt_us(m.p50_us),
                    fmt_us(m.p99_us),
                    fmt_us(m.srv_cpu_us),
                    fmt_us(m.cli_cpu_us)
                );
                results.add(&key, &load.what(), stack, m);
            }
        }
        if plan.wants("stream") {
            for stack in order(&plan.stacks) {
                let m = run_stream(&plan, stack);
                eprintln!(
                    "  stream_100B        {:<13} {:>11} srv {:>8}/msg cli {:>8}/msg",
                    stack.name(),
                    fmt_rate(m.rate),
                    fmt_us(m.srv_cpu_us),
                    fmt_us(m.cli_cpu_us)
                );
                results.add(
                    "stream_100B",
                    "one-way stream of 100 B messages (see header)",
                    stack,
                    m,
                );
            }
        }
        if plan.wants("idle") {
            for stack in order(&plan.stacks) {
                let m = run_idle(&plan, stack);
                eprintln!(
                    "  idle               {:<13} heap {:>9}/conn rss {:>9}/conn, heap after one request {:>9}/conn",
                    stack.name(),
                    fmt_bytes(m.heap_per_conn),
                    fmt_bytes(m.rss_per_conn),
                    fmt_bytes(m.heap_used_per_conn)
                );
                results.add(
                    "idle",
                    &format!("memory per idle connection ({} conns)", plan.idle_conns),
                    stack,
                    m,
                );
            }
        }
    }
    print_table(&results, plan.runs);
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
}
