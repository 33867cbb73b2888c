//! Escaping is decided per message type, when it is sent: a connection
//! whose messages one way are text (raw lines, the Go original's wire) can
//! carry binary messages the other way, whatever bytes they hold.

mod common;

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
    let client = Client::<String>::builder()
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
