//! A reconnecting client across the ends of its connections (issue 21):
//! backoff after connections that end at once, requests made while down or
//! while `on_close` runs, `on_open`/`on_close` pairs when `on_connect`
//! fails, and what a sender can know about delivery. Two chitchat-net peers
//! on loopback; a server "restarts" by binding the port its first instance
//! got from the system.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::{
    handler_fn, BoxError, Client, CloseReason, Closed, ConnectionHandle, Context, Error, Handler,
    Reconnect, RequestError, Server, WhileDown,
};
use common::{next_event, wait_until, within, WAIT};
use tokio::sync::{mpsc, Notify};

/// A server on `port` (0: any) that records every line and replies to it
/// with the line and `!` (with request ids: the reply answers the request).
async fn replier(port: u16, seen: Arc<Mutex<Vec<String>>>) -> Server<impl Handler> {
    let reply = handler_fn(
        move |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            seen.lock().unwrap().push(line.clone());
            ctx.reply(&format!("{line}!"))?;
            Ok(())
        },
    );
    Server::builder(reply)
        .request_ids()
        .listen(("127.0.0.1", port))
        .await
        .unwrap()
}

/// A server on `port` that counts the lines it reads.
async fn counter(port: u16, count: Arc<AtomicU64>) -> Server<impl Handler> {
    let tally = handler_fn(
        move |_line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
    );
    Server::listen(("127.0.0.1", port), tally).await.unwrap()
}

fn port_of<H: Handler>(server: &Server<H>) -> u16 {
    server.local_addr().tcp().unwrap().port()
}

/// Skips events until one matches `want`, within [`WAIT`] each.
async fn skip_until(events: &chitchat_net::ErrorEvents, want: impl Fn(&Error) -> bool) -> Error {
    loop {
        let event = next_event(events).await;
        if want(&event.error) {
            return event.error;
        }
    }
}

fn fast_policy() -> Reconnect {
    Reconnect::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
}

/// Defect 4: a server at `max_connections` accepts and closes at once. The
/// client used to count each such connection as a success, start its
/// backoff over and redial without end; now a connection that ends before
/// it was healthy is a failed try, so `max_tries` applies.
#[tokio::test]
async fn connections_that_end_at_once_are_failed_tries() {
    let server = Server::builder(common::Counter::default())
        .max_connections(1)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let holder = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    wait_until("the holder is served", || server.connection_count() == 1).await;
    let client = Client::<String>::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(100))
                .max_delay(Duration::from_secs(10))
                .max_tries(3),
        )
        .connect(server.local_addr())
        .await
        .unwrap();
    // Three tries after the first connection: delays of at most 100, 200
    // and 400 ms. WAIT (10 s) is more than ten times that.
    assert_eq!(
        within("giving up", client.closed()).await,
        CloseReason::Failed
    );
    let total = client.stats().connections_total;
    assert!(total <= 4, "{total} connections made");
    holder.close().await;
    server.cut().await;
}

/// Defect 4, the other side: a connection that was healthy (it lived for
/// `healthy_after`) starts the count of tries over.
#[tokio::test]
async fn a_healthy_connection_starts_the_tries_over() {
    let count = Arc::new(AtomicU64::new(0));
    let mut server = counter(0, count.clone()).await;
    let port = port_of(&server);
    let client = Client::<String>::builder()
        .reconnect(
            fast_policy()
                .max_tries(2)
                .healthy_after(Duration::from_millis(50)),
        )
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    // Four drops in a row, each after a healthy connection: never two
    // failed tries in a row, so the client never gives up.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.shutdown(WAIT).await;
        drop(server);
        server = counter(port, count.clone()).await;
        skip_until(&events, |e| matches!(e, Error::Reconnected { .. })).await;
    }
    assert!(!client.is_closed());
    client.close().await;
    server.cut().await;
}

/// Defect 5: a request made on the handle of a client that is down used to
/// be reported `ConnectionLost`, yet its frame went out after the
/// reconnect, and its reply answered a different request (ids started at 0
/// on every connection). Now it fails at once and is never sent, and ids
/// never repeat within a client.
#[tokio::test]
async fn a_request_while_down_is_never_sent_and_answers_no_other() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = replier(0, seen.clone()).await;
    let port = port_of(&server);
    let client = Client::<String>::builder()
        .request_ids()
        .reconnect(fast_policy())
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    let first: String = within("the first request", client.request(&"first".to_string()))
        .await
        .unwrap();
    assert_eq!(first, "first!");
    server.cut().await;
    drop(server);
    skip_until(&events, |e| matches!(e, Error::Disconnected { .. })).await;
    let down = client.handle();
    let held = "held".to_string();
    let mut held = Box::pin(down.request(&held, WAIT));
    let early = futures_util::poll!(&mut held);
    let server = replier(port, seen.clone()).await;
    let after: String = within(
        "a request after the restart",
        client.request(&"after".to_string()),
    )
    .await
    .unwrap();
    assert_eq!(after, "after!", "answered by another request's reply");
    let held = match early {
        std::task::Poll::Ready(held) => held,
        std::task::Poll::Pending => within("the held request", held).await,
    };
    // Refused at once (the handle of a client that is down has no
    // connection to send it on), and never sent: everything sent before
    // `after` has been read by now.
    assert!(matches!(held, Err(RequestError::Closed)), "{held:?}");
    assert!(
        !seen.lock().unwrap().contains(&"held".to_string()),
        "a request reported failed was sent"
    );
    client.close().await;
    server.cut().await;
}

/// A client handler whose `on_close` says it runs, then waits to be let go.
struct SlowClose {
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

impl Handler for SlowClose {
    type Message = String;

    async fn handle(&self, _line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn on_close(&self, _closed: Closed) {
        let _ = self.entered.send(());
        // Bounded: a test that never lets go fails on its own wait first.
        let _ = tokio::time::timeout(WAIT * 2, self.release.notified()).await;
    }
}

/// Defect 6: a request made just after a drop, while the old connection's
/// `on_close` still runs, used to fail at once; it waits for the reconnect,
/// as documented.
#[tokio::test]
async fn a_request_while_on_close_runs_waits_for_the_reconnect() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let server = replier(0, seen.clone()).await;
    let port = port_of(&server);
    let (entered, mut entering) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let client = Client::<String>::builder()
        .handler(SlowClose {
            entered,
            release: release.clone(),
        })
        .request_ids()
        .reconnect(fast_policy())
        .connect(server.local_addr())
        .await
        .unwrap();
    server.cut().await;
    drop(server);
    within("on_close", entering.recv()).await.unwrap();
    let server = replier(port, seen.clone()).await;
    let during = "during".to_string();
    let mut request = Box::pin(client.request(&during));
    let early = futures_util::poll!(&mut request);
    assert!(early.is_pending(), "{early:?}");
    release.notify_one();
    let reply = within("the request", request).await;
    assert_eq!(reply.unwrap(), "during!");
    release.notify_one();
    client.close().await;
    server.cut().await;
}

/// Counts `on_open` and `on_close` calls.
#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    closed: AtomicU64,
}

/// A handler counting into shared [`Counts`].
struct Pairs(Arc<Counts>);

impl Handler for Pairs {
    type Message = String;

    async fn on_open(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.opened.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(&self, _line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn on_close(&self, _closed: Closed) {
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Defect 8: when a reconnect's `on_connect` hook failed, the connection's
/// `on_open` had run but its `on_close` never did (4 opened, 1 closed).
#[tokio::test]
async fn every_on_open_has_its_on_close_when_on_connect_fails() {
    let count = Arc::new(AtomicU64::new(0));
    let server = counter(0, count.clone()).await;
    let port = port_of(&server);
    let pairs = Arc::new(Counts::default());
    let hooks = Arc::new(AtomicU64::new(0));
    let counted = hooks.clone();
    let client = Client::<String>::builder()
        .handler(Pairs(pairs.clone()))
        .reconnect(fast_policy())
        .on_connect(move |conn: ConnectionHandle| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                conn.send(&format!("hello {n}")).await?;
                // The connection runs (its on_open too) while the hook does.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if n == 1 || n == 2 {
                    return Err("refused by the hook".into());
                }
                Ok(())
            }
        })
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    server.cut().await;
    drop(server);
    let server = counter(port, count).await;
    skip_until(&events, |e| matches!(e, Error::Reconnected { .. })).await;
    assert_eq!(hooks.load(Ordering::SeqCst), 4);
    client.close().await;
    let (opened, closed) = (
        pairs.opened.load(Ordering::SeqCst),
        pairs.closed.load(Ordering::SeqCst),
    );
    assert_eq!((opened, closed), (4, 4));
    server.cut().await;
}

/// Telemetry through three server restarts (graceful: the server reads
/// what was written before it stops), then a close during an outage:
/// every sample accepted is delivered or counted as dropped, and
/// `frames_out` counts only what was written.
#[tokio::test]
async fn telemetry_through_restarts_is_delivered_or_counted() {
    let received = Arc::new(AtomicU64::new(0));
    let mut server = counter(0, received.clone()).await;
    let port = port_of(&server);
    let client = Arc::new(
        Client::<String>::builder()
            .reconnect(fast_policy().while_down(WhileDown::Keep))
            .connect(server.local_addr())
            .await
            .unwrap(),
    );
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(Notify::new());
    let sender = {
        let (client, sent, stop) = (client.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            for n in 0u64.. {
                tokio::select! {
                    () = &mut stopped => break,
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
                match client.send(&format!("sample {n}")).await {
                    Ok(()) => sent.fetch_add(1, Ordering::SeqCst),
                    Err(_) => break,
                };
            }
        })
    };
    // Each step waits for progress: samples sent (or read) past a mark.
    let sent_past = |mark: u64| {
        let sent = sent.clone();
        async move { wait_until("samples sent", || sent.load(Ordering::SeqCst) >= mark).await }
    };
    for _ in 0..3 {
        let mark = received.load(Ordering::SeqCst) + 20;
        wait_until("samples read", || received.load(Ordering::SeqCst) >= mark).await;
        within("shutdown", server.shutdown(WAIT)).await;
        drop(server);
        sent_past(sent.load(Ordering::SeqCst) + 10).await;
        server = counter(port, received.clone()).await;
    }
    let mark = received.load(Ordering::SeqCst) + 20;
    wait_until("samples read", || received.load(Ordering::SeqCst) >= mark).await;
    within("shutdown", server.shutdown(WAIT)).await;
    drop(server);
    sent_past(sent.load(Ordering::SeqCst) + 20).await;
    stop.notify_one();
    within("the sender", sender).await.unwrap();
    within("close", client.close()).await;
    let stats = client.stats();
    let sent = sent.load(Ordering::SeqCst);
    let received = received.load(Ordering::SeqCst);
    assert!(
        stats.kept_frames_dropped_at_end >= 20,
        "{stats:?}, {sent} sent"
    );
    assert_eq!(
        received
            + stats.frames_lost_with_connection
            + stats.kept_frames_dropped_at_end
            + stats.dropped_while_down,
        sent,
        "{stats:?}, {received} read"
    );
    assert_eq!(stats.frames_out, received, "{stats:?}");
}

/// `close_within` on a client that is down waits for the reconnect and
/// sends what it kept: nothing is dropped.
#[tokio::test]
async fn close_within_sends_what_was_kept_once_reconnected() {
    let received = Arc::new(AtomicU64::new(0));
    let server = counter(0, received.clone()).await;
    let port = port_of(&server);
    let client = Client::<String>::builder()
        .reconnect(fast_policy())
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    within("shutdown", server.shutdown(WAIT)).await;
    drop(server);
    skip_until(&events, |e| matches!(e, Error::Disconnected { .. })).await;
    for n in 0..10 {
        client.send(&format!("kept {n}")).await.unwrap();
    }
    // `join!` polls the close first: it starts while the client is down.
    let (report, server) = within("close_within", async {
        tokio::join!(client.close_within(WAIT), counter(port, received.clone()))
    })
    .await;
    assert_eq!(report.dropped, 0, "{report:?}");
    assert!(report.in_time, "{report:?}");
    assert_eq!(report.reason, CloseReason::ByUs);
    wait_until("the kept lines", || received.load(Ordering::SeqCst) == 10).await;
    assert!(client.send(&"late".to_string()).await.is_err());
    let stats = client.stats();
    assert_eq!(stats.kept_frames_dropped_at_end, 0, "{stats:?}");
    assert_eq!(stats.frames_out, 10, "{stats:?}");
    server.cut().await;
}

/// Past its deadline `close_within` ends the client and says how many
/// frames it dropped; `stats()` counts them too.
#[tokio::test]
async fn close_within_past_its_deadline_counts_what_it_dropped() {
    let received = Arc::new(AtomicU64::new(0));
    let server = counter(0, received.clone()).await;
    let client = Client::<String>::builder()
        .reconnect(fast_policy())
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    within("shutdown", server.shutdown(WAIT)).await;
    drop(server);
    skip_until(&events, |e| matches!(e, Error::Disconnected { .. })).await;
    for n in 0..10 {
        client.send(&format!("kept {n}")).await.unwrap();
    }
    let report = within(
        "close_within",
        client.close_within(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(report.dropped, 10, "{report:?}");
    assert!(!report.in_time, "{report:?}");
    assert_eq!(client.stats().kept_frames_dropped_at_end, 10);
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

/// A server handler that holds its first frame until let go, so that the
/// server stops reading; it counts every line.
struct Gate {
    held: std::sync::atomic::AtomicBool,
    release: Arc<Notify>,
    lines: Arc<AtomicU64>,
}

impl Handler for Gate {
    type Message = String;

    async fn handle(&self, _line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if !self.held.swap(true, Ordering::SeqCst) {
            // Bounded: the test lets go within its own waits.
            let _ = tokio::time::timeout(WAIT * 2, self.release.notified()).await;
        }
        self.lines.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A connection that fails with frames queued (the server stopped reading,
/// the write side stalled): the frames not written are counted as lost
/// with the connection, and `frames_out` counts only those written. The
/// server reads everything written once let go, so read + lost = sent.
#[tokio::test]
async fn frames_queued_when_a_connection_fails_are_counted_lost() {
    let lines = Arc::new(AtomicU64::new(0));
    let release = Arc::new(Notify::new());
    let server = Server::builder(Gate {
        held: false.into(),
        release: release.clone(),
        lines: lines.clone(),
    })
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let client = Client::<String>::builder()
        .write_stall_timeout(Duration::from_millis(300))
        .connect(server.local_addr())
        .await
        .unwrap();
    // 1000-byte lines in batches of 100 until the connection fails: the
    // kernel's buffers (some MB on loopback), then the client's queue
    // fill, then the write side stalls for 300 ms.
    let batch: Vec<String> = (0..100).map(|_| "x".repeat(999)).collect();
    let mut sent = 0u64;
    within("the stall", async {
        while client.send_all(&batch).await.is_ok() {
            sent += 100;
        }
    })
    .await;
    // The failing batch: what it queued counts too.
    let stats = client.stats();
    within("the client's end", client.closed()).await;
    release.notify_one();
    wait_until("the server read all", || server.connection_count() == 0).await;
    let stats_after = client.stats();
    let queued_of_last = stats_after.frames_out + stats_after.frames_lost_with_connection - sent;
    assert!(queued_of_last < 100, "{stats:?}");
    let sent = sent + queued_of_last;
    let read = lines.load(Ordering::SeqCst);
    assert!(
        stats_after.frames_lost_with_connection > 0,
        "{stats_after:?}"
    );
    assert_eq!(stats_after.frames_out, read, "{stats_after:?}");
    assert_eq!(read + stats_after.frames_lost_with_connection, sent);
    server.cut().await;
}

/// Lifecycle events are events, not errors: a peer's normal end of stream
/// and a reconnecting client's disconnect and reconnect are reported, and
/// `stats().errors` does not count them.
#[tokio::test]
async fn lifecycle_events_are_not_errors() {
    let server = counter(0, Arc::default()).await;
    let plain = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    let reconnecting = Client::<String>::builder()
        .reconnect(fast_policy())
        .connect(server.local_addr())
        .await
        .unwrap();
    wait_until("both served", || server.connection_count() == 2).await;
    server.close_remote(plain.local_addr()).unwrap();
    let event = next_event(&plain.errors()).await;
    assert!(matches!(event.error, Error::ClosedByPeer), "{event}");
    assert!(!event.is_error());
    assert_eq!(plain.closed().await, CloseReason::ByPeer);
    assert_eq!(plain.stats().errors, 0);

    let events = reconnecting.errors();
    server.close_remote(reconnecting.local_addr()).unwrap();
    let down = skip_until(&events, |e| !matches!(e, Error::Io(_))).await;
    assert!(matches!(down, Error::Disconnected { .. }), "{down}");
    assert!(down.is_lifecycle());
    let up = next_event(&events).await;
    assert!(matches!(up.error, Error::Reconnected { .. }), "{up}");
    assert!(!up.is_error());
    assert_eq!(reconnecting.stats().errors, 0);
    reconnecting.close().await;
    server.cut().await;
}
