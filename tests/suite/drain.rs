//! Drain and failover (issue 23, items 3 and 4): a server that shuts down
//! gracefully tells its clients first; a reconnecting client given several
//! addresses moves to the next at once when its server drains, and fails
//! over when one does not answer. Two chitchat-net peers on loopback, with
//! requests from the client and messages from the server (both ways).

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::{
    envelope::ErrorCode, BoxError, Client, CloseReason, Closed, Context, Error, ErrorEvents,
    Handler, Reconnect, RequestError, Server,
};
use common::{dead_addr, hour_backoff, wait_until, within, WAIT};
use tokio::sync::watch;

/// A server handler: counts each request, sends the client a note (a
/// one-way message, server to client), and answers `{name}:{line}` from
/// another task once `gate` is open (so that requests stay in flight while
/// the test wants them to).
struct Held {
    name: &'static str,
    gate: watch::Receiver<bool>,
    seen: Arc<AtomicU64>,
}

impl Handler for Held {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.seen.fetch_add(1, Ordering::SeqCst);
        ctx.send(&format!("note {line}"))?;
        let replier = ctx.replier();
        let mut gate = self.gate.clone();
        let name = self.name;
        tokio::spawn(async move {
            let _ = gate.wait_for(|open| *open).await;
            let _ = replier.reply(&format!("{name}:{line}")).await;
        });
        Ok(())
    }
}

/// A server named `name`, with the handshake and request ids (so drain is
/// agreed with a client of this build), answering once `gate` is open.
async fn server(
    name: &'static str,
    gate: watch::Receiver<bool>,
    seen: Arc<AtomicU64>,
    drain: bool,
) -> Arc<Server<Held>> {
    let builder = Server::builder(Held { name, gate, seen })
        .handshake::<String>()
        .request_ids();
    let builder = if drain { builder } else { builder.no_drain() };
    Arc::new(builder.listen("127.0.0.1:0").await.unwrap())
}

/// A server that answers at once.
async fn open_server(name: &'static str) -> (Arc<Server<Held>>, Arc<AtomicU64>) {
    let (gate_tx, gate) = watch::channel(true);
    // The gate stays open: its sender may go.
    drop(gate_tx);
    let seen = Arc::new(AtomicU64::new(0));
    (server(name, gate, seen.clone(), true).await, seen)
}

/// A client handler: counts the server's notes, and its connections'
/// opens and closes.
#[derive(Default)]
struct Notes {
    notes: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
}

/// The client's handler, on shared [`Notes`].
struct Noting(Arc<Notes>);

impl Handler for Noting {
    type Message = String;

    async fn on_open(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.opened.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn handle(&self, _note: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.0.notes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn on_close(&self, _closed: Closed) {
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

fn fast_backoff() -> Reconnect {
    Reconnect::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
}

/// Every event buffered now.
fn drain_events(events: &ErrorEvents) -> Vec<Error> {
    std::iter::from_fn(|| events.try_recv().map(|event| event.error)).collect()
}

/// Waits (within [`WAIT`] in all) for an event that matches `want`,
/// keeping the others.
async fn event_where(events: &ErrorEvents, seen: &mut Vec<Error>, want: impl Fn(&Error) -> bool) {
    within("the event", async {
        loop {
            let event = common::next_event(events).await;
            let found = want(&event.error);
            seen.push(event.error);
            if found {
                return;
            }
        }
    })
    .await;
}

fn assert_no_error(side: &str, events: &[Error]) {
    let errors: Vec<_> = events.iter().filter(|e| !e.is_lifecycle()).collect();
    assert!(errors.is_empty(), "{side} reported errors: {errors:?}");
}

/// Requests made in a loop by `tasks` tasks until `stop` is set or one
/// fails: every outcome, in order, per task.
fn request_loops(
    client: &Arc<Client<String>>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Result<String, RequestError>>>> {
    (0..tasks)
        .map(|t| {
            let client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let outcome = client.request(&format!("t{t}-{i}")).await;
                    let failed = outcome.is_err();
                    outcomes.push(outcome);
                    if failed {
                        break;
                    }
                    i += 1;
                }
                outcomes
            })
        })
        .collect()
}

/// A plain client: the requests in flight when the server drains are all
/// answered; a new one fails at once with `RequestError::Draining`
/// (nothing sent); the shutdown finishes in time, nothing cut.
#[tokio::test]
async fn a_drain_answers_every_request_in_flight() {
    let (gate_tx, gate) = watch::channel(false);
    let seen = Arc::new(AtomicU64::new(0));
    let server = server("a", gate, seen.clone(), true).await;
    let notes = Arc::new(Notes::default());
    let client = Arc::new(
        Client::<String>::builder()
            .handler(Noting(notes.clone()))
            .handshake()
            .request_ids()
            .connect(server.local_addr())
            .await
            .unwrap(),
    );
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.request(&format!("r{i}")).await })
        })
        .collect();
    wait_until("the server has every request", || {
        seen.load(Ordering::SeqCst) == 20
    })
    .await;
    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown(WAIT).await })
    };
    let events = client.errors();
    let mut seen_events = Vec::new();
    event_where(&events, &mut seen_events, |e| matches!(e, Error::Draining)).await;
    // The server's other tasks' sends are refused from the drain on.
    let sent = server
        .send_to(client.local_addr(), &"more".to_string())
        .await;
    assert!(matches!(sent, Err(Error::Closed)), "{sent:?}");
    let refused = within("a request after the drain", client.request(&"late".into())).await;
    assert!(
        matches!(refused, Err(RequestError::Draining)),
        "{refused:?}"
    );
    gate_tx.send(true).unwrap();
    for (i, request) in in_flight.into_iter().enumerate() {
        let reply = within("a reply", request).await.unwrap();
        assert_eq!(reply.unwrap(), format!("a:r{i}"));
    }
    let report = within("the shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
    assert_eq!((report.connections_cut, report.unanswered_requests), (0, 0));
    assert_eq!(
        within("the end", client.closed()).await,
        CloseReason::ByPeer
    );
    // Both ways: the server's notes came too.
    assert_eq!(notes.notes.load(Ordering::SeqCst), 20);
    assert_eq!(notes.opened.load(Ordering::SeqCst), 1);
    assert_eq!(notes.closed.load(Ordering::SeqCst), 1);
    seen_events.extend(drain_events(&events));
    assert_no_error("the client", &seen_events);
    assert_no_error("the server", &drain_events(&server.errors()));
}

/// Requests made without pause while the server shuts down: each is
/// answered, or refused with `Draining` before it was sent. None is lost:
/// the server ran exactly the requests answered. (Without drain the
/// requests that crossed the shutdown were run and their replies lost:
/// `ConnectionLost`.)
#[tokio::test]
async fn requests_that_cross_the_drain_are_answered_none_lost() {
    let (server, seen) = open_server("a").await;
    let client = Arc::new(
        Client::<String>::builder()
            .handshake()
            .request_ids()
            .connect(server.local_addr())
            .await
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loops(&client, 4, &stop);
    wait_until("requests flow", || seen.load(Ordering::SeqCst) >= 200).await;
    let report = within("the shutdown", server.shutdown(WAIT)).await;
    assert!(report.finished, "{report:?}");
    let mut answered = 0;
    for task in loops {
        for outcome in within("a request loop", task).await.unwrap() {
            match outcome {
                Ok(reply) => {
                    assert!(reply.starts_with("a:t"), "{reply}");
                    answered += 1;
                }
                Err(RequestError::Draining) => {}
                Err(other) => panic!("a request failed with {other:?}"),
            }
        }
    }
    assert_eq!(answered, seen.load(Ordering::SeqCst));
}

/// A reconnecting client on two servers: the first drains, and requests
/// go on on the second at once, without an error and without the backoff
/// (an hour). The requests in flight on the first are answered there.
/// Every `on_open` gets its `on_close`.
#[tokio::test]
async fn a_reconnecting_client_moves_to_the_second_server_at_once() {
    let (a, _) = open_server("a").await;
    let (b, _) = open_server("b").await;
    let notes = Arc::new(Notes::default());
    let client = Arc::new(
        Client::<String>::builder()
            .handler(Noting(notes.clone()))
            .handshake()
            .request_ids()
            .reconnect(hour_backoff())
            .connect_any([a.local_addr(), b.local_addr()])
            .await
            .unwrap(),
    );
    assert_eq!(client.peer_addr(), a.local_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let loops = request_loops(&client, 4, &stop);
    wait_until("requests flow to a", || a.stats().frames_in >= 100).await;
    let shutdown = {
        let a = a.clone();
        tokio::spawn(async move { a.shutdown(WAIT).await })
    };
    wait_until("requests flow to b", || b.stats().frames_in >= 100).await;
    stop.store(true, Ordering::SeqCst);
    let (mut on_a, mut on_b) = (0, 0);
    for task in loops {
        for outcome in within("a request loop", task).await.unwrap() {
            match outcome {
                Ok(reply) if reply.starts_with("a:") => on_a += 1,
                Ok(reply) if reply.starts_with("b:") => on_b += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(on_a > 0 && on_b > 0, "{on_a} on a, {on_b} on b");
    let report = within("a's shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
    assert_eq!(client.peer_addr(), b.local_addr());
    let events = drain_events(&client.errors());
    assert!(
        events.iter().any(|e| matches!(e, Error::Draining)),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Error::Disconnected { .. })),
        "{events:?}"
    );
    assert_no_error("the client", &events);
    within("the close", client.close()).await;
    assert_eq!(notes.opened.load(Ordering::SeqCst), 2);
    assert_eq!(notes.closed.load(Ordering::SeqCst), 2);
    b.cut().await;
}

/// `connect_any` skips an address where nothing listens any more.
#[tokio::test]
async fn connect_any_skips_an_address_that_refuses() {
    let (b, _) = open_server("b").await;
    let gone = dead_addr().await;
    let client = Client::<String>::builder()
        .handshake()
        .request_ids()
        .connect_any([gone.into(), b.local_addr()])
        .await
        .unwrap();
    assert_eq!(client.peer_addr(), b.local_addr());
    assert_eq!(
        within("a reply", client.request(&"x".into()))
            .await
            .unwrap(),
        "b:x"
    );
    let none = Client::<String>::builder()
        .connect_any(Vec::<std::net::SocketAddr>::new())
        .await;
    assert!(
        matches!(none, Err(chitchat_net::ConnectError::Config(_))),
        "{none:?}"
    );
    client.close().await;
    b.cut().await;
}

/// A reconnecting client whose server goes away (cut, its listener
/// closed) fails over to the next address; so does one whose next address
/// is a listener that never accepts (the handshake times out there).
#[tokio::test]
async fn a_reconnecting_client_fails_over_when_its_server_goes_away() {
    let (a, _) = open_server("a").await;
    let (c, _) = open_server("c").await;
    // Listens and never accepts: a connect succeeds, no hello comes.
    let (never, never_addr) = common::raw_listener().await;
    let gone = dead_addr().await;
    let client = Client::<String>::builder()
        .handshake()
        .request_ids()
        .handshake_timeout(Duration::from_millis(300))
        .reconnect(fast_backoff())
        .connect_any([
            a.local_addr(),
            gone.into(),
            never_addr.into(),
            c.local_addr(),
        ])
        .await
        .unwrap();
    assert_eq!(
        within("a reply", client.request(&"x".into()))
            .await
            .unwrap(),
        "a:x"
    );
    let events = client.errors();
    a.cut().await;
    drop(a);
    let mut seen_events = Vec::new();
    event_where(&events, &mut seen_events, |e| {
        matches!(e, Error::Disconnected { .. })
    })
    .await;
    // Waits while down (within the request timeout), then goes to c.
    assert_eq!(
        within("a reply after the failover", client.request(&"y".into()))
            .await
            .unwrap(),
        "c:y"
    );
    assert_eq!(client.peer_addr(), c.local_addr());
    drop(never);
    client.close().await;
    c.cut().await;
}

/// A failover during a drain: the first server drains with requests in
/// flight, the next address is gone, the third takes over. The requests in
/// flight are answered by the first, the new ones by the third; none
/// fails.
#[tokio::test]
async fn a_failover_during_a_drain() {
    let (gate_tx, gate) = watch::channel(false);
    let seen = Arc::new(AtomicU64::new(0));
    let a = server("a", gate, seen.clone(), true).await;
    let (c, _) = open_server("c").await;
    let gone = dead_addr().await;
    let client = Arc::new(
        Client::<String>::builder()
            .handshake()
            .request_ids()
            .reconnect(fast_backoff())
            .connect_any([a.local_addr(), gone.into(), c.local_addr()])
            .await
            .unwrap(),
    );
    let in_flight: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.request(&format!("r{i}")).await })
        })
        .collect();
    wait_until("a has every request", || seen.load(Ordering::SeqCst) == 10).await;
    let shutdown = {
        let a = a.clone();
        tokio::spawn(async move { a.shutdown(WAIT).await })
    };
    // Once the client knows, new requests wait for the next connection:
    // c, past the gone one.
    let events = client.errors();
    let mut seen_events = Vec::new();
    event_where(&events, &mut seen_events, |e| matches!(e, Error::Draining)).await;
    let after = within("a request during the drain", client.request(&"n".into())).await;
    assert_eq!(after.unwrap(), "c:n");
    gate_tx.send(true).unwrap();
    for (i, request) in in_flight.into_iter().enumerate() {
        let reply = within("a reply", request).await.unwrap();
        assert_eq!(reply.unwrap(), format!("a:r{i}"));
    }
    let report = within("a's shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
    // The only errors: the gone address refused a connect.
    seen_events.extend(drain_events(&events));
    for event in seen_events.iter().filter(|e| !e.is_lifecycle()) {
        assert!(matches!(event, Error::Io(_)), "{event:?}");
    }
    within("the close", client.close()).await;
    c.cut().await;
}

/// What a reconnecting client sees when its server shuts down, with drain
/// switched off at one end (`server_drain`, `client_drain`) or no
/// handshake at all: today's behaviour, a disconnect and a reconnect, no
/// drain; the requests in flight are still answered (a graceful shutdown
/// waits for them), and nobody reports an error.
async fn without_drain(server_drain: bool, client_drain: bool, handshake: bool) {
    let (gate_tx, gate) = watch::channel(false);
    let seen = Arc::new(AtomicU64::new(0));
    let a = if handshake {
        server("a", gate, seen.clone(), server_drain).await
    } else {
        Arc::new(
            Server::builder(Held {
                name: "a",
                gate,
                seen: seen.clone(),
            })
            .request_ids()
            .listen("127.0.0.1:0")
            .await
            .unwrap(),
        )
    };
    let b = if handshake {
        open_server("b").await.0
    } else {
        Arc::new(
            Server::builder(Held {
                name: "b",
                gate: watch::channel(true).1,
                seen: Arc::default(),
            })
            .request_ids()
            .listen("127.0.0.1:0")
            .await
            .unwrap(),
        )
    };
    let builder = Client::<String>::builder()
        .request_ids()
        .reconnect(fast_backoff());
    let builder = if handshake {
        builder.handshake()
    } else {
        builder
    };
    let builder = if client_drain {
        builder
    } else {
        builder.no_drain()
    };
    let client = Arc::new(
        builder
            .connect_any([a.local_addr(), b.local_addr()])
            .await
            .unwrap(),
    );
    let in_flight: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.request(&format!("r{i}")).await })
        })
        .collect();
    wait_until("a has every request", || seen.load(Ordering::SeqCst) == 5).await;
    let shutdown = {
        let a = a.clone();
        tokio::spawn(async move { a.shutdown(WAIT).await })
    };
    gate_tx.send(true).unwrap();
    for (i, request) in in_flight.into_iter().enumerate() {
        let reply = within("a reply", request).await.unwrap();
        assert_eq!(reply.unwrap(), format!("a:r{i}"));
    }
    let report = within("a's shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
    let events = client.errors();
    let mut seen_events = Vec::new();
    event_where(&events, &mut seen_events, |e| {
        matches!(e, Error::Reconnected { .. })
    })
    .await;
    assert!(
        seen_events
            .iter()
            .any(|e| matches!(e, Error::Disconnected { .. })),
        "{seen_events:?}"
    );
    assert!(
        !seen_events.iter().any(|e| matches!(e, Error::Draining)),
        "{seen_events:?}"
    );
    assert_no_error("the client", &seen_events);
    assert_no_error("server a", &drain_events(&a.errors()));
    assert_eq!(
        within("a reply from b", client.request(&"x".into()))
            .await
            .unwrap(),
        "b:x"
    );
    within("the close", client.close()).await;
    b.cut().await;
}

#[tokio::test]
async fn a_server_without_drain_shuts_down_as_before() {
    without_drain(false, true, true).await;
}

#[tokio::test]
async fn a_client_without_drain_is_closed_as_before() {
    without_drain(true, false, true).await;
}

#[tokio::test]
async fn without_a_handshake_there_is_no_drain() {
    without_drain(true, true, false).await;
}

/// A drain frame where none was agreed (no handshake) is what it was
/// before this build: an unknown envelope kind, a frame error; the
/// connection goes on.
#[tokio::test]
async fn a_drain_frame_where_none_was_agreed_is_an_unknown_kind() {
    let (b, _) = open_server("b").await;
    let plain = Server::builder(Held {
        name: "p",
        gate: watch::channel(true).1,
        seen: Arc::default(),
    })
    .request_ids()
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let mut raw = common::RawPeer::connect(plain.local_addr()).await;
    raw.write(&[0x06, b'\n']).await;
    let event = common::next_event(&plain.errors()).await;
    assert!(
        matches!(
            event.error,
            Error::Envelope(chitchat_net::envelope::EnvelopeError::UnknownKind(0x06))
        ),
        "{event}"
    );
    drop(raw);
    plain.cut().await;
    b.cut().await;
}

/// The status byte `0x08` is `ErrorCode::Draining` both ways, and a build
/// that does not know a byte keeps it as `Other` (as older builds do with
/// `0x08`).
#[test]
fn the_draining_code_has_its_byte() {
    assert_eq!(ErrorCode::from_byte(0x08), ErrorCode::Draining);
    assert_eq!(ErrorCode::Draining.to_byte(), 0x08);
    assert_eq!(ErrorCode::from_byte(0x7e), ErrorCode::Other(0x7e));
}

/// A client that sends a request after its answer to the drain (this
/// build never does; a raw peer speaking a client's hello does here) gets
/// it refused with `ErrorCode::Draining` (`0x08`), not run; the request
/// before the answer is answered.
#[tokio::test]
async fn a_request_after_the_answer_is_refused_with_draining() {
    let (server, seen) = open_server("a").await;
    // A client's hello, as this build writes it: taken from a client that
    // connects to a raw listener (it waits there for a hello that never
    // comes, and is dropped).
    let (listener, addr) = common::raw_listener().await;
    let connecting = tokio::spawn(async move {
        Client::<String>::builder()
            .handshake()
            .request_ids()
            .connect(addr)
            .await
    });
    let (socket, _) = within("the client", listener.accept()).await.unwrap();
    let mut first = common::RawPeer::from_stream(socket);
    let hello = first.read_line().await;
    connecting.abort();
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    raw.write(&hello).await;
    let server_hello = raw.read_line().await;
    assert!(
        server_hello.starts_with(b"chitchat-hello/"),
        "{server_hello:?}"
    );
    // Request 5, "x": answered.
    raw.write(&[0x01, 0x05, b'x', b'\n']).await;
    // Its note (a one-way message, kind 0x00) comes first.
    assert_eq!(raw.read_line().await, b"\x00note x\n");
    assert_eq!(raw.read_line().await, [0x02, 0x05, b'a', b':', b'x', b'\n']);
    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown(WAIT).await })
    };
    assert_eq!(raw.read_line().await, [0x06, b'\n']);
    // The answer, then request 6: refused, not run.
    raw.write(&[0x06, b'\n', 0x01, 0x06, b'y', b'\n']).await;
    let refused = raw.read_line().await;
    assert_eq!(refused[..3], [0x03, 0x06, 0x08], "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused).contains("draining"),
        "{refused:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    raw.expect_end().await;
    drop(raw);
    let report = within("the shutdown", shutdown).await.unwrap();
    assert!(report.finished, "{report:?}");
}
