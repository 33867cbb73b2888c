//! Escaping is decided per message type, when it is sent: a connection
//! whose messages one way are text (raw lines, the Go original's wire) can
//! carry binary messages the other way, whatever bytes they hold.

use crate::common;

use chitchat_net::{handler_fn, BoxError, Client, Context, Message, Server};
use common::within;
use serde::{Deserialize, Serialize};

/// A binary (bincode) reply holding any bytes, newlines included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
struct Blob {
    seq: u64,
    bytes: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_one_way_and_binary_the_other_both_arrive_whole() {
    // The server reads lines of text and answers each with a binary blob
    // full of delimiter and escape bytes.
    let answer = handler_fn(
        |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            let seq: u64 = line.trim_start_matches("get ").parse()?;
            let bytes = (0..=255u8).cycle().take(300 + seq as usize).collect();
            ctx.send(&Blob { seq, bytes })?;
            Ok(())
        },
    );
    let server = Server::listen("127.0.0.1:0", answer).await.unwrap();
    // The server reads text, as from Go peers: no handshake. The client
    // receives a derived type, which would switch it on: off here too.
    let client = Client::<String>::builder()
        .no_handshake()
        .receive::<Blob>(16)
        .connect(server.local_addr())
        .await
        .unwrap();
    let asks = async {
        for seq in 0..500u64 {
            client.send(&format!("get {seq}")).await.unwrap();
        }
    };
    let answers = async {
        for seq in 0..500u64 {
            let blob = client.recv().await.expect("a blob");
            assert_eq!(blob.seq, seq);
            assert_eq!(blob.bytes.len(), 300 + seq as usize);
            assert!(blob.bytes.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
    };
    within("500 exchanges", async { tokio::join!(asks, answers) }).await;
    common::assert_no_event("server", &server.errors());
    common::assert_no_event("client", &client.errors());
    // The text direction stayed raw: byte for byte a Go peer's line.
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    raw.write(b"get 1\n").await;
    let reply = raw.read_line().await;
    assert!(reply.len() > 300, "an escaped blob, {} bytes", reply.len());
    client.close().await;
    server.cut().await;
}

/// A derived enum with pinned tags, bincode by default.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Command {
    #[message(tag = 1)]
    Set { key: String, value: u64 },
    #[message(tag = 9)]
    Stop,
}

/// Both ends switch every derived message to postcard with one call: the
/// enum keeps its pinned tags, and the bytes on the wire are postcard's.
#[cfg(feature = "postcard")]
#[tokio::test]
async fn one_call_switches_every_derived_message_to_postcard_keeping_tags() {
    use chitchat_net::{Format, Options};
    let options = Options::new().serde_format(Format::Postcard);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collect = handler_fn(
        move |c: Command, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(c)?;
            // A reply of another derived type, switched too.
            ctx.send(&Blob {
                seq: 300,
                bytes: vec![10, 13, 255],
            })?;
            Ok(())
        },
    );
    let server = Server::builder(collect)
        .options(options.clone())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Command>::builder()
        .options(options)
        .receive::<Blob>(4)
        .connect(server.local_addr())
        .await
        .unwrap();
    let set = Command::Set {
        key: "k".into(),
        value: 300,
    };
    client.send(&set).await.unwrap();
    assert_eq!(within("the command", rx.recv()).await, Some(set));
    assert_eq!(
        within("the reply", client.recv()).await,
        Some(Blob {
            seq: 300,
            bytes: vec![10, 13, 255]
        })
    );

    // What a switched client writes: tag 1, then "k" and 300 as postcard
    // writes them (300 is 0xAC 0x02 in postcard's varint; bincode would
    // write 0xFB 0x2C 0x01). Nothing to escape in these bytes.
    let (listener, addr) = common::raw_listener().await;
    // Bytes on the wire: no hello.
    let switched = Client::<Command>::builder()
        .no_handshake()
        .serde_format(Format::Postcard)
        .connect(addr)
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut raw = common::RawPeer::from_stream(stream);
    switched
        .send(&Command::Set {
            key: "k".into(),
            value: 300,
        })
        .await
        .unwrap();
    assert_eq!(raw.read_line().await, [1, 1, b'k', 0xAC, 0x02, b'\n']);
    switched.send(&Command::Stop).await.unwrap();
    assert_eq!(
        raw.read_line().await,
        [9, b'\n'],
        "the pinned tag 9, in any format"
    );
    drop(raw);
    switched.close().await;
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn without_the_switch_the_same_enum_is_bincode() {
    let (listener, addr) = common::raw_listener().await;
    let client = Client::<Command>::builder()
        .no_handshake()
        .connect(addr)
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut raw = common::RawPeer::from_stream(stream);
    client
        .send(&Command::Set {
            key: "k".into(),
            value: 300,
        })
        .await
        .unwrap();
    assert_eq!(raw.read_line().await, [1, 1, b'k', 0xFB, 0x2C, 0x01, b'\n']);
    drop(raw);
    client.close().await;
}
