//! Reply streams (issue 23, item 6): a request answered by a stream of
//! items under credit-based flow control, ended once by the server (a
//! normal end or an error), by the subscriber dropping it (a cancel the
//! server's sink sees), or by the connection (lost: a typed error; a
//! graceful close: `StreamRefused`). Two chitchat-net peers on loopback,
//! streams in both directions (the server subscribes to the client too).
//!
//! Bounds: single events (an item, an end, a cancel reaching the sink)
//! wait with `within` (`common::WAIT`, 10 s: over 5× what they need on a
//! busy 2-CPU machine); bulk work (thousands of items) is bounded by its
//! progress (`with_progress` / `wait_for_count`: fails only after
//! `common::STALL` without one item moving). Request timeouts are
//! [`NEVER`], longer than every wait, so nothing passes by a timeout.
//!
use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chitchat_net::envelope::ErrorCode;
use chitchat_net::{
    BoxError, Client, Context, Handler, Message, ReplySink, RequestError, Server, SinkError,
    StreamError,
};
use common::{with_progress, within, NEVER};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

/// What the client asks the server: some commands are answered by one
/// reply, the ones marked `stream` by a stream of `Event`s.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Reply, stream = Event)]
enum Command {
    /// One reply.
    #[message(tag = 1)]
    Ping { n: u64 },
    /// The items 0..n, then a normal end.
    #[message(tag = 2, stream)]
    Count { n: u64 },
    /// 0, 1, 2, … until the sink is closed (cancelled, or the connection
    /// ends); counts what it sent, reports why it stopped.
    #[message(tag = 3, stream)]
    Watch { name: String },
    /// `n` items, then an error end with `why`.
    #[message(tag = 4, stream)]
    FailAfter { n: u64, why: String },
    /// The sink is handed to the test.
    #[message(tag = 5, stream)]
    Hold { name: String },
    /// The sink is dropped without an end.
    #[message(tag = 6, stream)]
    Forget,
    /// One reply, once the test opens the gate (a request in flight).
    #[message(tag = 7)]
    Wait,
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Reply {
    #[message(tag = 1)]
    Pong { n: u64 },
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Event {
    #[message(tag = 1)]
    Item { i: u64 },
}

/// What the server asks the client: every variant is a stream.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", stream = Event)]
enum Ask {
    #[message(tag = 1)]
    Count { n: u64 },
}

/// The server's handler.
#[derive(Handler)]
#[handler(message = Command)]
struct Streamer {
    /// Items sent per `Watch` name.
    sent: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Why each `Watch` stopped.
    stopped: mpsc::UnboundedSender<(String, SinkError)>,
    /// The sinks of `Hold`.
    held: mpsc::UnboundedSender<(String, ReplySink<Event>)>,
    /// `Wait` says it started, then waits for the gate.
    waiting: mpsc::UnboundedSender<()>,
    gate: watch::Receiver<bool>,
}

struct Observed {
    stopped: mpsc::UnboundedReceiver<(String, SinkError)>,
    held: mpsc::UnboundedReceiver<(String, ReplySink<Event>)>,
    waiting: mpsc::UnboundedReceiver<()>,
    gate: watch::Sender<bool>,
}

impl Streamer {
    fn new() -> (Streamer, Observed) {
        let (stopped_tx, stopped) = mpsc::unbounded_channel();
        let (held_tx, held) = mpsc::unbounded_channel();
        let (waiting_tx, waiting) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(false);
        let streamer = Streamer {
            sent: Mutex::default(),
            stopped: stopped_tx,
            held: held_tx,
            waiting: waiting_tx,
            gate: gate_rx,
        };
        let observed = Observed {
            stopped,
            held,
            waiting,
            gate,
        };
        (streamer, observed)
    }

    fn counter(&self, name: &str) -> Arc<AtomicU64> {
        self.sent
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn sent(&self, name: &str) -> u64 {
        self.counter(name).load(Ordering::SeqCst)
    }
}

impl CommandHandler for Streamer {
    async fn ping(&self, n: u64, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        Ok(Reply::Pong { n })
    }

    async fn count(
        &self,
        n: u64,
        mut sink: ReplySink<Event>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        tokio::spawn(async move {
            for i in 0..n {
                if sink.send(&Event::Item { i }).await.is_err() {
                    return;
                }
            }
            sink.end();
        });
        Ok(())
    }

    async fn watch(
        &self,
        name: String,
        mut sink: ReplySink<Event>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        let sent = self.counter(&name);
        let stopped = self.stopped.clone();
        tokio::spawn(async move {
            let mut i = 0;
            loop {
                match sink.send(&Event::Item { i }).await {
                    Ok(()) => {
                        sent.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    Err(why) => {
                        let _ = stopped.send((name, why));
                        return;
                    }
                }
            }
        });
        Ok(())
    }

    async fn fail_after(
        &self,
        n: u64,
        why: String,
        mut sink: ReplySink<Event>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        tokio::spawn(async move {
            for i in 0..n {
                if sink.send(&Event::Item { i }).await.is_err() {
                    return;
                }
            }
            sink.fail(&why);
        });
        Ok(())
    }

    async fn hold(
        &self,
        name: String,
        sink: ReplySink<Event>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        self.held.send((name, sink)).map_err(|_| "nobody holds")?;
        Ok(())
    }

    async fn forget(&self, sink: ReplySink<Event>, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        drop(sink);
        Ok(())
    }

    async fn wait(&self, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        let _ = self.waiting.send(());
        let mut gate = self.gate.clone();
        gate.wait_for(|open| *open).await?;
        Ok(Reply::Pong { n: 0 })
    }
}

/// The client's handler: serves `Ask` streams to the server.
#[derive(Handler)]
#[handler(message = Ask)]
struct Answerer;

impl AskHandler for Answerer {
    async fn count(
        &self,
        n: u64,
        mut sink: ReplySink<Event>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        tokio::spawn(async move {
            for i in 0..n {
                if sink.send(&Event::Item { i }).await.is_err() {
                    return;
                }
            }
            sink.end();
        });
        Ok(())
    }
}

async fn serve() -> (Server<Streamer>, Observed) {
    let (streamer, observed) = Streamer::new();
    let server = Server::builder(streamer)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    (server, observed)
}

async fn connect(server: &Server<Streamer>) -> Client<Command> {
    Client::<Command>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .handler(Answerer)
        .connect(server.local_addr())
        .await
        .unwrap()
}

/// The next item of `stream`, which must be one.
async fn item(
    stream: &mut (impl futures_util::Stream<Item = Result<Event, StreamError>> + Unpin),
) -> u64 {
    match within("a stream item", stream.next()).await {
        Some(Ok(Event::Item { i })) => i,
        other => panic!("expected an item, got {other:?}"),
    }
}

#[tokio::test]
async fn many_items_arrive_in_order_then_the_end() {
    let (server, _observed) = serve().await;
    let client = connect(&server).await;
    const N: u64 = 20_000;
    let mut stream = client.subscribe(&Command::Count { n: N }).await.unwrap();
    let got = AtomicU64::new(0);
    with_progress(
        "20,000 stream items",
        || got.load(Ordering::SeqCst),
        async {
            while let Some(item) = stream.next().await {
                let Event::Item { i } = item.unwrap();
                assert_eq!(i, got.load(Ordering::SeqCst), "items out of order");
                got.fetch_add(1, Ordering::SeqCst);
            }
        },
    )
    .await;
    assert_eq!(got.load(Ordering::SeqCst), N);
    // Ended once: nothing after the end.
    assert!(stream.next().await.is_none());
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_slow_subscriber_holds_back_only_its_own_stream() {
    let (server, _observed) = serve().await;
    let client = connect(&server).await;
    // A window of 4 that nobody reads: its sink stops after 4 items.
    const WINDOW: u64 = 4;
    let mut slow = client
        .subscribe_with(
            &Command::Watch {
                name: "slow".into(),
            },
            WINDOW,
        )
        .await
        .unwrap();
    let streamer = server.handler();
    common::wait_until("the slow stream's window is sent", || {
        streamer.sent("slow") == WINDOW
    })
    .await;

    // Meanwhile a fast stream and ordinary requests on the same connection.
    const FAST: u64 = 5_000;
    const PINGS: u64 = 200;
    let mut fast = client
        .subscribe(&Command::Watch {
            name: "fast".into(),
        })
        .await
        .unwrap();
    let taken = AtomicU64::new(0);
    let answered = AtomicU64::new(0);
    let progress = || taken.load(Ordering::SeqCst) + answered.load(Ordering::SeqCst);
    with_progress("the fast stream and the requests", progress, async {
        let read_fast = async {
            for expected in 0..FAST {
                let Some(Ok(Event::Item { i })) = fast.next().await else {
                    panic!("the fast stream ended");
                };
                assert_eq!(i, expected);
                taken.fetch_add(1, Ordering::SeqCst);
            }
        };
        let ping = async {
            for n in 0..PINGS {
                let reply = client.request(&Command::Ping { n }).await.unwrap();
                assert_eq!(reply, Reply::Pong { n });
                answered.fetch_add(1, Ordering::SeqCst);
            }
        };
        tokio::join!(read_fast, ping);
    })
    .await;
    assert_eq!(taken.load(Ordering::SeqCst), FAST);
    assert_eq!(answered.load(Ordering::SeqCst), PINGS);
    // The slow stream's server sent its window, not one item more, while
    // thousands went by on the same connection.
    assert_eq!(streamer.sent("slow"), WINDOW);

    // Read now, it flows again, in order from its first item.
    for expected in 0..3 * WINDOW {
        assert_eq!(item(&mut slow).await, expected);
    }
    assert!(streamer.sent("slow") > WINDOW);
    drop(fast);
    drop(slow);
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn dropping_the_stream_cancels_it_at_the_server() {
    let (server, mut observed) = serve().await;
    let client = connect(&server).await;

    // A sink that sends: its next `send` fails with `Cancelled`.
    let mut stream = client
        .subscribe(&Command::Watch {
            name: "dropped".into(),
        })
        .await
        .unwrap();
    for expected in 0..5 {
        assert_eq!(item(&mut stream).await, expected);
    }
    drop(stream);
    let (name, why) = within("the sink sees the cancel", observed.stopped.recv())
        .await
        .unwrap();
    assert_eq!(name, "dropped");
    assert!(matches!(why, SinkError::Cancelled), "{why:?}");

    // A sink that waits for something to send: `closed()` returns.
    let stream = client
        .subscribe(&Command::Hold {
            name: "idle".into(),
        })
        .await
        .unwrap();
    let (_, sink) = within("the held sink", observed.held.recv()).await.unwrap();
    assert!(!sink.is_closed());
    drop(stream);
    let why = within("the idle sink sees the cancel", sink.closed()).await;
    assert!(matches!(why, SinkError::Cancelled), "{why:?}");
    assert!(sink.is_closed());

    // The connection goes on.
    assert_eq!(
        client.request(&Command::Ping { n: 7 }).await.unwrap(),
        Reply::Pong { n: 7 }
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn an_error_end_reaches_the_subscriber_typed() {
    let (server, _observed) = serve().await;
    let client = connect(&server).await;
    let mut stream = client
        .subscribe(&Command::FailAfter {
            n: 3,
            why: "the disk is on fire".into(),
        })
        .await
        .unwrap();
    for expected in 0..3 {
        assert_eq!(item(&mut stream).await, expected);
    }
    match within("the error end", stream.next()).await {
        Some(Err(StreamError::Remote { code, message })) => {
            assert_eq!(code, ErrorCode::Handler);
            assert_eq!(message, "the disk is on fire");
        }
        other => panic!("expected the server's error, got {other:?}"),
    }
    assert!(stream.next().await.is_none(), "ended once");

    // A sink dropped without an end: `Unanswered`.
    let mut stream = client.subscribe(&Command::Forget).await.unwrap();
    match within("the dropped sink's end", stream.next()).await {
        Some(Err(StreamError::Remote { code, .. })) => assert_eq!(code, ErrorCode::Unanswered),
        other => panic!("expected Unanswered, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_lost_connection_ends_the_stream_with_an_error() {
    let (server, mut observed) = serve().await;
    let client = connect(&server).await;
    let mut stream = client
        .subscribe(&Command::Hold { name: "cut".into() })
        .await
        .unwrap();
    let (_, mut sink) = within("the held sink", observed.held.recv()).await.unwrap();
    sink.send(&Event::Item { i: 0 }).await.unwrap();
    assert_eq!(item(&mut stream).await, 0);
    // Cut: no end frame is sent; the subscriber still ends, typed.
    server.cut().await;
    match within("the stream's end after the cut", stream.next()).await {
        Some(Err(StreamError::ConnectionLost)) => {}
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(stream.next().await.is_none());
    let why = within("the sink sees the end", sink.closed()).await;
    assert!(matches!(why, SinkError::Closed), "{why:?}");
    assert!(matches!(
        sink.send(&Event::Item { i: 1 }).await,
        Err(SinkError::Closed)
    ));
    // A new subscription on the lost connection fails at once.
    assert!(matches!(
        within(
            "a subscription after the cut",
            client.subscribe(&Command::Count { n: 1 })
        )
        .await,
        Err(StreamError::Closed)
    ));
}

#[tokio::test]
async fn graceful_shutdown_ends_open_streams_at_once() {
    let (server, mut observed) = serve().await;
    let client = connect(&server).await;
    let mut streams = Vec::new();
    for name in ["a", "b", "c"] {
        let mut stream = client
            .subscribe(&Command::Watch { name: name.into() })
            .await
            .unwrap();
        assert_eq!(item(&mut stream).await, 0);
        streams.push(stream);
    }
    // The shutdown does not wait for the streams: they end at once, with
    // `StreamRefused`, after the items already sent.
    let report = within("the shutdown", server.shutdown(NEVER)).await;
    assert!(report.finished, "{report:?}");
    for mut stream in streams {
        let end = within("the stream's end", async {
            loop {
                match stream.next().await {
                    Some(Ok(_)) => continue,
                    other => return other,
                }
            }
        })
        .await;
        match end {
            Some(Err(StreamError::Remote { code, .. })) => {
                assert_eq!(code, ErrorCode::StreamRefused)
            }
            other => panic!("expected StreamRefused, got {other:?}"),
        }
        assert!(stream.next().await.is_none());
    }
    for _ in 0..3 {
        let (_, why) = within("a sink sees the close", observed.stopped.recv())
            .await
            .unwrap();
        assert!(matches!(why, SinkError::Closed), "{why:?}");
    }
}

#[tokio::test]
async fn a_peer_without_reply_streams_is_refused_typed() {
    // A server that does not announce them (as an older build would not).
    let (streamer, _observed) = Streamer::new();
    let server = Server::builder(streamer)
        .request_ids()
        .no_reply_streams()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = connect(&server).await;
    let refused = within("the refusal", client.subscribe(&Command::Count { n: 3 })).await;
    assert!(
        matches!(refused, Err(StreamError::Unsupported)),
        "{refused:?}"
    );
    // Requests go on as before; a streaming method asked by a plain request
    // on this connection is refused with a typed error reply.
    assert_eq!(
        client.request(&Command::Ping { n: 1 }).await.unwrap(),
        Reply::Pong { n: 1 }
    );
    match client.request(&Command::Count { n: 3 }).await {
        Err(RequestError::Remote { code, .. }) => assert_eq!(code, ErrorCode::StreamRefused),
        other => panic!("expected StreamRefused, got {other:?}"),
    }
    client.close().await;
    server.cut().await;

    // The other way round: a client without them.
    let (server, _observed) = serve().await;
    let client = Client::<Command>::builder()
        .request_ids()
        .no_reply_streams()
        .connect(server.local_addr())
        .await
        .unwrap();
    let refused = within("the refusal", client.subscribe(&Command::Count { n: 3 })).await;
    assert!(
        matches!(refused, Err(StreamError::Unsupported)),
        "{refused:?}"
    );
    client.close().await;
    server.cut().await;

    // No handshake at all (no hello, no features); no request ids.
    let (streamer, _observed) = Streamer::new();
    let server = Server::builder(streamer)
        .request_ids()
        .no_handshake()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Command>::builder()
        .request_ids()
        .no_handshake()
        .connect(server.local_addr())
        .await
        .unwrap();
    let refused = within("the refusal", client.subscribe(&Command::Count { n: 3 })).await;
    assert!(
        matches!(refused, Err(StreamError::Unsupported)),
        "{refused:?}"
    );
    client.close().await;
    server.cut().await;
    let (server, _observed) = serve().await;
    let client = Client::<Command>::builder()
        .no_handshake()
        .connect(server.local_addr())
        .await
        .unwrap();
    let refused = within("the refusal", client.subscribe(&Command::Count { n: 3 })).await;
    assert!(
        matches!(refused, Err(StreamError::NotEnabled)),
        "{refused:?}"
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn streams_flow_both_ways_on_one_connection() {
    let (server, _observed) = serve().await;
    let client = connect(&server).await;
    common::wait_until("the server has the connection", || {
        server.connection_count() == 1
    })
    .await;
    let on_server = server.connection(client.local_addr()).unwrap();
    // Both sides number their requests from the same start: the ids of the
    // two streams coincide, and must not mix.
    const N: u64 = 3_000;
    let mut down = client.subscribe(&Command::Count { n: N }).await.unwrap();
    let mut up = on_server.subscribe(&Ask::Count { n: N }).await.unwrap();
    let moved = AtomicU64::new(0);
    with_progress("items both ways", || moved.load(Ordering::SeqCst), async {
        let (a, b) = tokio::join!(read_all(&mut down, &moved), read_all(&mut up, &moved));
        assert_eq!((a, b), (N, N));
    })
    .await;
    client.close().await;
    server.cut().await;
}

/// Reads `stream` to its end, checking the order; counts in `moved`.
async fn read_all(stream: &mut chitchat_net::ReplyStream<Event>, moved: &AtomicU64) -> u64 {
    let mut expected = 0;
    while let Some(item) = stream.next().await {
        let Event::Item { i } = item.unwrap();
        assert_eq!(i, expected);
        expected += 1;
        moved.fetch_add(1, Ordering::SeqCst);
    }
    expected
}

/// A stream cancelled while its server drains (issue 23: "a stream
/// cancelled while the server drains"). A request in flight holds the
/// drain open. The drain ends the streams the server serves at once, as a
/// close does (`StreamRefused`: the subscribers move on with the
/// requests), so the subscriber's cancel during the drain meets a sink
/// already closed: each sink stops once (`Closed`), nothing hangs, new
/// requests fail with `Draining`, the request in flight is answered, and
/// the shutdown finishes.
#[tokio::test]
async fn a_stream_cancelled_while_the_server_drains() {
    let (server, mut observed) = serve().await;
    let server = Arc::new(server);
    let client = Arc::new(connect(&server).await);
    let mut dropped = client
        .subscribe(&Command::Watch {
            name: "dropped".into(),
        })
        .await
        .unwrap();
    assert_eq!(item(&mut dropped).await, 0);
    let mut kept = client
        .subscribe(&Command::Watch {
            name: "kept".into(),
        })
        .await
        .unwrap();
    assert_eq!(item(&mut kept).await, 0);

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.request(&Command::Wait).await }
    });
    within("the request in flight", observed.waiting.recv())
        .await
        .unwrap();
    let shutdown = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(NEVER).await }
    });
    // The drain reached the client: a new request fails at once.
    within("the drain reaches the client", async {
        loop {
            match client.request(&Command::Ping { n: 1 }).await {
                Err(RequestError::Draining) => return,
                Ok(_) => tokio::task::yield_now().await,
                Err(other) => panic!("expected Draining, got {other:?}"),
            }
        }
    })
    .await;

    // A new subscription on the draining connection: refused at once,
    // nothing sent (a reconnecting client subscribes on its next one).
    assert!(matches!(
        within(
            "a subscription while draining",
            client.subscribe(&Command::Count { n: 1 })
        )
        .await,
        Err(StreamError::Draining)
    ));

    // Cancelled while draining.
    drop(dropped);
    // The other stream ends with `StreamRefused`, after its items.
    let end = within("the kept stream's end", async {
        loop {
            match kept.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    match end {
        Some(Err(StreamError::Remote { code, .. })) => assert_eq!(code, ErrorCode::StreamRefused),
        other => panic!("expected StreamRefused, got {other:?}"),
    }
    assert!(kept.next().await.is_none(), "ended once");
    // Each sink stops once, closed by the drain.
    let mut stopped = Vec::new();
    for _ in 0..2 {
        let (name, why) = within("a sink stops", observed.stopped.recv())
            .await
            .unwrap();
        assert!(matches!(why, SinkError::Closed), "{name}: {why:?}");
        stopped.push(name);
    }
    stopped.sort();
    assert_eq!(stopped, ["dropped", "kept"]);
    assert!(
        !shutdown.is_finished(),
        "the request in flight holds the drain open"
    );

    observed.gate.send(true).unwrap();
    let answer = within("the request in flight", in_flight).await.unwrap();
    assert_eq!(answer.unwrap(), Reply::Pong { n: 0 });
    let report = within("the shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
    assert!(
        observed.stopped.try_recv().is_err(),
        "no sink stopped twice"
    );
}

/// A reconnecting client's subscriptions across a drain (README, "Drain
/// and failover"; `StreamError::Draining`: "a reconnecting client [subscribes
/// elsewhere] by itself, on its next connection"). Two servers; the first
/// drains, a request in flight holding its drain open. Its stream ends with
/// `StreamRefused`; subscribing again gives a stream from the second
/// server, whose items arrive. Meanwhile tasks subscribe without pause, so
/// that some subscribe in the moment the old connection refuses them with
/// `Draining`: none fails, each is served by one server or the other.
#[tokio::test]
async fn a_reconnecting_clients_subscription_resumes_on_the_next_server_after_a_drain() {
    use std::sync::atomic::AtomicBool;

    let (a, mut observed_a) = serve().await;
    let a = Arc::new(a);
    let (b, _observed_b) = serve().await;
    let client = Arc::new(
        Client::<Command>::builder()
            .request_ids()
            .request_timeout(NEVER)
            .handler(Answerer)
            // After a drain it moves on at once, not after the backoff.
            .reconnect(common::hour_backoff())
            .connect_any([a.local_addr(), b.local_addr()])
            .await
            .unwrap(),
    );
    assert_eq!(client.peer_addr(), a.local_addr());
    let mut watch = client
        .subscribe(&Command::Watch { name: "w".into() })
        .await
        .unwrap();
    assert_eq!(item(&mut watch).await, 0);

    // Subscriptions without pause, each read to its end: every outcome but
    // the ends a drain gives (`StreamRefused`) is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..16)
        .map(|_| {
            let (client, stop, served) = (client.clone(), stop.clone(), served.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let mut stream = client.subscribe(&Command::Count { n: 3 }).await?;
                    let mut next = 0;
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(Event::Item { i }) if i == next => next += 1,
                            Err(StreamError::Remote {
                                code: ErrorCode::StreamRefused,
                                ..
                            }) => break,
                            other => panic!("item {next}: {other:?}"),
                        }
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<(), StreamError>(())
            })
        })
        .collect();
    common::wait_for_count("subscriptions on a", 100, || served.load(Ordering::SeqCst)).await;

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.request(&Command::Wait).await }
    });
    within("the request in flight", observed_a.waiting.recv())
        .await
        .unwrap();
    let shutdown = tokio::spawn({
        let a = a.clone();
        async move { a.shutdown(NEVER).await }
    });
    // The stream on the first server ends with `StreamRefused`.
    let end = within("the stream's end", async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    match end {
        Some(Err(StreamError::Remote { code, .. })) => assert_eq!(code, ErrorCode::StreamRefused),
        other => panic!("expected StreamRefused, got {other:?}"),
    }
    // Subscribed again: served by the second server.
    let mut again = within(
        "the subscription again",
        client.subscribe(&Command::Watch { name: "w".into() }),
    )
    .await
    .unwrap();
    for expected in 0..3 {
        assert_eq!(item(&mut again).await, expected);
    }
    assert_eq!(client.peer_addr(), b.local_addr());
    // The loops go on on the second server.
    let before = served.load(Ordering::SeqCst);
    common::wait_for_count("subscriptions on b", before + 100, || {
        served.load(Ordering::SeqCst)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for task in loops {
        within("a subscription loop", task).await.unwrap().unwrap();
    }
    drop(again);

    // The first server's drain ends once its request is answered.
    observed_a.gate.send(true).unwrap();
    let answer = within("the request in flight", in_flight).await.unwrap();
    assert_eq!(answer.unwrap(), Reply::Pong { n: 0 });
    let report = within("the shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
    client.close().await;
    b.cut().await;
}
