//! The request across the wire (issue 23, items 0, 1, 2 and 5): requests
//! run concurrently on one connection, deadlines and cancellation travel
//! with them, and overload is an answer. Two chitchat-net peers on
//! loopback, requests both ways; peers that announce fewer features keep
//! the old behaviour.
//!
//! Handlers here wait on gates (a `Notify` or a `Barrier`) that the test
//! opens, never on sleeps. Requests have a timeout of [`NEVER`] unless a
//! test is about timeouts: one that would end in its timeout fails the test
//! at `within` (10 s) instead.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::envelope::ErrorCode;
use chitchat_net::handshake::features;
use chitchat_net::{
    BoxError, Client, Closed, ConnectionHandle, Context, Handler, Message, RequestError, Server,
};
use common::{settled, wait_until, within, NEVER};
use tokio::sync::{mpsc, Barrier, Notify};

/// What each side asks the other.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Answer)]
enum Ask {
    /// Waits at the barrier (all `n` of a round must be in their handlers
    /// at once for any to pass), then answers `n`.
    Meet { n: u64 },
    /// Waits until the gate opens, then answers `n`.
    Gated { n: u64 },
    /// Answers at once with the milliseconds its deadline leaves (0: none).
    Deadline,
    /// Asks the peer `Deadline` on the same connection (with a long
    /// timeout of its own) and answers what the peer said.
    Relay,
    /// Handed to a replier in a spawned task that waits for the request's
    /// cancellation (never answered).
    Spawned { n: u64 },
    /// One-way: recorded in order.
    Note { n: u64 },
    /// Sets a session (in a concurrent request: not kept); answers 1 if
    /// it saw one already.
    Keep,
    /// Panics.
    Boom,
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Answer {
    #[message(tag = 1)]
    Value { n: u64 },
}

fn value(answer: Result<Answer, RequestError>) -> u64 {
    match answer {
        Ok(Answer::Value { n }) => n,
        Err(error) => panic!("the request failed: {error:?}"),
    }
}

/// One side's handler: both sides use it.
struct Peer {
    barrier: Barrier,
    gate: Notify,
    /// Handlers of `Gated` running now, and the most at once.
    in_gated: AtomicU64,
    most_gated: AtomicU64,
    /// Handler calls started, of any request.
    started: AtomicU64,
    /// Handler futures of requests dropped before they returned.
    dropped: AtomicU64,
    /// Spawned work that saw its request cancelled.
    saw_cancel: Arc<AtomicU64>,
    /// Notes, in the order handled, with how many `Gated` were running.
    notes: Mutex<Vec<(u64, u64)>>,
    /// A session is set in `on_open`.
    with_session: bool,
    /// on_close calls, and whether every request future had been dropped
    /// (or had ended) by then.
    closed: mpsc::UnboundedSender<u64>,
}

/// Counts a dropped handler future that did not return.
struct DropGuard<'a>(&'a AtomicU64, bool);

impl Drop for DropGuard<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Peer {
    fn new(round: usize) -> (Peer, mpsc::UnboundedReceiver<u64>) {
        let (closed, rx) = mpsc::unbounded_channel();
        let peer = Peer {
            barrier: Barrier::new(round),
            gate: Notify::new(),
            in_gated: AtomicU64::new(0),
            most_gated: AtomicU64::new(0),
            started: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            saw_cancel: Arc::default(),
            notes: Mutex::new(Vec::new()),
            with_session: false,
            closed,
        };
        (peer, rx)
    }

    /// Lets through every `Gated` handler in now.
    fn open_gate(&self) {
        self.gate.notify_waiters();
    }
}

impl Handler for Peer {
    type Message = Ask;

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if self.with_session {
            ctx.set_session(0u64);
        }
        Ok(())
    }

    async fn handle(&self, ask: Ask, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if let Ask::Note { n } = ask {
            let gated = self.in_gated.load(Ordering::SeqCst);
            self.notes.lock().unwrap().push((n, gated));
            if let Some(session) = ctx.session::<u64>() {
                self.notes.lock().unwrap().push((1000 + *session, 0));
            }
            return Ok(());
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let mut guard = DropGuard(&self.dropped, false);
        let n = match ask {
            Ask::Meet { n } => {
                self.barrier.wait().await;
                n
            }
            Ask::Gated { n } => {
                // Registered before it counts as in: an `open_gate` after
                // the count lets it through.
                let opened = self.gate.notified();
                let now = self.in_gated.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_gated.fetch_max(now, Ordering::SeqCst);
                opened.await;
                self.in_gated.fetch_sub(1, Ordering::SeqCst);
                if let Some(count) = ctx.session::<u64>() {
                    *count += 1;
                }
                n
            }
            Ask::Deadline => ctx.deadline().map_or(0, |deadline| {
                deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis() as u64
            }),
            Ask::Relay => {
                let asked = ctx.handle().request(&Ask::Deadline, NEVER).await?;
                let Answer::Value { n } = asked;
                n
            }
            Ask::Spawned { .. } => {
                // Answered later, from a task that waits for the cancel.
                let replier = ctx.replier();
                let token = ctx.cancellation_token();
                let saw = self.saw_cancel.clone();
                tokio::spawn(async move {
                    replier.cancelled().await;
                    if replier.is_cancelled() && token.is_cancelled() {
                        saw.fetch_add(1, Ordering::SeqCst);
                    }
                });
                guard.1 = true;
                return Ok(());
            }
            Ask::Keep => {
                let had = u64::from(ctx.session::<u64>().is_some());
                ctx.set_session(7u64);
                had
            }
            Ask::Boom => panic!("requested boom"),
            Ask::Note { .. } => unreachable!(),
        };
        guard.1 = true;
        ctx.reply(&Answer::Value { n })?;
        Ok(())
    }

    async fn on_close(&self, _closed: Closed) {
        let _ = self.closed.send(self.dropped.load(Ordering::SeqCst));
    }
}

/// A server and a client of `Ask`, both with request ids and `handler`s,
/// the client's features `client_features`, and the server's handle on the
/// client's connection.
async fn pair_with(
    server: Peer,
    server_options: impl FnOnce(chitchat_net::ServerBuilder<Peer>) -> chitchat_net::ServerBuilder<Peer>,
    client: Peer,
    client_features: u64,
) -> (Server<Peer>, Client<Ask>, ConnectionHandle) {
    let server = server_options(Server::builder(server).request_ids().request_timeout(NEVER))
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Ask>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .announce_features(client_features)
        .handler(client)
        .connect(server.local_addr())
        .await
        .unwrap();
    let to_client = within("the server to see the client", async {
        loop {
            if let Ok(conn) = server.connection(client.local_addr()) {
                break conn;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    (server, client, to_client)
}

// ------------------------------------------------- 0: concurrent requests --

/// 16 requests each way meet at a barrier of 16: they pass only if all 16
/// run at once on the one connection. (Handled one at a time, the first
/// waits at the barrier forever: `within` fails.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_concurrently_on_one_connection_both_ways() {
    let (server, _) = Peer::new(16);
    let (client, _) = Peer::new(16);
    let (server, client, to_client) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    let (up, down) = within("16 requests each way", async {
        tokio::join!(
            futures_util::future::join_all((0..16).map(|n| client.request(&Ask::Meet { n }))),
            futures_util::future::join_all(
                (0..16).map(|n| to_client.request(&Ask::Meet { n: 100 + n }, NEVER))
            ),
        )
    })
    .await;
    let up: Vec<u64> = up.into_iter().map(value).collect();
    let down: Vec<u64> = down.into_iter().map(value).collect();
    assert_eq!(up, (0..16).collect::<Vec<_>>());
    assert_eq!(down, (100..116).collect::<Vec<_>>());
    client.close().await;
    server.cut().await;
}

/// One-way messages are handled in the order sent, while requests before
/// them still wait (they do not wait for the requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_messages_keep_their_order_beside_waiting_requests() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    let gated = async {
        futures_util::future::join_all((0..3).map(|n| client.request(&Ask::Gated { n }))).await
    };
    let notes = async {
        wait_until("3 requests in their handlers", || {
            server.handler().in_gated.load(Ordering::SeqCst) == 3
        })
        .await;
        for n in 0..50 {
            client.send(&Ask::Note { n }).await.unwrap();
        }
        wait_until("50 notes", || {
            server.handler().notes.lock().unwrap().len() == 50
        })
        .await;
        server.handler().open_gate();
    };
    let (answers, ()) = within("requests and notes", async { tokio::join!(gated, notes) }).await;
    assert_eq!(
        answers.into_iter().map(value).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let notes = server.handler().notes.lock().unwrap().clone();
    // In order, and each while the three requests were still waiting.
    assert_eq!(notes, (0..50).map(|n| (n, 3)).collect::<Vec<_>>());
    client.close().await;
    server.cut().await;
}

/// Sends `bound + 1` gated requests: `bound` run in their handlers at
/// once and the last stays out (200 ms without a change, many times what
/// starting it takes) until one ends; each opening of the gate lets the
/// requests waiting go. Every one is answered, in order of its number.
async fn only_the_bound_runs_at_once(server: &Server<Peer>, client: &Client<Ask>, bound: u64) {
    let requests = async {
        futures_util::future::join_all((0..=bound).map(|n| client.request(&Ask::Gated { n }))).await
    };
    let gate = async {
        wait_until("the bound's requests in their handlers", || {
            server.handler().in_gated.load(Ordering::SeqCst) == bound
        })
        .await;
        let started = settled(Duration::from_millis(200), || {
            server.handler().started.load(Ordering::SeqCst)
        })
        .await;
        assert_eq!(started, bound);
        while server.handler().started.load(Ordering::SeqCst) < bound + 1
            || server.handler().in_gated.load(Ordering::SeqCst) > 0
        {
            server.handler().open_gate();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (answers, ()) = within("every request", async { tokio::join!(requests, gate) }).await;
    assert_eq!(
        answers.into_iter().map(value).collect::<Vec<_>>(),
        (0..=bound).collect::<Vec<u64>>()
    );
    assert_eq!(server.handler().most_gated.load(Ordering::SeqCst), bound);
}

/// Past `concurrent_requests` the connection waits: a third request starts
/// only once one of the first two has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_requests_wait_for_a_slot() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(
        server,
        |b| b.concurrent_requests(2),
        client,
        features::SUPPORTED,
    )
    .await;
    only_the_bound_runs_at_once(&server, &client, 2).await;
    client.close().await;
    server.cut().await;
}

/// By default (README: 200, `DEFAULT_CONCURRENT_REQUESTS`) 200 requests
/// run at once on one connection, and the 201st waits for a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_200_requests_run_at_once_and_the_next_waits() {
    assert_eq!(chitchat_net::DEFAULT_CONCURRENT_REQUESTS, 200);
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    only_the_bound_runs_at_once(&server, &client, 200).await;
    client.close().await;
    server.cut().await;
}

/// A request running concurrently sees no session, and one it sets is not
/// kept; a panic in one fails the connection as a panic always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_request_has_no_session_and_its_panic_fails_the_connection() {
    let (server, mut closed) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    let events = server.errors();
    assert_eq!(value(within("keep", client.request(&Ask::Keep)).await), 0);
    assert_eq!(value(within("keep", client.request(&Ask::Keep)).await), 0);
    client.send(&Ask::Note { n: 1 }).await.unwrap();
    wait_until("the note", || {
        !server.handler().notes.lock().unwrap().is_empty()
    })
    .await;
    // The note saw no session: only its own entry.
    assert_eq!(*server.handler().notes.lock().unwrap(), vec![(1, 0)]);
    let boom = within("boom", client.request(&Ask::Boom)).await;
    assert!(
        matches!(
            boom,
            Err(RequestError::ConnectionLost
                | RequestError::Remote {
                    code: ErrorCode::Handler,
                    ..
                })
        ),
        "{boom:?}"
    );
    let event = within("the panic event", common::next_event(&events)).await;
    assert!(
        matches!(&event.error, chitchat_net::Error::HandlerPanic(m) if m.contains("requested boom")),
        "{:?}",
        event.error
    );
    assert!(within("on_close", closed.recv()).await.is_some());
    client.close().await;
    server.cut().await;
}

/// A connection with a session handles its requests in order, one at a
/// time, each with the session (as before issue 23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_session_requests_are_handled_in_order_with_it() {
    let (mut server, _) = Peer::new(1);
    server.with_session = true;
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    let requests = async {
        futures_util::future::join_all((0..3).map(|n| client.request(&Ask::Gated { n }))).await
    };
    let gate = async {
        for round in 1..=3u64 {
            wait_until("the next request in its handler", || {
                server.handler().started.load(Ordering::SeqCst) == round
                    && server.handler().in_gated.load(Ordering::SeqCst) == 1
            })
            .await;
            server.handler().open_gate();
        }
    };
    let (answers, ()) = within("three requests", async { tokio::join!(requests, gate) }).await;
    assert_eq!(
        answers.into_iter().map(value).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(server.handler().most_gated.load(Ordering::SeqCst), 1);
    client.close().await;
    server.cut().await;
}

/// A graceful shutdown waits for the requests running concurrently: they
/// are answered. One still running at the shutdown's deadline is cut,
/// counted in the report, and its handler future dropped before
/// `on_close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_requests_in_flight_and_counts_those_cut() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    let request = client.request(&Ask::Gated { n: 7 });
    let shutdown = async {
        wait_until("the request in its handler", || {
            server.handler().in_gated.load(Ordering::SeqCst) == 1
        })
        .await;
        let (report, ()) = tokio::join!(server.shutdown(common::WAIT), async {
            // The shutdown has begun and waits for the request.
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.handler().open_gate();
        });
        report
    };
    let (answer, report) = within("request and shutdown", async {
        tokio::join!(request, shutdown)
    })
    .await;
    assert_eq!(value(answer), 7);
    assert!(report.finished, "{report:?}");
    assert_eq!(report.unanswered_requests, 0);

    // Now one that is never answered: cut at the deadline.
    let (server, mut closed) = Peer::new(1);
    let (client_peer, _) = Peer::new(1);
    let (server, client2, _) = pair_with(server, |b| b, client_peer, features::SUPPORTED).await;
    let request = client2.request(&Ask::Gated { n: 8 });
    let shutdown = async {
        wait_until("the request in its handler", || {
            server.handler().in_gated.load(Ordering::SeqCst) == 1
        })
        .await;
        server.shutdown(Duration::from_millis(100)).await
    };
    let (answer, report) = within("request and shutdown", async {
        tokio::join!(request, shutdown)
    })
    .await;
    assert!(
        matches!(answer, Err(RequestError::ConnectionLost)),
        "{answer:?}"
    );
    assert!(!report.finished);
    assert_eq!(report.connections_cut, 1);
    assert_eq!(report.unanswered_requests, 1);
    // on_close saw the request's handler future dropped already.
    assert_eq!(within("on_close", closed.recv()).await, Some(1));
    client.close().await;
    client2.close().await;
}

// ---------------------------------------------------------- 1: deadlines --

/// The handler sees the time the caller still waits; a handler that asks
/// its peer passes the rest on (here back on the same connection: both
/// directions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_travel_and_are_passed_on() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, to_client) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    let timeout = Duration::from_secs(8);
    let left = value(within("deadline", client.request_within(&Ask::Deadline, timeout)).await);
    // At most the timeout; at least most of it (5x what the trip takes).
    assert!(left <= 8_000 && left > 3_000, "{left} ms left");
    let left = value(within("deadline", to_client.request(&Ask::Deadline, timeout)).await);
    assert!(left <= 8_000 && left > 3_000, "{left} ms left");
    // The server's handler asks the client with NEVER (60 s): the client's
    // handler sees at most the 8 s of the first request.
    let left = value(within("relay", client.request_within(&Ask::Relay, timeout)).await);
    assert!(left <= 8_000 && left > 3_000, "{left} ms left");
    // A request without a deadline of its own (made outside a handler)
    // carries its timeout.
    let left = value(within("relay", to_client.request(&Ask::Relay, NEVER)).await);
    assert!(left > 8_000 && left <= 60_000, "{left} ms left");
    client.close().await;
    server.cut().await;
}

/// A request waiting for a slot behind a long one whose deadline passes
/// first is not run: counted, and its `DeadlineExceeded` error reply is
/// late at the caller, which timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shorter_than_the_servers_queue_is_not_run() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    // No cancellation: the deadline, not a cancel, keeps it from running.
    let (server, client, _) = pair_with(
        server,
        |b| b.concurrent_requests(1),
        client,
        features::SUPPORTED & !features::CANCELLATION,
    )
    .await;
    let first = client.request(&Ask::Gated { n: 1 });
    let second = async {
        wait_until("the first request in its handler", || {
            server.handler().in_gated.load(Ordering::SeqCst) == 1
        })
        .await;
        let frames = server.stats().frames_in;
        let second = client.request_within(&Ask::Gated { n: 2 }, Duration::from_millis(100));
        tokio::pin!(second);
        // Once the server has read it, its deadline there is at most
        // 100 ms (and a rounding millisecond) away.
        let read = tokio::select! {
            _ = &mut second => panic!("answered before it was read"),
            () = wait_until("the second read", || server.stats().frames_in > frames) => {
                tokio::time::Instant::now()
            }
        };
        let second = second.await;
        // Certainly past its deadline at the server, however late the
        // client's timer fired (a bound on the clock, not on progress).
        tokio::time::sleep_until(read + Duration::from_millis(250)).await;
        server.handler().open_gate();
        second
    };
    let (first, second) = within("both", async { tokio::join!(first, second) }).await;
    assert_eq!(value(first), 1);
    assert!(
        matches!(second, Err(RequestError::Timeout(_))),
        "{second:?}"
    );
    wait_until("the second refused", || {
        server.stats().requests_deadline_exceeded == 1
    })
    .await;
    wait_until("its error reply late at the client", || {
        client.stats().late_replies == 1
    })
    .await;
    assert_eq!(server.handler().started.load(Ordering::SeqCst), 1);
    client.close().await;
    server.cut().await;
}

// ------------------------------------------------------- 2: cancellation --

/// Dropping a request (or its timeout) cancels it at the server: its
/// handler future is dropped, and work it spawned sees the cancellation
/// through its `Replier` and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_request_stops_its_handler_at_the_peer() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, features::SUPPORTED).await;
    // Dropped while its handler waits.
    {
        let request = client.request(&Ask::Gated { n: 1 });
        tokio::pin!(request);
        within("the handler to start", async {
            tokio::select! {
                _ = &mut request => panic!("answered"),
                () = wait_until("in the handler", || server.handler().in_gated.load(Ordering::SeqCst) == 1) => {}
            }
        })
        .await;
    }
    wait_until("the handler future dropped", || {
        server.handler().dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    // Timed out while its spawned work waits.
    let timed_out = within(
        "a timeout",
        client.request_within(&Ask::Spawned { n: 2 }, Duration::from_millis(200)),
    )
    .await;
    assert!(
        matches!(timed_out, Err(RequestError::Timeout(_))),
        "{timed_out:?}"
    );
    wait_until("the spawned work saw the cancel", || {
        server.handler().saw_cancel.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("both counted", || server.stats().requests_cancelled == 2).await;
    assert_eq!(
        server.handler().in_gated.load(Ordering::SeqCst),
        1,
        "the gated one never left its gate: it was dropped"
    );
    client.close().await;
    server.cut().await;
}

/// A request dropped while it waits for a slot (past
/// `concurrent_requests`) is never started: the cancel reaches it before
/// it has a cancellation token of its own (made only once something waits
/// on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_it_waits_for_a_slot_never_starts() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(
        server,
        |b| b.concurrent_requests(1),
        client,
        features::SUPPORTED,
    )
    .await;
    let first = client.request(&Ask::Gated { n: 0 });
    tokio::pin!(first);
    within("the first in its handler", async {
        tokio::select! {
            _ = &mut first => panic!("answered"),
            () = wait_until("in the handler", || server.handler().in_gated.load(Ordering::SeqCst) == 1) => {}
        }
    })
    .await;
    // The second is read and waits for the slot; dropped, its cancel
    // reaches the server.
    let frames_before = server.stats().frames_in;
    {
        let second = client.request(&Ask::Gated { n: 1 });
        tokio::pin!(second);
        within("the second sent", async {
            tokio::select! {
                _ = &mut second => panic!("answered"),
                () = wait_until("the server to read it", || server.stats().frames_in > frames_before) => {}
            }
        })
        .await;
    }
    wait_until("the cancel counted", || {
        server.stats().requests_cancelled == 1
    })
    .await;
    // The first ends; the second must not start. 200 ms without a change:
    // many times what starting it takes.
    while server.handler().in_gated.load(Ordering::SeqCst) > 0 {
        server.handler().open_gate();
        tokio::task::yield_now().await;
    }
    assert_eq!(value(within("the first answer", &mut first).await), 0);
    let started = settled(Duration::from_millis(200), || {
        server.handler().started.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(started, 1, "the cancelled request was started");
    // The connection goes on: the slot is free (`value` fails on an error).
    value(within("a third request", client.request(&Ask::Deadline)).await);
    client.close().await;
    server.cut().await;
}

/// A client that does not announce cancellation: a dropped request keeps
/// running at the server, and its answer is a late reply, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cancellation_a_dropped_request_runs_on() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(server, |b| b, client, 0).await;
    {
        let request = client.request(&Ask::Gated { n: 1 });
        tokio::pin!(request);
        within("the handler to start", async {
            tokio::select! {
                _ = &mut request => panic!("answered"),
                () = wait_until("in the handler", || server.handler().in_gated.load(Ordering::SeqCst) == 1) => {}
            }
        })
        .await;
    }
    // Still in its handler: nothing told the server.
    let left = settled(Duration::from_millis(200), || {
        server.handler().in_gated.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(left, 1);
    server.handler().open_gate();
    wait_until("its answer late at the client", || {
        client.stats().late_replies == 1
    })
    .await;
    assert_eq!(server.stats().requests_cancelled, 0);
    assert_eq!(server.handler().dropped.load(Ordering::SeqCst), 0);
    // And no deadline travelled either.
    assert_eq!(
        value(within("deadline", client.request(&Ask::Deadline)).await),
        0
    );
    client.close().await;
    server.cut().await;
}

/// A server that announces no features: the client sends plain requests
/// (no deadline) and no cancels, and gets no `Overloaded` refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_the_features_gets_todays_requests() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, to_client) = pair_with(
        server,
        |b| b.announce_features(0).overload_bounds(1, 1),
        client,
        features::SUPPORTED,
    )
    .await;
    assert_eq!(
        value(within("deadline", client.request(&Ask::Deadline)).await),
        0
    );
    // And the client's handler sees none from the server either.
    assert_eq!(
        value(within("deadline", to_client.request(&Ask::Deadline, NEVER)).await),
        0
    );
    // Past the overload bound: the second waits instead of being refused.
    let both = async {
        tokio::join!(
            client.request(&Ask::Gated { n: 1 }),
            client.request(&Ask::Gated { n: 2 })
        )
    };
    let before = server.handler().started.load(Ordering::SeqCst);
    let gate = async {
        // One at a time: the second starts only once the first has left.
        for round in 1..=2u64 {
            wait_until("the next request in its handler", || {
                server.handler().started.load(Ordering::SeqCst) == before + round
                    && server.handler().in_gated.load(Ordering::SeqCst) == 1
            })
            .await;
            server.handler().open_gate();
        }
    };
    let ((a, b), ()) = within("both", async { tokio::join!(both, gate) }).await;
    assert_eq!((value(a), value(b)), (1, 2));
    assert_eq!(server.stats().requests_overloaded, 0);
    client.close().await;
    server.cut().await;
}

// ----------------------------------------------------------- 5: overload --

/// Past the overload bound per connection a request is refused at once
/// with `Overloaded`; past the bound in all, a request on another
/// connection is too. Counted in stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_per_connection_and_in_all() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(
        server,
        |b| b.overload_bounds(1, 2),
        client,
        features::SUPPORTED,
    )
    .await;
    let first = client.request(&Ask::Gated { n: 1 });
    let refused = async {
        wait_until("one in its handler", || {
            server.handler().in_gated.load(Ordering::SeqCst) == 1
        })
        .await;
        let refused = client.request(&Ask::Gated { n: 2 }).await;
        // A second connection takes one more (2 in all), then is refused.
        let other = Client::<Ask>::builder()
            .request_ids()
            .request_timeout(NEVER)
            .connect(server.local_addr())
            .await
            .unwrap();
        let second = other.request(&Ask::Gated { n: 3 });
        let in_all = async {
            wait_until("two in their handlers", || {
                server.handler().in_gated.load(Ordering::SeqCst) == 2
            })
            .await;
            other.request(&Ask::Gated { n: 4 }).await
        };
        let (mut second, in_all) = (Box::pin(second), in_all);
        let in_all = tokio::select! {
            refused = in_all => refused,
            _ = &mut second => panic!("answered while the gate is shut"),
        };
        server.handler().open_gate();
        (refused, in_all, second.await, other)
    };
    let (first, (refused, in_all, second, other)) =
        within("requests", async { tokio::join!(first, refused) }).await;
    assert_eq!(value(first), 1);
    assert_eq!(value(second), 3);
    for refusal in [refused, in_all] {
        match refusal {
            Err(RequestError::Remote {
                code: ErrorCode::Overloaded,
                ..
            }) => {}
            other => panic!("expected Overloaded, got {other:?}"),
        }
    }
    assert_eq!(server.stats().requests_overloaded, 2);
    assert_eq!(server.handler().started.load(Ordering::SeqCst), 2);
    other.close().await;
    client.close().await;
    server.cut().await;
}

/// A client that does not announce `OVERLOAD` waits past the bound instead
/// of being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_overload_a_request_past_the_bound_waits() {
    let (server, _) = Peer::new(1);
    let (client, _) = Peer::new(1);
    let (server, client, _) = pair_with(
        server,
        |b| b.overload_bounds(1, 10),
        client,
        features::SUPPORTED & !features::OVERLOAD,
    )
    .await;
    let both = async {
        tokio::join!(
            client.request(&Ask::Gated { n: 1 }),
            client.request(&Ask::Gated { n: 2 })
        )
    };
    let gate = async {
        // One at a time: the second starts only once the first has left.
        for round in 1..=2u64 {
            wait_until("the next request in its handler", || {
                server.handler().started.load(Ordering::SeqCst) == round
                    && server.handler().in_gated.load(Ordering::SeqCst) == 1
            })
            .await;
            server.handler().open_gate();
        }
    };
    let ((a, b), ()) = within("both", async { tokio::join!(both, gate) }).await;
    assert_eq!((value(a), value(b)), (1, 2));
    assert_eq!(server.stats().requests_overloaded, 0);
    client.close().await;
    server.cut().await;
}

// ----------------------------------- 0: requests that answer at once --

/// Asks which task ran the handler call.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Ran)]
enum Which {
    /// Answers at once.
    #[message(tag = 1)]
    Now,
    /// Answers after one yield to the runtime.
    #[message(tag = 2)]
    AfterAWait,
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Ran {
    /// The id of the tokio task the handler ran in (`on_open`'s for
    /// `on_open`).
    #[message(tag = 1)]
    In { task: String },
}

/// Records the task `on_open` ran in (the connection's task).
#[derive(Default)]
struct Tasks {
    on_open: Mutex<Option<String>>,
}

impl Handler for Tasks {
    type Message = Which;

    async fn on_open(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        *self.on_open.lock().unwrap() = Some(tokio::task::id().to_string());
        Ok(())
    }

    async fn handle(&self, which: Which, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if which == Which::AfterAWait {
            tokio::task::yield_now().await;
        }
        let task = tokio::task::id().to_string();
        ctx.reply(&Ran::In { task })?;
        Ok(())
    }
}

/// README "What order a handler can rely on": the read side polls a
/// request's handler first, so one that answers at once runs in the
/// connection's task (no task of its own); one that waits goes on as a task
/// of its own, and is answered all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_answers_at_once_runs_in_the_connections_task() {
    let server = Server::builder(Tasks::default())
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Which>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .connect(server.local_addr())
        .await
        .unwrap();
    let ask = |which| {
        let client = &client;
        async move {
            match within("an answer", client.request(&which)).await {
                Ok(Ran::In { task }) => task,
                Err(error) => panic!("the request failed: {error:?}"),
            }
        }
    };
    let mut now = Vec::new();
    for _ in 0..5 {
        now.push(ask(Which::Now).await);
    }
    let later = [ask(Which::AfterAWait).await, ask(Which::AfterAWait).await];
    let conn_task = server.handler().on_open.lock().unwrap().clone();
    let conn_task = conn_task.expect("on_open ran");
    assert!(
        now.iter().all(|task| *task == conn_task),
        "requests answered at once ran in tasks {now:?}, not the connection's ({conn_task})"
    );
    assert!(
        later.iter().all(|task| *task != conn_task) && later[0] != later[1],
        "requests that waited ran in tasks {later:?} (the connection's: {conn_task})"
    );
    client.close().await;
    server.cut().await;
}

/// An ordered request (no ids): which task asked and its number, with a
/// payload whose length varies with both.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Message)]
#[message(codec = "bincode", reply = InLine)]
struct InLine {
    task: u64,
    seq: u64,
    payload: Vec<u8>,
}

/// In ordered mode (no request ids) the n-th reply answers the n-th
/// request on the wire: many tasks on a multi-thread runtime send requests
/// at once on one connection to a server that echoes, and each must get
/// its own request back (a request put in line in another order than its
/// frame went out gets another task's reply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_requests_from_many_tasks_each_get_their_own_reply() {
    const TASKS: u64 = 8;
    const EACH: u64 = 250;
    let server = Server::builder(chitchat_net::handler_fn(
        |msg: InLine, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&msg)?;
            Ok(())
        },
    ))
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let client = Arc::new(
        Client::<InLine>::builder()
            .ordered_replies()
            .request_timeout(NEVER)
            .connect(server.local_addr())
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                for seq in 0..EACH {
                    let len = ((task * 131 + seq * 17) % 300) as usize;
                    let ask = InLine {
                        task,
                        seq,
                        payload: vec![(task ^ seq) as u8; len],
                    };
                    let reply: InLine = client.request(&ask).await.unwrap();
                    assert_eq!(reply, ask, "task {task} got another request's reply");
                }
            })
        })
        .collect();
    // 2000 round trips: bounded by progress (frames read back), not time.
    let replies = || client.stats().frames_in;
    common::with_progress("every reply", replies, async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    client.close().await;
    server.cut().await;
}
