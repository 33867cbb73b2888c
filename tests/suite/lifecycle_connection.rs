//! How a connection ends while a handler call is pending (issue 21, defects
//! 1 to 3): an abort ends both sides before `on_close`, `on_close` always gets
//! the session, and a handler may await a request on its own connection.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::{handler_fn, BoxError, Client, Closed, Context, Handler, RequestError, Server};
use common::within;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};

/// Holds a `tokio::sync::Mutex` guard in a handler call that never ends;
/// `on_close` needs the same lock, and its session.
#[derive(Default)]
struct HoldsTheLock {
    lock: Mutex<()>,
    entered: Notify,
    closes: AtomicUsize,
    sessions_seen: AtomicUsize,
    /// Set by the test once it has seen the socket closed: `on_close` waits
    /// for it, so a socket that stays open while `on_close` runs hangs.
    socket_closed: Notify,
    wait_for_socket_close: bool,
}

impl Handler for HoldsTheLock {
    type Message = String;

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.set_session(String::from("session of this connection"));
        Ok(())
    }

    async fn handle(&self, _line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let _guard = self.lock.lock().await;
        self.entered.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn on_close(&self, mut closed: Closed) {
        if self.wait_for_socket_close {
            self.socket_closed.notified().await;
        }
        let _guard = self.lock.lock().await;
        if closed.take_session::<String>().is_some() {
            self.sessions_seen.fetch_add(1, Ordering::SeqCst);
        }
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Shares a handler with the test.
struct Shared<H>(Arc<H>);

impl<H: Handler> Handler for Shared<H> {
    type Message = H::Message;

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.on_open(ctx).await
    }

    async fn handle(&self, msg: H::Message, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.handle(msg, ctx).await
    }

    async fn on_close(&self, closed: Closed) {
        self.0.on_close(closed).await
    }
}

async fn server_holding_the_lock(
    wait_for_socket_close: bool,
) -> (Server<Shared<HoldsTheLock>>, Arc<HoldsTheLock>) {
    let handler = Arc::new(HoldsTheLock {
        wait_for_socket_close,
        ..Default::default()
    });
    let server = Server::listen("127.0.0.1:0", Shared(handler.clone()))
        .await
        .unwrap();
    (server, handler)
}

/// A client that sends one line, once the server's handler holds the lock.
async fn client_in_the_handler(
    server: &Server<Shared<HoldsTheLock>>,
    handler: &HoldsTheLock,
) -> Client<String> {
    let entered = handler.entered.notified();
    let client = Client::<String>::builder()
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"hold it".to_string()).await.unwrap();
    within("the handler holds the lock", entered).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_returns_though_on_close_needs_what_the_pending_handler_holds() {
    let (server, handler) = server_holding_the_lock(false).await;
    let _client = client_in_the_handler(&server, &handler).await;
    // Progress bound: a cut ends at once; before the fix it never returned.
    within("cut() with a handler pending", server.cut()).await;
    assert_eq!(handler.closes.load(Ordering::SeqCst), 1);
    assert_eq!(handler.sessions_seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_its_deadline_returns_though_a_handler_is_pending() {
    let (server, handler) = server_holding_the_lock(false).await;
    let _client = client_in_the_handler(&server, &handler).await;
    let report = within(
        "shutdown() with a handler pending",
        server.shutdown(Duration::from_millis(200)),
    )
    .await;
    assert!(!report.finished, "a pending handler had to be cut");
    assert_eq!(report.connections_cut, 1);
    assert_eq!(handler.closes.load(Ordering::SeqCst), 1);
    assert_eq!(handler.sessions_seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_socket_is_closed_before_on_close_runs() {
    let (server, handler) = server_holding_the_lock(true).await;
    let client = client_in_the_handler(&server, &handler).await;
    let cut = tokio::spawn({
        let server = Arc::new(server);
        async move { server.cut().await }
    });
    // The client sees its connection end while the server's `on_close`
    // still waits for this very sign.
    within("the client sees the cut", client.closed()).await;
    handler.socket_closed.notify_one();
    within("cut() returns", cut).await.unwrap();
    assert_eq!(handler.closes.load(Ordering::SeqCst), 1);
    assert_eq!(handler.sessions_seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_server_gives_on_close_its_session() {
    let (server, handler) = server_holding_the_lock(false).await;
    let client = client_in_the_handler(&server, &handler).await;
    drop(server);
    within("the client sees the drop", client.closed()).await;
    common::wait_until("on_close ran", || {
        handler.closes.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(handler.sessions_seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_gives_its_on_close_the_session_too() {
    // The client's own handler holds the lock while the client is dropped.
    let server = Server::listen(
        "127.0.0.1:0",
        handler_fn(
            |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
                ctx.send(&line)?;
                Ok(())
            },
        ),
    )
    .await
    .unwrap();
    let handler = Arc::new(HoldsTheLock::default());
    let entered = handler.entered.notified();
    let client = Client::<String>::builder()
        .handler(Shared(handler.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"echo me".to_string()).await.unwrap();
    within("the client's handler holds the lock", entered).await;
    drop(client);
    common::wait_until("the client's on_close ran", || {
        handler.closes.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(handler.sessions_seen.load(Ordering::SeqCst), 1);
    server.cut().await;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, chitchat_net::Message)]
#[message(codec = "bincode", reply = Talk)]
enum Talk {
    /// Asks the receiver to ask back, from inside its handler.
    AskMeBack {
        n: u64,
    },
    /// A question; answered with `Answer`.
    Question {
        n: u64,
    },
    Answer {
        n: u64,
    },
    /// Sent while a handler waits: must still be handled, in order, after it.
    Note {
        n: u64,
    },
}

/// Answers questions; on `AskMeBack`, asks a question on its own connection
/// and awaits the answer inside the handler, then reports the answer.
#[derive(Default)]
struct AsksBack {
    answers: std::sync::Mutex<Vec<Result<u64, String>>>,
    notes: std::sync::Mutex<Vec<u64>>,
    done: Notify,
}

impl Handler for AsksBack {
    type Message = Talk;

    async fn handle(&self, msg: Talk, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match msg {
            Talk::AskMeBack { n } => {
                let handle = ctx.handle();
                let answer: Result<Talk, RequestError> = handle
                    .request(&Talk::Question { n }, Duration::from_secs(20))
                    .await;
                let answer = match answer {
                    Ok(Talk::Answer { n }) => Ok(n),
                    other => Err(format!("{other:?}")),
                };
                self.answers.lock().unwrap().push(answer);
                self.done.notify_one();
            }
            Talk::Question { n } => ctx.reply(&Talk::Answer { n: n + 1 })?,
            Talk::Note { n } => {
                self.notes.lock().unwrap().push(n);
                self.done.notify_one();
            }
            Talk::Answer { .. } => {}
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_may_await_a_request_on_its_own_connection_both_ways() {
    let server_side = Arc::new(AsksBack::default());
    let server = Server::builder(Shared(server_side.clone()))
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client_side = Arc::new(AsksBack::default());
    let client = Client::<Talk>::builder()
        .request_ids()
        .handler(Shared(client_side.clone()))
        .connect(server.local_addr())
        .await
        .unwrap();
    // The server's handler asks the client, and notes sent meanwhile wait
    // their turn behind it; then the other way round.
    for (n, side) in [(1u64, &server_side), (100, &client_side)] {
        let done = side.done.notified();
        if n == 1 {
            client.send(&Talk::AskMeBack { n }).await.unwrap();
            for k in 0..50 {
                client.send(&Talk::Note { n: k }).await.unwrap();
            }
        } else {
            let conn = server.connection(server.remote_addrs()[0].clone()).unwrap();
            conn.send(&Talk::AskMeBack { n }).await.unwrap();
            for k in 0..50 {
                conn.send(&Talk::Note { n: k }).await.unwrap();
            }
        }
        // Progress bound: the answer comes at once once the reader keeps
        // reading (before the fix it came only after the 20 s timeout).
        within("the answer to a request made inside a handler", done).await;
        common::wait_until("the notes were handled", || {
            side.notes.lock().unwrap().len() == 50
        })
        .await;
        assert_eq!(*side.answers.lock().unwrap(), vec![Ok(n + 1)]);
        assert_eq!(*side.notes.lock().unwrap(), (0..50).collect::<Vec<_>>());
    }
    common::assert_no_event("client", &client.errors());
    common::assert_no_event("server", &server.errors());
    client.close().await;
    server.cut().await;
}

/// Holds its first call until released; records every line after it.
#[derive(Default)]
struct HoldsTheFirst {
    entered: Notify,
    release: Notify,
    seen: std::sync::Mutex<Vec<String>>,
}

impl Handler for HoldsTheFirst {
    type Message = String;

    async fn handle(&self, line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let first = self.seen.lock().unwrap().is_empty();
        self.seen.lock().unwrap().push(line);
        if first {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_read_ahead_while_a_handler_waits_is_bounded_and_kept_in_order() {
    // Small frames: the bound in frames (1,024) comes first.
    read_ahead_stops_at(None, 100, 5_000, 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_read_ahead_is_bounded_in_bytes_too() {
    // 10 KiB frames against a 64 KiB queue bound: the read ahead takes
    // frames while it holds less than 64 KiB (6 frames), then one more.
    read_ahead_stops_at(Some(64 * 1024), 10 * 1024, 200, 7).await;
}

/// A server whose handler holds the first line; the client sends up to
/// `max_lines` lines of `line_len` bytes. The server reads ahead exactly
/// `ahead` frames (and never more) while the call waits, then every line is
/// handled, in order.
async fn read_ahead_stops_at(
    queue_bytes: Option<usize>,
    line_len: usize,
    max_lines: u64,
    ahead: u64,
) {
    let handler = Arc::new(HoldsTheFirst::default());
    let mut builder = Server::builder(Shared(handler.clone()));
    if let Some(bytes) = queue_bytes {
        builder = builder.queue_bytes(bytes);
    }
    let server = builder.listen("127.0.0.1:0").await.unwrap();
    let entered = handler.entered.notified();
    let client = Client::<String>::builder()
        .queue_bytes(64 * 1024)
        .connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"first".to_string()).await.unwrap();
    within("the first call waits", entered).await;
    // Send more than the read ahead may take: `max_lines`, or as many as
    // the socket buffers and the client's queue hold (the client stops
    // when it has found no room for 500 ms: a bound on progress, not on
    // the test's outcome).
    let mut sent = 1u64;
    let line = "x".repeat(line_len);
    let mut full_since = None;
    while sent < max_lines {
        match client.try_send(&format!("{sent} {line}")) {
            Ok(()) => {
                sent += 1;
                full_since = None;
            }
            Err(chitchat_net::TrySendError::Full { .. }) => {
                let since = *full_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(other) => panic!("{other}"),
        }
        // The read ahead never takes more than its bound while the first
        // call waits.
        assert!(server.stats().frames_in <= 1 + ahead);
    }
    assert!(sent > 1 + ahead, "only {sent} lines were sent");
    // The first frame and `ahead` more are decoded, then reading waits.
    common::wait_until("the read ahead is full", || {
        server.stats().frames_in == 1 + ahead
    })
    .await;
    assert_eq!(
        handler.seen.lock().unwrap().len(),
        1,
        "the first call still waits"
    );
    handler.release.notify_one();
    common::wait_until("every line was handled", || {
        handler.seen.lock().unwrap().len() as u64 == sent
    })
    .await;
    let seen = handler.seen.lock().unwrap().clone();
    for (k, line) in seen.iter().enumerate().skip(1) {
        assert!(
            line.starts_with(&format!("{k} ")),
            "line {k} was {line:.20}"
        );
    }
    client.close().await;
    server.cut().await;
}
