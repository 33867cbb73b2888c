//! Graceful shutdown, `Client::close`, and handler panics (issue
//! "Hardening: hostile peers, faults, graceful shutdown").

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chitchat_net::{Addr, BoxError, Client, CloseReason, Context, Error, Handler, Server};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Echoes each line after yielding a few times (so frames pile up unread in
/// the socket); `gate` first waits until the test opens the gate. Records
/// what it handled.
#[derive(Debug, Default)]
struct Slow {
    entered: Notify,
    gate: Notify,
    seen: Mutex<Vec<(Addr, String)>>,
}

impl Slow {
    fn handled(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen_from(&self, peer: impl Into<Addr>) -> Vec<String> {
        let peer = peer.into();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

impl Handler for Slow {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if line == "gate" {
            self.entered.notify_one();
            tokio::time::timeout(WAIT, self.gate.notified())
                .await
                .map_err(|_| "the gate never opened")?;
        }
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.seen
            .lock()
            .unwrap()
            .push((ctx.peer_addr(), line.clone()));
        ctx.send(&line)?;
        Ok(())
    }
}

/// What became of a peer that connected as the server began to shut down.
#[derive(Debug)]
enum Newcomer {
    /// Refused, or reset without a byte of reply.
    Refused,
    /// Connected (in the listen backlog) and ended without a reply: reset,
    /// or accepted and closed before its line arrived (the handler may
    /// still see the line; its answer can no longer be sent).
    Unserved(SocketAddr),
    /// Connected before the server stopped taking what waits in its
    /// backlog: served gracefully (its line answered), then closed.
    Served(SocketAddr),
}

impl Newcomer {
    /// How many lines the server's handler saw from it (0 or 1: a served
    /// newcomer's one line), and how many connections it may have counted
    /// for it (0 or 1).
    fn seen(&self, seen_from: impl Fn(SocketAddr) -> Vec<String>) -> (usize, u64) {
        match *self {
            Newcomer::Refused => (0, 0),
            Newcomer::Unserved(peer) | Newcomer::Served(peer) => {
                let seen = seen_from(peer);
                assert!(seen.is_empty() || seen == ["ping"], "{seen:?}");
                if let Newcomer::Served(_) = self {
                    assert_eq!(seen, ["ping"]);
                }
                (seen.len(), 1)
            }
        }
    }
}

/// Connects just after a shutdown began and sends one line: the connection
/// is refused or reset, or (if it reached the listen backlog before the
/// server stopped taking from it) served gracefully: answered, then closed.
/// Never left hanging.
async fn newcomer_refused_or_closed(addr: SocketAddr, reply: &[u8]) -> Newcomer {
    match within("connect", TcpStream::connect(addr)).await {
        Err(e) => {
            use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
            assert!(
                matches!(e.kind(), ConnectionRefused | ConnectionReset),
                "{e}"
            );
            Newcomer::Refused
        }
        Ok(mut stream) => {
            let local = stream.local_addr().unwrap();
            // May fail: the server may have reset the connection already.
            let _ = stream.write_all(b"ping\n").await;
            let mut peer = RawPeer::from_stream(stream);
            // A reset reads as the end here.
            let got = peer.read_to_end().await;
            if got.is_empty() {
                Newcomer::Unserved(local)
            } else {
                assert_eq!(got, reply, "a newcomer got something else");
                Newcomer::Served(local)
            }
        }
    }
}

/// Every line of `lines`, without delimiters.
fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .expect("utf-8 replies")
        .lines()
        .map(str::to_owned)
        .collect()
}

// ------------------------------------------------------ graceful shutdown --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_every_frame_that_arrived_before_it_began() {
    // More than the server reads ahead while its handler waits (1,024
    // frames), so that frames are still in its receive queue.
    const N: usize = 3000;
    let server = Server::listen("127.0.0.1:0", Slow::default())
        .await
        .unwrap();
    let addr = tcp(server.local_addr());
    let events = server.errors();
    let mut peer = RawPeer::connect(addr).await;
    let mut burst = b"gate\n".to_vec();
    let mut expected = vec!["gate".to_string()];
    for i in 0..N {
        burst.extend_from_slice(format!("m{i}\n").as_bytes());
        expected.push(format!("m{i}"));
    }
    // Once the write has completed, on loopback, the bytes are in the
    // server's receive queue; the handler holds the first frame, so past
    // what the server reads ahead meanwhile they are still unread there.
    peer.write(&burst).await;
    within(
        "the handler to hold the gate",
        server.handler().entered.notified(),
    )
    .await;
    assert!(server.stats().bytes_in < burst.len() as u64);

    let started = Instant::now();
    // A deadline over 5× what the shutdown needs on a loaded machine (about
    // a second there; it prints what it took).
    let shutdown = server.shutdown(Duration::from_secs(20));
    tokio::pin!(shutdown);
    // The first poll begins the shutdown; the connection is still busy.
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    let newcomer = newcomer_refused_or_closed(addr, b"ping\n").await;
    server.handler().gate.notify_one();
    let (finished, replies) = tokio::join!(shutdown, async move {
        let replies = peer.read_to_end().await;
        // Our side closes only now, after the server's.
        drop(peer);
        replies
    });
    assert!(finished.finished, "shutdown passed its deadline");
    println!("shutdown took {:?}", started.elapsed());
    assert_eq!(lines(&replies), expected);
    let (seen, accepted) = newcomer.seen(|peer| server.handler().seen_from(peer));
    println!("the newcomer was {newcomer:?}");
    assert_eq!(server.handler().handled(), N + 1 + seen);
    let stats = server.stats();
    assert_eq!(stats.connections_open, 0, "{stats:?}");
    assert!(
        (1..=1 + accepted).contains(&stats.connections_total),
        "{stats:?}"
    );
    assert_eq!(server.connection_count(), 0);
    assert_events_end(&events).await;
    // The listener is gone.
    let late = TcpStream::connect(addr).await;
    assert!(late.is_err(), "connected after shutdown: {late:?}");
}

/// Replies `pong` to lines starting with `ping`; on `stop`, begins the
/// server's graceful shutdown from inside the handler, so that it begins
/// at a known point: with everything the peer wrote already in the socket.
/// Other lines get no reply.
#[derive(Debug, Default)]
struct StopFromInside {
    server: OnceLock<Weak<Server<StopFromInside>>>,
    shutdown: Mutex<Option<JoinHandle<bool>>>,
}

impl Handler for StopFromInside {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if line.starts_with("ping") {
            ctx.send(&"pong".to_string())?;
        } else if line == "stop" {
            let server = self
                .server
                .get()
                .and_then(Weak::upgrade)
                .ok_or("no server")?;
            let mut shutdown = Box::pin(async move { server.shutdown(WAIT).await.finished });
            // The first poll stops accepting and signals every connection.
            assert!(futures_util::poll!(&mut shutdown).is_pending());
            *self.shutdown.lock().unwrap() = Some(tokio::spawn(shutdown));
        }
        Ok(())
    }
}

/// Frames that are in the socket when the shutdown begins must be answered,
/// however the reads that fetch them fall. A connection gets a budget of
/// 128 operations per poll (tokio's coop budget): one per read, one per
/// 16 frames (so it runs out after about 2,000 frames). Here the shutdown
/// begins on the first frame; 4,000 frames and more that need no reply
/// follow, then pings, all in the socket already. The mix of 3- and 2-byte
/// frames shifts where the budget runs out.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_answers_what_has_arrived_wherever_the_budget_runs_out() {
    const PINGS: usize = 10;
    let mut lost = Vec::new();
    for t in 0..=300 {
        let server = Arc::new(
            Server::builder(StopFromInside::default())
                .listen("127.0.0.1:0")
                .await
                .unwrap(),
        );
        server
            .handler()
            .server
            .set(Arc::downgrade(&server))
            .unwrap();
        let mut peer = RawPeer::connect(server.local_addr()).await;
        let mut burst = b"stop\n".to_vec();
        burst.extend_from_slice(&b"nn\n".repeat(t));
        burst.extend_from_slice(&b"n\n".repeat(4000));
        burst.extend_from_slice(&b"ping\n".repeat(PINGS));
        peer.write(&burst).await;
        let replies = peer.read_to_end().await;
        drop(peer);
        let shutdown = server.handler().shutdown.lock().unwrap().take();
        let finished = within("shutdown", shutdown.expect("the handler began a shutdown"))
            .await
            .unwrap();
        assert!(finished, "t = {t}: shutdown passed its deadline");
        let pongs = lines(&replies).iter().filter(|l| *l == "pong").count();
        if pongs != PINGS {
            lost.push((t, pongs));
        }
    }
    assert!(
        lost.is_empty(),
        "(t, pongs) where fewer than {PINGS} pongs came back: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_hanging_handler_returns_false_at_its_deadline() {
    let deadline = Duration::from_millis(300);
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let mut peer = RawPeer::connect(server.local_addr()).await;
    peer.ping().await;
    let mut idle = RawPeer::connect(server.local_addr()).await;
    idle.ping().await;
    peer.write(b"hang\n").await;
    wait_until("the handler hangs", || server.handler().count() == 3).await;
    let started = Instant::now();
    let finished = within("shutdown", server.shutdown(deadline)).await.finished;
    let took = started.elapsed();
    assert!(!finished, "a hanging handler finished");
    assert!(took >= deadline - Duration::from_millis(10), "{took:?}");
    // Over 5× the 300 ms deadline it needs, even on a loaded machine.
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Every task has ended.
    assert_eq!(server.stats().connections_open, 0);
    assert_eq!(server.connection_count(), 0);
    peer.expect_end().await;
    idle.expect_end().await;
    let mut closed = vec![
        server.handler().next_closed().await,
        server.handler().next_closed().await,
    ];
    closed.sort();
    let mut expected = vec![peer.local_addr(), idle.local_addr()];
    expected.sort();
    assert_eq!(closed, expected);
    assert!(TcpStream::connect(tcp(server.local_addr())).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_proofs_with_many_clients() {
    const CLIENTS: usize = 4;
    const MESSAGES: usize = 200;
    // A shutdown that waited on a close timeout would pass its deadline.
    let server = Server::builder(Slow::default())
        .close_timeout(Duration::from_secs(60))
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let addr = tcp(server.local_addr());
    let events = server.errors();
    let mut clients = Vec::new();
    let mut wire_bytes = 0;
    for c in 0..CLIENTS {
        let (handler, rx) = collector::<String>();
        let client = Client::<String>::builder()
            .handler(handler)
            .connect(addr)
            .await
            .unwrap();
        for m in 0..MESSAGES {
            let msg = format!("c{c} m{m}");
            wire_bytes += msg.len() + 1;
            client.send(&msg).await.unwrap();
        }
        clients.push((client, rx));
    }
    // Every byte has reached the server (read, not yet all handled).
    wait_until("the server reads every message", || {
        server.stats().bytes_in == wire_bytes as u64
    })
    .await;
    let in_flight = CLIENTS * MESSAGES - server.handler().handled();
    // A deadline over 5× what the shutdown needs on a loaded machine (about
    // a second there; it prints what it took).
    let shutdown = server.shutdown(Duration::from_secs(20));
    tokio::pin!(shutdown);
    let early = futures_util::poll!(&mut shutdown);
    let newcomer = newcomer_refused_or_closed(addr, b"ping\n").await;
    let finished = match early {
        std::task::Poll::Ready(report) => report.finished,
        std::task::Poll::Pending => within("shutdown", shutdown).await.finished,
    };
    assert!(finished, "shutdown passed its deadline");
    // Returned once every connection task had ended.
    assert_eq!(server.stats().connections_open, 0);
    let (seen, accepted) = newcomer.seen(|peer| server.handler().seen_from(peer));
    let total = server.stats().connections_total;
    assert!((CLIENTS as u64..=CLIENTS as u64 + accepted).contains(&total));
    assert_eq!(server.connection_count(), 0);
    assert_eq!(server.handler().handled(), CLIENTS * MESSAGES + seen);
    println!("{in_flight} messages were in flight when the shutdown began");
    for (c, (client, rx)) in clients.iter_mut().enumerate() {
        for m in 0..MESSAGES {
            assert_eq!(recv(rx).await, format!("c{c} m{m}"));
        }
        // The server closed first: the client says so, with one event.
        assert_eq!(
            within("the client sees the end", client.closed()).await,
            CloseReason::ByPeer
        );
        assert!(matches!(
            client.send(&"late".to_string()).await,
            Err(chitchat_net::SendError::Closed)
        ));
        let event = client.errors().try_recv().expect("a closed-by-peer event");
        assert!(matches!(event.error, Error::ClosedByPeer), "{event}");
        assert!(client.errors().try_recv().is_none());
    }
    assert_events_end(&events).await;
}

/// A peer that sends without pause holds a graceful shutdown no longer than
/// the close timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_without_pause_holds_shutdown_only_for_the_close_timeout() {
    let close_timeout = Duration::from_millis(300);
    let server = Server::builder(Probe::new())
        .close_timeout(close_timeout)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let stream = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    // The echoes are read and dropped: a peer that never reads would hold
    // the server in a write (bounded by the write timeout, not this test).
    let (mut echoes, mut stream) = stream.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0; 64 * 1024];
        while matches!(echoes.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let sender = tokio::spawn(async move {
        let chunk = b"more\n".repeat(1000);
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if stream.write_all(&chunk).await.is_err() {
                return true;
            }
        }
        false
    });
    wait_until("the server handles the stream", || {
        server.handler().count() > 1000
    })
    .await;
    let started = Instant::now();
    let finished = within("shutdown", server.shutdown(WAIT)).await.finished;
    let took = started.elapsed();
    assert!(finished, "shutdown passed its deadline");
    // The 300 ms close timeout, not the 10 s deadline: 5 s is over 5× what
    // it needs on a loaded machine, and half the deadline.
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    assert_eq!(server.stats().connections_open, 0);
    assert!(
        within("the sender to see the end", sender).await.unwrap(),
        "the connection outlived the shutdown"
    );
}

/// A peer that reads everything but never closes its side delays the
/// shutdown by the close timeout, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_closes_holds_shutdown_only_for_the_close_timeout() {
    let close_timeout = Duration::from_millis(300);
    let server = Server::builder(Probe::new())
        .close_timeout(close_timeout)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut peer = RawPeer::connect(server.local_addr()).await;
    peer.ping().await;
    let started = Instant::now();
    let (report, rest) = tokio::join!(server.shutdown(WAIT), peer.read_to_end());
    let took = started.elapsed();
    assert!(report.finished);
    assert!(rest.is_empty());
    assert!(
        took >= close_timeout - Duration::from_millis(10),
        "{took:?}"
    );
    // The 300 ms close timeout, not the 10 s deadline: 5 s is over 5× what
    // it needs on a loaded machine, and half the deadline.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(server.stats().connections_open, 0);
}

// ---------------------------------------------------------- Client::close --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_delivers_everything_sent_before_it() {
    const N: usize = 50_000;
    let server = Server::listen("127.0.0.1:0", Counter::default())
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .close_timeout(Duration::from_secs(60))
        .connect(server.local_addr())
        .await
        .unwrap();
    within("sending", async {
        for i in 0..N {
            client.send(&format!("m{i}")).await.unwrap();
        }
    })
    .await;
    within("close", client.close()).await;
    // close() returned once the server had closed its side, which it does
    // after handling every frame.
    assert_eq!(server.handler().total.load(Ordering::SeqCst), N);
    let in_order = server.handler().per_peer.lock().unwrap()[&client.local_addr()]
        .iter()
        .enumerate()
        .all(|(i, m)| *m == format!("m{i}"));
    assert!(in_order, "out of order");
    assert!(client.is_closed());
    assert!(matches!(
        client.send(&"late".to_string()).await,
        Err(chitchat_net::SendError::Closed)
    ));
    assert_eq!(client.stats().connections_open, 0);
    assert!(client.errors().try_recv().is_none());
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

/// Counts lines, checking they come as `gate`, `m0`, `m1`, ...; `gate`
/// waits until the test opens the gate.
#[derive(Debug, Default)]
struct GatedCounter {
    entered: Notify,
    gate: Notify,
    out_of_order: AtomicBool,
    total: AtomicUsize,
}

impl Handler for GatedCounter {
    type Message = String;

    async fn handle(&self, line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let n = self.total.load(Ordering::SeqCst);
        let expected = match n {
            0 => "gate".to_string(),
            n => format!("m{}", n - 1),
        };
        if line != expected {
            self.out_of_order.store(true, Ordering::SeqCst);
        }
        if line == "gate" {
            self.entered.notify_one();
            tokio::time::timeout(WAIT, self.gate.notified())
                .await
                .map_err(|_| "the gate never opened")?;
        } else {
            tokio::task::yield_now().await;
        }
        self.total.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_delivers_messages_still_in_flight() {
    const N: usize = 50_000;
    let server = Server::listen("127.0.0.1:0", GatedCounter::default())
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .queue_bytes(1 << 20) // holds all N: no send waits
        .close_timeout(Duration::from_secs(60))
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"gate".to_string()).await.unwrap();
    within(
        "the handler to hold the gate",
        server.handler().entered.notified(),
    )
    .await;
    for i in 0..N {
        client.send(&format!("m{i}")).await.unwrap();
    }
    let close = client.close();
    tokio::pin!(close);
    // The first poll asks the connection to close.
    assert!(futures_util::poll!(&mut close).is_pending());
    assert_eq!(server.handler().total.load(Ordering::SeqCst), 0);
    server.handler().gate.notify_one();
    within("close", close).await;
    // close() returned once the server had closed its side, which it does
    // after handling every frame: the gate and all N, in order.
    assert_eq!(server.handler().total.load(Ordering::SeqCst), N + 1);
    assert!(!server.handler().out_of_order.load(Ordering::SeqCst));
    assert!(client.errors().try_recv().is_none());
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

// --------------------------------------------------------- handler panics --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_ends_only_its_connection_and_shutdown_still_completes() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let events = server.errors();
    let mut a = RawPeer::connect(server.local_addr()).await;
    let mut b = RawPeer::connect(server.local_addr()).await;
    a.ping().await;
    b.ping().await;
    a.write(b"panic\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, a.local_addr());
    assert!(
        matches!(&event.error, Error::HandlerPanic(m) if m.contains("requested panic")),
        "{:?}",
        event.error
    );
    a.expect_end().await;
    assert_eq!(server.handler().next_closed().await, a.local_addr());
    b.ping().await;
    let mut c = RawPeer::connect(server.local_addr()).await;
    c.ping().await;
    wait_until("the table loses a", || server.connection_count() == 2).await;
    let (finished, _, _) = tokio::join!(
        server.shutdown(WAIT),
        async {
            b.expect_end().await;
            drop(b);
        },
        async {
            c.expect_end().await;
            drop(c);
        }
    );
    assert!(finished.finished);
    assert_eq!(server.stats().connections_open, 0);
    assert_events_end(&events).await;
}

/// Panics in `on_open` for its first connection and in `on_close` for its
/// second; echoes lines.
#[derive(Debug, Default)]
struct PanicsAtTheEdges {
    opened: AtomicUsize,
    closed: Mutex<Vec<Addr>>,
}

impl Handler for PanicsAtTheEdges {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.send(&line)?;
        Ok(())
    }

    async fn on_open(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if self.opened.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("on_open panics");
        }
        Ok(())
    }

    async fn on_close(&self, closed: chitchat_net::Closed) {
        let peer = closed.peer_addr().clone();
        let n = {
            let mut closed = self.closed.lock().unwrap();
            closed.push(peer);
            closed.len()
        };
        if n == 2 {
            panic!("on_close panics");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_on_open_and_on_close_leave_the_server_serving() {
    let server = Server::listen("127.0.0.1:0", PanicsAtTheEdges::default())
        .await
        .unwrap();
    let events = server.errors();
    // on_open panics: a HandlerPanic event, the connection ends, on_close
    // still runs.
    let mut first = RawPeer::connect(server.local_addr()).await;
    let event = next_event(&events).await;
    assert_peer(&event, first.local_addr());
    assert!(
        matches!(&event.error, Error::HandlerPanic(m) if m.contains("on_open panics")),
        "{:?}",
        event.error
    );
    first.expect_end().await;
    wait_until("on_close for the first", || {
        server.handler().closed.lock().unwrap().len() == 1
    })
    .await;
    // on_close panics: the connection still leaves the table.
    let mut second = RawPeer::connect(server.local_addr()).await;
    second.write(b"hi\n").await;
    assert_eq!(second.read_text_line().await, "hi");
    let gone = second.local_addr();
    drop(second);
    wait_until("the second leaves the table", || {
        server.connection_count() == 0 && server.handler().closed.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(server.handler().closed.lock().unwrap()[1], gone);
    let mut third = RawPeer::connect(server.local_addr()).await;
    third.write(b"still here\n").await;
    assert_eq!(third.read_text_line().await, "still here");
    let (finished, _) = tokio::join!(server.shutdown(WAIT), async {
        third.expect_end().await;
        drop(third);
    });
    assert!(finished.finished);
    assert_eq!(server.stats().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_handler_panic_ends_the_client_with_an_event() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let boom = chitchat_net::handler_fn(
        |reply: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            panic!("client handler panics on {reply}");
        },
    );
    let client = Client::<String>::builder()
        .handler(boom)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    let event = next_event(&client.errors()).await;
    assert_eq!(event.peer, Some(server.local_addr()));
    assert!(
        matches!(&event.error, Error::HandlerPanic(m) if m.contains("panics on pong")),
        "{:?}",
        event.error
    );
    wait_until("the client's connection ends", || {
        client.is_closed() && client.stats().connections_open == 0
    })
    .await;
    assert_eq!(server.handler().next_closed().await, client.local_addr());
    within("close after the end", client.close()).await;
    within("cut", server.cut()).await;
}
