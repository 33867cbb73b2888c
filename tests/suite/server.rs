//! Integration tests of the server over loopback: handlers, context, error
//! events, framing errors, timeouts, limits, and the server's own API.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::{
    handler_fn, BoxError, Client, Context, Error, Framing, Handler, Server, SizeMismatch,
};
use common::*;
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn probe_server() -> Server<Probe> {
    Server::listen("127.0.0.1:0", Probe::new()).await.unwrap()
}

/// A chitchat client whose replies go into a channel.
async fn collecting_client(
    addr: impl chitchat_net::ConnectAddr,
) -> (Client<String>, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (handler, rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(addr)
        .await
        .unwrap();
    (client, rx)
}

/// Sends `ping` and waits for `pong`: the server has registered the client.
async fn client_ping(
    client: &Client<String>,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(rx).await, "pong");
}

// ---------------------------------------------------------------- handler --

/// Records whether two frames of one connection are ever in the handler at
/// once.
#[derive(Debug, Default)]
struct Sequencer {
    busy: Mutex<HashSet<chitchat_net::Addr>>,
    overlaps: AtomicUsize,
}

impl Handler for Sequencer {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let peer = ctx.peer_addr();
        if !self.busy.lock().unwrap().insert(peer.clone()) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        // Give the runtime every chance to start the next frame meanwhile.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        self.busy.lock().unwrap().remove(&peer);
        ctx.send(&line)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_one_connection_are_handled_one_at_a_time_in_order() {
    let server = Server::listen("127.0.0.1:0", Sequencer::default())
        .await
        .unwrap();
    let mut a = RawPeer::connect(server.local_addr()).await;
    let mut b = RawPeer::connect(server.local_addr()).await;
    let burst = |tag: &str| -> Vec<u8> {
        (0..50)
            .flat_map(|i| format!("{tag}{i}\n").into_bytes())
            .collect()
    };
    a.write(&burst("a")).await;
    b.write(&burst("b")).await;
    for i in 0..50 {
        assert_eq!(a.read_text_line().await, format!("a{i}"));
    }
    for i in 0..50 {
        assert_eq!(b.read_text_line().await, format!("b{i}"));
    }
    assert_eq!(server.handler().overlaps.load(Ordering::SeqCst), 0);
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_handled_concurrently() {
    let server = probe_server().await;
    let mut a = RawPeer::connect(server.local_addr()).await;
    let mut b = RawPeer::connect(server.local_addr()).await;
    // A's handler waits until B's message releases it.
    a.write(b"wait\n").await;
    within(
        "A's handler to start waiting",
        server.handler().entered.notified(),
    )
    .await;
    b.write(b"go\n").await;
    assert_eq!(b.read_text_line().await, "went");
    assert_eq!(a.read_text_line().await, "released");
    // Both connections still work.
    a.ping().await;
    b.ping().await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn on_open_can_greet_and_on_close_sees_the_peer() {
    let server = Server::listen("127.0.0.1:0", Probe::greeting())
        .await
        .unwrap();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    assert_eq!(
        raw.read_text_line().await,
        format!("hello {}", raw.local_addr())
    );
    raw.ping().await;
    let peer = raw.local_addr();
    drop(raw);
    assert_eq!(server.handler().next_closed().await, peer);

    // Also for a chitchat client, ended by close().
    let (client, mut rx) = collecting_client(server.local_addr()).await;
    assert_eq!(
        recv(&mut rx).await,
        format!("hello {}", client.local_addr())
    );
    within("client close", client.close()).await;
    assert_eq!(server.handler().next_closed().await, client.local_addr());
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

/// Refuses every connection from `on_open`.
#[derive(Debug, Default)]
struct Doorman {
    handled: AtomicUsize,
    closed: Mutex<Vec<chitchat_net::Addr>>,
}

impl Handler for Doorman {
    type Message = String;

    async fn handle(&self, _line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn on_open(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Err("not today".into())
    }

    async fn on_close(&self, closed: chitchat_net::Closed) {
        self.closed.lock().unwrap().push(closed.peer_addr().clone());
    }
}

#[tokio::test]
async fn on_open_error_is_an_event_and_closes_the_connection() {
    let server = Server::listen("127.0.0.1:0", Doorman::default())
        .await
        .unwrap();
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr());
    assert!(
        matches!(&event.error, Error::Handler(e) if e.to_string() == "not today"),
        "{:?}",
        event.error
    );
    raw.read_to_end().await;
    wait_until("on_close", || {
        server
            .handler()
            .closed
            .lock()
            .unwrap()
            .contains(&raw.local_addr().into())
    })
    .await;
    assert_eq!(server.handler().handled.load(Ordering::SeqCst), 0);
    within("cut", server.cut()).await;
}

// ---------------------------------------------------------------- context --

#[tokio::test]
async fn context_addresses_typed_send_and_send_bytes() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"addrs\n").await;
    assert_eq!(
        raw.read_text_line().await,
        format!("{} {}", raw.local_addr(), server.local_addr())
    );
    // A typed message of another type than the handler's.
    raw.write(b"typed\n").await;
    let mut expected = Pair::TYPED.bytes();
    expected.push(b'\n');
    assert_eq!(raw.read_exact(expected.len()).await, expected);
    raw.write(b"bytes\n").await;
    assert_eq!(raw.read_line().await, b"some bytes\n");
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn context_close_flushes_the_reply_then_closes() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"bye\n").await;
    assert_eq!(raw.read_line().await, b"goodbye\n");
    raw.expect_end().await;
    drop(raw);
    server.handler().next_closed().await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

/// `Context::close` says no further frame of the connection reaches the
/// handler; frames already read (or read while waiting for the peer to close)
/// must not be handled.
#[tokio::test]
async fn frames_after_context_close_do_not_reach_the_handler() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    let peer = raw.local_addr();
    raw.write(b"bye\nafter\n").await;
    raw.shutdown().await;
    assert_eq!(raw.read_line().await, b"goodbye\n");
    raw.expect_end().await;
    drop(raw);
    assert_eq!(server.handler().next_closed().await, peer);
    assert_eq!(server.handler().seen_from(peer), ["bye"]);
    within("cut", server.cut()).await;
}

// ----------------------------------------------------- per-frame errors --

#[tokio::test]
async fn handler_error_is_an_event_and_the_connection_stays_open() {
    let server = probe_server().await;
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"fail\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr());
    match &event.error {
        Error::Handler(e) => assert_eq!(e.to_string(), "requested failure"),
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert!(!event.error.is_fatal());
    assert_eq!(
        event.to_string(),
        format!("{}: handler failed: requested failure", raw.local_addr())
    );
    raw.ping().await;
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn invalid_utf8_is_a_decode_event_and_the_connection_stays_open() {
    let server = probe_server().await;
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"ok\xff\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr());
    assert!(
        matches!(event.error, Error::Decode { codec: "text", .. }),
        "{:?}",
        event.error
    );
    raw.ping().await;
    assert!(server.handler().seen_from(raw.local_addr()) == ["ping"]);
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn wrong_size_pod_frame_is_a_decode_event_and_the_connection_stays_open() {
    let double = handler_fn(|p: Pair, ctx: &mut Context<'_>| -> Result<(), BoxError> {
        ctx.send(&Pair {
            a: p.a * 2,
            b: p.b * 2,
        })?;
        Ok(())
    });
    let server = Server::listen("127.0.0.1:0", double).await.unwrap();
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"abc\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr());
    match &event.error {
        Error::Decode {
            codec: "pod",
            source,
            ..
        } => assert_eq!(
            source.downcast_ref::<SizeMismatch>(),
            Some(&SizeMismatch {
                expected: 8,
                actual: 3
            })
        ),
        other => panic!("expected a pod decode error, got {other:?}"),
    }
    // A valid frame (no byte needs escaping) is still answered.
    let mut frame = Pair { a: 1, b: 2 }.bytes();
    frame.push(b'\n');
    raw.write(&frame).await;
    let mut expected = Pair { a: 2, b: 4 }.bytes();
    expected.push(b'\n');
    assert_eq!(raw.read_exact(expected.len()).await, expected);
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_closes_only_that_connection() {
    let server = probe_server().await;
    let events = server.errors();
    let mut a = RawPeer::connect(server.local_addr()).await;
    let mut b = RawPeer::connect(server.local_addr()).await;
    a.ping().await;
    b.ping().await;
    a.write(b"panic\nping\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, a.local_addr());
    match &event.error {
        Error::HandlerPanic(msg) => assert!(msg.contains("requested panic"), "{msg}"),
        other => panic!("expected a handler panic, got {other:?}"),
    }
    a.expect_end().await;
    assert_eq!(server.handler().next_closed().await, a.local_addr());
    b.ping().await;
    let mut c = RawPeer::connect(server.local_addr()).await;
    c.ping().await;
    within("cut", server.cut()).await;
}

// --------------------------------------------------------- framing errors --

#[tokio::test]
async fn too_long_frame_closes_only_that_connection() {
    let server = Server::builder(Probe::new())
        .max_frame_length(16)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let mut a = RawPeer::connect(server.local_addr()).await;
    let mut b = RawPeer::connect(server.local_addr()).await;
    a.ping().await;
    let mut long = vec![b'x'; 40];
    long.push(b'\n');
    a.write(&long).await;
    let event = next_event(&events).await;
    assert_peer(&event, a.local_addr());
    assert!(
        matches!(event.error, Error::FrameTooLong { limit: 16, len } if len > 16),
        "{:?}",
        event.error
    );
    // Nothing of it was echoed: the stream just ends.
    a.expect_end().await;
    assert_eq!(server.handler().seen_from(a.local_addr()), ["ping"]);
    b.ping().await;
    // A 16-byte frame is still fine.
    b.write(b"0123456789abcdef\n").await;
    assert_eq!(b.read_text_line().await, "0123456789abcdef");
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn too_long_frame_is_caught_before_its_delimiter() {
    let server = Server::builder(Probe::new())
        .max_frame_length(16)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let mut a = RawPeer::connect(server.local_addr()).await;
    a.write(&[b'y'; 17]).await;
    let event = next_event(&events).await;
    assert_peer(&event, a.local_addr());
    assert!(
        matches!(event.error, Error::FrameTooLong { limit: 16, .. }),
        "{:?}",
        event.error
    );
    a.expect_end().await;
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn peer_ending_mid_frame_is_a_partial_frame_event() {
    let server = probe_server().await;
    let events = server.errors();
    let mut a = RawPeer::connect(server.local_addr()).await;
    a.ping().await;
    a.write(b"abc").await;
    a.shutdown().await;
    let event = next_event(&events).await;
    assert_peer(&event, a.local_addr());
    assert!(
        matches!(event.error, Error::PartialFrame { len: 3 }),
        "{:?}",
        event.error
    );
    a.expect_end().await;
    assert_eq!(server.handler().seen_from(a.local_addr()), ["ping"]);
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn peer_ending_between_frames_is_no_event() {
    let server = probe_server().await;
    let events = server.errors();
    let mut clean = RawPeer::connect(server.local_addr()).await;
    clean.ping().await;
    clean.shutdown().await;
    clean.expect_end().await;
    drop(clean);
    // Its connection has fully ended (events are reported before on_close).
    server.handler().next_closed().await;
    // Now a known event from another connection must be the first one.
    let mut other = RawPeer::connect(server.local_addr()).await;
    other.write(b"\xff\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, other.local_addr());
    assert!(
        matches!(event.error, Error::Decode { .. }),
        "{:?}",
        event.error
    );
    within("cut", server.cut()).await;
}

// ---------------------------------------------------- framing over writes --

#[tokio::test]
async fn many_frames_in_one_write() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    let burst: Vec<u8> = (0..100)
        .flat_map(|i| format!("frame {i}\n").into_bytes())
        .collect();
    raw.write(&burst).await;
    for i in 0..100 {
        assert_eq!(raw.read_text_line().await, format!("frame {i}"));
    }
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn one_frame_over_many_writes() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    for byte in b"hello world\nsecond\n" {
        raw.write(&[*byte]).await;
    }
    assert_eq!(raw.read_text_line().await, "hello world");
    assert_eq!(raw.read_text_line().await, "second");
    assert_eq!(
        server.handler().seen_from(raw.local_addr()),
        ["hello world", "second"]
    );
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn text_server_speaks_the_go_wire_format() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"ping\r\n").await;
    // Exactly `pong\n`: raw mode, no escaping, no `\r`.
    assert_eq!(raw.read_exact(5).await, b"pong\n");
    raw.write(b"caf\xc3\xa9 \xff\r\n").await;
    raw.write(b"caf\xc3\xa9\r\n").await;
    assert_eq!(raw.read_exact(6).await, "café\n".as_bytes());
    assert_eq!(
        server.handler().seen_from(raw.local_addr()),
        ["ping", "café"]
    );
    // The one with 0xFF was a decode error (text), not an escape sequence.
    let event = next_event(&server.errors()).await;
    assert!(
        matches!(event.error, Error::Decode { codec: "text", .. }),
        "{:?}",
        event.error
    );
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn eof_framing_raw_peer_delivers_one_frame() {
    let server = Server::builder(Probe::new())
        .framing(Framing::eof())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"ab\n").await;
    raw.write(b"cd").await;
    raw.write(b"ef").await;
    raw.shutdown().await;
    assert_eq!(raw.read_to_end().await, b"ab\ncdef");
    assert_eq!(server.handler().seen_from(raw.local_addr()), ["ab\ncdef"]);
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

// ------------------------------------------------------------ concurrency --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_get_their_replies_in_order() {
    let server = probe_server().await;
    let addr = tcp(server.local_addr());
    let mut tasks = Vec::new();
    for c in 0..200 {
        tasks.push(tokio::spawn(async move {
            let (client, mut rx) = collecting_client(addr).await;
            for m in 0..20 {
                client.send(&format!("c{c} m{m}")).await.unwrap();
            }
            for m in 0..20 {
                assert_eq!(recv(&mut rx).await, format!("c{c} m{m}"));
            }
            client.close().await;
            assert!(client.errors().try_recv().is_none());
        }));
    }
    within("200 clients", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    assert_eq!(server.handler().count(), 200 * 20);
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

// ------------------------------------------------------------- server API --

#[tokio::test]
async fn remote_addrs_connection_count_and_close_remote() {
    let server = probe_server().await;
    let (c1, mut rx1) = collecting_client(server.local_addr()).await;
    let (c2, mut rx2) = collecting_client(server.local_addr()).await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    client_ping(&c1, &mut rx1).await;
    client_ping(&c2, &mut rx2).await;
    raw.ping().await;

    let mut remotes = server.remote_addrs();
    remotes.sort();
    let mut expected = vec![c1.local_addr(), c2.local_addr(), raw.local_addr().into()];
    expected.sort();
    assert_eq!(remotes, expected);
    assert_eq!(server.connection_count(), 3);
    assert_eq!(c1.peer_addr(), server.local_addr());

    server.close_remote(raw.local_addr()).unwrap();
    raw.expect_end().await;
    let gone = raw.local_addr();
    drop(raw);
    assert_eq!(server.handler().next_closed().await, gone);
    wait_until("the closed peer leaves the table", || {
        server.connection_count() == 2
    })
    .await;
    assert!(!server.remote_addrs().contains(&gone.into()));
    assert!(matches!(
        server.close_remote(gone),
        Err(Error::UnknownPeer(a)) if a == gone
    ));

    // close_remote on a chitchat client: it sees the end.
    server.close_remote(c2.local_addr()).unwrap();
    wait_until("client 2 sees the close", || c2.is_closed()).await;
    assert!(matches!(
        c2.send(&"late".to_string()).await,
        Err(chitchat_net::SendError::Closed)
    ));
    client_ping(&c1, &mut rx1).await;

    let unknown = dead_addr().await;
    assert!(matches!(
        server.close_remote(unknown),
        Err(Error::UnknownPeer(a)) if a == unknown
    ));
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn send_to_reaches_one_peer_and_broadcast_reaches_all() {
    let server = probe_server().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (client, mut rx) = collecting_client(server.local_addr()).await;
        client_ping(&client, &mut rx).await;
        clients.push((client, rx));
    }
    let target = clients[1].0.local_addr();
    server
        .send_to(&target, &"direct".to_string())
        .await
        .unwrap();
    assert_eq!(recv(&mut clients[1].1).await, "direct");
    // A typed message of another type than the handler's also works.
    server.send_to(&target, &"x".to_string()).await.unwrap();
    assert_eq!(recv(&mut clients[1].1).await, "x");

    assert_eq!(server.broadcast(&"all".to_string()).unwrap(), 3);
    for (_, rx) in &mut clients {
        // The first message of clients 0 and 2 since the pong: send_to did
        // not reach them.
        assert_eq!(recv(rx).await, "all");
    }
    let unknown = dead_addr().await;
    assert!(matches!(
        server.send_to(unknown, &"nobody".to_string()).await,
        Err(Error::UnknownPeer(a)) if a == unknown
    ));
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_skips_a_peer_whose_queue_is_full() {
    let server = Server::builder(Probe::new())
        .queue_bytes(1024)
        .write_stall_timeout(None)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let (good, mut rx) = collecting_client(server.local_addr()).await;
    client_ping(&good, &mut rx).await;
    let mut stuck = RawPeer::connect(server.local_addr()).await;
    stuck.ping().await;

    // Fill the stuck peer's socket buffers and then its queue: once a send
    // waits for long, the connection is blocked writing and its queue full.
    let handle = server.connection(stuck.local_addr()).unwrap();
    let big = "z".repeat(64 * 1024);
    let mut blocked = false;
    for _ in 0..4000 {
        // A send with room takes a millisecond (a few hundred at worst on a
        // loaded machine): waiting 2 s means the queue is full.
        match tokio::time::timeout(Duration::from_secs(2), handle.send(&big)).await {
            Ok(sent) => sent.unwrap(),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "256 MiB were queued to a peer that never reads");

    assert_eq!(server.broadcast(&"all".to_string()).unwrap(), 1);
    let event = next_event(&events).await;
    assert_peer(&event, stuck.local_addr());
    assert!(
        matches!(event.error, Error::QueueFull { limit: 1024 }),
        "{:?}",
        event.error
    );
    assert!(!event.error.is_fatal());
    assert_eq!(recv(&mut rx).await, "all");
    assert!(!handle.is_closed());
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_while_clients_are_sending() {
    let server = probe_server().await;
    let addr = tcp(server.local_addr());
    let events = server.errors();
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(Arc::new(Client::<String>::connect(addr).await.unwrap()));
    }
    let mut senders = Vec::new();
    for client in &clients {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..1_000_000u32 {
                if let Err(e) = client.send(&format!("m{i}")).await {
                    return e;
                }
                // `send` does not yield while the queue has room: without
                // this, 20 tight loops starve the 2 workers for seconds.
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            panic!("a client sent a million messages without being cut");
        }));
    }
    wait_until("the server handled some messages", || {
        server.handler().count() >= 1000
    })
    .await;
    within("cut", server.cut()).await;
    for sender in senders {
        let error = within("a sender to fail", sender).await.unwrap();
        assert!(
            matches!(error, chitchat_net::SendError::Closed),
            "{error:?}"
        );
    }
    for client in &clients {
        wait_until("a client sees the end", || client.is_closed()).await;
    }
    // New connections are refused.
    assert!(TcpStream::connect(addr).await.is_err());
    // Cutting again is harmless.
    within("second cut", server.cut()).await;
    // No panic; the stream ends.
    while let Some(event) = within("an event or the end", events.recv()).await {
        assert!(!matches!(event.error, Error::HandlerPanic(_)), "{event}");
    }
    assert_eq!(server.connection_count(), 0);
}

/// `cut` "closes every connection at once": a handler that never returns
/// must not keep it waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_returns_even_if_a_handler_hangs() {
    let server = probe_server().await;
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.ping().await;
    raw.write(b"hang\n").await;
    wait_until("the handler hangs", || server.handler().count() == 2).await;
    within("cut with a hanging handler", server.cut()).await;
    raw.expect_end().await;
}

#[tokio::test]
async fn dropping_the_server_closes_the_listener_and_connections() {
    let server = probe_server().await;
    let addr = tcp(server.local_addr());
    let mut raw = RawPeer::connect(addr).await;
    raw.ping().await;
    drop(server);
    raw.expect_end().await;
    match TcpStream::connect(addr).await {
        Err(_) => {}
        Ok(stream) => {
            // Connected to a backlog that is being torn down: it must end.
            RawPeer::from_stream(stream).expect_end().await;
        }
    }
}

// --------------------------------------------------------------- timeouts --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_peer() {
    let timeout = Duration::from_millis(300);
    let server = Server::builder(Probe::new())
        .idle_timeout(timeout)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let start = Instant::now();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    let event = next_event(&events).await;
    let elapsed = start.elapsed();
    assert_peer(&event, raw.local_addr());
    assert!(
        matches!(event.error, Error::IdleTimeout(t) if t == timeout),
        "{:?}",
        event.error
    );
    assert!(
        elapsed >= Duration::from_millis(280),
        "cut after {elapsed:?}"
    );
    // Over 5× the 300 ms it needs (timers fire late on a loaded machine,
    // not seconds late); shows it is the idle timeout that cut it.
    assert!(elapsed < Duration::from_secs(5), "cut after {elapsed:?}");
    raw.expect_end().await;
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_spares_a_busy_peer() {
    // A frame every 50 ms against a 1 s idle timeout: a loaded machine may
    // delay a frame by a couple of hundred ms, 5× less than the timeout.
    let timeout = Duration::from_secs(1);
    let server = Server::builder(Probe::new())
        .idle_timeout(timeout)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_sent = start;
    // A frame every 50 ms for twice the timeout.
    while start.elapsed() < timeout * 2 {
        tick.tick().await;
        last_sent = Instant::now();
        raw.ping().await;
    }
    assert!(events.try_recv().is_none());
    // Once silent, it is cut about one timeout after its last frame.
    let event = next_event(&events).await;
    let silent = last_sent.elapsed();
    assert_peer(&event, raw.local_addr());
    assert!(
        matches!(event.error, Error::IdleTimeout(_)),
        "{:?}",
        event.error
    );
    assert!(
        silent >= timeout - Duration::from_millis(20),
        "cut after {silent:?} of silence"
    );
    raw.expect_end().await;
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_stall_timeout_closes_a_peer_that_never_reads() {
    let timeout = Duration::from_millis(300);
    let server = Server::builder(Probe::new())
        .write_stall_timeout(Some(timeout))
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.ping().await;
    let big = "w".repeat(64 * 1024);
    let end = within("the server to give up writing", async {
        for _ in 0..100_000 {
            if let Err(e) = server.send_to(raw.local_addr(), &big).await {
                return e;
            }
        }
        panic!("6 GiB were sent to a peer that never reads");
    })
    .await;
    assert!(
        matches!(end, Error::Closed | Error::UnknownPeer(_)),
        "{end:?}"
    );
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr());
    assert!(
        matches!(event.error, Error::WriteStalled(t) if t == timeout),
        "{:?}",
        event.error
    );
    within("cut", server.cut()).await;
}

// ----------------------------------------------------------------- limits --

#[tokio::test]
async fn max_connections_refuses_the_extra_one() {
    let server = Server::builder(Probe::new())
        .max_connections(2)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let mut a = RawPeer::connect(server.local_addr()).await;
    let mut b = RawPeer::connect(server.local_addr()).await;
    a.ping().await;
    b.ping().await;
    let mut c = RawPeer::connect(server.local_addr()).await;
    c.write(b"ping\n").await;
    c.expect_end().await;
    let event = next_event(&events).await;
    assert_peer(&event, c.local_addr());
    assert!(
        matches!(event.error, Error::TooManyConnections { limit: 2 }),
        "{:?}",
        event.error
    );
    a.ping().await;
    b.ping().await;
    assert_eq!(server.connection_count(), 2);
    assert!(server.handler().seen_from(c.local_addr()).is_empty());

    // Once one leaves, there is room again.
    let gone = a.local_addr();
    drop(a);
    assert_eq!(server.handler().next_closed().await, gone);
    wait_until("the table shrinks", || server.connection_count() == 1).await;
    let mut d = RawPeer::connect(server.local_addr()).await;
    d.ping().await;
    within("cut", server.cut()).await;
}

// ----------------------------------------------------------------- events --

#[tokio::test]
async fn unread_events_are_dropped_and_counted() {
    let server = Server::builder(Probe::new())
        .event_capacity(2)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    // Ten decode errors, told apart by where the bad byte is.
    let mut bad = Vec::new();
    for i in 0..10 {
        bad.extend(std::iter::repeat_n(b'a', i));
        bad.extend_from_slice(b"\xff\n");
    }
    raw.write(&bad).await;
    raw.ping().await;
    wait_until("8 dropped events", || server.dropped_events() >= 8).await;
    assert_eq!(server.dropped_events(), 8);
    let events = server.errors();
    for i in 0..2 {
        let event = events.try_recv().expect("a kept event");
        assert_peer(&event, raw.local_addr());
        match &event.error {
            Error::Decode {
                codec: "text",
                source,
                ..
            } => {
                let why = source.to_string();
                assert!(why.contains(&format!("index {i}")), "event {i}: {why}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
    assert!(events.try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn event_stream_ends_after_cut_once_drained() {
    let server = probe_server().await;
    let events = server.errors();
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"\xff\n").await;
    raw.ping().await;
    within("cut", server.cut()).await;
    let event = next_event(&events).await;
    assert!(
        matches!(event.error, Error::Decode { .. }),
        "{:?}",
        event.error
    );
    assert_events_end(&events).await;
    // Every handle on the stream sees the end, and it stays ended.
    assert_events_end(&server.errors()).await;
    assert_events_end(&events).await;
}
