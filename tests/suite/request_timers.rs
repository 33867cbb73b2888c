//! A connection's requests by id time out with one timer for the whole
//! connection (issue 25, item 3): it sleeps until the earliest deadline it
//! knows of. These tests check that every request still fails at its own
//! deadline, not later, whatever the order in which the deadlines come,
//! that requests answered at once and requests that time out interleave
//! on one connection, each resolving once, and that the timer serves the
//! connection again after it has gone idle. Two chitchat-net peers on
//! loopback.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::{BoxError, Client, Context, Handler, RequestError, Server};
use common::{wait_until, within, NEVER};
use futures_util::future::join_all;
use tokio::time::Instant;

/// Answers `now:N` at once with `N`; never answers `hang:N` (counted in
/// `hanging`).
#[derive(Default)]
struct NowOrNever {
    hanging: AtomicU64,
}

impl Handler for NowOrNever {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match line.split_once(':') {
            Some(("now", n)) => ctx.reply(&n.to_string())?,
            Some(("hang", _)) => {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            _ => return Err("unknown line".into()),
        }
        Ok(())
    }
}

async fn pair() -> (Server<NowOrNever>, Arc<Client<String>>) {
    let server = Server::builder(NowOrNever::default())
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .connect(server.local_addr())
        .await
        .unwrap();
    (server, Arc::new(client))
}

/// The connection's timer sleeps until the deadline of a request that
/// waits 60 s; a request with a 200 ms deadline made after it must wake
/// it, and fail at 200 ms (`within` gives it 10 s: far less than the 60 s
/// the timer slept until). The first request still waits, and resolves
/// once, when the client closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_deadline_wakes_the_connections_timer() {
    let (server, client) = pair().await;
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.request_within(&"hang:1".to_string(), NEVER).await }
    });
    wait_until("the first request in its handler", || {
        server.handler().hanging.load(Ordering::SeqCst) == 1
    })
    .await;
    let short = Duration::from_millis(200);
    let started = Instant::now();
    let second = within(
        "the short request's timeout",
        client.request_within(&"hang:2".to_string(), short),
    )
    .await;
    assert!(
        matches!(second, Err(RequestError::Timeout(t)) if t == short),
        "{second:?}"
    );
    // Not before its deadline (a bound on the clock, not on progress).
    assert!(started.elapsed() >= short, "{:?}", started.elapsed());
    // The connection goes on: a request answered at once.
    let now = within(
        "a request answered at once",
        client.request(&"now:3".to_string()),
    )
    .await;
    assert_eq!(now.unwrap(), "3");
    assert!(!first.is_finished(), "the 60 s request ended early");
    client.close().await;
    let first = within("the first request at the close", first)
        .await
        .unwrap();
    assert!(first.is_err(), "{first:?}");
    assert_eq!(client.stats().late_replies, 0);
    server.cut().await;
}

/// Requests answered at once and requests that are never answered, with
/// deadlines in no particular order (60 ms to 460 ms), all at once on one
/// connection: each resolves once, the answered ones with their answer,
/// the others with a timeout no earlier than their own deadline. Twice:
/// the second round after the timer has gone idle (nothing left to wait
/// for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deadlines_on_one_connection_each_fire_once() {
    let (server, client) = pair().await;
    for round in 0..2u64 {
        let requests = (0..100u64).map(|i| {
            let client = client.clone();
            async move {
                let n = round * 100 + i;
                let started = Instant::now();
                if i % 2 == 0 {
                    let reply = client.request(&format!("now:{n}")).await;
                    (i, None, reply, started.elapsed())
                } else {
                    // 60 ms to 460 ms, shuffled: i * 37 mod 101 is a
                    // permutation of the odd i's spread.
                    let timeout = Duration::from_millis(60 + (i * 37 % 101) * 4);
                    let reply = client.request_within(&format!("hang:{n}"), timeout).await;
                    (i, Some(timeout), reply, started.elapsed())
                }
            }
        });
        let results = within("every request of the round", join_all(requests)).await;
        assert_eq!(results.len(), 100);
        for (i, timeout, reply, elapsed) in results {
            match timeout {
                None => assert_eq!(reply.unwrap(), (round * 100 + i).to_string()),
                Some(timeout) => {
                    assert!(
                        matches!(reply, Err(RequestError::Timeout(t)) if t == timeout),
                        "request {i}: {reply:?}"
                    );
                    // A bound on the clock: never before its deadline.
                    assert!(elapsed >= timeout, "request {i}: {elapsed:?} < {timeout:?}");
                }
            }
        }
        wait_until("every hanging request in its handler", || {
            server.handler().hanging.load(Ordering::SeqCst) == 50 * (round + 1)
        })
        .await;
    }
    assert_eq!(client.stats().late_replies, 0);
    client.close().await;
    server.cut().await;
}
