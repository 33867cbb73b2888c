//! Rolling upgrades (issue 22, items 5 and 6): a peer of the previous wire
//! version (the kept definitions in `v1`) against the current one (`v2`,
//! one more variant in `Command` and in `Notice`), both ways, with handlers
//! on both sides and traffic both ways; and the README's table "Evolving
//! your messages", each row run both ways between two real peers.
//!
//! Every request here has a request timeout of [`NEVER`] (60 s), longer
//! than the bound every test waits with (`common::WAIT`, 10 s): a request
//! that would end in its timeout fails the test at `within`, not by luck.

use crate::common;

use chitchat_net::envelope::ErrorCode;
use chitchat_net::handshake::{HandshakeError, Setting};
use chitchat_net::{
    handler_fn, BoxError, Client, ConnectError, Context, Error, ErrorEvents, Message, RequestError,
    Server,
};
use common::{next_event, within, NEVER};
use tokio::sync::mpsc;

/// The previous wire version, kept as it was.
mod v1 {
    use chitchat_net::{BoxError, Context, Handler, Message};

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode", reply = Reply)]
    pub enum Command {
        #[message(tag = 1)]
        Put { key: String, value: String },
        #[message(tag = 2)]
        Get { key: String },
    }

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Reply {
        #[message(tag = 1)]
        Value { key: String, value: Option<String> },
        #[message(tag = 2)]
        Stored,
    }

    /// What a server tells its clients, one-way.
    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Notice {
        #[message(tag = 1)]
        Changed { key: String },
    }

    /// The old server: a map; a `Put` is told to the client as a `Notice`.
    #[derive(Debug, Default, Handler)]
    #[handler(message = Command)]
    pub struct Store(std::sync::Mutex<std::collections::HashMap<String, String>>);

    impl CommandHandler for Store {
        async fn put(
            &self,
            key: String,
            value: String,
            ctx: &mut Context<'_>,
        ) -> Result<Reply, BoxError> {
            self.0.lock().unwrap().insert(key.clone(), value);
            ctx.send(&Notice::Changed { key })?;
            Ok(Reply::Stored)
        }

        async fn get(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
            let value = self.0.lock().unwrap().get(&key).cloned();
            Ok(Reply::Value { key, value })
        }
    }
}

/// The current wire version: `Command::Delete` and `Notice::Evicted` are
/// new, with new tags.
mod v2 {
    use chitchat_net::{BoxError, Context, Handler, Message};

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode", reply = Reply)]
    pub enum Command {
        #[message(tag = 1)]
        Put { key: String, value: String },
        #[message(tag = 2)]
        Get { key: String },
        #[message(tag = 3)]
        Delete { key: String },
    }

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Reply {
        #[message(tag = 1)]
        Value { key: String, value: Option<String> },
        #[message(tag = 2)]
        Stored,
    }

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Notice {
        #[message(tag = 1)]
        Changed { key: String },
        #[message(tag = 2)]
        Evicted { key: String },
    }

    #[derive(Debug, Default, Handler)]
    #[handler(message = Command)]
    pub struct Store(std::sync::Mutex<std::collections::HashMap<String, String>>);

    impl CommandHandler for Store {
        async fn put(
            &self,
            key: String,
            value: String,
            ctx: &mut Context<'_>,
        ) -> Result<Reply, BoxError> {
            self.0.lock().unwrap().insert(key.clone(), value);
            ctx.send(&Notice::Changed { key })?;
            Ok(Reply::Stored)
        }

        async fn get(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
            let value = self.0.lock().unwrap().get(&key).cloned();
            Ok(Reply::Value { key, value })
        }

        async fn delete(&self, key: String, ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
            self.0.lock().unwrap().remove(&key);
            ctx.send(&Notice::Evicted { key })?;
            Ok(Reply::Stored)
        }
    }
}

/// A later `Reply`: one more variant, with a new tag.
mod v3 {
    use chitchat_net::Message;

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Reply {
        #[message(tag = 1)]
        Value { key: String, value: Option<String> },
        #[message(tag = 2)]
        Stored,
        #[message(tag = 3)]
        Gone { key: String },
    }
}

/// A client handler that hands every notice to the test.
fn notices<N: Message>() -> (
    impl chitchat_net::Handler<Message = N>,
    mpsc::UnboundedReceiver<N>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler_fn(
        move |notice: N, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(notice).map_err(|_| "the test is gone")?;
            Ok(())
        },
    );
    (handler, rx)
}

/// The next event, which must be an `UnknownVariant` of `type_name`.
async fn expect_unknown_variant(events: &ErrorEvents, type_name: &str, tag: u32) {
    let event = next_event(events).await;
    match event.error {
        Error::UnknownVariant {
            type_name: name,
            tag: got,
        } if name == type_name && got == tag => {}
        ref other => panic!("expected UnknownVariant {{ {type_name}, {tag} }}, got {other:?}"),
    }
    assert!(event.is_error(), "{event}");
    let words = event.to_string();
    assert!(
        words.contains(type_name) && words.contains(&format!("tag {tag}")),
        "{words}"
    );
}

/// An old client (v1) against a new server (v2): the handshake accepts
/// it; requests of the shared variants round-trip and their notices reach
/// the client's handler; a notice of the new variant is an
/// `UnknownVariant` event at the old client, counted, and the connection
/// goes on.
#[tokio::test]
async fn an_old_client_and_a_new_server_understand_the_shared_variants() {
    let server = Server::builder(v2::Store::default())
        .request_ids()
        .handshake::<v2::Notice>()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let (handler, mut notices) = notices::<v1::Notice>();
    let client = Client::<v1::Command>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .handler(handler)
        .connect(server.local_addr())
        .await
        .expect("a client of the previous version is accepted");
    let client_events = client.errors();

    let put = v1::Command::Put {
        key: "k".into(),
        value: "v".into(),
    };
    let stored = within("the put", client.request(&put)).await.unwrap();
    assert_eq!(stored, v1::Reply::Stored);
    let changed = within("the notice", notices.recv()).await.unwrap();
    assert_eq!(changed, v1::Notice::Changed { key: "k".into() });

    // The new variant, sent to the old peer: skipped, counted, an event.
    let peer = server.remote_addrs()[0].clone();
    let evicted = v2::Notice::Evicted { key: "k".into() };
    server.send_to(peer.clone(), &evicted).await.unwrap();
    let changed = v2::Notice::Changed { key: "k2".into() };
    server.send_to(peer, &changed).await.unwrap();
    expect_unknown_variant(&client_events, "Notice", 2).await;
    let next = within("the notice after it", notices.recv()).await.unwrap();
    assert_eq!(next, v1::Notice::Changed { key: "k2".into() });
    assert_eq!(client.stats().unknown_variants, 1);

    // The connection is still up: requests go on.
    let get = v1::Command::Get { key: "k".into() };
    let value = within("the get", client.request(&get)).await.unwrap();
    assert_eq!(
        value,
        v1::Reply::Value {
            key: "k".into(),
            value: Some("v".into())
        }
    );
    assert!(!client.is_closed());
    client.close().await;
    server.cut().await;
}

/// A new server answering an old client with a reply variant the client
/// lacks (its `Reply` gained `Gone`; replies are not in the hello, so the
/// handshake accepts the client): that request fails at once with
/// `RequestError::BadReply(Error::UnknownVariant)` naming the type and tag,
/// not a timeout; the connection goes on, and replies of the shared
/// variants still arrive.
#[tokio::test]
async fn a_reply_variant_the_old_client_lacks_is_a_bad_reply_naming_it() {
    let store = handler_fn(
        |cmd: v1::Command, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            match cmd {
                v1::Command::Get { key } => ctx.reply(&v3::Reply::Gone { key })?,
                v1::Command::Put { .. } => ctx.reply(&v3::Reply::Stored)?,
            }
            Ok(())
        },
    );
    let server = Server::builder(store)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = within(
        "connect",
        Client::<v1::Command>::builder()
            .request_ids()
            .request_timeout(NEVER)
            .connect(server.local_addr()),
    )
    .await
    .expect("replies are not in the hello: the client is accepted");
    let get = v1::Command::Get { key: "k".into() };
    let refused = within("the get", client.request(&get)).await;
    match &refused {
        Err(RequestError::BadReply(Error::UnknownVariant { type_name, tag })) => {
            assert_eq!((*type_name, *tag), ("Reply", 3));
        }
        other => panic!("expected BadReply(UnknownVariant), got {other:?}"),
    }
    let words = refused.unwrap_err().to_string();
    assert!(
        words.contains("Reply") && words.contains("tag 3"),
        "{words}"
    );
    // The connection goes on.
    let put = v1::Command::Put {
        key: "k".into(),
        value: "v".into(),
    };
    let stored = within("the put", client.request(&put)).await.unwrap();
    assert_eq!(stored, v1::Reply::Stored);
    assert!(!client.is_closed());
    client.close().await;
    server.cut().await;
}

/// A new client (v2) against an old server (v1): the handshake accepts
/// it; the shared variants round-trip both ways; a request of the new
/// variant fails at once with an `UnknownVariant` error reply naming the
/// type and tag, a one-way frame of it is an `UnknownVariant` event at the
/// server, both counted, and the connection goes on.
#[tokio::test]
async fn a_new_client_and_an_old_server_understand_the_shared_variants() {
    let server = Server::builder(v1::Store::default())
        .request_ids()
        .handshake::<v1::Notice>()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let server_events = server.errors();
    let (handler, mut notices) = notices::<v2::Notice>();
    let client = Client::<v2::Command>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .handler(handler)
        .connect(server.local_addr())
        .await
        .expect("a client of the next version is accepted");

    let put = v2::Command::Put {
        key: "k".into(),
        value: "v".into(),
    };
    let stored = within("the put", client.request(&put)).await.unwrap();
    assert_eq!(stored, v2::Reply::Stored);
    let changed = within("the notice", notices.recv()).await.unwrap();
    assert_eq!(changed, v2::Notice::Changed { key: "k".into() });

    // A request of the new variant: a typed error reply, at once.
    let delete = v2::Command::Delete { key: "k".into() };
    let refused = within(
        "the refused request (not its 60 s timeout)",
        client.request(&delete),
    )
    .await;
    match refused {
        Err(RequestError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::UnknownVariant);
            assert!(
                message.contains("`Command`") && message.contains("tag 3"),
                "{message}"
            );
        }
        other => panic!("expected an UnknownVariant error reply, got {other:?}"),
    }
    expect_unknown_variant(&server_events, "Command", 3).await;
    // One-way: an event at the server.
    client.send(&delete).await.unwrap();
    expect_unknown_variant(&server_events, "Command", 3).await;
    assert_eq!(server.stats().unknown_variants, 2);

    // The connection is still up: the shared variants go on.
    let get = v2::Command::Get { key: "k".into() };
    let value = within("the get", client.request(&get)).await.unwrap();
    assert_eq!(
        value,
        v2::Reply::Value {
            key: "k".into(),
            value: Some("v".into())
        }
    );
    assert!(!client.is_closed());
    client.close().await;
    server.cut().await;
}

/// A type of the README's table: the sample it sends (a variant every
/// compatible version shares).
trait Version: Message + Clone + PartialEq + std::fmt::Debug + Sync + serde::Serialize {
    fn sample() -> Self;
}

/// One version of the table's message type, in a module of its own.
macro_rules! version {
    ($module:ident, $name:ident, sample = $sample:expr, $(#[$attr:meta])* { $($body:tt)* }) => {
        mod $module {
            #[derive(Debug, Clone, PartialEq, serde::Serialize, chitchat_net::Message)]
            #[message(codec = "bincode")]
            $(#[$attr])*
            pub enum $name { $($body)* }

            impl super::Version for $name {
                fn sample() -> Self {
                    use $name::*;
                    $sample
                }
            }
        }
    };
}

version!(base, Op, sample = Get { key: "k".into() }, {
    #[message(tag = 1)]
    Put { key: String, value: u32 },
    #[message(tag = 2)]
    Get { key: String },
});
version!(add_variant, Op, sample = Get { key: "k".into() }, {
    #[message(tag = 1)]
    Put { key: String, value: u32 },
    #[message(tag = 2)]
    Get { key: String },
    #[message(tag = 3)]
    Delete { key: String },
});
version!(reorder_pinned, Op, sample = Get { key: "k".into() }, {
    #[message(tag = 2)]
    Get { key: String },
    #[message(tag = 1)]
    Put { key: String, value: u32 },
});
version!(remove_variant, Op, sample = Get { key: "k".into() }, {
    #[message(tag = 2)]
    Get { key: String },
});
version!(rename_variant, Op, sample = Fetch { key: "k".into() }, {
    #[message(tag = 1)]
    Put { key: String, value: u32 },
    #[message(tag = 2)]
    Fetch { key: String },
});
version!(add_field, Op, sample = Get { key: "k".into() }, {
    #[message(tag = 1)]
    Put { key: String, value: u32, ttl: u64 },
    #[message(tag = 2)]
    Get { key: String },
});
version!(change_field_type, Op, sample = Get { key: "k".into() }, {
    #[message(tag = 1)]
    Put { key: String, value: u64 },
    #[message(tag = 2)]
    Get { key: String },
});
version!(declared, Op, sample = Get { key: "k".into() },
    #[message(also_decodes = super::base::Op)]
{
    #[message(tag = 1)]
    Put { key: String, value: u64 },
    #[message(tag = 2)]
    Get { key: String },
});
version!(rename_type, Operation, sample = Get { key: "k".into() }, {
    #[message(tag = 1)]
    Put { key: String, value: u32 },
    #[message(tag = 2)]
    Get { key: String },
});
version!(unpinned, Op, sample = Get { key: "k".into() }, {
    Put { key: String, value: u32 },
    Get { key: String },
});
version!(insert_unpinned, Op, sample = Get { key: "k".into() }, {
    Delete { key: String },
    Put { key: String, value: u32 },
    Get { key: String },
});

/// What a row expects of a pair of versions.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Accepted, and the sample round-trips.
    Works,
    /// Refused at `connect` (a mismatch of this setting, whose words hold
    /// each of these).
    Refused(Setting, &'static [&'static str]),
}

/// A server of `S` that answers each request with the request (as `S`),
/// and a client of `C` that asks it the sample: what happened.
async fn run<S: Version, C: Version>(expect: Expect) -> Result<(), String> {
    let echo = handler_fn(|op: S, ctx: &mut Context<'_>| -> Result<(), BoxError> {
        ctx.reply(&op)?;
        Ok(())
    });
    let server = Server::builder(echo)
        .request_ids()
        .handshake::<S>()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let connect = Client::<C>::builder()
        .request_ids()
        .request_timeout(NEVER)
        .receive::<C>(4)
        .connect(server.local_addr());
    let connected = within("connect", connect).await;
    let outcome = match (connected, expect) {
        (Ok(client), Expect::Works) => {
            let sample = C::sample();
            let back = within("the sample", client.request_untyped::<C>(&sample)).await;
            client.close().await;
            match back {
                Ok(back) if back == sample => Ok(()),
                other => Err(format!("the sample came back as {other:?}")),
            }
        }
        (Ok(client), Expect::Refused(..)) => {
            client.close().await;
            Err("connected".to_owned())
        }
        (
            Err(ConnectError::Handshake(HandshakeError::Mismatch(m))),
            Expect::Refused(setting, words),
        ) if m.setting == setting && words.iter().all(|w| m.words.contains(w)) => Ok(()),
        (Err(e), _) => Err(format!("connect failed: {e}")),
    };
    server.cut().await;
    outcome
}

/// Runs `old` against `new` both ways (old server and new client, new
/// server and old client), expecting `expect` each way.
async fn both_ways<Old: Version, New: Version>(row: &str, expect: Expect) -> Vec<String> {
    let mut failed = Vec::new();
    if let Err(e) = run::<Old, New>(expect).await {
        failed.push(format!("{row}, old server, new client: {e}"));
    }
    if let Err(e) = run::<New, Old>(expect).await {
        failed.push(format!("{row}, new server, old client: {e}"));
    }
    failed
}

/// Every row of the README's table "Evolving your messages", both ways.
#[tokio::test]
async fn the_readme_table_of_changes_holds_both_ways() {
    let mut failed = Vec::new();
    failed.extend(both_ways::<base::Op, add_variant::Op>("add a variant", Expect::Works).await);
    failed.extend(
        both_ways::<base::Op, reorder_pinned::Op>("reorder pinned variants", Expect::Works).await,
    );
    failed
        .extend(both_ways::<base::Op, remove_variant::Op>("remove a variant", Expect::Works).await);
    failed.extend(
        both_ways::<base::Op, rename_variant::Op>(
            "rename a variant",
            Expect::Refused(Setting::Variants, &["tag 2", "`Get`", "`Fetch`"]),
        )
        .await,
    );
    failed.extend(
        both_ways::<base::Op, add_field::Op>(
            "add a field",
            Expect::Refused(Setting::Fields, &["`Op::Put`"]),
        )
        .await,
    );
    failed.extend(
        both_ways::<base::Op, change_field_type::Op>(
            "change a field's type",
            Expect::Refused(Setting::Fields, &["`Op::Put`"]),
        )
        .await,
    );
    failed.extend(
        both_ways::<base::Op, rename_type::Operation>(
            "rename the type",
            Expect::Refused(Setting::MessageType, &["`Op`", "`Operation`"]),
        )
        .await,
    );
    failed.extend(
        both_ways::<unpinned::Op, insert_unpinned::Op>(
            "insert an unpinned variant",
            Expect::Refused(Setting::Variants, &["tag 0", "`Put`", "`Delete`"]),
        )
        .await,
    );
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A declared earlier version (`#[message(also_decodes = base::Op)]`):
/// the new type, whose `Put` carries a `u64` where the old one had a
/// `u32` (the same bytes in bincode's varints), accepts old senders; an
/// old receiver still refuses the new sender, naming the variant. Without
/// the declaration both ways are refused (the table's "change a field's
/// type").
#[tokio::test]
async fn a_declared_earlier_version_is_accepted_where_it_is_received() {
    assert_eq!(
        <declared::Op as Message>::also_decodes(),
        vec![<base::Op as Message>::fingerprint().unwrap()]
    );
    // An old server receiving from a new client: refused.
    let refused = run::<base::Op, declared::Op>(Expect::Refused(Setting::Fields, &["`Op::Put`"]));
    refused.await.unwrap();

    // A new server receiving from an old client (the server declares
    // nothing about what it sends): accepted, and the old client's `Put`
    // decodes at the new server, and the answer back.
    let echo = handler_fn(
        |op: declared::Op, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.reply(&op)?;
            Ok(())
        },
    );
    let server = Server::builder(echo)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = within(
        "connect",
        Client::<base::Op>::builder()
            .request_ids()
            .request_timeout(NEVER)
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    let put = base::Op::Put {
        key: "k".into(),
        value: 7,
    };
    let back = within("the put", client.request_untyped::<base::Op>(&put)).await;
    assert_eq!(back.unwrap(), put);
    client.close().await;
    server.cut().await;
}
