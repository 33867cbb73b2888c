//! Sends that write through to the socket (plain TCP, while the write side
//! holds nothing) never interleave frames with the write side's writes, and
//! keep every sender's order: two chitchat-net peers at full speed in both
//! directions (lone sends, batches and large frames from several client
//! tasks; the server's handler acking each, and a server task streaming to
//! the client through the connection's handle), a server that reads slowly
//! at times (so the socket fills, writes through are partial or refused,
//! and the write side takes over).
//!
//! The loom model `writes_through_never_overlap_the_write_side_and_keep_the_order`
//! (loom-models/) checks the same rule under every interleaving.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::{handler_fn, BoxError, Client, Context, Handler, Server};
use common::{until_with_progress, with_progress, within};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// One message of one sending task: its payload is a function of both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, chitchat_net::Message)]
#[message(codec = "bincode")]
struct Numbered {
    task: u8,
    seq: u64,
    payload: Vec<u8>,
}

/// Payload lengths cycle through small, delimiter-heavy and large ones.
fn numbered(task: u8, seq: u64) -> Numbered {
    let len = match seq % 7 {
        0 => 0,
        1 => 3,
        2 => 64,
        3 => 700,
        4 => 5_000,
        5 if task == LARGE => 200_000,
        _ => 17,
    };
    let payload = (0..len)
        .map(|i| ((i as u64) ^ seq ^ (u64::from(task) * 31)) as u8)
        .collect();
    Numbered { task, seq, payload }
}

const TASKS: u8 = 4;
/// The task that sends large frames.
const LARGE: u8 = 3;
/// The server's own stream to the client.
const PUSHED: u8 = 9;
const PER_TASK: u64 = 1_500;

/// Checks each message (intact payload, next in its task's order), every
/// 300th after a pause (a slow reader), and answers it with a small ack.
struct Checker {
    next: Mutex<[u64; TASKS as usize]>,
    seen: AtomicU64,
    done: Notify,
    bad: Mutex<Vec<String>>,
}

impl Handler for Checker {
    type Message = Numbered;

    async fn handle(&self, msg: Numbered, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let expected = numbered(msg.task, msg.seq);
        {
            let mut next = self.next.lock().unwrap();
            let slot = &mut next[usize::from(msg.task)];
            if msg.seq != *slot || msg != expected {
                self.bad.lock().unwrap().push(format!(
                    "task {} sent seq {} (expected {}), payload intact: {}",
                    msg.task,
                    msg.seq,
                    *slot,
                    msg.payload == expected.payload
                ));
            }
            *slot = msg.seq + 1;
        }
        if msg.seq % 300 == 299 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Replies make the client read, which lets its lone sends write
        // through.
        ctx.send(&Numbered {
            task: msg.task,
            seq: msg.seq,
            payload: Vec::new(),
        })?;
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(TASKS) * PER_TASK {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// Sends task `task`'s messages in batches of 50.
async fn send_batches(client: &Client<Numbered>, task: u8) {
    let mut seq = 0;
    while seq < PER_TASK {
        let batch: Vec<Numbered> = (seq..(seq + 50).min(PER_TASK))
            .map(|s| numbered(task, s))
            .collect();
        client.send_all(batch.iter()).await.unwrap();
        seq += batch.len() as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_and_the_write_side_never_interleave_frames() {
    let server = Server::builder(Checker {
        next: Mutex::new([0; TASKS as usize]),
        seen: AtomicU64::new(0),
        done: Notify::new(),
        bad: Mutex::new(Vec::new()),
    })
    .queue_bytes(64 * 1024)
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    // The client counts the acks (empty payloads) and checks the server's
    // own stream (task PUSHED), which must arrive whole and in order.
    let acks = Arc::new(AtomicU64::new(0));
    let pushed = Arc::new(Mutex::new((0u64, Vec::<String>::new())));
    let (counted, checked) = (acks.clone(), pushed.clone());
    let client = Arc::new(
        Client::<Numbered>::builder()
            .queue_bytes(64 * 1024)
            .handler(handler_fn(
                move |msg: Numbered, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
                    if msg.task != PUSHED {
                        counted.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    let mut checked = checked.lock().unwrap();
                    if msg.seq != checked.0 || msg != numbered(PUSHED, msg.seq) {
                        let note = format!("pushed seq {} (expected {})", msg.seq, checked.0);
                        checked.1.push(note);
                    }
                    checked.0 = msg.seq + 1;
                    Ok(())
                },
            ))
            .connect(server.local_addr())
            .await
            .unwrap(),
    );
    // Meanwhile the server streams to the client from a task of its own,
    // through the connection's handle: its lone sends write through too
    // (the connection reads all the time).
    let on_server = within("the server's side", async {
        loop {
            if let Ok(conn) = server.connection(client.local_addr()) {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let pusher = tokio::spawn(async move {
        for seq in 0..PER_TASK {
            on_server.send(&numbered(PUSHED, seq)).await.unwrap();
        }
        on_server
    });
    let done = server.handler().done.notified();
    tokio::pin!(done);
    done.as_mut().enable();

    // Lone sends from three tasks (task 3 with large frames among them),
    // batches from this one (task 2).
    let mut senders = Vec::new();
    for task in [0, 1, LARGE] {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_TASK {
                client.send(&numbered(task, seq)).await.unwrap();
                if seq % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    // The bulk of the test (6,000 frames each way, 1.5 MB of large ones):
    // seconds on an idle machine, 8-14 s on a loaded one. Bounded by its
    // progress, bytes read by either side (see `with_progress`), not by a
    // total time.
    let moved = || {
        let (s, c) = (server.stats(), client.stats());
        s.bytes_in + c.bytes_in
    };
    with_progress("the batches", moved, send_batches(&client, 2)).await;
    for sender in senders {
        with_progress("a sender", moved, sender).await.unwrap();
    }
    let errors = server.errors();
    tokio::select! {
        () = with_progress("every message checked", moved, &mut done) => {}
        event = errors.recv() => panic!("server error: {event:?}"),
    }
    let bad = server.handler().bad.lock().unwrap().clone();
    assert!(bad.is_empty(), "out of order or damaged: {bad:?}");
    until_with_progress("every ack", moved, || {
        acks.load(Ordering::Relaxed) >= u64::from(TASKS) * PER_TASK
    })
    .await;
    with_progress("the server's stream", moved, pusher)
        .await
        .unwrap();
    until_with_progress("every pushed frame", moved, || {
        pushed.lock().unwrap().0 >= PER_TASK
    })
    .await;
    let bad = pushed.lock().unwrap().1.clone();
    assert!(bad.is_empty(), "the server's stream: {bad:?}");
    assert!(
        server.stats().bytes_written_through > 0,
        "the server's sends never wrote through"
    );
    let stats = client.stats();
    // Both ways of writing were used: sends wrote through, and the write
    // side wrote what they could not.
    assert!(
        stats.bytes_written_through > 0,
        "nothing was written through: {stats:?}"
    );
    assert!(
        stats.bytes_written_through < stats.bytes_out,
        "the write side wrote nothing: {stats:?}"
    );
    client.close().await;
    server.cut().await;
}

/// A TLS or user stream never writes through: its writes keep state only
/// the write side may touch.
#[tokio::test]
async fn a_user_stream_is_never_written_through() {
    let server = Server::builder(handler_fn(
        |msg: Numbered, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&msg)?;
            Ok(())
        },
    ))
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(server.local_addr().tcp().unwrap())
        .await
        .unwrap();
    let peer = server.local_addr();
    let replies = Arc::new(AtomicU64::new(0));
    let counted = replies.clone();
    let client = Client::<Numbered>::builder()
        .handler(handler_fn(
            move |_msg: Numbered, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            },
        ))
        .connect_io(tcp, peer)
        .await
        .unwrap();
    for seq in 0..200 {
        client.send(&numbered(0, seq)).await.unwrap();
    }
    // 200 small frames each way: bounded by progress (bytes read by either
    // side).
    let moved = || server.stats().bytes_in + client.stats().bytes_in;
    until_with_progress("every reply", moved, || {
        replies.load(Ordering::Relaxed) >= 200
    })
    .await;
    assert_eq!(client.stats().bytes_written_through, 0);
    client.close().await;
    server.cut().await;
}
