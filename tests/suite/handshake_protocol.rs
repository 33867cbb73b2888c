//! The handshake checks the protocol (issue 22, items 4 and 7): a matrix
//! of settings two peers may differ in, each pair either working both ways
//! or refused at `connect` naming the setting; the handshake on by default
//! between typed peers and off toward text peers; `connect` waiting for
//! the server's hello; a reconnecting client that gives up on a mismatch;
//! serde codecs on derived enums keeping the tags.
#![cfg(feature = "postcard")]

use crate::common;

use std::time::Duration;

use chitchat_net::codec::Format;
use chitchat_net::handshake::{HandshakeError, Setting};
use chitchat_net::{
    handler_fn, BoxError, Client, CloseReason, ConnectError, Context, Error, Framing, Message,
    Options, Postcard, Reconnect, Server,
};
use common::{next_event, within, WAIT};
use serde::{Deserialize, Serialize};

/// The command set of the older peers.
mod v2 {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    /// Derives serde's traits too, so that `.codec(Postcard)` compiles
    /// (and writes the tags).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        Put { key: String, value: String },
        Get { key: String },
    }
}

/// The same type with one more variant (a compatible change: see
/// `evolve`).
mod v3 {
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};

    /// Derives serde's traits too, so that `.codec(Postcard)` compiles
    /// (and writes the tags).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        Put { key: String, value: String },
        Get { key: String },
        Delete { key: String },
    }
}

/// The same type with `Get`'s field of another type: refused.
mod changed {
    use chitchat_net::Message;

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        Put { key: String, value: String },
        Get { key: u64 },
    }
}

trait Cmd:
    Message + Clone + PartialEq + std::fmt::Debug + Sync + Serialize + serde::de::DeserializeOwned
{
    fn sample() -> Self;
}

impl Cmd for v2::Command {
    fn sample() -> Self {
        v2::Command::Get { key: "k".into() }
    }
}

impl Cmd for v3::Command {
    fn sample() -> Self {
        v3::Command::Get { key: "k".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    None,
    Ids,
    Ordered,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Frames {
    Lines,
    Length,
    Nul,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Types {
    V2,
    V3,
}

/// One side's settings.
#[derive(Debug, Clone, Copy)]
struct Side {
    mode: Mode,
    format: Option<Format>,
    /// `.codec(Postcard)` on the builder.
    postcard_codec: bool,
    framing: Frames,
    types: Types,
    cluster: Option<&'static str>,
}

const BASE: Side = Side {
    mode: Mode::None,
    format: None,
    postcard_codec: false,
    framing: Frames::Lines,
    types: Types::V2,
    cluster: None,
};

impl Side {
    fn options(&self) -> Options {
        let mut options = Options::new().framing(match self.framing {
            Frames::Lines => Framing::lines(),
            Frames::Length => Framing::length_prefixed(),
            Frames::Nul => Framing::delimited(0),
        });
        options = match self.mode {
            Mode::None => options,
            Mode::Ids => options.request_ids(),
            Mode::Ordered => options.ordered_replies(),
        };
        if let Some(format) = self.format {
            options = options.serde_format(format);
        }
        if let Some(cluster) = self.cluster {
            options = options.cluster(cluster);
        }
        // Progress bound: a request is answered within milliseconds; a
        // timeout here would be a row that should have been refused.
        options.request_timeout(WAIT)
    }
}

/// What a row expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A round trip works both ways.
    Works,
    /// `connect` fails with a mismatch of this setting, whose text holds
    /// this word.
    Refused(Setting, &'static str),
}

/// A server of `S` that answers (or, without requests, sends back) what it
/// gets.
async fn echo_server<S: Cmd>(side: Side) -> Server<impl chitchat_net::Handler<Message = S>> {
    let echo = handler_fn(|cmd: S, ctx: &mut Context<'_>| -> Result<(), BoxError> {
        ctx.reply(&cmd)?;
        Ok(())
    });
    let builder = Server::builder(echo).options(side.options());
    let builder = if side.postcard_codec {
        builder.codec(Postcard)
    } else {
        builder
    };
    builder.listen("127.0.0.1:0").await.unwrap()
}

/// Runs one row: `Ok` if it went as expected, else what happened.
async fn run<S: Cmd, C: Cmd>(server: Side, client: Side, expect: Expect) -> Result<(), String> {
    let srv = echo_server::<S>(server).await;
    let builder = Client::<C>::builder().options(client.options());
    let builder = if client.postcard_codec {
        builder.codec(Postcard)
    } else {
        builder
    };
    let connect = builder.receive::<C>(4).connect(srv.local_addr());
    let Ok(connected) = tokio::time::timeout(WAIT, connect).await else {
        srv.cut().await;
        return Err(format!("connect did not end within {WAIT:?}"));
    };
    let outcome = match (connected, expect) {
        (Ok(client_conn), Expect::Works) => {
            let msg = C::sample();
            let back = if client.mode == Mode::None {
                client_conn.send(&msg).await.map_err(|e| e.to_string())?;
                within("the echo", client_conn.recv())
                    .await
                    .ok_or("no echo".to_owned())
            } else {
                client_conn
                    .request_untyped::<C>(&msg)
                    .await
                    .map_err(|e| format!("request failed: {e}"))
            };
            client_conn.close().await;
            match back {
                Ok(back) if back == msg => Ok(()),
                Ok(back) => Err(format!("got {back:?} back")),
                Err(e) => Err(e),
            }
        }
        (Ok(_), Expect::Refused(..)) => Err("connected".to_owned()),
        (
            Err(ConnectError::Handshake(HandshakeError::Mismatch(m))),
            Expect::Refused(setting, word),
        ) if m.setting == setting && m.to_string().contains(word) => Ok(()),
        (Err(e), _) => Err(format!("connect failed: {e}")),
    };
    srv.cut().await;
    outcome
}

async fn run_row(server: Side, client: Side, expect: Expect) -> Result<(), String> {
    match (server.types, client.types) {
        (Types::V2, Types::V2) => run::<v2::Command, v2::Command>(server, client, expect).await,
        (Types::V2, Types::V3) => run::<v2::Command, v3::Command>(server, client, expect).await,
        (Types::V3, Types::V2) => run::<v3::Command, v2::Command>(server, client, expect).await,
        (Types::V3, Types::V3) => run::<v3::Command, v3::Command>(server, client, expect).await,
    }
}

/// The rows: each dimension's values against each other (the rest as in
/// `BASE`), and a few across dimensions.
fn rows() -> Vec<(Side, Side, Expect)> {
    let mut rows = Vec::new();
    let mut pairs = |values: Vec<Side>, expect: &dyn Fn(&Side, &Side) -> Expect| {
        for server in &values {
            for client in &values {
                rows.push((*server, *client, expect(server, client)));
            }
        }
    };
    let with = |f: &dyn Fn(&mut Side)| {
        let mut side = BASE;
        f(&mut side);
        side
    };
    // Request ids must be on at both ends or at neither; ordered replies
    // and none go together.
    pairs(
        [Mode::None, Mode::Ids, Mode::Ordered]
            .map(|mode| with(&|s| s.mode = mode))
            .to_vec(),
        &|s, c| {
            if (s.mode == Mode::Ids) == (c.mode == Mode::Ids) {
                Expect::Works
            } else {
                Expect::Refused(Setting::RequestMode, "request ids")
            }
        },
    );
    // The serde format: bincode is the types' own.
    let postcard_like = |s: &Side| s.format == Some(Format::Postcard) || s.postcard_codec;
    pairs(
        [None, Some(Format::Bincode), Some(Format::Postcard)]
            .map(|format| with(&|s| s.format = format))
            .to_vec(),
        &|s, c| {
            if postcard_like(s) == postcard_like(c) {
                Expect::Works
            } else {
                Expect::Refused(Setting::Codec, "postcard")
            }
        },
    );
    // A builder's codec against a serde format: the same bytes.
    pairs(
        vec![
            BASE,
            with(&|s| s.postcard_codec = true),
            with(&|s| s.format = Some(Format::Postcard)),
        ],
        &|s, c| {
            if postcard_like(s) == postcard_like(c) {
                Expect::Works
            } else {
                Expect::Refused(Setting::Codec, "postcard")
            }
        },
    );
    pairs(
        [Frames::Lines, Frames::Length, Frames::Nul]
            .map(|framing| with(&|s| s.framing = framing))
            .to_vec(),
        &|s, c| {
            if s.framing == c.framing {
                Expect::Works
            } else {
                Expect::Refused(Setting::Framing, "frames what it sends")
            }
        },
    );
    pairs(
        [Types::V2, Types::V3]
            .map(|types| with(&|s| s.types = types))
            .to_vec(),
        &|s, c| {
            // Adding a variant is compatible: the shared ones round-trip.
            let _ = (s, c);
            Expect::Works
        },
    );
    pairs(
        [None, Some("prod-eu"), Some("staging")]
            .map(|cluster| with(&|s| s.cluster = cluster))
            .to_vec(),
        &|s, c| {
            if s.cluster == c.cluster {
                Expect::Works
            } else {
                Expect::Refused(Setting::Cluster, "cluster")
            }
        },
    );
    // Several differences: the first in the check's order is named.
    rows.push((
        with(&|s| {
            s.cluster = Some("prod-eu");
            s.mode = Mode::Ids;
        }),
        with(&|s| s.types = Types::V3),
        Expect::Refused(Setting::Cluster, "prod-eu"),
    ));
    rows.push((
        with(&|s| s.mode = Mode::Ids),
        with(&|s| {
            s.mode = Mode::Ordered;
            s.format = Some(Format::Postcard);
        }),
        Expect::Refused(
            Setting::RequestMode,
            "the server uses request ids, this client ordered replies",
        ),
    ));
    // Everything set alike, away from the defaults.
    let all = with(&|s| {
        *s = Side {
            mode: Mode::Ids,
            format: Some(Format::Postcard),
            postcard_codec: false,
            framing: Frames::Length,
            types: Types::V3,
            cluster: Some("prod-eu"),
        }
    });
    let mut all_with_codec = all;
    all_with_codec.format = None;
    all_with_codec.postcard_codec = true;
    rows.push((all, all_with_codec, Expect::Works));
    rows
}

/// Every pair of settings works both ways or fails at `connect` naming the
/// setting; none ends in a request timeout. Rows run at once; the whole
/// matrix takes well under a second when it passes.
#[tokio::test]
async fn every_pair_of_settings_works_or_is_refused_at_connect_naming_it() {
    let rows = rows();
    assert!(rows.len() > 40);
    let runs = rows.iter().map(|&(server, client, expect)| async move {
        let outcome = run_row(server, client, expect).await;
        (server, client, expect, outcome)
    });
    let outcomes = futures_util::future::join_all(runs).await;
    let failed: Vec<String> = outcomes
        .into_iter()
        .filter_map(|(server, client, expect, outcome)| {
            outcome.err().map(|why| {
                format!("server {server:?}\n client {client:?}\n expected {expect:?}: {why}")
            })
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} rows failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Between typed peers the handshake is on without being asked for: a
/// client without request ids is refused by a server with them, in words.
#[tokio::test]
async fn the_handshake_is_on_by_default_between_typed_peers() {
    let server = echo_server::<v2::Command>(with_mode(Mode::Ids)).await;
    let refused = within(
        "connect",
        Client::<v2::Command>::connect(server.local_addr()),
    )
    .await;
    let Err(error) = refused else {
        panic!("a client without request ids was accepted")
    };
    assert_eq!(
        error.to_string(),
        "handshake with the server failed: the server uses request ids, this client no requests"
    );
    // The server says so too (an event; its WARN line: tests/logging.rs).
    let event = next_event(&server.errors()).await;
    assert!(
        matches!(&event.error, Error::Handshake(HandshakeError::Mismatch(m))
            if m.to_string() == "the client uses no requests, this server request ids"),
        "{:?}",
        event.error
    );
    // Alike, they talk.
    let client = within(
        "connect",
        Client::<v2::Command>::builder()
            .request_ids()
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    let reply: v2::Command = client
        .request_untyped::<v2::Command>(&v2::Command::sample())
        .await
        .unwrap();
    assert_eq!(reply, v2::Command::sample());
    client.close().await;
    server.cut().await;
}

fn with_mode(mode: Mode) -> Side {
    Side { mode, ..BASE }
}

/// Off toward text peers: a raw TCP peer speaking lines works against a
/// `String` server (it gets no hello, and its first line reaches the
/// handler), and a `String` client sends no hello to a raw listener.
#[tokio::test]
async fn the_handshake_is_off_toward_text_peers() {
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let echo = handler_fn(
        move |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.send(&line.to_uppercase())?;
            tx.send(line)?;
            Ok(())
        },
    );
    let server = Server::listen("127.0.0.1:0", echo).await.unwrap();
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    raw.write(b"heartbeat ping\n").await;
    assert_eq!(raw.read_text_line().await, "HEARTBEAT PING");
    assert_eq!(
        within("the line", lines.recv()).await.as_deref(),
        Some("heartbeat ping")
    );
    server.cut().await;

    let (listener, addr) = common::raw_listener().await;
    let client = within("connect", Client::<String>::connect(addr))
        .await
        .unwrap();
    client.send(&"hello".to_string()).await.unwrap();
    let (stream, _) = within("accept", listener.accept()).await.unwrap();
    let mut peer = common::RawPeer::from_stream(stream);
    assert_eq!(peer.read_text_line().await, "hello");
    // The peer ends its side: the close need not wait for it.
    drop(peer);
    client.close().await;
}

/// `connect` returns only once the server's hello has been checked: a
/// server that never sends one fails `connect` with a handshake timeout,
/// after the handshake timeout and well before the test's bound.
#[tokio::test]
async fn connect_waits_for_the_servers_hello() {
    let (listener, addr) = common::raw_listener().await;
    let silent = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // Holds the connection open, sending nothing.
        tokio::time::sleep(WAIT).await;
        drop(stream);
    });
    let timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let connected = within(
        "connect",
        Client::<v2::Command>::builder()
            .handshake_timeout(timeout)
            .connect(addr),
    )
    .await;
    let elapsed = started.elapsed();
    match connected {
        Err(ConnectError::Handshake(HandshakeError::Timeout(t))) => assert_eq!(t, timeout),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connect returned before the server's hello was checked"),
    }
    assert!(elapsed >= timeout, "{elapsed:?}");
    silent.abort();
}

/// The handshake timeout both sides have in the tests below: the default,
/// said here so that the bounds can be stated against it.
const HANDSHAKE_TIMEOUT: Duration = chitchat_net::DEFAULT_HANDSHAKE_TIMEOUT;

/// Progress bound for a refusal: it takes one round trip on loopback
/// (milliseconds); half the handshake timeout tells it from a timeout,
/// with a margin of thousands on a busy machine.
const TOLD_WITHIN: Duration = Duration::from_secs(5);

/// A typed client (which sends a hello) toward a server without the
/// handshake (a `String` request/reply server: it never writes first).
/// The server does not hand the hello to its handler as a line: it reports
/// a handshake event saying so, and refuses it; the client's `connect`
/// fails at once, saying in words what differs and what to change, and
/// not with a timeout after the handshake timeout.
#[tokio::test]
async fn a_typed_client_toward_a_server_without_handshake_is_told_at_once() {
    assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(10));
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let answer = handler_fn(
        move |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.reply(&line)?;
            tx.send(line)?;
            Ok(())
        },
    );
    let server = Server::builder(answer)
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let started = tokio::time::Instant::now();
    let connect = Client::<v2::Command>::builder()
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .connect(server.local_addr());
    let refused = tokio::time::timeout(TOLD_WITHIN, connect).await;
    let elapsed = started.elapsed();
    let Ok(refused) = refused else {
        panic!("connect still waits after {elapsed:?} (the handshake timeout is {HANDSHAKE_TIMEOUT:?})")
    };
    let Err(ConnectError::Handshake(error)) = refused else {
        panic!("{refused:?}")
    };
    assert!(
        matches!(error, HandshakeError::NoHandshake { .. }),
        "{error:?}: {error}"
    );
    assert_eq!(
        error.to_string(),
        "the server does not do the handshake (it refused this client's hello): declare \
         message types with a fingerprint on both sides or on neither, or switch the \
         handshake on there (`.handshake()`) or off here (`.no_handshake()`)"
    );
    // The server's event names it; the hello never reached its handler.
    let event = next_event(&events).await;
    let Error::Handshake(seen) = &event.error else {
        panic!("{:?}", event.error)
    };
    assert!(
        matches!(seen, HandshakeError::UnexpectedHello { .. }),
        "{seen:?}"
    );
    assert_eq!(
        seen.to_string(),
        "the client does the handshake (its first frame is a hello), this server does not: \
         declare message types with a fingerprint on both sides or on neither, or switch the \
         handshake off there (`.no_handshake()`) or on here (`.handshake()`)"
    );
    assert!(lines.try_recv().is_err(), "the hello reached the handler");
    server.cut().await;
}

/// The same while the server's `on_open` waits (its read side reads
/// ahead meanwhile): the hello read then is not handed to the handler
/// once `on_open` returns; it is refused. (Today the first read takes 64
/// bytes, never a whole hello, so no frame could be cut from it anyway;
/// the read side drops the bytes of a refused hello all the same.)
#[tokio::test]
async fn a_hello_read_while_on_open_waits_is_refused_too() {
    struct Slow {
        open: std::sync::Arc<tokio::sync::Notify>,
        lines: tokio::sync::mpsc::UnboundedSender<String>,
    }
    impl chitchat_net::Handler for Slow {
        type Message = String;
        async fn on_open(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            self.open.notified().await;
            Ok(())
        }
        async fn handle(&self, line: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
            self.lines.send(line)?;
            Ok(())
        }
    }
    let open = std::sync::Arc::new(tokio::sync::Notify::new());
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder(Slow {
        open: open.clone(),
        lines: tx,
    })
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let events = server.errors();
    let connect = tokio::spawn(
        Client::<v2::Command>::builder()
            .handshake_timeout(HANDSHAKE_TIMEOUT)
            .connect(server.local_addr()),
    );
    common::wait_until("the server has read the hello", || {
        server.stats().bytes_in > 0
    })
    .await;
    open.notify_one();
    let refused = within("connect", connect).await.unwrap();
    assert!(
        matches!(
            refused,
            Err(ConnectError::Handshake(HandshakeError::NoHandshake { .. }))
        ),
        "{refused:?}"
    );
    let event = next_event(&events).await;
    assert!(
        matches!(
            &event.error,
            Error::Handshake(HandshakeError::UnexpectedHello { .. })
        ),
        "{:?}",
        event.error
    );
    assert!(lines.try_recv().is_err(), "the hello reached the handler");
    server.cut().await;
}

/// The reverse: an untyped client (`String`, no hello) toward a typed
/// server, which sends its hello first. The client does not take the
/// hello for a line: it reports a handshake event and ends the
/// connection; the server is told at once that the client does not do
/// the handshake, instead of waiting out its handshake timeout.
#[tokio::test]
async fn an_untyped_client_toward_a_typed_server_is_told_at_once() {
    let srv = Server::builder(handler_fn(
        |cmd: v2::Command, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.reply(&cmd)?;
            Ok(())
        },
    ))
    .handshake_timeout(HANDSHAKE_TIMEOUT)
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let server_events = srv.errors();
    let started = tokio::time::Instant::now();
    let client = within(
        "connect",
        Client::<String>::builder()
            .receive::<String>(4)
            .connect(srv.local_addr()),
    )
    .await
    .unwrap();
    let event = next_event(&client.errors()).await;
    let Error::Handshake(seen) = &event.error else {
        panic!("{:?}", event.error)
    };
    assert!(
        matches!(seen, HandshakeError::UnexpectedHello { .. }),
        "{seen:?}"
    );
    assert_eq!(
        seen.to_string(),
        "the server does the handshake (its first frame is a hello), this client does not: \
         declare message types with a fingerprint on both sides or on neither, or switch the \
         handshake off there (`.no_handshake()`) or on here (`.handshake()`)"
    );
    assert_eq!(
        within("the client's end", client.closed()).await,
        CloseReason::Failed
    );
    assert_eq!(within("recv", client.recv()).await, None);
    // The server: told, not timed out.
    let event = tokio::time::timeout(TOLD_WITHIN, server_events.recv()).await;
    let elapsed = started.elapsed();
    let Ok(Some(event)) = event else {
        panic!("no event from the server after {elapsed:?} (its handshake timeout is {HANDSHAKE_TIMEOUT:?})")
    };
    let Error::Handshake(seen) = &event.error else {
        panic!("{:?}", event.error)
    };
    assert!(
        matches!(seen, HandshakeError::NoHandshake { .. }),
        "{seen:?}: {seen}"
    );
    assert_eq!(
        seen.to_string(),
        "the client does not do the handshake (it refused this server's hello): declare \
         message types with a fingerprint on both sides or on neither, or switch the \
         handshake on there (`.handshake()`) or off here (`.no_handshake()`)"
    );
    srv.cut().await;
}

/// A reconnecting untyped client toward a typed server does not dial
/// forever either: it refuses the server's hello, and gives up.
#[tokio::test]
async fn a_reconnecting_untyped_client_gives_up_on_a_typed_server() {
    let srv = echo_server::<v2::Command>(BASE).await;
    let client = within(
        "connect",
        Client::<String>::builder()
            .reconnect(
                Reconnect::new()
                    .initial_delay(Duration::from_millis(5))
                    .max_delay(Duration::from_millis(20)),
            )
            .connect(srv.local_addr()),
    )
    .await
    .unwrap();
    let events = client.errors();
    assert_eq!(
        within("the client's end", client.closed()).await,
        CloseReason::Failed
    );
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        seen.push(event.error);
    }
    assert!(
        matches!(
            seen.first(),
            Some(Error::Handshake(HandshakeError::UnexpectedHello { .. }))
        ),
        "{seen:?}"
    );
    assert!(
        matches!(seen.last(), Some(Error::ReconnectGaveUp { attempts: 1 })),
        "{seen:?}"
    );
    srv.cut().await;
}

/// A reconnecting client with the wrong types does not dial forever: at
/// its first connect it is refused at once; when the server it reconnects
/// to speaks other types, it gives up.
#[tokio::test]
async fn a_reconnecting_client_gives_up_on_a_mismatch() {
    let policy = || {
        Reconnect::new()
            .initial_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(20))
    };
    let wrong = Server::builder(handler_fn(
        |_cmd: changed::Command, _ctx: &mut Context<'_>| -> Result<(), BoxError> { Ok(()) },
    ))
    .listen("127.0.0.1:0")
    .await
    .unwrap();
    let refused = within(
        "connect",
        Client::<v2::Command>::builder()
            .reconnect(policy())
            .connect(wrong.local_addr()),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(ConnectError::Handshake(HandshakeError::Mismatch(_)))
        ),
        "{refused:?}"
    );
    wrong.cut().await;
    drop(wrong);

    // Connected to the right server, which is then replaced by a wrong one.
    let right = echo_server::<v2::Command>(BASE).await;
    let port = right.local_addr().tcp().unwrap().port();
    let client = within(
        "connect",
        Client::<v2::Command>::builder()
            .reconnect(policy())
            .connect(right.local_addr()),
    )
    .await
    .unwrap();
    let events = client.errors();
    right.cut().await;
    drop(right);
    let wrong = loop {
        // The port is free again once the old server is gone (retried
        // while the kernel still holds it).
        let builder = Server::builder(handler_fn(
            |_cmd: changed::Command, _ctx: &mut Context<'_>| -> Result<(), BoxError> { Ok(()) },
        ));
        match builder.listen(("127.0.0.1", port)).await {
            Ok(server) => break server,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert_eq!(
        within("the client's end", client.closed()).await,
        CloseReason::Failed
    );
    let mut seen = Vec::new();
    while let Some(event) = events.try_recv() {
        seen.push(event.error);
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, Error::Handshake(HandshakeError::Mismatch(_)))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Error::ReconnectGaveUp { .. })),
        "{seen:?}"
    );
    wrong.cut().await;
}

/// A derived enum whose tags are pinned out of declaration order, that
/// also derives serde's traits (so that `.codec(Bincode)` compiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
enum Pinned {
    #[message(tag = 0)]
    Put { key: String },
    #[message(tag = 2)]
    Delete { key: String },
    #[message(tag = 1)]
    Get { key: String },
}

/// `.codec(Bincode)` or `.codec(Postcard)` on a derived enum writes its
/// tags, as `serde_format(..)` does: a `Delete` arrives as a `Delete`, not
/// as the `Get` whose tag is serde's index of `Delete`.
#[tokio::test]
async fn a_serde_codec_on_a_derived_enum_keeps_its_tags() {
    for postcard in [false, true] {
        let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let store = handler_fn(
            move |cmd: Pinned, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
                tx.send(cmd)?;
                Ok(())
            },
        );
        let server = Server::builder(store);
        let server = if postcard {
            server.serde_format(Format::Postcard)
        } else {
            server
        };
        let server = server.listen("127.0.0.1:0").await.unwrap();
        let builder = Client::<Pinned>::builder();
        let builder = if postcard {
            builder.codec(Postcard)
        } else {
            builder.codec(chitchat_net::Bincode)
        };
        let client = within("connect", builder.connect(server.local_addr()))
            .await
            .unwrap();
        let delete = Pinned::Delete { key: "k".into() };
        client.send(&delete).await.unwrap();
        assert_eq!(within("the command", got.recv()).await, Some(delete));
        client.close().await;
        server.cut().await;
    }
}
