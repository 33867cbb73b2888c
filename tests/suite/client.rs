//! Integration tests of the client over loopback: write-only and handled
//! clients, close semantics, EOF framing, wire formats, codec overrides,
//! timeouts and errors.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use chitchat_net::{
    handler_fn, Bincode, BincodeWithLimit, BoxError, Client, CloseReason, Context, Error, Framing,
    Server, SizeMismatch,
};
use common::*;
use tokio::net::TcpListener;
use tokio::time::Instant;

async fn accept(listener: &TcpListener) -> RawPeer {
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    RawPeer::from_stream(stream)
}

// --------------------------------------------------------------- connect --

#[tokio::test]
async fn connect_to_a_port_with_nothing_listening_is_an_io_error() {
    let addr = dead_addr().await;
    let result = within("connect", Client::<String>::connect(addr)).await;
    assert!(
        matches!(result, Err(chitchat_net::ConnectError::Io(_))),
        "{result:?}"
    );
    // Same through the builder, with a connect timeout that does not elapse.
    let result = within(
        "connect",
        Client::<String>::builder()
            .connect_timeout(Duration::from_secs(5))
            .connect(addr),
    )
    .await;
    assert!(
        matches!(result, Err(chitchat_net::ConnectError::Io(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn client_knows_both_addresses() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    assert_eq!(client.peer_addr(), server.local_addr());
    client.send(&"addrs".to_string()).await.unwrap();
    assert_eq!(
        recv(&mut rx).await,
        format!("{} {}", client.local_addr(), server.local_addr())
    );
    assert_eq!(server.remote_addrs(), [client.local_addr()]);
    let handle = client.handle();
    assert_eq!(handle.local_addr(), client.local_addr());
    assert_eq!(handle.peer_addr(), client.peer_addr());
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}

// ------------------------------------------------------------ write-only --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_only_client_sends_and_drops_replies() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    // 1000 echoes of 8 KiB each: more than the socket buffers hold, so the
    // server only gets through them if the client reads its replies.
    let line = "r".repeat(8 * 1024);
    for _ in 0..1000 {
        client.send(&line).await.unwrap();
    }
    client.send(&"ping".to_string()).await.unwrap();
    within("close", client.close()).await;
    let seen = server.handler().seen_from(client.local_addr());
    assert_eq!(seen.len(), 1001);
    assert_eq!(seen.last().unwrap(), "ping");
    // The replies caused no error event; the stream ended with the connection.
    assert_events_end(&client.errors()).await;
    assert_eq!(client.dropped_events(), 0);
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_everything_sent() {
    let server = Server::listen("127.0.0.1:0", Counter::default())
        .await
        .unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    for i in 0..10_000 {
        client.send(&i.to_string()).await.unwrap();
    }
    within("close", client.close()).await;
    // close waited for the server to close its side, which it does only after
    // handling every frame.
    let counter = server.handler();
    assert_eq!(
        counter.total.load(std::sync::atomic::Ordering::SeqCst),
        10_000
    );
    {
        let per_peer = counter.per_peer.lock().unwrap();
        let got = &per_peer[&client.local_addr()];
        assert!(got.iter().enumerate().all(|(i, m)| *m == i.to_string()));
    }
    assert!(client.is_closed());
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn close_twice_and_send_after_close() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    assert!(!client.is_closed());
    within("close", client.close()).await;
    within("second close", client.close()).await;
    assert!(client.is_closed());
    assert!(matches!(
        client.send(&"late".to_string()).await,
        Err(chitchat_net::SendError::Closed)
    ));
    assert!(matches!(
        client.try_send(&"late".to_string()),
        Err(chitchat_net::TrySendError::Closed)
    ));
    assert!(matches!(
        client.send_bytes(b"late").await,
        Err(chitchat_net::SendError::Closed)
    ));
    assert_eq!(server.handler().next_closed().await, client.local_addr());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn dropping_a_client_ends_its_connection() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    let local = client.local_addr();
    drop(client);
    assert_eq!(server.handler().next_closed().await, local);
    wait_until("the server forgets the client", || {
        server.connection_count() == 0
    })
    .await;
    within("cut", server.cut()).await;
}

/// A loopback IPv4 address as `/proc/net/tcp` writes it.
#[cfg(target_os = "linux")]
fn proc_net_addr(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected")
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    format!("{ip:08X}:{:04X}", v4.port())
}

/// The descriptors of this process open on the established TCP socket from
/// `local` to `peer` (IPv4), from `/proc`.
#[cfg(target_os = "linux")]
fn descriptors_of(local: SocketAddr, peer: SocketAddr) -> usize {
    let (local, peer) = (proc_net_addr(local), proc_net_addr(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    // Fields: slot, local, remote, state (01: established), ..., inode.
    let inode = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields[1] == local && fields[2] == peer && fields[3] == "01")
        .map(|fields| fields[9].to_string())
        .expect("the client's socket in /proc/net/tcp");
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|link| link.to_str() == Some(target.as_str()))
        .count()
}

/// Direct writes from `send` share the connection's socket: a client holds
/// one descriptor, not two (the open-file limit bounds how many clients a
/// process can run).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_client_holds_one_descriptor() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    for _ in 0..3 {
        client.send(&"ping".to_string()).await.unwrap();
        assert_eq!(recv(&mut rx).await, "pong");
    }
    assert_eq!(client.stats().frames_out, 3);
    let (local, peer) = (tcp(client.local_addr()), tcp(client.peer_addr()));
    assert_eq!(descriptors_of(local, peer), 1);
    client.close().await;
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn client_sees_the_server_going_away() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    within("cut", server.cut()).await;
    wait_until("the client sees the end", || client.is_closed()).await;
    assert!(matches!(
        client.send(&"late".to_string()).await,
        Err(chitchat_net::SendError::Closed)
    ));
    // The client's event stream ends with its connection.
    let events = client.errors();
    while within("an event or the end", events.recv()).await.is_some() {}
    within("close after the end", client.close()).await;
}

// --------------------------------------------------------------- framing --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_framing_close_delivers_one_frame_and_waits_for_the_reply() {
    let server = Server::builder(Probe::new())
        .framing(Framing::eof())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .framing(Framing::eof())
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    for part in ["part one\n", "part two, ", "part three"] {
        client.send(&part.to_string()).await.unwrap();
    }
    within("close", client.close()).await;
    let whole = "part one\npart two, part three";
    // The echo reached the client's handler before close returned.
    assert_eq!(rx.try_recv().ok().as_deref(), Some(whole));
    assert!(rx.try_recv().is_err());
    assert_eq!(server.handler().seen_from(client.local_addr()), [whole]);
    assert_events_end(&client.errors()).await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn text_client_speaks_the_go_wire_format() {
    let (listener, addr) = raw_listener().await;
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(addr)
        .await
        .unwrap();
    let mut server = accept(&listener).await;
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(server.read_exact(5).await, b"ping\n");
    server.write(b"pong\r\n").await;
    assert_eq!(recv(&mut rx).await, "pong");
    // A text payload holding the delimiter is refused: nothing is sent.
    assert!(matches!(
        client.send(&"a\nb".to_string()).await,
        Err(chitchat_net::SendError::Unsendable(
            Error::DelimiterInPayload {
                delimiter: b'\n',
                offset: 1
            }
        ))
    ));
    client.send(&"after".to_string()).await.unwrap();
    assert_eq!(server.read_line().await, b"after\n");
    drop(client);
    server.expect_end().await;
}

#[tokio::test]
async fn pod_holding_delimiter_bytes_travels_escaped() {
    // Bytes 0A 0A 0A 0A / 0A FF 0A 0D (little-endian): delimiters, the
    // escape byte and a trailing CR.
    let tricky = Pair {
        a: 0x0A0A_0A0A,
        b: u32::from_ne_bytes([0x0A, 0xFF, 0x0A, 0x0D]),
    };

    // On the wire: escaped, so the only 0x0A is the final delimiter.
    let (listener, addr) = raw_listener().await;
    let raw_client = Client::<Pair>::connect(addr).await.unwrap();
    let mut peer = accept(&listener).await;
    raw_client.send(&tricky).await.unwrap();
    let frame = peer.read_line().await;
    assert!(frame.len() > 9, "not escaped: {frame:x?}");
    assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
    drop(raw_client);

    // Between a chitchat client and server: it arrives intact both ways.
    let echo = handler_fn(|p: Pair, ctx: &mut Context<'_>| -> Result<(), BoxError> {
        ctx.send(&p)?;
        Ok(())
    });
    let server = Server::listen("127.0.0.1:0", echo).await.unwrap();
    let (handler, mut rx) = collector::<Pair>();
    let client = Client::<Pair>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    for p in [tricky, Pair { a: 1, b: 2 }, tricky] {
        client.send(&p).await.unwrap();
        assert_eq!(recv(&mut rx).await, p);
    }
    within("close", client.close()).await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn client_decode_and_handler_errors_are_events() {
    let (listener, addr) = raw_listener().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let picky = handler_fn(
        move |p: Pair, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            if p.a == 0 {
                return Err("zero".into());
            }
            tx.send(p)?;
            Ok(())
        },
    );
    let client = Client::<Pair>::builder()
        .handler(picky)
        .connect(addr)
        .await
        .unwrap();
    let events = client.errors();
    let mut server = accept(&listener).await;
    server.write(b"abc\n").await;
    let event = next_event(&events).await;
    assert_peer(&event, addr);
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
    let mut zero = Pair { a: 0, b: 1 }.bytes();
    zero.push(b'\n');
    server.write(&zero).await;
    let event = next_event(&events).await;
    assert_peer(&event, addr);
    assert!(
        matches!(&event.error, Error::Handler(e) if e.to_string() == "zero"),
        "{:?}",
        event.error
    );
    // The connection is still up.
    let mut good = Pair { a: 3, b: 4 }.bytes();
    good.push(b'\n');
    server.write(&good).await;
    assert_eq!(recv(&mut rx).await, Pair { a: 3, b: 4 });
    assert!(!client.is_closed());
}

#[tokio::test]
async fn client_too_long_frame_closes_the_connection() {
    let (listener, addr) = raw_listener().await;
    let client = Client::<String>::builder()
        .max_frame_length(16)
        .handler(Probe::new())
        .connect(addr)
        .await
        .unwrap();
    let events = client.errors();
    let mut server = accept(&listener).await;
    let mut long = vec![b'x'; 40];
    long.push(b'\n');
    server.write(&long).await;
    let event = next_event(&events).await;
    assert_peer(&event, addr);
    assert!(
        matches!(event.error, Error::FrameTooLong { limit: 16, .. }),
        "{:?}",
        event.error
    );
    server.expect_end().await;
    wait_until("the client is closed", || client.is_closed()).await;
}

// ------------------------------------------------------------ close/reply --

/// The server answers after the client closed its write side, then closes:
/// the reply reaches the handler before `close` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_sent_during_close_reaches_the_handler() {
    let (listener, addr) = raw_listener().await;
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(addr)
        .await
        .unwrap();
    let mut server = accept(&listener).await;
    client.send(&"q".to_string()).await.unwrap();
    assert_eq!(server.read_line().await, b"q\n");
    let peer = async {
        // The client's close ends its write side first.
        server.expect_end().await;
        server.write(b"late\n").await;
        server.shutdown().await;
    };
    tokio::join!(within("close", client.close()), peer);
    assert_eq!(rx.try_recv().ok().as_deref(), Some("late"));
}

/// As above, but the server never closes its side: `close` gives up after
/// the close timeout; the reply that arrived meanwhile still reaches the
/// handler (as `Client::close` documents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_sent_during_close_reaches_the_handler_even_if_the_server_stays_open() {
    let (listener, addr) = raw_listener().await;
    let (handler, mut rx) = collector::<String>();
    let close_timeout = Duration::from_millis(500);
    let client = Client::<String>::builder()
        .handler(handler)
        .close_timeout(close_timeout)
        .connect(addr)
        .await
        .unwrap();
    let mut server = accept(&listener).await;
    client.send(&"q".to_string()).await.unwrap();
    assert_eq!(server.read_line().await, b"q\n");
    let start = Instant::now();
    let peer = async {
        server.expect_end().await;
        server.write(b"late\n").await;
    };
    tokio::join!(within("close", client.close()), peer);
    assert!(start.elapsed() >= close_timeout - Duration::from_millis(20));
    assert_eq!(rx.try_recv().ok().as_deref(), Some("late"));
    drop(server);
}

// ----------------------------------------------------------------- codecs --

#[tokio::test]
async fn codec_override_on_server_and_client() {
    let bump = handler_fn(
        |r: Reading, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&Reading {
                sensor: r.sensor + 1,
                label: r.label,
            })?;
            Ok(())
        },
    );
    let server = Server::builder(bump)
        .codec(Csv)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();

    // The server speaks csv (text: raw lines) for Reading, both ways.
    let mut raw = RawPeer::connect(server.local_addr()).await;
    raw.write(b"7,seven\n").await;
    assert_eq!(raw.read_line().await, b"8,seven\n");
    // Bincode, Reading's default codec, is not what it decodes.
    let mut bincoded = bytes::BytesMut::new();
    Bincode
        .encode_value(
            &Reading {
                sensor: 1,
                label: "one".into(),
            },
            &mut bincoded,
        )
        .unwrap();
    assert!(!bincoded.contains(&b'\n'));
    bincoded.extend_from_slice(b"\n");
    raw.write(&bincoded).await;
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr());
    assert!(
        matches!(event.error, Error::Decode { codec: "csv", .. }),
        "{:?}",
        event.error
    );

    // A client with the same override exchanges messages with it.
    let (handler, mut rx) = collector::<Reading>();
    let client = Client::<Reading>::builder()
        .codec(Csv)
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    for i in 0..3 {
        let reading = Reading {
            sensor: i,
            label: format!("n{i}"),
        };
        client.send(&reading).await.unwrap();
        assert_eq!(
            recv(&mut rx).await,
            Reading {
                sensor: i + 1,
                label: format!("n{i}"),
            }
        );
    }
    within("close", client.close()).await;
    assert_events_end(&client.errors()).await;
    assert!(events.try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn bincode_override_with_a_smaller_limit() {
    let echo = handler_fn(
        |r: Reading, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&r)?;
            Ok(())
        },
    );
    let server = Server::builder(echo)
        .codec(BincodeWithLimit::<64>)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let (handler, mut rx) = collector::<Reading>();
    let client = Client::<Reading>::builder()
        .codec(BincodeWithLimit::<64>)
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    let short = Reading {
        sensor: 5,
        label: "five".into(),
    };
    client.send(&short).await.unwrap();
    assert_eq!(recv(&mut rx).await, short);

    // A client with the default (1 MiB) limit can send what the server's
    // 64-byte override refuses.
    let loose = Client::<Reading>::connect(server.local_addr())
        .await
        .unwrap();
    loose
        .send(&Reading {
            sensor: 6,
            label: "x".repeat(100),
        })
        .await
        .unwrap();
    let event = next_event(&events).await;
    assert_peer(&event, loose.local_addr());
    assert!(
        matches!(
            event.error,
            Error::Decode {
                codec: "bincode",
                ..
            }
        ),
        "{:?}",
        event.error
    );
    client.send(&short).await.unwrap();
    assert_eq!(recv(&mut rx).await, short);
    within("close", client.close()).await;
    within("close", loose.close()).await;
    within("cut", server.cut()).await;
}

// --------------------------------------------------------------- timeouts --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_write_stall_timeout_when_the_server_never_reads() {
    let (listener, addr) = raw_listener().await;
    let timeout = Duration::from_millis(300);
    let client = Client::<String>::builder()
        .write_stall_timeout(Some(timeout))
        .connect(addr)
        .await
        .unwrap();
    let events = client.errors();
    let _server = accept(&listener).await;
    let big = "w".repeat(64 * 1024);
    let end = within("the client to give up writing", async {
        for _ in 0..100_000 {
            if let Err(e) = client.send(&big).await {
                return e;
            }
        }
        panic!("6 GiB were sent to a server that never reads");
    })
    .await;
    assert!(matches!(end, chitchat_net::SendError::Closed), "{end:?}");
    let event = next_event(&events).await;
    assert_peer(&event, addr);
    assert!(
        matches!(event.error, Error::WriteStalled(t) if t == timeout),
        "{:?}",
        event.error
    );
    assert!(client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_when_the_server_is_silent() {
    let (listener, addr) = raw_listener().await;
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let client = Client::<String>::builder()
        .idle_timeout(timeout)
        .connect(addr)
        .await
        .unwrap();
    let events = client.errors();
    let mut server = accept(&listener).await;
    let event = next_event(&events).await;
    let elapsed = start.elapsed();
    assert_peer(&event, addr);
    assert!(
        matches!(event.error, Error::IdleTimeout(t) if t == timeout),
        "{:?}",
        event.error
    );
    assert!(
        elapsed >= Duration::from_millis(280),
        "cut after {elapsed:?}"
    );
    server.expect_end().await;
    assert!(client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_fails_when_the_queue_is_full_until_the_server_reads() {
    let (listener, addr) = raw_listener().await;
    let client = Client::<String>::builder()
        .queue_bytes(1024)
        .write_stall_timeout(None)
        .connect(addr)
        .await
        .unwrap();
    let mut server = accept(&listener).await;
    let big = "f".repeat(64 * 1024);
    let mut sent = 0;
    let mut blocked = false;
    for _ in 0..4000 {
        // A send with room takes a millisecond (a few hundred at worst on a
        // loaded machine): waiting 2 s means the queue is full.
        match tokio::time::timeout(Duration::from_secs(2), client.send(&big)).await {
            Ok(result) => {
                result.unwrap();
                sent += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "256 MiB were queued to a server that never reads");
    assert!(matches!(
        client.try_send(&"x".to_string()),
        Err(chitchat_net::TrySendError::Full { limit: 1024 })
    ));
    assert!(!client.is_closed());
    // Once the server reads, everything sent arrives (the timed-out send
    // queued nothing: cancel safe), and there is room again.
    for _ in 0..sent {
        let line = server.read_line().await;
        assert_eq!(line.len(), big.len() + 1);
    }
    within("room in the queue", async {
        loop {
            match client.try_send(&"x".to_string()) {
                Ok(()) => break,
                Err(chitchat_net::TrySendError::Full { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("{e:?}"),
            }
        }
    })
    .await;
    assert_eq!(server.read_line().await, b"x\n");
    assert!(client.errors().try_recv().is_none());
}

/// A client learns that its server closed the connection: `closed()` says
/// `ByPeer`, and one `ClosedByPeer` event names the server (the Go
/// original's `EOF` on the error channel). The server's handle on the same
/// connection says it closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hears_when_the_server_closes_the_connection() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    let on_server = server.connection(client.local_addr()).unwrap();
    server.close_remote(client.local_addr()).unwrap();
    assert_eq!(within("closed", client.closed()).await, CloseReason::ByPeer);
    assert_eq!(
        within("closed", on_server.closed()).await,
        CloseReason::ByUs
    );
    let event = next_event(&client.errors()).await;
    assert!(matches!(event.error, Error::ClosedByPeer), "{event}");
    assert_eq!(event.peer, Some(client.peer_addr()));
    assert_events_end(&client.errors()).await;
    // Closing after the end returns at once, and says the same.
    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByPeer);
    within("cut", server.cut()).await;
}

/// A client that closes the connection itself hears no closed-by-peer
/// event; `closed()` says `ByUs` on its side and `ByPeer` on the server's.
/// A cut server's connections say `Aborted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_says_who_ended_the_connection() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    wait_until("registered", || server.connection_count() == 1).await;
    let on_server = server.connection(client.local_addr()).unwrap();
    // Waiting is cancel safe: a timed-out wait changes nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(20), client.closed())
            .await
            .is_err()
    );
    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    assert_eq!(
        within("closed", on_server.closed()).await,
        CloseReason::ByPeer
    );
    assert_events_end(&client.errors()).await;

    let other = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    wait_until("registered", || {
        server.connection(other.local_addr()).is_ok()
    })
    .await;
    let on_server = server.connection(other.local_addr()).unwrap();
    within("cut", server.cut()).await;
    assert_eq!(on_server.closed().await, CloseReason::Aborted);
    assert_ne!(within("closed", other.closed()).await, CloseReason::ByUs);
}
