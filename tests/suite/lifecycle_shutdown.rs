//! Issue 21, defects 7, 9 and 10: graceful shutdown waits for outstanding
//! `Replier`s; every public async method runs in a spawned task; a reply
//! given up on at the last moment is a late reply. Two chitchat-net peers
//! (a `Server` and a `Client` of this crate) over loopback.
//!
//! Self-contained: no `mod common`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::heartbeat::{
    KeepRegistered, Monitor, PeerEvents, Registration, Responder, TextResponder,
};
use chitchat_net::{
    BoxError, Client, ConnectionHandle, Context, Error, ErrorEvents, Handler, Replier, Server,
};
use tokio::sync::mpsc;

/// Upper bound of every wait that is not itself under test: about progress
/// on loopback, far (well over 5x) above what each step needs on a busy
/// 2-CPU machine.
const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test after [`WAIT`].
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ------------------------------------------------ defect 9: spawnable --

/// Spawns every public async method of the client, its connection handle
/// and its event stream: this file does not compile if one of their
/// futures cannot go to `tokio::spawn` (`Client::send_all` could not: "implementation of `Copy` is not general enough").
fn spawn_client_methods(
    client: Arc<Client<String, String>>,
    handle: ConnectionHandle,
    events: ErrorEvents,
) -> Vec<tokio::task::JoinHandle<()>> {
    let line = || String::from("spawned");
    let mut tasks = Vec::new();
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        c.send(&line()).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let lines = vec![line(), line()];
        c.send_all(&lines).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let lines = [line(), line()];
        c.send_all(lines.iter()).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        c.send_bytes(b"spawned").await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let _: String = c.request(&line()).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let _: String = c.request_within(&line(), WAIT).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        assert!(c.recv().await.is_some());
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        h.send(&line()).await.unwrap();
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        let lines = vec![line(), line()];
        h.send_all(&lines).await.unwrap();
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        h.send_bytes(b"spawned").await.unwrap();
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        let _: String = h.request(&line(), WAIT).await.unwrap();
    }));
    // Not awaited by the test (they wait for the end).
    drop(tokio::spawn(async move {
        let _ = handle.closed().await;
    }));
    drop(tokio::spawn(async move {
        let _ = events.recv().await;
    }));
    tasks
}

/// Spawns the client's ends (connect, close, closed); compiled, not run.
#[allow(dead_code)]
fn spawn_client_ends(client: Arc<Client<String, String>>, addr: chitchat_net::Addr) {
    let a = addr.clone();
    drop(tokio::spawn(async move {
        let _ = Client::<String>::connect(a).await;
    }));
    let a = addr.clone();
    drop(tokio::spawn(async move {
        let _ = Client::<String>::builder()
            .receive::<String>(4)
            .connect(a)
            .await;
    }));
    drop(tokio::spawn(async move {
        let _ = Client::<String>::connect_unix("/nonexistent").await;
    }));
    drop(tokio::spawn(async move {
        let _ = Client::<String>::builder()
            .connect_unix("/nonexistent")
            .await;
    }));
    drop(tokio::spawn(async move {
        let (io, _) = tokio::io::duplex(64);
        let _ = Client::<String>::builder().connect_io(io, addr).await;
    }));
    let c = client.clone();
    drop(tokio::spawn(async move { c.close().await }));
    drop(tokio::spawn(async move { client.closed().await }));
}

/// Spawns every public async method of the server and of a `Replier`;
/// compiled, not run.
#[allow(dead_code)]
fn spawn_server_methods(server: Arc<Server<Deferred>>, replier: Replier) {
    drop(tokio::spawn(async move {
        let _ = Server::listen("127.0.0.1:0", ()).await;
    }));
    drop(tokio::spawn(async move {
        let _ = Server::builder(()).listen("127.0.0.1:0").await;
    }));
    drop(tokio::spawn(async move {
        let _ = Server::builder(()).listen_unix("/nonexistent/x").await;
    }));
    let s = server.clone();
    drop(tokio::spawn(async move {
        let _ = s.send_to(s.local_addr(), &String::new()).await;
    }));
    let s = server.clone();
    drop(tokio::spawn(async move {
        let _ = s.shutdown(WAIT).await;
    }));
    drop(tokio::spawn(async move { server.cut().await }));
    let r = replier.clone();
    drop(tokio::spawn(async move {
        let _ = r.reply(&String::new()).await;
    }));
    drop(tokio::spawn(async move {
        let _ = replier.try_reply(&String::new());
    }));
}

/// Spawns every public async function and method of the heartbeat module;
/// compiled, not run.
#[allow(dead_code)]
fn spawn_heartbeat_methods(
    monitor: Monitor,
    mut events: PeerEvents,
    keeper: KeepRegistered,
    registration: Registration,
) {
    let m = monitor.clone();
    drop(tokio::spawn(async move {
        let _ = m.listen_registrations("127.0.0.1:0").await;
    }));
    drop(tokio::spawn(async move { monitor.stop().await }));
    drop(tokio::spawn(async move {
        let _ = events.recv().await;
    }));
    drop(tokio::spawn(async move { keeper.stop().await }));
    drop(tokio::spawn(async move {
        let node: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
        let _ = chitchat_net::heartbeat::register("127.0.0.1:1", "node", node).await;
    }));
    drop(tokio::spawn(async move {
        let _ = chitchat_net::heartbeat::register_go("127.0.0.1:1").await;
    }));
    let _ = (registration, Responder::new(), TextResponder::new());
}

/// Answers every frame with itself: requests with their reply, one-way
/// messages with a message (to the client's receive buffer).
struct Echo;

impl Handler for Echo {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.reply(&line)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_async_method_runs_in_a_spawned_task() {
    let server = Server::builder(Echo)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .request_ids()
        .receive::<String>(64)
        .connect(server.local_addr())
        .await
        .unwrap();
    let client = Arc::new(client);
    let tasks = spawn_client_methods(client.clone(), client.handle(), client.errors());
    for task in tasks {
        within("a spawned call", task).await.unwrap();
    }
    client.close().await;
    server.cut().await;
}

// ---------------------------------- defect 7: shutdown and Repliers --

/// Hands the `Replier` of every request to the test, which answers it (or
/// not) when it likes.
struct Deferred {
    repliers: mpsc::UnboundedSender<Replier>,
}

impl Handler for Deferred {
    type Message = String;

    async fn handle(&self, _line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.repliers.send(ctx.replier())?;
        Ok(())
    }
}

/// A server whose handler hands each request's `Replier` to the test, and
/// a client with request ids, connected to it.
async fn deferred_pair() -> (
    Server<Deferred>,
    Arc<Client<String>>,
    mpsc::UnboundedReceiver<Replier>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::builder(Deferred { repliers: tx })
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .request_ids()
        .request_timeout(WAIT)
        .connect(server.local_addr())
        .await
        .unwrap();
    (server, Arc::new(client), rx)
}

/// Sends a request from a task of its own; returns the task and the
/// server's `Replier` for it, once the handler has taken it.
async fn request_in_flight(
    client: &Arc<Client<String>>,
    repliers: &mut mpsc::UnboundedReceiver<Replier>,
) -> (
    tokio::task::JoinHandle<Result<String, chitchat_net::RequestError>>,
    Replier,
) {
    let c = client.clone();
    let request = tokio::spawn(async move { c.request(&"question".into()).await });
    let replier = within("the handler to take a replier", repliers.recv())
        .await
        .expect("the handler ended");
    (request, replier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_waits_for_a_replier_and_sends_its_answer() {
    let (server, client, mut repliers) = deferred_pair().await;
    let (request, replier) = request_in_flight(&client, &mut repliers).await;
    let on_server = server.connection(client.local_addr()).unwrap();

    let shutdown = server.shutdown(WAIT);
    tokio::pin!(shutdown);
    // The first poll begins the shutdown: the connection is closing.
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    assert!(on_server.is_closed());

    // The request arrived before the shutdown: its answer still goes out.
    let answered = replier.reply(&"answer".to_string()).await;
    assert!(answered.is_ok(), "the replier was refused: {answered:?}");
    let (report, reply) = tokio::join!(within("the shutdown", shutdown), async {
        within("the reply", request).await.unwrap()
    });
    assert_eq!(reply.unwrap(), "answer");
    assert!(report.finished, "{report:?}");
    assert_eq!(report.unanswered_requests, 0, "{report:?}");
    assert_eq!(report.connections_cut, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_an_unanswered_replier_at_its_deadline_and_says_so() {
    let (server, client, mut repliers) = deferred_pair().await;
    let (request, replier) = request_in_flight(&client, &mut repliers).await;

    // Short: this deadline is what the test waits for.
    let deadline = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let report = within("the shutdown", server.shutdown(deadline)).await;
    assert!(
        started.elapsed() >= deadline,
        "shutdown returned after {:?}, before its deadline, with a request unanswered",
        started.elapsed()
    );
    assert!(!report.finished, "{report:?}");
    assert_eq!(report.unanswered_requests, 1, "{report:?}");
    assert_eq!(report.connections_cut, 1, "{report:?}");
    let lost = within("the request to fail", request).await.unwrap();
    assert!(
        matches!(lost, Err(chitchat_net::RequestError::ConnectionLost)),
        "{lost:?}"
    );
    // Cut: too late to answer now.
    let late = replier.reply(&"answer".to_string()).await;
    assert!(
        matches!(late, Err(chitchat_net::SendError::Closed)),
        "{late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replier_dropped_unanswered_does_not_hold_the_shutdown() {
    let (server, client, mut repliers) = deferred_pair().await;
    let (request, replier) = request_in_flight(&client, &mut repliers).await;
    let clone = replier.clone();

    // Far past the bound of `within`: the shutdown must end because the
    // replier is dropped, not because of its deadline.
    let shutdown = server.shutdown(WAIT * 10);
    tokio::pin!(shutdown);
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    drop(replier);
    // One clone left: still owed.
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    drop(clone);
    let report = within("the shutdown", shutdown).await;
    assert!(report.finished, "{report:?}");
    assert_eq!(report.unanswered_requests, 0, "{report:?}");
    // The replier dropped unanswered answered with an error reply: the
    // request fails with it, not with the connection.
    let lost = within("the request to fail", request).await.unwrap();
    assert!(
        matches!(
            lost,
            Err(chitchat_net::RequestError::Remote {
                code: chitchat_net::envelope::ErrorCode::Unanswered,
                ..
            })
        ),
        "{lost:?}"
    );
}

/// A request read after the shutdown began (its connection closing) is
/// not owed an answer: its replier's `reply` is refused (`Closed`), and
/// dropping that replier sends nothing either (it once sent an
/// `Unanswered` error reply, written while the reply itself was refused:
/// a frame nobody accepted, which `lifecycle_model` caught as a counter
/// mismatch). The request ends with the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replier_made_after_the_shutdown_began_is_refused_and_sends_nothing_when_dropped() {
    let (server, client, mut repliers) = deferred_pair().await;
    // A request owed an answer keeps the closing connection open.
    let (first, owed) = request_in_flight(&client, &mut repliers).await;
    let on_server = server.connection(client.local_addr()).unwrap();
    let shutdown = server.shutdown(WAIT);
    tokio::pin!(shutdown);
    assert!(futures_util::poll!(&mut shutdown).is_pending());
    assert!(on_server.is_closed());

    // A second request, sent on the connection as it is: read while the
    // connection closes.
    let handle = client.handle();
    let second = tokio::spawn(async move {
        handle
            .request::<String>(&"late question".to_string(), WAIT)
            .await
    });
    let late = within("the handler to take the second replier", repliers.recv())
        .await
        .expect("the handler ended");
    let refused = late.reply(&"late answer".to_string()).await;
    assert!(
        matches!(refused, Err(chitchat_net::SendError::Closed)),
        "{refused:?}"
    );
    drop(late);

    // The owed answer still goes out, and the shutdown finishes.
    let answered = owed.reply(&"answer".to_string()).await;
    assert!(answered.is_ok(), "{answered:?}");
    let report = within("the shutdown", shutdown).await;
    assert!(report.finished, "{report:?}");
    assert_eq!(
        within("the first reply", first).await.unwrap().unwrap(),
        "answer"
    );
    let second = within("the second request to end", second).await.unwrap();
    assert!(
        matches!(second, Err(chitchat_net::RequestError::ConnectionLost)),
        "the second request ended with {second:?}"
    );
}

// ------------------------------- defect 10b: concurrent batch senders --

/// Counts, per sender, the numbers it received in order.
#[derive(Default)]
struct InOrder {
    next: std::sync::Mutex<std::collections::HashMap<u32, u32>>,
    out_of_order: std::sync::atomic::AtomicU64,
    done: tokio::sync::Notify,
}

impl Handler for InOrder {
    type Message = String;

    async fn handle(&self, line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let (sender, n) = line.split_once(' ').ok_or("no space")?;
        let (sender, n): (u32, u32) = (sender.parse()?, n.parse()?);
        let mut next = self.next.lock().unwrap();
        let expected = next.entry(sender).or_default();
        if *expected != n {
            self.out_of_order
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        *expected = n + 1;
        if next.len() == SENDERS as usize && next.values().all(|&v| v == PER_SENDER) {
            self.done.notify_one();
        }
        Ok(())
    }
}

const SENDERS: u32 = 8;
const PER_SENDER: u32 = 3000;

/// The batch senders share the queue's room (see the unit test
/// `concurrent_batches_share_the_room_instead_of_each_taking_it` in
/// `src/outbox.rs`, which checks the bound itself): with a queue much
/// smaller than a batch, concurrent `send_all` callers all go on to the end,
/// in order, none left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_send_all_callers_share_a_small_queue_and_all_finish() {
    let server = Server::listen("127.0.0.1:0", InOrder::default())
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .queue_bytes(1024)
        .connect(server.local_addr())
        .await
        .unwrap();
    let client = Arc::new(client);
    let done = server.handler().done.notified();
    tokio::pin!(done);
    done.as_mut().enable();
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let c = client.clone();
        senders.push(tokio::spawn(async move {
            let lines: Vec<String> = (0..PER_SENDER).map(|n| format!("{sender} {n}")).collect();
            for chunk in lines.chunks(500) {
                c.send_all(chunk).await.unwrap();
            }
        }));
    }
    for sender in senders {
        within("a batch sender", sender).await.unwrap();
    }
    within("every line to arrive", done).await;
    let handler = server.handler();
    assert_eq!(
        handler
            .out_of_order
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    client.close().await;
    server.cut().await;
}

// --------------------------- defect 10a: a reply as its request ends --

/// Answers each request, then sends a one-way `marker` right behind the
/// reply.
struct ReplyThenMark;

impl Handler for ReplyThenMark {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.reply(&line)?;
        ctx.send(&"marker".to_string())?;
        Ok(())
    }
}

/// The reply reached the request (it was handed over) just as the request
/// was given up, before it took the reply: its timer fired, or its caller
/// dropped it. The reply was consumed silently; it is a late reply (an
/// event and `Stats::late_replies`), as when it arrives a little later.
/// Deterministic: the marker behind the reply on the wire shows that the
/// reply has been handed over, and the request is then dropped without
/// being polled again.
#[tokio::test]
async fn a_reply_handed_over_as_its_request_is_given_up_is_a_late_reply() {
    let server = Server::builder(ReplyThenMark)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .request_ids()
        .receive::<String>(8)
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    let question = "question".to_string();
    let mut request = Box::pin(client.request(&question));
    // Sent, waiting for its reply.
    assert!(futures_util::poll!(&mut request).is_pending());
    let marker = within("the marker", client.recv()).await;
    assert_eq!(marker.as_deref(), Some("marker"));
    drop(request);
    // Counted and reported as the request is dropped.
    assert_eq!(
        client.stats().late_replies,
        1,
        "the reply was lost uncounted"
    );
    let event = events.try_recv().expect("no late reply event");
    assert!(
        matches!(event.error, Error::LateReply { .. }),
        "{event} ({:?})",
        event.error
    );
    client.close().await;
    server.cut().await;
}

/// Replies to each request after exactly the client's request timeout.
struct ReplyAtTimeout;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(20);

impl Handler for ReplyAtTimeout {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let replier = ctx.replier();
        tokio::spawn(async move {
            tokio::time::sleep(REQUEST_TIMEOUT).await;
            let _ = replier.reply(&line).await;
        });
        Ok(())
    }
}

/// Requests answered right at their timeout, many at once on two threads:
/// each one either gets its reply or times out, and then its reply is
/// counted late: none is lost uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_that_timed_out_has_its_reply_counted_late() {
    const N: u64 = 400;
    let server = Server::builder(ReplyAtTimeout)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .request_ids()
        .request_timeout(REQUEST_TIMEOUT)
        .connect(server.local_addr())
        .await
        .unwrap();
    let client = Arc::new(client);
    let mut requests = Vec::new();
    for i in 0..N {
        let c = client.clone();
        requests.push(tokio::spawn(async move { c.request(&i.to_string()).await }));
    }
    let (mut answered, mut timed_out) = (0, 0);
    for request in requests {
        match within("a request", request).await.unwrap() {
            Ok(_) => answered += 1,
            Err(chitchat_net::RequestError::Timeout(_)) => timed_out += 1,
            Err(other) => panic!("{other}"),
        }
    }
    // Every reply comes (the server answers all): the late ones are
    // counted as they arrive.
    let deadline = tokio::time::Instant::now() + WAIT;
    while answered + client.stats().late_replies < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{answered} answered, {timed_out} timed out, {} late",
            client.stats().late_replies
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.stats().late_replies, timed_out);
    println!("{answered} answered, {timed_out} timed out and counted late");
    client.close().await;
    server.cut().await;
}
