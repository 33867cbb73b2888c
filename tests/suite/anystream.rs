//! Clients and servers over any byte stream (issue 12, item 5): a client on
//! one end of a `tokio::io::duplex`, a server serving a stream of them.
//! Both ways at full speed with large frames, a slow reader, how a
//! connection ends, and a server's table of named peers (`remote_addrs`,
//! `close_remote`, `send_to`, the accept filter, `max_connections`, `cut`).
//!
//! Every wait is bounded (`common::WAIT`): a deadlock shows as a failed test
//! naming where it stalled.

use crate::common;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::{Addr, BoxError, Client, CloseReason, Context, Error, Handler, Server};
use common::*;
use futures_util::Stream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::{mpsc, watch};

/// Bytes each direction of a test duplex buffers.
const DUPLEX: usize = 64 * 1024;

/// What a test hands its server: accepted streams (or accept errors).
type Accept = mpsc::UnboundedSender<io::Result<(DuplexStream, Addr)>>;

/// A stream of accepted connections, fed through the returned sender.
fn incoming() -> (
    Accept,
    impl Stream<Item = io::Result<(DuplexStream, Addr)>> + Send + 'static,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    (
        tx,
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
    )
}

/// A new in-memory connection: the server's end goes to `accept` as the peer
/// `name`; returns the client's end.
fn dial(accept: &Accept, name: &str) -> DuplexStream {
    let (client_end, server_end) = tokio::io::duplex(DUPLEX);
    accept
        .send(Ok((server_end, Addr::named(name))))
        .expect("the server dropped its incoming stream");
    client_end
}

/// A text client over `io` whose replies go into the returned channel.
async fn client_over(io: DuplexStream) -> (Client<String>, mpsc::UnboundedReceiver<String>) {
    let (handler, replies) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect_io(io, Addr::named("server"))
        .await
        .expect("connect_io without TLS cannot fail");
    (client, replies)
}

/// The server's connections, by name, sorted.
fn names(server: &Server<impl Handler>) -> Vec<String> {
    let mut names: Vec<String> = server
        .remote_addrs()
        .iter()
        .map(|addr| addr.name().expect("a named peer").to_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------- full speed --

/// Message `seq` of a stream: 8 digits, then padding; every 1,000th is a
/// 256 KiB frame.
fn message(seq: u64) -> String {
    let len = if seq % 1000 == 999 {
        256 * 1024
    } else {
        16 + (seq % 100) as usize
    };
    numbered_line(seq, len)
}

/// Sends messages `0..count` on `handle`, 256 per `send_all`.
fn stream_messages(
    handle: chitchat_net::ConnectionHandle,
    count: u64,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        let mut seq = 0;
        while seq < count {
            let end = (seq + 256).min(count);
            let chunk: Vec<String> = (seq..end).map(message).collect();
            handle.send_all(&chunk).await?;
            seq = end;
        }
        Ok(())
    })
}

/// Two chitchat-net peers on the two ends of one duplex, each with a
/// counting handler, each streaming 10,000 numbered messages (ten of them
/// 256 KiB frames) to the other at full speed while handling what it gets.
/// Everything arrives, in order, on both sides, with no error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_over_a_duplex_stream_10000_messages_and_large_frames_each_way() {
    both_ways_at_full_speed().await;
}

/// The same on one thread, where a connection whose writing held up its
/// reading (or the reverse) would deadlock both peers.
#[tokio::test(flavor = "current_thread")]
async fn two_peers_over_a_duplex_stream_both_ways_on_one_thread() {
    both_ways_at_full_speed().await;
}

async fn both_ways_at_full_speed() {
    const MESSAGES: u64 = 10_000;
    let expected_bytes: u64 = (0..MESSAGES).map(|seq| message(seq).len() as u64).sum();

    let at_server = Arc::new(Tally::default());
    let (accept, incoming) = incoming();
    let server = Server::builder(counting(at_server.clone()))
        .write_stall_timeout(None)
        .serve(Addr::named("server"), incoming)
        .unwrap();
    let at_client = Arc::new(Tally::default());
    let client = Client::<String>::builder()
        .handler(counting(at_client.clone()))
        .write_stall_timeout(None)
        .connect_io(dial(&accept, "client"), Addr::named("server"))
        .await
        .unwrap();
    assert_eq!(client.peer_addr(), Addr::named("server"));
    assert_eq!(client.local_addr(), Addr::named("local"));
    wait_until("the server has the connection", || {
        server.connection_count() == 1
    })
    .await;
    let to_client = server.connection(Addr::named("client")).unwrap();

    let from_server = stream_messages(to_client, MESSAGES);
    let from_client = stream_messages(client.handle(), MESSAGES);
    wait_for_count("messages at the server", MESSAGES, || {
        at_server.lines.load(Ordering::Relaxed)
    })
    .await;
    wait_for_count("messages at the client", MESSAGES, || {
        at_client.lines.load(Ordering::Relaxed)
    })
    .await;
    within("the client's sender", from_client)
        .await
        .unwrap()
        .unwrap();
    within("the server's sender", from_server)
        .await
        .unwrap()
        .unwrap();

    for (side, tally) in [("server", &at_server), ("client", &at_client)] {
        assert_eq!(tally.lines.load(Ordering::Relaxed), MESSAGES, "{side}");
        assert_eq!(
            tally.bytes.load(Ordering::Relaxed),
            expected_bytes,
            "{side}"
        );
        assert_eq!(tally.out_of_order.load(Ordering::Relaxed), 0, "{side}");
    }
    assert_no_event("server", &server.errors());
    assert_no_event("client", &client.errors());
    let stats = server.stats();
    assert_eq!((stats.frames_in, stats.frames_out), (MESSAGES, MESSAGES));

    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    within("cut", server.cut()).await;
}

// --------------------------------------------------------- slow reader --

/// Counts numbered lines in order (as [`counting`]), but holds every
/// message until the gate opens.
struct Gated {
    gate: watch::Receiver<bool>,
    tally: Arc<Tally>,
}

impl Handler for Gated {
    type Message = String;

    async fn handle(&self, line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let mut gate = self.gate.clone();
        tokio::time::timeout(3 * WAIT, gate.wait_for(|open| *open))
            .await
            .map_err(|_| "the gate never opened")??;
        let seq: u64 = line[..8].parse()?;
        if seq != self.tally.lines.load(Ordering::Relaxed) {
            self.tally.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.tally
            .bytes
            .fetch_add(line.len() as u64, Ordering::Relaxed);
        self.tally.lines.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A client whose handler holds the first message stops reading once it has
/// read ahead its bound (its queue bound in bytes): the server's sends to it
/// take the duplex buffer, the client's read buffer and read ahead, and the
/// queue bound, then wait, holding no more than the bound plus one
/// message unsent. Once the client reads again every message arrives, in
/// order, and the sender finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_servers_sends_at_the_queue_bound_then_gets_everything() {
    const QUEUE: usize = 64 * 1024;
    const LINE: usize = 1024; // on the wire, with its `\n`
    const LINES: u64 = 4096; // 4 MiB
    let (accept, incoming) = incoming();
    let server = Server::builder(Counter::default())
        .queue_bytes(QUEUE)
        .write_stall_timeout(None)
        .serve(Addr::named("server"), incoming)
        .unwrap();
    let (open, gate) = watch::channel(false);
    let tally = Arc::new(Tally::default());
    let handler = Gated {
        gate,
        tally: tally.clone(),
    };
    let client = Client::<String>::builder()
        .handler(handler)
        .queue_bytes(QUEUE)
        .connect_io(dial(&accept, "slow"), Addr::named("server"))
        .await
        .unwrap();
    wait_until("the server has the connection", || {
        server.connection_count() == 1
    })
    .await;
    let to_client = server.connection(Addr::named("slow")).unwrap();

    let sent = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn({
        let sent = sent.clone();
        async move {
            for seq in 0..LINES {
                to_client.send(&numbered_line(seq, LINE - 1)).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Error>(())
        }
    });

    // The client reads nothing more: the sends stall.
    // A second of stillness: the sends are held (see `settled`).
    let stalled_at = settled(Duration::from_secs(1), || sent.load(Ordering::Relaxed)).await;
    // Taken: the queue, the duplex's buffer, at most one read (64 KiB)
    // in the client's read buffer, and what the client read ahead while
    // its handler waits (its queue bound, and the line that reached it).
    let bound = (QUEUE + DUPLEX + 64 * 1024 + QUEUE + 2 * LINE) as u64;
    assert!(
        stalled_at * (LINE as u64) <= bound,
        "the server's sends never waited: {stalled_at} of {LINES} taken (bound {bound} bytes)"
    );
    // Queued: every send that returned (`frames_out` counts only frames
    // written).
    let stats = server.stats();
    let unsent = stalled_at * LINE as u64 - stats.bytes_out;
    assert!(
        unsent <= (QUEUE + LINE) as u64,
        "{unsent} bytes unsent for a peer that reads nothing (bound {QUEUE})"
    );
    assert!(
        unsent >= (QUEUE - LINE) as u64,
        "the sends waited with only {unsent} bytes unsent"
    );
    assert_eq!(tally.lines.load(Ordering::Relaxed), 0);

    // The client reads again: everything arrives, in order.
    open.send(true).unwrap();
    wait_for_count("lines at the client", LINES, || {
        tally.lines.load(Ordering::Relaxed)
    })
    .await;
    within("the sender", sender).await.unwrap().unwrap();
    assert_eq!(
        tally.bytes.load(Ordering::Relaxed),
        LINES * (LINE as u64 - 1)
    );
    assert_eq!(tally.out_of_order.load(Ordering::Relaxed), 0);
    assert_no_event("server", &server.errors());
    assert_no_event("client", &client.errors());
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}

// ---------------------------------------------------- how a connection ends --

/// `client.close()` delivers what was sent and ends the connection: the
/// client's end is `ByUs`, the server's `ByPeer`, and the server's table
/// no longer holds the peer.
#[tokio::test]
async fn a_client_that_closes_ends_by_us_and_the_server_sees_it_end_by_peer() {
    let probe = Arc::new(Probe::new());
    let (accept, incoming) = incoming();
    let server = Server::builder(ProbeRef(probe.clone()))
        .serve(Addr::named("server"), incoming)
        .unwrap();
    let (client, mut replies) = client_over(dial(&accept, "closer")).await;
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut replies).await, "pong");
    let at_server = server.connection(Addr::named("closer")).unwrap();

    client.send(&"last words".to_string()).await.unwrap();
    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    assert_eq!(
        within("the server's end", at_server.closed()).await,
        CloseReason::ByPeer
    );
    assert_eq!(probe.next_closed().await, Addr::named("closer"));
    assert_eq!(
        probe.seen_from(Addr::named("closer")),
        ["ping", "last words"]
    );
    assert!(server.remote_addrs().is_empty());
    assert!(matches!(
        client.send(&"too late".to_string()).await,
        Err(chitchat_net::SendError::Closed)
    ));
    assert_no_event("client", &client.errors());
    assert_no_event("server", &server.errors());
    within("cut", server.cut()).await;
}

/// `close_remote` on a named peer ends its client `ByPeer`, with an
/// `Error::ClosedByPeer` event; the server's end is `ByUs`.
#[tokio::test]
async fn close_remote_ends_the_client_by_peer() {
    let (accept, incoming) = incoming();
    let server = Server::builder(Probe::new())
        .serve(Addr::named("server"), incoming)
        .unwrap();
    let (client, mut replies) = client_over(dial(&accept, "victim")).await;
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut replies).await, "pong");
    let at_server = server.connection(Addr::named("victim")).unwrap();

    server.close_remote(Addr::named("victim")).unwrap();
    assert_eq!(
        within("the client's end", client.closed()).await,
        CloseReason::ByPeer
    );
    let event = next_event(&client.errors()).await;
    assert!(matches!(event.error, Error::ClosedByPeer), "{event}");
    assert_peer(&event, Addr::named("server"));
    assert_eq!(at_server.closed().await, CloseReason::ByUs);
    wait_until("the server forgets the peer", || {
        server.remote_addrs().is_empty()
    })
    .await;
    assert!(matches!(
        server.close_remote(Addr::named("victim")),
        Err(Error::UnknownPeer(peer)) if peer == Addr::named("victim")
    ));
    within("cut", server.cut()).await;
}

/// A client against a bare duplex end: its bytes on the wire are the lines
/// framing's, and dropping the other end ends the client `ByPeer`.
#[tokio::test]
async fn a_client_over_a_bare_duplex_writes_lines_and_ends_by_peer_when_the_other_end_goes() {
    let (client_end, bare) = tokio::io::duplex(DUPLEX);
    let (client, mut replies) = client_over(client_end).await;
    let (read, mut write) = tokio::io::split(bare);
    let mut read = BufReader::new(read);

    client.send(&"hello".to_string()).await.unwrap();
    let mut line = Vec::new();
    within("a line", read.read_until(b'\n', &mut line))
        .await
        .unwrap();
    assert_eq!(line, b"hello\n");
    within("a write", write.write_all(b"world\r\n"))
        .await
        .unwrap();
    assert_eq!(recv(&mut replies).await, "world");

    drop((read, write));
    assert_eq!(
        within("the client's end", client.closed()).await,
        CloseReason::ByPeer
    );
    let event = next_event(&client.errors()).await;
    assert!(matches!(event.error, Error::ClosedByPeer), "{event}");
    assert!(client.is_closed());
}

// ------------------------------------------------------- a table of peers --

/// A server serving a stream of duplex connections: each peer is known by
/// its name (context, `remote_addrs`, `send_to`, `close_remote`); the
/// accept filter and `max_connections` refuse by name; an accept error is
/// an event and the server goes on; `cut` ends every client `ByPeer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_serving_a_stream_of_duplex_connections_knows_each_peer_by_name() {
    let (accept, incoming) = incoming();
    let server = Server::builder(Probe::new())
        .max_connections(3)
        .accept_filter(|peer| peer.name() != Some("intruder"))
        .serve(Addr::named("server"), incoming)
        .unwrap();
    assert_eq!(server.local_addr(), Addr::named("server"));
    let errors = server.errors();

    let mut clients = Vec::new();
    for name in ["client-1", "client-2", "client-3"] {
        let (client, mut replies) = client_over(dial(&accept, name)).await;
        client.send(&"addrs".to_string()).await.unwrap();
        assert_eq!(recv(&mut replies).await, format!("{name} server"));
        clients.push((client, replies));
    }
    assert_eq!(names(&server), ["client-1", "client-2", "client-3"]);
    assert_eq!(server.connection_count(), 3);

    // Refused by the filter, then by the limit: each closed at once.
    let (intruder, _) = client_over(dial(&accept, "intruder")).await;
    let event = next_event(&errors).await;
    assert!(
        matches!(&event.error, Error::Refused(peer) if *peer == Addr::named("intruder")),
        "{event}"
    );
    assert_eq!(
        within("the intruder's end", intruder.closed()).await,
        CloseReason::ByPeer
    );
    let (fourth, _) = client_over(dial(&accept, "client-4")).await;
    let event = next_event(&errors).await;
    assert!(
        matches!(event.error, Error::TooManyConnections { limit: 3 }),
        "{event}"
    );
    assert_peer(&event, Addr::named("client-4"));
    assert_eq!(
        within("the fourth's end", fourth.closed()).await,
        CloseReason::ByPeer
    );

    // An accept error is reported; the next connection is still served.
    accept.send(Err(io::Error::other("flaky"))).unwrap();
    let event = next_event(&errors).await;
    assert!(matches!(event.error, Error::Accept(_)), "{event}");
    assert_eq!(event.peer, None);

    // Sends and closes by name.
    server
        .send_to(Addr::named("client-2"), &"direct".to_string())
        .await
        .unwrap();
    assert_eq!(recv(&mut clients[1].1).await, "direct");
    server.close_remote(Addr::named("client-2")).unwrap();
    assert_eq!(
        within("client-2's end", clients[1].0.closed()).await,
        CloseReason::ByPeer
    );
    wait_until("client-2 leaves the table", || {
        server.connection_count() == 2
    })
    .await;
    assert_eq!(names(&server), ["client-1", "client-3"]);
    assert!(matches!(
        server
            .send_to(Addr::named("client-2"), &"gone".to_string())
            .await,
        Err(Error::UnknownPeer(_))
    ));

    // Room again under the limit: a fifth peer is served.
    let (fifth, mut fifth_replies) = client_over(dial(&accept, "client-5")).await;
    fifth.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut fifth_replies).await, "pong");
    assert_eq!(names(&server), ["client-1", "client-3", "client-5"]);
    assert_eq!(server.stats().connections_total, 4);

    within("cut", server.cut()).await;
    for (client, _) in [&clients[0], &clients[2]] {
        assert_eq!(
            within("a client's end", client.closed()).await,
            CloseReason::ByPeer
        );
    }
    assert_eq!(fifth.closed().await, CloseReason::ByPeer);
    assert!(server.remote_addrs().is_empty());
    assert_events_end(&errors).await;
}

/// When its stream of connections ends, a server accepts no more but
/// serves those it has; `shutdown` then ends them gracefully.
#[tokio::test]
async fn a_server_whose_incoming_stream_ends_serves_the_connections_it_has() {
    let (client_end, server_end) = tokio::io::duplex(DUPLEX);
    let incoming = futures_util::stream::iter([Ok((server_end, Addr::named("only")))]);
    let server = Server::builder(Probe::new())
        .serve(Addr::named("server"), incoming)
        .unwrap();
    let (client, mut replies) = client_over(client_end).await;
    for _ in 0..3 {
        client.send(&"ping".to_string()).await.unwrap();
        assert_eq!(recv(&mut replies).await, "pong");
    }
    assert_eq!(names(&server), ["only"]);
    assert!(within("shutdown", server.shutdown(WAIT)).await.finished);
    assert_eq!(client.closed().await, CloseReason::ByPeer);
}

// ---------------------------------------------------------------- addresses --

/// A named address is not a socket: dialling one fails at once with
/// `InvalidInput`, and named peers index like any other address.
#[tokio::test]
async fn a_named_address_cannot_be_dialled() {
    let named = Addr::named("duplex-1");
    assert_eq!((named.tcp(), named.ip()), (None, None));
    assert_eq!(named.to_string(), "duplex-1");
    assert_eq!(named, Addr::named(String::from("duplex-1")));
    assert_ne!(named, Addr::named("duplex-2"));
    let result = within("connect", Client::<String>::connect(&named)).await;
    match result {
        Err(chitchat_net::ConnectError::Io(error)) => {
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput)
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// [`Probe`] behind an `Arc`, so the test can read it.
struct ProbeRef(Arc<Probe>);

impl Handler for ProbeRef {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.handle(line, ctx).await
    }

    async fn on_close(&self, closed: chitchat_net::Closed) {
        self.0.on_close(closed).await
    }
}

// ---------------------------------------------------------- TLS over it --

/// TLS is a use of a byte stream too: a TLS server and client over one
/// duplex, the handshake done by `serve` and `connect_io`.
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_runs_over_a_duplex_stream() {
    use chitchat_net::tls::pki_types::ServerName;
    use chitchat_net::tls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use chitchat_net::tls::rustls::{crypto::ring, ClientConfig, RootCertStore, ServerConfig};

    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["memory.test".to_string()]).unwrap();
    let der: CertificateDer<'static> = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let provider = Arc::new(ring::default_provider());
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let (accept, incoming) = incoming();
    let server = Server::builder(Probe::new())
        .tls(Arc::new(server_config))
        .serve(Addr::named("server"), incoming)
        .unwrap();
    let (handler, mut replies) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .tls(
            Arc::new(client_config),
            ServerName::try_from("memory.test").unwrap(),
        )
        .connect_io(dial(&accept, "tls-peer"), Addr::named("server"))
        .await
        .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut replies).await, "pong");
    client.send(&"addrs".to_string()).await.unwrap();
    assert_eq!(recv(&mut replies).await, "tls-peer server");
    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    assert_no_event("server", &server.errors());
    within("cut", server.cut()).await;
}
