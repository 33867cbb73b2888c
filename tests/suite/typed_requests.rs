//! Typed requests (issue 22, part A): a request names its reply type, a
//! derived handler answers by returning, and every failure on the answering
//! side reaches the caller at once as a typed error reply
//! (`RequestError::Remote`) instead of a request timeout: a handler error,
//! a `Replier` dropped unanswered, a request that does not decode there.
//! Two chitchat-net peers, requests in both directions (the server asks the
//! client too).
//!
//! Every request here has a request timeout of [`NEVER`] (60 s), longer
//! than the bound every test waits with (`common::WAIT`, 10 s): a request that
//! would end in its timeout fails the test at `within`, not by luck.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chitchat_net::envelope::ErrorCode;
use chitchat_net::{
    handler_fn, BoxError, Client, ConnectionHandle, Context, Error, Handler, Message, Replier,
    RequestError, Server,
};
use common::{next_event, within, NEVER};

/// What the client asks the server. Every command is answered by a
/// `Reply`.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Reply)]
enum Command {
    #[message(tag = 1)]
    Get { key: String },
    /// The handler fails with `why`.
    #[message(tag = 2)]
    Fail { why: String },
    /// Answered from another task.
    #[message(tag = 3, deferred)]
    Later { key: String },
    /// Handed to a replier that is dropped without answering.
    #[message(tag = 4, deferred)]
    Forget { n: u64 },
    /// Sent one-way (`send`): the method runs, its return is dropped.
    #[message(tag = 5)]
    Note { n: u64 },
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Reply {
    #[message(tag = 1)]
    Value { key: String, value: String },
    #[message(tag = 2)]
    Noted { n: u64 },
}

/// What the server asks the client. Answered by a `Status`.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Status)]
enum Probe {
    #[message(tag = 1)]
    Health { n: u64 },
    #[message(tag = 2)]
    Crash { why: String },
    #[message(tag = 3, deferred)]
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Status {
    #[message(tag = 1)]
    Healthy { n: u64 },
}

/// A message the server does not know: tag 9 is none of `Command`'s.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode", reply = Reply)]
enum Unknown {
    #[message(tag = 9)]
    Nine { x: u64 },
    /// `Command::Get`'s tag with another field type: does not decode.
    #[message(tag = 1)]
    Get { key: u64 },
}

/// The server's handler: answers by returning.
#[derive(Default, Handler)]
#[handler(message = Command)]
struct Store {
    notes: AtomicU64,
}

impl CommandHandler for Store {
    async fn get(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        let value = key.to_uppercase();
        Ok(Reply::Value { key, value })
    }

    async fn fail(&self, why: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        Err(why.into())
    }

    async fn later(
        &self,
        key: String,
        replier: Replier,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let value = key.repeat(2);
            let _ = replier.reply(&Reply::Value { key, value }).await;
        });
        Ok(())
    }

    async fn forget(
        &self,
        _n: u64,
        replier: Replier,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        // Dropped by another task, unanswered.
        tokio::spawn(async move { drop(replier) });
        Ok(())
    }

    async fn note(&self, n: u64, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        self.notes.fetch_add(1, Ordering::SeqCst);
        Ok(Reply::Noted { n })
    }
}

/// The client's handler, for the server's requests.
#[derive(Handler)]
#[handler(message = Probe)]
struct Patient;

impl ProbeHandler for Patient {
    async fn health(&self, n: u64, _ctx: &mut Context<'_>) -> Result<Status, BoxError> {
        Ok(Status::Healthy { n })
    }

    async fn crash(&self, why: String, _ctx: &mut Context<'_>) -> Result<Status, BoxError> {
        Err(why.into())
    }

    async fn ignore(&self, replier: Replier, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        drop(replier);
        Ok(())
    }
}

/// A server with the `Store`, and a client with the `Patient`, both with
/// request ids; the server's handle on the client's connection.
async fn pair() -> (Server<Store>, Client<Command>, ConnectionHandle) {
    let server = Server::builder(Store::default())
        .request_ids()
        .request_timeout(NEVER)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<Command>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .handler(Patient)
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

#[tokio::test]
async fn requests_return_the_reply_type_they_name_in_both_directions() {
    let (server, client, to_client) = pair().await;
    // No turbofish, no annotation: `Command` names `Reply`, `Probe` names
    // `Status` (asking for another type does not compile:
    // tests/ui/fail/request_other_reply_type.rs).
    let (reply, status) = within("a request each way", async {
        tokio::join!(
            client.request(&Command::Get { key: "a".into() }),
            to_client.request(&Probe::Health { n: 7 }, NEVER),
        )
    })
    .await;
    assert_eq!(
        reply.unwrap(),
        Reply::Value {
            key: "a".into(),
            value: "A".into()
        }
    );
    assert_eq!(status.unwrap(), Status::Healthy { n: 7 });
    // A deferred method answers from another task.
    let later = within(
        "a deferred answer",
        client.request(&Command::Later { key: "ab".into() }),
    )
    .await;
    assert_eq!(
        later.unwrap(),
        Reply::Value {
            key: "ab".into(),
            value: "abab".into()
        }
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn the_message_is_encoded_at_once_and_not_kept_borrowed() {
    let (server, client, _to_client) = pair().await;
    // The messages are temporaries of the `join!`, and the first one is
    // dropped before its request is awaited: the futures do not borrow them
    // (E0716 / E0597 before).
    let first = {
        let cmd = Command::Get { key: "x".into() };
        client.request(&cmd)
    };
    let (a, b) = within("two requests", async {
        tokio::join!(first, client.request(&Command::Get { key: "y".into() }))
    })
    .await;
    assert!(matches!(a.unwrap(), Reply::Value { value, .. } if value == "X"));
    assert!(matches!(b.unwrap(), Reply::Value { value, .. } if value == "Y"));
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_handler_error_reaches_the_caller_at_once_in_both_directions() {
    let (server, client, to_client) = pair().await;
    let server_events = server.errors();
    let failed = within(
        "the failed request (not its 60 s timeout)",
        client.request(&Command::Fail {
            why: "disk on fire".into(),
        }),
    )
    .await;
    match failed {
        Err(RequestError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::Handler);
            assert!(message.contains("disk on fire"), "{message}");
        }
        other => panic!("expected a remote handler error, got {other:?}"),
    }
    // The server still reports its handler's error.
    let event = next_event(&server_events).await;
    assert!(matches!(event.error, Error::Handler(_)), "{event}");

    // The other way: the client's handler fails on the server's request.
    let crashed = within(
        "the server's failed request",
        to_client.request(
            &Probe::Crash {
                why: "out of memory".into(),
            },
            NEVER,
        ),
    )
    .await;
    assert!(
        matches!(
            &crashed,
            Err(RequestError::Remote { code: ErrorCode::Handler, message }) if message.contains("out of memory")
        ),
        "{crashed:?}"
    );
    // The connection goes on.
    let after = within(
        "a request after the errors",
        client.request(&Command::Get { key: "k".into() }),
    )
    .await;
    assert!(after.is_ok(), "{after:?}");
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_replier_dropped_unanswered_fails_the_request_at_once_in_both_directions() {
    let (server, client, to_client) = pair().await;
    let forgotten = within(
        "the forgotten request (not its 60 s timeout)",
        client.request(&Command::Forget { n: 1 }),
    )
    .await;
    assert!(
        matches!(
            forgotten,
            Err(RequestError::Remote {
                code: ErrorCode::Unanswered,
                ..
            })
        ),
        "{forgotten:?}"
    );
    let ignored = within(
        "the server's ignored request",
        to_client.request(&Probe::Ignore, NEVER),
    )
    .await;
    assert!(
        matches!(
            ignored,
            Err(RequestError::Remote {
                code: ErrorCode::Unanswered,
                ..
            })
        ),
        "{ignored:?}"
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_replier_dropped_by_a_hand_written_handler_fails_the_request_at_once() {
    let forgetful = handler_fn(
        |_line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            let replier = ctx.replier();
            drop(replier);
            Ok(())
        },
    );
    let server = Server::builder(forgetful)
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
    let dropped = within("the request", client.request(&"hello".to_string())).await;
    assert!(
        matches!(
            dropped,
            Err(RequestError::Remote {
                code: ErrorCode::Unanswered,
                ..
            })
        ),
        "{dropped:?}"
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_request_that_does_not_decode_on_the_server_is_answered_bad_request() {
    let (server, _client, _to_client) = pair().await;
    // Another type: with the handshake (on by default between typed
    // peers), the stranger is refused at connect, naming the types.
    let refused = Client::<Unknown>::builder()
        .request_ids()
        .connect(server.local_addr())
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(refused.to_string().contains("`Unknown`"), "{refused}");
    server.cut().await;
    // Without it (both ends switched it off), the server cannot decode the
    // request (a tag its `Command` lacks); the caller learns it at once.
    let server = Server::builder(Store::default())
        .request_ids()
        .no_handshake()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let server_events = server.errors();
    let stranger = Client::<Unknown>::builder()
        .request_ids()
        .no_handshake()
        .request_timeout(NEVER)
        .connect(server.local_addr())
        .await
        .unwrap();
    let refused = within(
        "the undecodable request (not its 60 s timeout)",
        stranger.request(&Unknown::Nine { x: 1 }),
    )
    .await;
    match refused {
        Err(RequestError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::UnknownVariant);
            assert!(message.contains("tag 9"), "{message}");
        }
        other => panic!("expected an unknown-variant error reply, got {other:?}"),
    }
    let event = next_event(&server_events).await;
    assert!(
        matches!(event.error, Error::UnknownVariant { tag: 9, .. }),
        "{event}"
    );
    // A known tag whose fields do not decode: a bad request.
    let refused = within(
        "the undecodable request (not its 60 s timeout)",
        stranger.request(&Unknown::Get { key: 1 }),
    )
    .await;
    match refused {
        Err(RequestError::Remote { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected a bad-request error reply, got {other:?}"),
    }
    // The server still reports the decode error.
    let event = next_event(&server_events).await;
    assert!(matches!(event.error, Error::Decode { .. }), "{event}");
    stranger.close().await;
    server.cut().await;
}

#[tokio::test]
async fn an_error_reply_is_never_decoded_as_a_reply() {
    // A `String` reply decodes from any UTF-8 bytes: an error reply read as
    // a reply would come back as `Ok("\u{1}no")`.
    let refusing = handler_fn(
        |_line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> { Err("no".into()) },
    );
    let server = Server::builder(refusing)
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
    let answer = within("the request", client.request(&"hello".to_string())).await;
    assert!(
        matches!(&answer, Err(RequestError::Remote { code: ErrorCode::Handler, message }) if message.contains("no")),
        "{answer:?}"
    );
    // Nothing else came: no stray frame, no late reply.
    assert_eq!(client.stats().frames_in, 1);
    assert_eq!(client.stats().late_replies, 0);
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_one_way_frame_of_a_request_type_runs_its_method_and_its_return_is_dropped() {
    let (server, client, _to_client) = pair().await;
    client.send(&Command::Note { n: 1 }).await.unwrap();
    client.send(&Command::Note { n: 2 }).await.unwrap();
    // The request comes after the notes, and its reply after anything they
    // could have sent back.
    let reply = within(
        "a request after the notes",
        client.request(&Command::Get { key: "z".into() }),
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(server.handler().notes.load(Ordering::SeqCst), 2);
    // The notes' replies were dropped: two frames came, the server's hello
    // and the request's reply.
    assert_eq!(client.stats().frames_in, 2);
    assert_eq!(client.stats().late_replies, 0);
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_client_that_only_receives_names_no_send_type() {
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    // `()`: this client sends nothing of its own. (The server's handler
    // declares no type, so it speaks no hello: the typed client must not
    // wait for one.)
    let client = Client::<()>::builder()
        .no_handshake()
        .receive::<Status>(8)
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
    to_client.send(&Status::Healthy { n: 3 }).await.unwrap();
    assert_eq!(
        within("the pushed status", client.recv()).await,
        Some(Status::Healthy { n: 3 })
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_failing_on_connect_hook_is_a_hello_error_of_connect() {
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let refused = Client::<String>::builder()
        .on_connect(|_conn: ConnectionHandle| async { Err::<(), BoxError>("not today".into()) })
        .connect(server.local_addr())
        .await;
    match refused {
        Err(chitchat_net::ConnectError::Hello(error)) => {
            assert_eq!(error.to_string(), "not today");
        }
        other => panic!("expected ConnectError::Hello, got {:?}", other.map(|_| ())),
    }
    server.cut().await;
}

#[tokio::test]
async fn a_replier_fails_a_request_from_another_task() {
    let busy = handler_fn(
        |_line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            let replier = ctx.replier();
            tokio::spawn(async move { replier.fail("busy, try later") });
            Ok(())
        },
    );
    let server = Server::builder(busy)
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
    let failed = within("the request", client.request(&"hello".to_string())).await;
    assert!(
        matches!(&failed, Err(RequestError::Remote { code: ErrorCode::Handler, message }) if message == "busy, try later"),
        "{failed:?}"
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn without_request_ids_a_derived_handler_answers_a_peer_in_ordered_mode() {
    // No envelope on the server: what a method returns goes back as a
    // plain frame, which the client in ordered mode takes as the answer.
    let server = Server::listen("127.0.0.1:0", Store::default())
        .await
        .unwrap();
    let client = Client::<Command>::builder()
        .ordered_replies()
        .request_timeout(NEVER)
        .connect(server.local_addr())
        .await
        .unwrap();
    let reply = within(
        "the ordered request",
        client.request(&Command::Get { key: "o".into() }),
    )
    .await;
    assert_eq!(
        reply.unwrap(),
        Reply::Value {
            key: "o".into(),
            value: "O".into()
        }
    );
    // No envelope to carry an error: a request the handler fails on waits
    // for its timeout (here a short one: nothing will ever come).
    let failed = client
        .request_within(
            &Command::Fail {
                why: "no envelope".into(),
            },
            Duration::from_millis(200),
        )
        .await;
    assert!(
        matches!(failed, Err(RequestError::Timeout(_))),
        "{failed:?}"
    );
    client.close().await;
    server.cut().await;
}
