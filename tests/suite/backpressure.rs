//! The bound on what a connection holds for a peer, and the backpressure
//! that keeps it: a peer that does not read what it is sent stops being read,
//! the connection's unsent output stays under twice its queue bound (README:
//! "How a connection works"), and nothing is lost once the peer reads again.
//! Also: a handler that awaits a send on its own connection goes on, because
//! the queue drains while the handler waits.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::{handler_fn, BoxError, Client, Context, Handler, Server};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Wire bytes of one test line, with its `\n`.
const LINE: usize = 1024;

fn line(seq: u64) -> Vec<u8> {
    let mut line = format!("{seq:08}").into_bytes();
    line.resize(LINE - 1, b'.');
    line.push(b'\n');
    line
}

/// A raw peer writes 32 MiB of lines to an echo server and reads nothing.
/// The server's replies fill the sockets, its unsent output reaches twice
/// its queue bound, and it stops reading: the peer's writes stall with most
/// of the 32 MiB unwritten, and the server holds no more than the bound
/// plus one reply. Once the peer reads, every echo arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reads_nothing_stops_being_read_and_gets_everything_once_it_reads() {
    const QUEUE: usize = 64 * 1024;
    const LINES: u64 = 32 * 1024;
    let echo = handler_fn(
        |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&line)?;
            Ok(())
        },
    );
    let server = Server::builder(echo)
        .queue_bytes(QUEUE)
        .write_stall_timeout(None)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let stream = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    let (read_half, mut write_half) = stream.into_split();
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let written = written.clone();
        async move {
            for seq in 0..LINES {
                write_half.write_all(&line(seq)).await.unwrap();
                written.fetch_add(1, Ordering::Relaxed);
            }
            write_half
        }
    });

    // The peer reads nothing: the writes stall.
    // A second of stillness: the writes are held (see `settled`).
    let stalled_at = settled(Duration::from_secs(1), || written.load(Ordering::Relaxed)).await;
    assert!(
        stalled_at < LINES / 2,
        "the server kept reading a peer that reads nothing: {stalled_at} of {LINES} lines taken"
    );
    // What the server holds for the peer: replies queued, not yet written
    // (one echo per line read; `frames_out` counts only frames written).
    let stats = server.stats();
    let unsent = stats.frames_in * LINE as u64 - stats.bytes_out;
    assert!(
        unsent <= (2 * QUEUE + LINE) as u64,
        "{unsent} bytes unsent for a peer that reads nothing (bound {})",
        2 * QUEUE
    );
    assert!(
        unsent >= QUEUE as u64,
        "the server stopped reading with only {unsent} bytes unsent"
    );
    assert!(server.errors().try_recv().is_none());

    // The peer reads again: everything it sent comes back, in order.
    let mut echoes = BufReader::new(read_half);
    let mut got = Vec::with_capacity(LINE);
    for seq in 0..LINES {
        got.clear();
        within("an echo", echoes.read_until(b'\n', &mut got))
            .await
            .unwrap();
        assert_eq!(got, line(seq), "echo {seq}");
    }
    within("the writer", writer).await.unwrap();
    assert!(server.errors().try_recv().is_none());
    server.cut().await;
}

/// Counts the lines it receives.
#[derive(Debug, Default)]
struct Count(AtomicU64);

impl Handler for Count {
    type Message = String;

    async fn handle(&self, _line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A handler that answers each line with ten, each awaited through a
/// handle on its own connection with a 4 KiB queue: every await waits for
/// room that only the connection's own write side can make, while the
/// handler is still running. All 20,000 replies arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_awaiting_sends_on_its_own_connection_makes_progress() {
    const LINES: u64 = 2_000;
    const REPLIES: u64 = 10;
    struct Amplify;
    impl Handler for Amplify {
        type Message = String;
        async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
            let own = ctx.handle();
            for i in 0..REPLIES {
                own.send(&format!("{line} reply {i} {}", ".".repeat(200)))
                    .await?;
            }
            Ok(())
        }
    }
    let server = Server::builder(Amplify)
        .queue_bytes(4 * 1024)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let count = Arc::new(Count::default());
    let client = Client::<String>::builder()
        .handler(CountRef(count.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    let lines: Vec<String> = (0..LINES).map(|i| format!("line {i}")).collect();
    within("sending", client.send_all(&lines)).await.unwrap();
    let total = LINES * REPLIES;
    // Bulk work: bounded by its progress (replies arriving), not by a
    // total time.
    let replies = || count.0.load(Ordering::Relaxed);
    until_with_progress("every reply", replies, || replies() >= total).await;
    assert!(server.errors().try_recv().is_none());
    within("close", client.close()).await;
    assert!(within("shutdown", server.shutdown(WAIT)).await.finished);
}

/// [`Count`] behind an `Arc`, so the test can read it.
struct CountRef(Arc<Count>);

impl Handler for CountRef {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.handle(line, ctx).await
    }
}
