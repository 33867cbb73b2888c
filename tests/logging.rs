//! What is logged, in a process of its own: the test installs a
//! thread-local tracing subscriber, and tracing caches per call site,
//! process-wide, whether an event is wanted; tests running at the same time
//! on other threads would race with it.

#[path = "suite/common/mod.rs"]
mod common;

use chitchat_net::Server;

/// A writer that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What this thread logs at INFO and above, kept (until the guard goes).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_that_ends_a_connection_is_logged_at_warn_unread() {
    let (captured, _guard) = capture();
    // Nobody reads the server's events.
    let server = Server::builder(())
        .max_frame_length(16)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    raw.write(&[b'x'; 64]).await;
    raw.expect_end().await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("chitchat-net error event"))
        .unwrap_or_else(|| panic!("no event logged: {logged}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("longer than the limit of 16 bytes"), "{line}");
    server.cut().await;
}

/// A reconnecting client logs one WARN per outage, however many tries it
/// takes, and one INFO with the count of tries once reconnected (README,
/// "Tracing").
#[tokio::test(flavor = "current_thread")]
async fn an_outage_logs_one_warn_not_one_per_try() {
    use chitchat_net::{Client, Error, Reconnect};
    use std::time::Duration;

    let (captured, _guard) = capture();
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let port = server.local_addr().tcp().unwrap().port();
    let client = Client::<String>::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20)),
        )
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    // A graceful stop: the connection ends normally (no error of its own).
    common::within("shutdown", server.shutdown(common::WAIT)).await;
    drop(server);
    // At least three refused tries before the server is back.
    let mut refused = 0;
    while refused < 3 {
        if let Error::Io(_) = common::next_event(&events).await.error {
            refused += 1;
        }
    }
    let server = Server::listen(("127.0.0.1", port), ()).await.unwrap();
    loop {
        if let Error::Reconnected { .. } = common::next_event(&events).await.error {
            break;
        }
    }
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // One WARN for the outage, and no other: not the error that ended the
    // connection (here the server's reset, logged at DEBUG by a
    // reconnecting client), none per try.
    let warns: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
    let outage = warns
        .iter()
        .filter(|l| l.contains("disconnected; reconnecting"))
        .count();
    assert_eq!(outage, 1, "{logged}");
    assert_eq!(warns.len(), 1, "{logged}");
    assert!(
        !warns.iter().any(|l| l.contains("connect to")),
        "a failed try logged at WARN: {logged}"
    );
    let reconnected = logged
        .lines()
        .find(|l| l.contains("INFO") && l.contains("reconnected"))
        .unwrap_or_else(|| panic!("no INFO line: {logged}"));
    assert!(!reconnected.contains("attempts=1 "), "{reconnected}");
    client.close().await;
    server.cut().await;
}

/// The lines logged so far.
fn logged(captured: &Captured) -> String {
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}

/// Waits (bounded) until the log holds a line with `text`.
async fn wait_for_line(captured: &Captured, text: &str) {
    common::wait_until(&format!("a line with {text:?}"), || {
        logged(captured).contains(text)
    })
    .await;
}

/// Per-frame errors (decode and handler errors) show at the default level,
/// at a bounded rate: the first of each kind at WARN at once, the others
/// counted, and the count logged at WARN (here at the connection's end).
#[tokio::test(flavor = "current_thread")]
async fn per_frame_errors_are_warn_at_a_bounded_rate() {
    use chitchat_net::{handler_fn, BoxError, Context};

    let (captured, _guard) = capture();
    let picky = handler_fn(
        |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            if line == "fail" {
                return Err("refused".into());
            }
            Ok(())
        },
    );
    let server = Server::listen("127.0.0.1:0", picky).await.unwrap();
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    let peer = raw.local_addr().to_string();
    // Not UTF-8: a decode error each.
    raw.write(b"\xff\n").await;
    wait_for_line(&captured, "chitchat-net error event").await;
    raw.write(&b"\xff\n".repeat(4)).await;
    raw.write(&b"fail\n".repeat(3)).await;
    wait_for_line(&captured, "refused").await;
    assert!(logged(&captured).contains("WARN"), "{}", logged(&captured));
    raw.shutdown().await;
    raw.expect_end().await;
    wait_for_line(&captured, "more handler errors").await;
    wait_for_line(&captured, "more decode errors").await;
    let logged = logged(&captured);
    let warns: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
    let events = warns
        .iter()
        .filter(|l| l.contains("chitchat-net error event"))
        .count();
    assert_eq!(events, 2, "one per kind at once: {logged}");
    assert!(
        warns
            .iter()
            .any(|l| l.contains(&format!("4 more decode errors from {peer} in the last"))),
        "{logged}"
    );
    assert!(
        warns
            .iter()
            .any(|l| l.contains(&format!("2 more handler errors from {peer} in the last"))),
        "{logged}"
    );
    server.cut().await;
}

/// A refused handshake is a WARN line on the server naming the difference,
/// once per peer address however often it connects.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_handshake_warns_once_per_peer_on_the_server() {
    use chitchat_net::{Client, Message};

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    enum Command {
        Get { key: String },
    }

    let (captured, _guard) = capture();
    let store = chitchat_net::handler_fn(
        |_cmd: Command,
         _ctx: &mut chitchat_net::Context<'_>|
         -> Result<(), chitchat_net::BoxError> { Ok(()) },
    );
    let server = Server::builder(store)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    for _ in 0..3 {
        let refused =
            common::within("connect", Client::<Command>::connect(server.local_addr())).await;
        assert!(refused.is_err());
        // The server's side of it is over once its event is in.
        common::next_event(&events).await;
    }
    let logged = logged(&captured);
    let refusals: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("handshake refused a client"))
        .collect();
    assert_eq!(refusals.len(), 1, "{logged}");
    assert!(
        refusals[0].contains("the client uses no requests, this server request ids"),
        "{logged}"
    );
    server.cut().await;
}

/// A handshake that accepts variants only one side has (a rolling
/// upgrade) is said at INFO by the client, naming them (README, "Evolving
/// your messages").
#[tokio::test(flavor = "current_thread")]
async fn one_sided_variants_are_said_at_info_by_the_client() {
    use chitchat_net::{handler_fn, BoxError, Client, Context, Message};

    mod old {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "bincode")]
        pub enum Command {
            #[message(tag = 1)]
            Get { key: String },
        }
    }
    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    enum Command {
        #[message(tag = 1)]
        Get { key: String },
        #[message(tag = 2)]
        Delete { key: String },
    }

    let (captured, _guard) = capture();
    let server = Server::builder(handler_fn(
        |_cmd: old::Command, _ctx: &mut Context<'_>| -> Result<(), BoxError> { Ok(()) },
    ))
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let client = Client::<Command>::connect(server.local_addr())
        .await
        .unwrap();
    let text = "this client sends `Command` variants that the server does not know: Delete (tag 2)";
    wait_for_line(&captured, text).await;
    let log = logged(&captured);
    let line = log.lines().find(|l| l.contains(text)).unwrap();
    assert!(line.contains("INFO"), "{line}");
    client.close().await;
    server.cut().await;
}

/// A reconnecting client whose server drains moves to its second server
/// and logs one INFO line for it, and nothing at WARN or ERROR (README,
/// "Drain and failover"): a drain is announced, not an outage.
#[tokio::test(flavor = "current_thread")]
async fn a_drain_logs_one_info_and_no_warn() {
    use chitchat_net::{handler_fn, BoxError, Client, Context, Error, Reconnect};
    use std::time::Duration;

    let (captured, _guard) = capture();
    let answer = || {
        handler_fn(
            |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
                ctx.reply(&line)?;
                Ok(())
            },
        )
    };
    let first = Server::builder(answer())
        .handshake::<String>()
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let second = Server::builder(answer())
        .handshake::<String>()
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .handshake()
        .request_ids()
        .reconnect(Reconnect::new().initial_delay(Duration::from_secs(3600)))
        .connect_any([first.local_addr(), second.local_addr()])
        .await
        .unwrap();
    let events = client.errors();
    common::within("the drain", first.shutdown(common::WAIT)).await;
    loop {
        if let Error::Reconnected { .. } = common::next_event(&events).await.error {
            break;
        }
    }
    let reply = common::within("a reply", client.request(&"x".to_string())).await;
    assert_eq!(reply.unwrap(), "x");
    let logged = logged(&captured);
    assert!(
        !logged
            .lines()
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "{logged}"
    );
    let infos: Vec<&str> = logged.lines().filter(|l| l.contains("INFO")).collect();
    assert_eq!(infos.len(), 1, "{logged}");
    assert!(infos[0].contains("draining"), "{logged}");
    client.close().await;
    second.cut().await;
}

/// A request handled concurrently (no session was set in `on_open`) sees
/// no session, and one it sets is not kept: a warning says so, with what
/// to do instead (README, "Requests handled concurrently"); the next
/// request sees no session either.
#[tokio::test(flavor = "current_thread")]
async fn a_session_set_by_a_concurrent_request_is_not_kept_and_warned_about() {
    use chitchat_net::{handler_fn, BoxError, Client, Context};

    let (captured, _guard) = capture();
    // Says whether it found a session, then sets one.
    let remember = handler_fn(
        |_line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            let had = ctx.session::<u64>().is_some();
            ctx.set_session(7u64);
            ctx.reply(&format!("had a session: {had}"))?;
            Ok(())
        },
    );
    let server = Server::builder(remember)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = common::within(
        "connect",
        Client::<String>::builder()
            .request_ids()
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let reply: String = client.request_untyped(&"set".to_string()).await.unwrap();
        assert_eq!(reply, "had a session: false");
    }
    let text = "a request handled concurrently set a session: it is dropped \
                (set the session in on_open: then requests are handled in order, with it)";
    // Logged once each request's handler has returned (after its reply).
    common::wait_until("a warning per request", || {
        logged(&captured).matches(text).count() >= 2
    })
    .await;
    let logged = logged(&captured);
    let lines: Vec<&str> = logged.lines().filter(|l| l.contains(text)).collect();
    assert_eq!(lines.len(), 2, "{logged}");
    assert!(lines.iter().all(|l| l.contains("WARN")), "{logged}");
    client.close().await;
    server.cut().await;
}

/// A side with its handshake off that gets a hello refuses it and says so
/// at WARN, once per peer address however often it connects (README, "When
/// it is on").
#[tokio::test(flavor = "current_thread")]
async fn a_refused_hello_warns_once_per_peer() {
    use chitchat_net::{Client, Message};

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    enum Command {
        Get { key: String },
    }

    let (captured, _guard) = capture();
    // A `String` server: no handshake.
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let events = server.errors();
    for _ in 0..3 {
        let refused =
            common::within("connect", Client::<Command>::connect(server.local_addr())).await;
        assert!(refused.is_err());
        common::next_event(&events).await;
    }
    let logged = logged(&captured);
    let refusals: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refused a hello"))
        .collect();
    assert_eq!(refusals.len(), 1, "{logged}");
    assert!(
        refusals[0].contains(
            "the client does the handshake (its first frame is a hello), this server does not"
        ),
        "{logged}"
    );
    server.cut().await;
}
