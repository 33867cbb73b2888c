//! The Go original's wire, byte for byte: text heartbeats in `\n` framing and
//! EOF-framed registrations.

use std::time::Duration;

use chitchat_net::heartbeat::{HeartbeatConfig, Monitor, Register, TextResponder};
use chitchat_net::{handler_fn, BoxError, Client, Context, Framing, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("timed out reading")
        .expect("read failed");
    buf
}

#[tokio::test]
async fn text_ping_is_written_exactly_as_the_go_original_writes_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client::<String>::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut peer, _) = listener.accept().await.unwrap();
    // The Go peer reads until our end of stream, then closes.
    let go_peer = tokio::spawn(async move {
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.map(|_| all)
    });
    client.send(&"heartbeat ping".to_string()).await.unwrap();
    client.close().await;
    let all = tokio::time::timeout(WAIT, go_peer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(all, b"heartbeat ping\n");
}

#[tokio::test]
async fn text_responder_reads_crlf_and_lf_lines_as_the_go_original() {
    let server = Server::listen("127.0.0.1:0", TextResponder::new())
        .await
        .unwrap();
    let mut go_master = TcpStream::connect(server.local_addr().tcp().unwrap())
        .await
        .unwrap();
    go_master.write_all(b"heartbeat ping\r\n").await.unwrap();
    assert_eq!(read_exactly(&mut go_master, 15).await, b"heartbeat pong\n");
    go_master.write_all(b"heartbeat ping\n").await.unwrap();
    assert_eq!(read_exactly(&mut go_master, 15).await, b"heartbeat pong\n");
    // Two pings in one write, the second split over two writes.
    go_master
        .write_all(b"heartbeat ping\nheartbeat p")
        .await
        .unwrap();
    go_master.write_all(b"ing\r\n").await.unwrap();
    assert_eq!(
        read_exactly(&mut go_master, 30).await,
        b"heartbeat pong\nheartbeat pong\n"
    );
    server.cut().await;
}

#[tokio::test]
async fn eof_framed_text_from_a_go_node_is_read_as_one_message() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let record = handler_fn(
        move |msg: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(msg)?;
            Ok(())
        },
    );
    let server = Server::builder(record)
        .framing(Framing::eof())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut go_node = TcpStream::connect(server.local_addr().tcp().unwrap())
        .await
        .unwrap();
    go_node.write_all(b"hel").await.unwrap();
    go_node.write_all(b"lo\nworld").await.unwrap();
    go_node.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "hello\nworld");
    server.cut().await;
    assert!(rx.try_recv().is_err(), "exactly one message");
}

#[tokio::test]
async fn eof_framed_registration_written_in_pieces_starts_watching_the_node() {
    let (monitor, _events) =
        Monitor::new(HeartbeatConfig::with_interval(Duration::from_secs(60)).unwrap());
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    let node_addr = "127.0.0.1:9".parse().unwrap();
    let mut payload = bytes::BytesMut::new();
    chitchat_net::Codec::encode(
        &chitchat_net::Bincode,
        &Register {
            name: "go-node".into(),
            addr: node_addr,
        },
        &mut payload,
    )
    .unwrap();
    let mut stream = TcpStream::connect(registrations.local_addr().tcp().unwrap())
        .await
        .unwrap();
    for byte in payload.iter() {
        stream.write_all(&[*byte]).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    // The server closes its side once the registration is handled.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let peers = monitor.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].0, "go-node");
    assert_eq!(peers[0].1, node_addr);
    monitor.stop().await;
    registrations.cut().await;
}
