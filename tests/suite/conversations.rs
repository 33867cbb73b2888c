//! Conversations: receiving without a handler, request/reply (by id and in
//! order), and the reconnecting client. Two chitchat-net peers talk to each
//! other in both directions unless a raw peer is the point of the test.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::{
    handler_fn, BoxError, Client, CloseReason, Codec, ConnectionHandle, Context, Error, Framing,
    Handler, Message, Reconnect, Server, WhileDown,
};
use common::{next_event, raw_listener, wait_until, within};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What a client asks (and answers to the server's `Push`).
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Answer)]
enum Ask {
    /// Answer with twice `n`.
    #[message(tag = 1)]
    Double { n: u64 },
    /// One-way: just count it.
    #[message(tag = 2)]
    Note { n: u64 },
    /// Never answered.
    #[message(tag = 3)]
    Ignore { n: u64 },
}

/// What a server answers or pushes (and asks the client, answered by an
/// `Ask`).
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Ask)]
enum Answer {
    #[message(tag = 1)]
    Doubled { n: u64, twice: u64 },
    /// Sent on its own, not as a reply.
    #[message(tag = 2)]
    Push { n: u64, pad: Vec<u8> },
}

/// Doubles each `Double` from a task of its own after a pseudo-random
/// delay, so that replies go out in a different order than the requests
/// came; counts `Note`s; ignores `Ignore`s.
#[derive(Default)]
struct Doubler {
    notes: AtomicU64,
    ignored: AtomicU64,
}

impl Handler for Doubler {
    type Message = Ask;

    async fn handle(&self, ask: Ask, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match ask {
            Ask::Double { n } => {
                let replier = ctx.replier();
                tokio::spawn(async move {
                    // A scrambled delay of 0..8 ms.
                    let delay = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = replier.reply(&Answer::Doubled { n, twice: 2 * n }).await;
                });
            }
            Ask::Note { .. } => {
                self.notes.fetch_add(1, Ordering::Relaxed);
            }
            Ask::Ignore { .. } => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Waits until `server` holds a connection.
async fn sees_a_client(server: &Server<impl Handler>) {
    within("the server sees the client", async {
        while server.connection_count() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

async fn doubler_server() -> Server<Doubler> {
    Server::builder(Doubler::default())
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap()
}

async fn asking_client(server: &Server<Doubler>) -> Client<Ask, Answer> {
    Client::<Ask>::builder()
        .request_ids()
        .receive::<Answer>(64)
        .connect(server.local_addr())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_answered_out_of_order_are_matched() {
    let server = doubler_server().await;
    let client = Arc::new(asking_client(&server).await);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000u64 {
        let client = client.clone();
        tasks.spawn(async move { (n, client.request(&Ask::Double { n }).await) });
    }
    let mut seen = HashSet::new();
    while let Some(done) = within("1000 replies", tasks.join_next()).await {
        let (n, reply) = done.unwrap();
        assert_eq!(reply.unwrap(), Answer::Doubled { n, twice: 2 * n });
        seen.insert(n);
    }
    assert_eq!(seen.len(), 1000);
    // No reply went unmatched (that replies do leave out of order is
    // checked by the next test).
    assert_eq!(client.stats().late_replies, 0);
    common::assert_no_event("client", &client.errors());
    common::assert_no_event("server", &server.errors());
    server.cut().await;
}

#[tokio::test]
async fn out_of_order_is_what_the_server_does() {
    // The doubler's replies leave in another order than the requests:
    // record the order in which they complete.
    let server = doubler_server().await;
    let client = asking_client(&server).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..64u64 {
        let client = &client;
        let order = order.clone();
        tasks.push(async move {
            let reply: Answer = client.request(&Ask::Double { n }).await.unwrap();
            order.lock().unwrap().push(reply);
        });
    }
    within("64 replies", futures_util::future::join_all(tasks)).await;
    let order = order.lock().unwrap().clone();
    let sorted = {
        let mut sorted = order.clone();
        sorted.sort_by_key(|a| match a {
            Answer::Doubled { n, .. } => *n,
            Answer::Push { n, .. } => *n,
        });
        sorted
    };
    assert_ne!(
        order, sorted,
        "the server answered in order: the test proves nothing"
    );
    server.cut().await;
}

#[tokio::test]
async fn a_request_times_out_and_its_late_reply_is_an_event_not_the_next_answer() {
    // The server answers only the second `Double` it sees, late: after the
    // first request has timed out and a second one is in flight.
    let held: Arc<Mutex<Vec<chitchat_net::Replier>>> = Arc::default();
    let keep = held.clone();
    let late = handler_fn(
        move |ask: Ask, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Ask::Double { n } = ask {
                let mut held = keep.lock().unwrap();
                held.push(ctx.replier());
                if held.len() == 2 {
                    // Answer the first (timed out) request, then the second.
                    let first = held[0].clone();
                    let second = held[1].clone();
                    tokio::spawn(async move {
                        first
                            .reply(&Answer::Doubled { n: 1, twice: 2 })
                            .await
                            .unwrap();
                        second
                            .reply(&Answer::Doubled { n, twice: 2 * n })
                            .await
                            .unwrap();
                    });
                }
            }
            Ok(())
        },
    );
    let server = Server::builder(late)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Ask>::builder()
        .request_ids()
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    let first = client
        .request_within(&Ask::Double { n: 1 }, Duration::from_millis(50))
        .await;
    assert!(
        matches!(first, Err(chitchat_net::RequestError::Timeout(_))),
        "{first:?}"
    );
    let second: Answer = within("the second reply", client.request(&Ask::Double { n: 7 }))
        .await
        .unwrap();
    assert_eq!(second, Answer::Doubled { n: 7, twice: 14 });
    let event = next_event(&events).await;
    assert!(matches!(event.error, Error::LateReply { .. }), "{event}");
    assert_eq!(client.stats().late_replies, 1);
    server.cut().await;
}

#[tokio::test]
async fn a_cancelled_request_leaves_nothing_behind() {
    let server = doubler_server().await;
    let client = asking_client(&server).await;
    let events = client.errors();
    // Dropped before its reply can come (the doubler waits up to 8 ms; the
    // request for n = 5 waits ~4 ms... so cancel at once).
    {
        let request = client.request(&Ask::Double { n: 5 });
        tokio::pin!(request);
        let polled = futures_util::poll!(request.as_mut());
        assert!(polled.is_pending());
    }
    // Ask something else: it gets its own answer, never n = 5's.
    for n in 100..110 {
        let reply: Answer = client.request(&Ask::Double { n }).await.unwrap();
        assert_eq!(reply, Answer::Doubled { n, twice: 2 * n });
    }
    // n = 5's reply, if it was sent, became an event.
    wait_until("the late reply is counted", || {
        client.stats().late_replies == 1
    })
    .await;
    let event = next_event(&events).await;
    assert!(matches!(event.error, Error::LateReply { .. }), "{event}");
    server.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_requests_and_pushes_mix_on_one_connection_both_ways() {
    // The server pushes messages of its own to the client while answering
    // its requests; the client sends notes in between. Nothing is mixed up:
    // pushes go to the receive buffer, replies to their requests.
    let server = doubler_server().await;
    let client = asking_client(&server).await;
    sees_a_client(&server).await;
    let to_client = server.connection(client.local_addr()).unwrap();
    let pusher = tokio::spawn(async move {
        for n in 0..500u64 {
            let pad = vec![0x0a; (n as usize * 37) % 3000];
            to_client.send(&Answer::Push { n, pad }).await.unwrap();
        }
    });
    let asker = async {
        for n in 0..500u64 {
            client.send(&Ask::Note { n }).await.unwrap();
            let reply: Answer = client.request(&Ask::Double { n }).await.unwrap();
            assert_eq!(reply, Answer::Doubled { n, twice: 2 * n });
        }
    };
    let mut pushes = Vec::new();
    let reader = async {
        while pushes.len() < 500 {
            match client.recv().await {
                Some(Answer::Push { n, .. }) => pushes.push(n),
                other => panic!("not a push: {other:?}"),
            }
        }
    };
    within("500 requests, notes and pushes", async {
        tokio::join!(asker, reader)
    })
    .await;
    pusher.await.unwrap();
    assert_eq!(pushes, (0..500).collect::<Vec<_>>());
    wait_until("500 notes", || {
        server.handler().notes.load(Ordering::Relaxed) == 500
    })
    .await;
    common::assert_no_event("client", &client.errors());
    server.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_ask_each_other_at_full_speed() {
    // The server asks the client too (over the same connection), while the
    // client asks the server: handlers on both sides answer with replies.
    let server = doubler_server().await;
    let triple = handler_fn(
        |ask: Answer, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            if let Answer::Push { n, .. } = ask {
                ctx.reply(&Ask::Note { n: 3 * n })?;
            }
            Ok(())
        },
    );
    let client = Client::<Ask>::builder()
        .request_ids()
        // Far above the progress bound below.
        .request_timeout(Duration::from_secs(600))
        .handler(triple)
        .connect(server.local_addr())
        .await
        .unwrap();
    sees_a_client(&server).await;
    let to_client: ConnectionHandle = server.connection(client.local_addr()).unwrap();
    // Replies answered so far, both ways: the bound below is about progress
    // (a busy machine makes the 600 requests and 3 MB slower, never red), so
    // each request's own timeout is far above it.
    let answered = Arc::new(AtomicU64::new(0));
    const PATIENT: Duration = Duration::from_secs(600);
    let server_answered = answered.clone();
    let server_asks = tokio::spawn(async move {
        let asks = (0..300u64).map(|n| {
            let to_client = to_client.clone();
            let answered = server_answered.clone();
            async move {
                let pad = vec![0xff; 20_000 * (n as usize % 2)];
                let reply: Ask = to_client
                    .request(&Answer::Push { n, pad }, PATIENT)
                    .await
                    .unwrap();
                assert_eq!(reply, Ask::Note { n: 3 * n });
                answered.fetch_add(1, Ordering::Relaxed);
            }
        });
        futures_util::future::join_all(asks).await;
    });
    let client_asks = (0..300u64).map(|n| {
        let client = &client;
        let answered = &answered;
        async move {
            let reply: Answer = client.request(&Ask::Double { n }).await.unwrap();
            assert_eq!(reply, Answer::Doubled { n, twice: 2 * n });
            answered.fetch_add(1, Ordering::Relaxed);
        }
    });
    common::with_progress(
        "300 requests each way",
        || answered.load(Ordering::Relaxed),
        async {
            futures_util::future::join_all(client_asks).await;
            server_asks.await.unwrap();
        },
    )
    .await;
    common::assert_no_event("client", &client.errors());
    common::assert_no_event("server", &server.errors());
    server.cut().await;
}

#[tokio::test]
async fn requests_in_flight_fail_when_the_connection_drops() {
    let server = doubler_server().await;
    let client = asking_client(&server).await;
    let waiting = client.request(&Ask::Ignore { n: 1 });
    let cut = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.cut().await;
    };
    let (reply, ()) = within("the request's end", async { tokio::join!(waiting, cut) }).await;
    assert!(
        matches!(reply, Err(chitchat_net::RequestError::ConnectionLost)),
        "{reply:?}"
    );
    assert_eq!(
        within("the end", client.closed()).await,
        CloseReason::ByPeer
    );
    let after = client.request(&Ask::Double { n: 2 }).await;
    assert!(after.is_err());
}

#[tokio::test]
async fn requests_need_a_matching_mode() {
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    let refused = client.request(&"hello".to_string()).await;
    assert!(
        matches!(refused, Err(chitchat_net::RequestError::NotEnabled)),
        "{refused:?}"
    );
    server.cut().await;
}

#[tokio::test]
async fn request_ids_refuse_a_raw_framing() {
    let refused = Client::<String>::builder()
        .framing(chitchat_net::Framing::lines().raw())
        .request_ids()
        .connect(dead_end().await)
        .await;
    assert!(
        matches!(
            refused,
            Err(chitchat_net::ConnectError::Config(Error::Config(_)))
        ),
        "{refused:?}"
    );
}

/// A listener that accepts (so that connect succeeds) and holds.
async fn dead_end() -> std::net::SocketAddr {
    let (listener, addr) = raw_listener().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn a_malformed_envelope_is_an_event_and_the_connection_goes_on() {
    // A raw peer that speaks no hello.
    let server = Server::builder(Doubler::default())
        .request_ids()
        .no_handshake()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    // Kind 0x07 does not exist; then a valid request (escaped framing:
    // bincode tag 1, n = 4; no byte needs escaping).
    raw.write(b"\x07junk\n").await;
    let mut request = bytes::BytesMut::new();
    chitchat_net::FrameCodec::new(chitchat_net::Framing::lines().escaped())
        .encode_with(&mut request, |d| {
            d.extend_from_slice(&[0x01, 0x09]);
            <Ask as Message>::Codec::default().encode(&Ask::Double { n: 4 }, d)
        })
        .unwrap();
    raw.write(&request).await;
    let event = next_event(&server.errors()).await;
    assert!(matches!(event.error, Error::Envelope(_)), "{event}");
    // The reply: kind 2, id 9, then the answer.
    let reply = raw.read_line().await;
    assert_eq!(&reply[..2], &[0x02, 0x09]);
    server.cut().await;
}

/// A text peer like the Go original: answers `heartbeat ping` with
/// `heartbeat pong`, and pushes nothing else.
async fn go_style_peer() -> std::net::SocketAddr {
    let (listener, addr) = raw_listener().await;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = match line.as_str() {
                        "heartbeat ping" => "heartbeat pong".to_string(),
                        other => format!("echo {other}"),
                    };
                    if write
                        .write_all(format!("{answer}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn ordered_replies_talk_to_a_text_peer_without_ids() {
    let peer = go_style_peer().await;
    let client = Client::<String>::builder()
        .ordered_replies()
        .connect(peer)
        .await
        .unwrap();
    let pong: String = client.request(&"heartbeat ping".to_string()).await.unwrap();
    assert_eq!(pong, "heartbeat pong");
    // Several in flight: answered in order, so matched in order.
    let asks: Vec<String> = (0..50).map(|i| format!("line {i}")).collect();
    let replies = futures_util::future::join_all(asks.iter().map(|a| client.request(a))).await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply.unwrap(), format!("echo line {i}"));
    }
    // A send mixed in is not a request: the peer's answer to it arrives
    // while no request waits, and goes to the handler (write-only here).
    client.send(&"hello".to_string()).await.unwrap();
    wait_until("the answer to the send is read", || {
        client.stats().frames_in == 52
    })
    .await;
    let pong: String = client.request(&"heartbeat ping".to_string()).await.unwrap();
    assert_eq!(pong, "heartbeat pong");
    client.close().await;
}

#[tokio::test]
async fn an_unread_receive_buffer_stops_the_server_and_loses_nothing() {
    // The server pushes 64 KiB messages; the client reads none until the
    // server's sends wait at its queue bound.
    let server = Server::builder(())
        .framing(Framing::lines().escaped())
        .queue_bytes(256 * 1024)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Vec<u8>>::builder()
        .framing(Framing::lines().escaped())
        .receive::<Vec<u8>>(4)
        .connect(server.local_addr())
        .await
        .unwrap();
    sees_a_client(&server).await;
    let to_client = server.connection(client.local_addr()).unwrap();
    let total = 400u64; // 25 MiB: far more than every buffer on the way.
    let sent = Arc::new(AtomicU64::new(0));
    let counted = sent.clone();
    let pusher = tokio::spawn(async move {
        for n in 0..total {
            let mut msg = vec![(n % 251) as u8; 64 * 1024];
            msg[..8].copy_from_slice(&n.to_le_bytes());
            to_client.send(&msg).await.unwrap();
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    // The sends stop: wait until the count holds still.
    // A second of stillness: the sends are held (see `settled`).
    let last = common::settled(Duration::from_secs(1), || sent.load(Ordering::Relaxed)).await;
    assert!(
        last < total / 2,
        "{last} of {total} sent to a client that does not read"
    );
    let received = client.stats().bytes_in;
    assert!(
        received < 16 * 1024 * 1024,
        "the client holds {received} bytes it was not asked for"
    );
    // Reading resumes: everything arrives, in order.
    within("everything", async {
        for n in 0..total {
            let msg = client.recv().await.expect("a message");
            assert_eq!(msg.len(), 64 * 1024);
            assert_eq!(u64::from_le_bytes(msg[..8].try_into().unwrap()), n);
        }
    })
    .await;
    pusher.await.unwrap();
    server.cut().await;
}

#[tokio::test]
async fn the_receive_stream_ends_with_why() {
    let server = Server::listen(
        "127.0.0.1:0",
        handler_fn(
            |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
                ctx.send(&format!("you said {line}"))?;
                ctx.close();
                Ok(())
            },
        ),
    )
    .await
    .unwrap();
    let mut client = Client::<String>::builder()
        .receive::<String>(8)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"bye".to_string()).await.unwrap();
    let all: Vec<String> = within("the stream's end", (&mut client).collect()).await;
    assert_eq!(all, ["you said bye"]);
    assert_eq!(client.closed().await, CloseReason::ByPeer);
    server.cut().await;
}

#[tokio::test]
async fn closing_a_receiving_client_that_is_not_read_does_not_hang() {
    let server = Server::builder(()).listen("127.0.0.1:0").await.unwrap();
    let client = Client::<String>::builder()
        .receive::<String>(1)
        .connect(server.local_addr())
        .await
        .unwrap();
    sees_a_client(&server).await;
    let to_client = server.connection(client.local_addr()).unwrap();
    for n in 0..10 {
        to_client.send(&format!("unread {n}")).await.unwrap();
    }
    // Frames of 9 bytes: the first fills the buffer, the second waits.
    wait_until("the client has read two frames", || {
        client.stats().bytes_in >= 18
    })
    .await;
    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    assert!(client.stats().dropped_at_close >= 1, "{:?}", client.stats());
    // What was buffered is still there.
    assert_eq!(client.recv().await.as_deref(), Some("unread 0"));
    server.cut().await;
}

/// The next event that is not an i/o error (a cut server may reset the
/// connection before it is seen closed).
async fn next_non_io(events: &chitchat_net::ErrorEvents) -> Error {
    loop {
        let event = next_event(events).await;
        if !matches!(event.error, Error::Io(_)) {
            return event.error;
        }
    }
}

/// A server on a fixed port that can be stopped and started again.
async fn restartable(port: u16, hellos: Arc<Mutex<Vec<String>>>) -> Server<impl Handler> {
    let record = handler_fn(
        move |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            hellos.lock().unwrap().push(line);
            Ok(())
        },
    );
    Server::listen(("127.0.0.1", port), record).await.unwrap()
}

#[tokio::test]
async fn a_reconnecting_client_survives_three_server_restarts() {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut server = restartable(0, lines.clone()).await;
    let port = server.local_addr().tcp().unwrap().port();
    let connects = Arc::new(AtomicU64::new(0));
    let counted = connects.clone();
    let client = Client::<String>::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(100))
                .while_down(WhileDown::Keep),
        )
        .on_connect(move |conn: ConnectionHandle| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                conn.send(&format!("hello {n}")).await?;
                Ok(())
            }
        })
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    for round in 1..=3u64 {
        wait_until("the hello", || {
            lines.lock().unwrap().len() as u64 == 2 * round - 1
        })
        .await;
        server.cut().await;
        let event = next_non_io(&events).await;
        assert!(matches!(event, Error::Disconnected { .. }), "{event}");
        // Sent while down: kept, and sent after the next hello.
        client.send(&format!("kept {round}")).await.unwrap();
        server = restartable(port, lines.clone()).await;
        let event = next_non_io(&events).await;
        assert!(matches!(event, Error::Reconnected { .. }), "{event}");
    }
    wait_until("the last kept line", || lines.lock().unwrap().len() == 7).await;
    assert_eq!(
        *lines.lock().unwrap(),
        ["hello 0", "hello 1", "kept 1", "hello 2", "kept 2", "hello 3", "kept 3"]
    );
    assert_eq!(connects.load(Ordering::SeqCst), 4);
    client.close().await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    server.cut().await;
}

#[tokio::test]
async fn a_client_that_drops_while_down_counts_what_it_dropped() {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = restartable(0, lines.clone()).await;
    let port = server.local_addr().tcp().unwrap().port();
    let client = Client::<String>::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(10))
                .max_delay(Duration::from_millis(50))
                .while_down(WhileDown::Drop),
        )
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    server.cut().await;
    let event = next_non_io(&events).await;
    assert!(matches!(event, Error::Disconnected { .. }), "{event}");
    for n in 0..5 {
        client.send(&format!("dropped {n}")).await.unwrap();
    }
    assert_eq!(client.stats().dropped_while_down, 5);
    let server = restartable(port, lines.clone()).await;
    loop {
        let event = next_event(&events).await;
        if matches!(event.error, Error::Reconnected { .. }) {
            break;
        }
    }
    client.send(&"after".to_string()).await.unwrap();
    wait_until("the line after", || !lines.lock().unwrap().is_empty()).await;
    assert_eq!(*lines.lock().unwrap(), ["after"]);
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_client_gives_up_after_its_tries() {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = restartable(0, lines).await;
    let client = Client::<String>::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20))
                .max_tries(3)
                // Its first connection, cut at once, counts as healthy:
                // three tries after it (see lifecycle_reconnect.rs for
                // connections that end before they are healthy).
                .healthy_after(Duration::ZERO),
        )
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    server.cut().await;
    drop(server);
    assert_eq!(
        within("giving up", client.closed()).await,
        CloseReason::Failed
    );
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        seen.push(event.error);
    }
    // Perhaps the cut's reset, then: disconnected, three refused connects,
    // given up.
    let from = seen
        .iter()
        .position(|e| matches!(e, Error::Disconnected { .. }))
        .expect("a Disconnected event");
    let after: Vec<_> = seen.drain(from..).collect();
    assert_eq!(after.len(), 5, "{after:?}");
    assert!(
        after[1..4].iter().all(|e| matches!(e, Error::Io(_))),
        "{after:?}"
    );
    assert!(
        matches!(after[4], Error::ReconnectGaveUp { attempts: 3 }),
        "{after:?}"
    );
    assert!(client.is_closed());
    assert!(client.send(&"late".to_string()).await.is_err());
}

#[tokio::test]
async fn a_request_waits_for_a_reconnect_but_one_in_flight_is_never_retried() {
    let server = doubler_server().await;
    let port = server.local_addr().tcp().unwrap().port();
    let client = Client::<Ask>::builder()
        .request_ids()
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(10)))
        .connect(server.local_addr())
        .await
        .unwrap();
    let in_flight = client.request(&Ask::Ignore { n: 1 });
    let cut = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.cut().await;
    };
    let (lost, ()) = within("the cut", async { tokio::join!(in_flight, cut) }).await;
    assert!(
        matches!(lost, Err(chitchat_net::RequestError::ConnectionLost)),
        "{lost:?}"
    );
    let server = Server::builder(Doubler::default())
        .request_ids()
        .listen(("127.0.0.1", port))
        .await
        .unwrap();
    let reply: Answer = within(
        "a request after the restart",
        client.request(&Ask::Double { n: 4 }),
    )
    .await
    .unwrap();
    assert_eq!(reply, Answer::Doubled { n: 4, twice: 8 });
    assert_eq!(
        server.handler().ignored.load(Ordering::Relaxed),
        0,
        "the request in flight was retried"
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn requests_past_the_in_flight_bound_wait_for_a_slot() {
    let server = doubler_server().await;
    let client = Client::<Ask>::builder()
        .request_ids()
        .max_requests_in_flight(2)
        .connect(server.local_addr())
        .await
        .unwrap();
    // Two requests the server never answers hold both slots, for 2 s: the
    // third's wait below is over by 150 ms, and a loaded machine would have
    // to stall this runtime for nearly 2 s to free a slot in time for it.
    let held = async {
        let a = client.request_within(&Ask::Ignore { n: 1 }, Duration::from_secs(2));
        let b = client.request_within(&Ask::Ignore { n: 2 }, Duration::from_secs(2));
        tokio::join!(a, b)
    };
    // A third waits for a slot: with a short timeout it never gets one...
    let third = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = client
            .request_within(&Ask::Double { n: 3 }, Duration::from_millis(100))
            .await;
        // ... and was never sent: the server saw only the two ignored ones.
        (refused, server.stats().frames_in)
    };
    let ((a, b), (refused, frames_in)) =
        within("the bounded requests", async { tokio::join!(held, third) }).await;
    assert!(
        matches!(a, Err(chitchat_net::RequestError::Timeout(_))),
        "{a:?}"
    );
    assert!(
        matches!(b, Err(chitchat_net::RequestError::Timeout(_))),
        "{b:?}"
    );
    assert!(
        matches!(refused, Err(chitchat_net::RequestError::Timeout(_))),
        "{refused:?}"
    );
    // The two ignored requests, and the client's hello.
    assert_eq!(frames_in, 3, "the third request went out");
    // Slots free again: a request goes through.
    let reply: Answer = client.request(&Ask::Double { n: 4 }).await.unwrap();
    assert_eq!(reply, Answer::Doubled { n: 4, twice: 8 });
    server.cut().await;
}

#[tokio::test]
async fn what_is_kept_while_down_is_bounded_by_the_queue() {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = restartable(0, lines.clone()).await;
    let port = server.local_addr().tcp().unwrap().port();
    let client = Client::<String>::builder()
        .queue_bytes(1024)
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(10)))
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    server.cut().await;
    let event = next_non_io(&events).await;
    assert!(matches!(event, Error::Disconnected { .. }), "{event}");
    // 100-byte lines: about ten fit, then the queue refuses.
    let line = |n: usize| format!("{n:03}{}", "x".repeat(96));
    let mut kept = 0;
    while client.try_send(&line(kept)).is_ok() {
        kept += 1;
        assert!(kept < 100, "the queue kept {kept} lines past its bound");
    }
    assert!((9..=11).contains(&kept), "{kept} lines kept");
    assert!(matches!(
        client.try_send(&line(kept)),
        Err(chitchat_net::TrySendError::Full { limit: 1024 })
    ));
    // A waiting send goes through once reconnected, after what was kept.
    let server = restartable(port, lines.clone()).await;
    within("a send that waited", client.send(&"last".to_string()))
        .await
        .unwrap();
    wait_until("every kept line", || {
        lines.lock().unwrap().len() == kept + 1
    })
    .await;
    let got = lines.lock().unwrap().clone();
    let mut want: Vec<String> = (0..kept).map(line).collect();
    want.push("last".into());
    assert_eq!(got, want);
    client.close().await;
    server.cut().await;
}
