//! The Unix-domain socket transport: the same server, client and handler
//! API as over TCP, with `Addr::Unix` peers numbered by the server and
//! carrying the peer's credentials.
#![cfg(unix)]

use crate::common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::{Addr, BoxError, Client, Context, Error, Handler, Server};
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// A fresh socket path under cargo's per-target temporary directory (short
/// enough for the 108-byte limit of `sun_path`).
fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("u{}-{n}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// This process's user id, as the server should see it.
fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A `Probe` server on the Unix socket at `path`.
async fn probe_server(path: &Path) -> Server<Probe> {
    Server::builder(Probe::new())
        .listen_unix(path)
        .await
        .unwrap()
}

async fn collecting_client(
    path: &Path,
) -> (Client<String>, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (handler, rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect_unix(path)
        .await
        .unwrap();
    (client, rx)
}

#[tokio::test]
async fn typed_round_trip_with_numbered_peers_and_their_credentials() {
    let path = socket_path("roundtrip");
    let server = Server::builder(Probe::greeting())
        .listen_unix(&path)
        .await
        .unwrap();
    let local = server.local_addr();
    assert_eq!(local.unix().unwrap().path(), Some(path.as_path()));
    assert_eq!(local.tcp(), None);
    assert!(path.exists());

    let (a, mut rx_a) = collecting_client(&path).await;
    let (b, mut rx_b) = collecting_client(&path).await;
    let greeting_a = recv(&mut rx_a).await;
    let greeting_b = recv(&mut rx_b).await;
    assert_ne!(greeting_a, greeting_b, "each peer has its own address");

    a.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx_a).await, "pong");
    b.send(&"addrs".to_string()).await.unwrap();
    let addrs = recv(&mut rx_b).await;
    assert!(addrs.starts_with("unix:#"), "{addrs}");
    assert!(addrs.contains(&format!("uid {}", uid())), "{addrs}");
    assert!(addrs.ends_with(&path.display().to_string()), "{addrs}");

    // The client sees the server's path; its own end is unnamed.
    assert_eq!(a.peer_addr().unix().unwrap().path(), Some(path.as_path()));
    assert_eq!(a.local_addr().unix().unwrap().path(), None);

    let mut peers = server.remote_addrs();
    peers.sort();
    assert_eq!(peers.len(), 2);
    let ids: Vec<u64> = peers.iter().map(|p| p.unix().unwrap().id()).collect();
    assert_eq!(ids, vec![1, 2]);
    for peer in &peers {
        let unix = peer.unix().unwrap();
        assert_eq!(unix.uid(), Some(uid()));
        assert_eq!(unix.pid(), Some(std::process::id() as i32));
        assert_eq!(unix.path(), None);
    }
    assert_eq!(greeting_a, format!("hello {}", peers[0]));

    // Peers are addressed as over TCP.
    server
        .send_to(&peers[1], &"direct".to_string())
        .await
        .unwrap();
    assert_eq!(recv(&mut rx_b).await, "direct");
    assert_eq!(server.broadcast(&"all".to_string()).unwrap(), 2);
    assert_eq!(recv(&mut rx_a).await, "all");
    assert_eq!(recv(&mut rx_b).await, "all");
    server.close_remote(&peers[0]).unwrap();
    assert_eq!(server.handler().next_closed().await, peers[0]);
    wait_until("client a sees the end", || a.is_closed()).await;
    assert!(matches!(
        server.close_remote(&peers[0]),
        Err(Error::UnknownPeer(_))
    ));
    b.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx_b).await, "pong");

    let stats = server.stats();
    assert_eq!(stats.connections_total, 2);
    server.cut().await;
    assert!(
        !path.exists(),
        "the socket file is removed when the server ends"
    );
}

#[tokio::test]
async fn a_client_connects_to_a_unix_servers_local_addr() {
    let path = socket_path("connect-addr");
    let server = probe_server(&path).await;
    let (handler, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(handler)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    // The write-only shorthand.
    let quiet = Client::<String>::connect_unix(&path).await.unwrap();
    quiet.send(&"one".to_string()).await.unwrap();
    quiet.close().await;
    wait_until("the server counted both", || server.handler().count() == 2).await;
    server.cut().await;
}

#[tokio::test]
async fn the_accept_filter_sees_credentials_before_any_byte() {
    let path = socket_path("filter");
    let me = uid();
    let server = Server::builder(Probe::greeting())
        .accept_filter(move |peer| peer.unix().and_then(|p| p.uid()) != Some(me))
        .listen_unix(&path)
        .await
        .unwrap();
    let events = server.errors();
    let mut refused = UnixStream::connect(&path).await.unwrap();
    let _ = refused.write_all(b"ping\n").await;
    let event = next_event(&events).await;
    match &event.error {
        Error::Refused(peer @ Addr::Unix(unix)) => {
            assert_eq!(unix.uid(), Some(me));
            assert_eq!(event.peer.as_ref(), Some(peer));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut rest = Vec::new();
    let read = within(
        "the refused stream to end",
        tokio::io::AsyncReadExt::read_to_end(&mut refused, &mut rest),
    )
    .await;
    assert!(read.is_err() || rest.is_empty(), "no greeting: {rest:?}");
    assert_eq!(server.handler().count(), 0);
    assert_eq!(server.connection_count(), 0);
    server.cut().await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_live_one_or_another_file_is_not() {
    // A socket file left by a listener that is gone.
    let path = socket_path("stale");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let server = probe_server(&path).await;
    let client = Client::<String>::connect_unix(&path).await.unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    wait_until("the new server handles it", || {
        server.handler().count() == 1
    })
    .await;

    // A live server keeps its socket.
    let second = Server::builder(Probe::new()).listen_unix(&path).await;
    match second {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    client.send(&"ping".to_string()).await.unwrap();
    wait_until("the first server still serves", || {
        server.handler().count() == 2
    })
    .await;
    server.cut().await;

    // Any other file is left alone.
    let file = socket_path("regular");
    std::fs::write(&file, b"data").unwrap();
    match Server::builder(Probe::new()).listen_unix(&file).await {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("expected AddrInUse, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn the_socket_file_of_a_dropped_server_is_removed_unless_replaced() {
    let path = socket_path("drop");
    let server = probe_server(&path).await;
    drop(server);
    wait_until("the socket file is removed", || !path.exists()).await;

    // Someone else's file at the path by the time the server ends stays.
    let server = probe_server(&path).await;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"someone else's").unwrap();
    server.cut().await;
    assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn connecting_to_a_missing_socket_fails_with_an_io_error() {
    let path = socket_path("missing");
    match Client::<String>::connect_unix(&path).await {
        Err(chitchat_net::ConnectError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_on_a_unix_connection_gets_events_and_spares_the_others() {
    let path = socket_path("hostile");
    let server = Server::builder(Probe::new())
        .max_frame_length(1024)
        .listen_unix(&path)
        .await
        .unwrap();
    let events = server.errors();
    let (good, mut rx) = collecting_client(&path).await;

    // Invalid UTF-8: a decode event naming the Unix peer; the peer stays.
    let mut bad = UnixStream::connect(&path).await.unwrap();
    bad.write_all(b"\xff\xfe\n").await.unwrap();
    let event = next_event(&events).await;
    assert!(matches!(event.error, Error::Decode { .. }), "{event}");
    let peer = event.peer.clone().expect("a peer");
    assert!(peer.unix().is_some_and(|p| p.id() >= 1), "{peer}");
    assert!(event.to_string().starts_with("unix:#"), "{event}");

    // An over-long frame: FrameTooLong, that connection closes.
    bad.write_all(&vec![b'x'; 4096]).await.unwrap();
    let event = next_event(&events).await;
    assert!(matches!(event.error, Error::FrameTooLong { .. }), "{event}");
    assert_eq!(event.peer, Some(peer.clone()));
    assert_eq!(server.handler().next_closed().await, peer);

    good.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    server.cut().await;
}

/// Counts messages, for delivery checks.
#[derive(Debug, Default)]
struct Count(AtomicUsize);

impl Handler for Count {
    type Message = String;

    async fn handle(&self, _msg: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_everything_and_shutdown_is_graceful_over_unix() {
    let path = socket_path("delivery");
    let server = Arc::new(
        Server::builder(Count::default())
            .listen_unix(&path)
            .await
            .unwrap(),
    );
    const N: usize = 20_000;
    let client = Client::<String>::connect_unix(&path).await.unwrap();
    for i in 0..N {
        client.send(&i.to_string()).await.unwrap();
    }
    within("close", client.close()).await;
    assert_eq!(server.handler().0.load(Ordering::SeqCst), N);
    assert!(server.shutdown(Duration::from_secs(5)).await.finished);
    assert!(!path.exists());
}

/// Both directions at once over a Unix socket: a client streams 16 MiB to an
/// echo server while its handler counts the 16 MiB of echoes; every one
/// arrives, in order, with no error event on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_at_once_over_unix() {
    let path = socket_path("both-ways");
    let echo = chitchat_net::handler_fn(
        |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&line)?;
            Ok(())
        },
    );
    let server = Server::builder(echo).listen_unix(&path).await.unwrap();
    let tally = Arc::new(Tally::default());
    let client = Client::<String>::builder()
        .handler(counting(tally.clone()))
        .connect_unix(&path)
        .await
        .unwrap();
    stream_through_echo(&client, &tally, 16 * 1024, 1023).await;
    assert_no_event("server", &server.errors());
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}
