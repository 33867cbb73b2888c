//! Frames that other tasks queue in a burst leave in one write: the write
//! side, woken by the first of them, lets the tasks ready then run before it
//! takes (see `src/conn/writer.rs`). Here the burst is the replies of
//! request handlers that wait on one gate and all wake when it opens; the
//! server's end of the connection counts its writes.
//!
//! Every wait is bounded (`common::WAIT`).

use crate::common;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use chitchat_net::{Addr, BoxError, Client, Context, Handler, Message, Server};
use common::{wait_until, within};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{mpsc, Notify};

/// Longer than any wait of this test (a request that hangs fails at
/// `within` instead).
const NEVER: Duration = Duration::from_secs(60);

/// A request that waits at the gate, then is answered.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Passed)]
enum Burst {
    #[message(tag = 1)]
    Wait { n: u64 },
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Passed {
    #[message(tag = 1)]
    Through { n: u64 },
}

/// Answers each request once the gate opens.
struct Gated {
    gate: Arc<Notify>,
    waiting: AtomicU64,
}

impl Handler for Gated {
    type Message = Burst;

    async fn handle(&self, burst: Burst, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let Burst::Wait { n } = burst;
        let opened = self.gate.notified();
        tokio::pin!(opened);
        // Registered before it counts as waiting: an open after the count
        // lets it through.
        opened.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        opened.await;
        ctx.reply(&Passed::Through { n })?;
        Ok(())
    }
}

/// A stream that counts the writes made on it.
struct Counted {
    io: DuplexStream,
    writes: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Eight requests wait at one gate, on one worker thread (where tokio runs
/// a task just woken before the others ready: each reply would wake the
/// connection task and go out alone). The gate opens from a task on that
/// worker: the eight replies leave in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn replies_queued_in_a_burst_by_request_tasks_leave_in_one_write() {
    const REQUESTS: u64 = 8;
    let gate = Arc::new(Notify::new());
    let writes = Arc::new(AtomicU64::new(0));
    let (accept, mut accepted) = mpsc::unbounded_channel();
    let incoming = futures_util::stream::poll_fn(move |cx| accepted.poll_recv(cx));
    let server = Server::builder(Gated {
        gate: gate.clone(),
        waiting: AtomicU64::new(0),
    })
    .request_ids()
    .serve(Addr::named("server"), incoming)
    .unwrap();
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let server_end = Counted {
        io: server_end,
        writes: writes.clone(),
    };
    let sent: io::Result<(Counted, Addr)> = Ok((server_end, Addr::named("client")));
    accept.send(sent).expect("the server takes connections");
    let client = Arc::new(
        Client::<Burst>::builder()
            .request_ids()
            .request_timeout(NEVER)
            .connect_io(client_end, Addr::named("server"))
            .await
            .unwrap(),
    );
    let asks: Vec<_> = (0..REQUESTS)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.request(&Burst::Wait { n }).await })
        })
        .collect();
    wait_until("every request at the gate", || {
        server.handler().waiting.load(Ordering::SeqCst) == REQUESTS
    })
    .await;
    let before = writes.load(Ordering::SeqCst);
    // Opened from a task on the worker, as a timer or another task would.
    tokio::spawn(async move { gate.notify_waiters() });
    for (n, ask) in asks.into_iter().enumerate() {
        let reply = within("a reply", ask).await.expect("the request task");
        assert_eq!(reply.expect("a reply"), Passed::Through { n: n as u64 });
    }
    let burst = writes.load(Ordering::SeqCst) - before;
    assert_eq!(
        burst, 1,
        "the {REQUESTS} replies of one burst took {burst} writes"
    );
    client.close().await;
    server.cut().await;
}
