//! The batch send API (`Client::send_all`, `ConnectionHandle::send_all`):
//! order, backpressure and the queue's bound, errors part-way, closed
//! connections, and sends from the server side.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chitchat_net::{handler_fn, BoxError, Client, Context, Error, Framing, Server};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_delivers_everything_in_order() {
    let server = Server::listen("127.0.0.1:0", Counter::default())
        .await
        .unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    let batch: Vec<String> = (0..50_000).map(|i| i.to_string()).collect();
    within("send_all", client.send_all(&batch)).await.unwrap();
    // Single sends and batches interleave in call order.
    client.send(&"50000".to_string()).await.unwrap();
    within("send_all", client.send_all(&batch[..0]))
        .await
        .unwrap();
    let more: Vec<String> = (50_001..50_100).map(|i| i.to_string()).collect();
    within("send_all", client.send_all(more.iter()))
        .await
        .unwrap();
    within("close", client.close()).await;
    let counter = server.handler();
    assert_eq!(counter.total.load(Ordering::SeqCst), 50_100);
    {
        let per_peer = counter.per_peer.lock().unwrap();
        let got = &per_peer[&client.local_addr()];
        assert!(got.iter().enumerate().all(|(i, m)| *m == i.to_string()));
    }
    assert_eq!(client.stats().frames_out, 50_100);
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_waits_for_room_and_keeps_the_queue_bound() {
    let (listener, addr) = raw_listener().await;
    let client = Client::<String>::builder()
        .queue_bytes(1024)
        .write_stall_timeout(None)
        .connect(addr)
        .await
        .unwrap();
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let mut server = RawPeer::from_stream(stream);
    // 4,000 x 64 KiB = 256 MiB: far more than the socket buffers hold, so
    // the batch has to wait for a server that does not read.
    let big: Vec<String> = (0..4000)
        .map(|i| format!("{i:08}{}", "f".repeat(64 * 1024)))
        .collect();
    let sending = client.send_all(&big);
    tokio::pin!(sending);
    let blocked = tokio::time::timeout(Duration::from_secs(2), sending.as_mut()).await;
    assert!(
        blocked.is_err(),
        "256 MiB were queued to a server that never reads"
    );
    assert!(matches!(
        client.try_send(&"x".to_string()),
        Err(chitchat_net::TrySendError::Full { limit: 1024 })
    ));
    // What is written or queued is bounded: the socket buffers plus the
    // queue (1 KiB, plus one frame past it), nowhere near the whole batch.
    let written = client.stats().frames_out;
    assert!(
        written < 200,
        "{written} frames of 64 KiB written to a server that never reads"
    );
    // Once the server reads, the rest of the batch goes out, whole and in order.
    let reader = tokio::spawn(async move {
        for i in 0..4000 {
            let line = server.read_line().await;
            assert_eq!(line.len(), 8 + 64 * 1024 + 1);
            assert_eq!(&line[..8], format!("{i:08}").as_bytes());
        }
        server
    });
    within("the rest of the batch", sending).await.unwrap();
    let mut server = within("reader", reader).await.unwrap();
    client.send(&"end".to_string()).await.unwrap();
    assert_eq!(server.read_line().await, b"end\n");
    // A frame is counted once its last byte is written, which the peer may
    // see first.
    common::wait_until("the last frame is counted", || {
        client.stats().frames_out == 4001
    })
    .await;
    assert!(client.errors().try_recv().is_none());
}

#[tokio::test]
async fn send_all_stops_at_a_message_that_cannot_be_framed() {
    let (listener, addr) = raw_listener().await;
    let client = Client::<String>::builder()
        .framing(Framing::lines().raw())
        .connect(addr)
        .await
        .unwrap();
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let mut server = RawPeer::from_stream(stream);
    let batch = ["one", "two", "th\nree", "four"].map(String::from);
    let result = within("send_all", client.send_all(&batch)).await;
    assert!(
        matches!(
            result,
            Err(chitchat_net::SendError::Unsendable(
                Error::DelimiterInPayload { offset: 2, .. }
            ))
        ),
        "{result:?}"
    );
    // The messages before the bad one are sent, none after it.
    client.send(&"five".to_string()).await.unwrap();
    assert_eq!(server.read_line().await, b"one\n");
    assert_eq!(server.read_line().await, b"two\n");
    assert_eq!(server.read_line().await, b"five\n");
    assert_eq!(client.stats().frames_out, 3);
    // The connection goes on.
    assert!(!client.is_closed());
}

#[tokio::test]
async fn send_all_after_close_is_closed() {
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    within("close", client.close()).await;
    let batch = ["a", "b"].map(String::from);
    assert!(matches!(
        client.send_all(&batch).await,
        Err(chitchat_net::SendError::Closed)
    ));
    // An empty batch has nothing to refuse.
    assert!(client.send_all(&batch[..0]).await.is_ok());
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sends_a_batch_through_a_connection_handle() {
    // On "go", the server spawns a task that sends 1,000 numbers in one batch.
    let server = Server::listen(
        "127.0.0.1:0",
        handler_fn(
            |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
                if line == "go" {
                    let handle = ctx.handle();
                    tokio::spawn(async move {
                        let numbers: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
                        handle.send_all(&numbers).await.expect("send_all");
                        handle.send(&"done".to_string()).await.expect("send");
                    });
                }
                Ok(())
            },
        ),
    )
    .await
    .unwrap();
    let (collect, mut rx) = collector::<String>();
    let client = Client::<String>::builder()
        .handler(collect)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"go".to_string()).await.unwrap();
    for i in 0..1000 {
        assert_eq!(recv(&mut rx).await, i.to_string());
    }
    assert_eq!(recv(&mut rx).await, "done");
    assert_eq!(server.stats().frames_out, 1001);
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}
