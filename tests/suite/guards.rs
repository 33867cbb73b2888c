//! Guard rails of issue 14: a depth limit on serde decoding (a recursive
//! message type cannot overflow the stack), the wrong-peer handshake, and
//! refusing empty frames toward Go peers. Two chitchat-net peers talk in
//! every test, on loopback.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::codec::DepthLimitExceeded;
use chitchat_net::handshake::HandshakeError;
use chitchat_net::{handler_fn, BoxError, Client, CloseReason, Context, Error, Message, Server};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use common::{next_event, within, WAIT};

// ---------------------------------------------------------------------------
// Recursion
// ---------------------------------------------------------------------------

/// A recursive type: a chain of nodes around a leaf.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Tree {
    Leaf,
    Node(Box<Tree>),
}

impl Tree {
    fn depth(&self) -> usize {
        let (mut tree, mut levels) = (self, 1);
        while let Tree::Node(inner) = tree {
            tree = inner;
            levels += 1;
        }
        levels
    }
}

/// A derived tagged enum carrying the recursive type.
#[derive(Debug, PartialEq, Message)]
#[message(codec = "bincode")]
enum Shape {
    #[message(tag = 1)]
    Tree(Tree),
    #[message(tag = 2)]
    Ping(u32),
}

/// The same over postcard.
#[derive(Debug, PartialEq, Message)]
#[message(codec = "postcard")]
enum PostShape {
    #[message(tag = 1)]
    Tree(Tree),
    #[message(tag = 2)]
    Ping(u32),
}

/// A plain serde type (no derive of ours): the recursive type itself.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Plain(Tree);

impl Message for Plain {
    type Codec = chitchat_net::Bincode;
}

/// A frame of a tagged enum: the tag, then a tuple holding a tree of
/// `nodes` nodes (one variant byte each, in bincode and postcard alike),
/// built by hand: encoding 50,000 levels would itself recurse that deep.
fn tagged_tree(tag: u8, nodes: usize) -> Vec<u8> {
    let mut frame = vec![tag];
    frame.extend(std::iter::repeat_n(1u8, nodes));
    frame.push(0);
    frame
}

fn depth_exceeded(error: &Error) -> Option<DepthLimitExceeded> {
    match error {
        Error::Decode { source, .. } => source.downcast_ref().copied(),
        _ => None,
    }
}

/// A server of `M` that forwards what it gets (`depth` for a tree, or the
/// ping's number) to a channel.
async fn tree_server<M: Message>(
    describe: fn(M) -> (usize, u32),
) -> (
    Server<impl chitchat_net::Handler<Message = M>>,
    mpsc::UnboundedReceiver<(usize, u32)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler_fn(
        move |msg: M, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(describe(msg))?;
            Ok(())
        },
    );
    let server = Server::listen("127.0.0.1:0", handler).await.unwrap();
    (server, rx)
}

/// Through a real server: 50 KB of nesting is a typed decode event, the
/// process and the connection survive, another connection works, and a
/// nesting just under the limit reaches the handler.
async fn deep_frames_are_refused<M: Message>(describe: fn(M) -> (usize, u32), ping: M) {
    let (server, mut got) = tree_server::<M>(describe).await;
    let errors = server.errors();
    let deep = within("connect", Client::<M>::connect(server.local_addr()))
        .await
        .unwrap();
    let other = within("connect", Client::<M>::connect(server.local_addr()))
        .await
        .unwrap();

    deep.send_bytes(&tagged_tree(1, 50_000)).await.unwrap();
    let event = next_event(&errors).await;
    assert_eq!(
        depth_exceeded(&event.error),
        Some(DepthLimitExceeded { limit: 128 }),
        "{event}: {:?}",
        event.error
    );
    assert_eq!(event.peer, Some(deep.local_addr()));

    // The other connection, and the one that sent it, keep working.
    other.send(&ping).await.unwrap();
    assert_eq!(within("the ping", got.recv()).await, Some((0, 7)));
    // The fields' tuple takes one level: 126 nodes and a leaf fit in 128.
    deep.send_bytes(&tagged_tree(1, 126)).await.unwrap();
    assert_eq!(within("the tree", got.recv()).await, Some((127, 0)));
    deep.send_bytes(&tagged_tree(1, 127)).await.unwrap();
    let event = next_event(&errors).await;
    assert!(depth_exceeded(&event.error).is_some(), "{:?}", event.error);
    deep.send(&ping).await.unwrap();
    assert_eq!(within("the ping", got.recv()).await, Some((0, 7)));

    deep.close().await;
    other.close().await;
    server.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_derived_enum_cannot_overflow_the_stack() {
    deep_frames_are_refused::<Shape>(
        |msg| match msg {
            Shape::Tree(tree) => (tree.depth(), 0),
            Shape::Ping(n) => (0, n),
        },
        Shape::Ping(7),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_derived_enum_over_postcard_cannot_overflow_the_stack() {
    deep_frames_are_refused::<PostShape>(
        |msg| match msg {
            PostShape::Tree(tree) => (tree.depth(), 0),
            PostShape::Ping(n) => (0, n),
        },
        PostShape::Ping(7),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_plain_serde_type_cannot_overflow_the_stack() {
    let (tx, mut got) = mpsc::unbounded_channel();
    let handler = handler_fn(
        move |msg: Plain, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(msg.0.depth())?;
            Ok(())
        },
    );
    let server = Server::listen("127.0.0.1:0", handler).await.unwrap();
    let errors = server.errors();
    let client = within("connect", Client::<Plain>::connect(server.local_addr()))
        .await
        .unwrap();
    // Without the tag byte: the tree itself, 50 KB deep.
    client
        .send_bytes(&tagged_tree(1, 50_000)[1..])
        .await
        .unwrap();
    let event = next_event(&errors).await;
    assert!(depth_exceeded(&event.error).is_some(), "{:?}", event.error);
    // The newtype struct is one level: 126 nodes and a leaf fit.
    client.send_bytes(&tagged_tree(1, 126)[1..]).await.unwrap();
    assert_eq!(within("the tree", got.recv()).await, Some(127));
    client.send(&Plain(Tree::Leaf)).await.unwrap();
    assert_eq!(within("the leaf", got.recv()).await, Some(1));
    client.close().await;
    server.cut().await;
}

// ---------------------------------------------------------------------------
// Empty frames toward Go peers
// ---------------------------------------------------------------------------

/// With `refuse_empty_frames`, no way of sending writes an empty frame, on
/// either side; without it, an empty frame goes out and arrives as an empty
/// message (what crashes a Go peer).
#[tokio::test]
async fn empty_frames_are_refused_on_both_sides_when_asked() {
    // The server answers each line with the line, and reports what its
    // `ctx.send` of an empty line said.
    let (tx, mut said) = mpsc::unbounded_channel();
    let echo = handler_fn(
        move |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(format!("{:?}", ctx.send(&String::new())))?;
            ctx.send(&line)?;
            Ok(())
        },
    );
    let server = Server::builder(echo)
        .refuse_empty_frames()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = within(
        "connect",
        Client::<String>::builder()
            .refuse_empty_frames()
            .receive::<String>(16)
            .connect(server.local_addr()),
    )
    .await
    .unwrap();

    let empty = String::new();
    use chitchat_net::{SendError, TrySendError};
    assert!(matches!(
        client.send(&empty).await,
        Err(SendError::Unsendable(Error::EmptyFrame))
    ));
    assert!(matches!(
        client.try_send(&empty),
        Err(TrySendError::Unsendable(Error::EmptyFrame))
    ));
    assert!(matches!(
        client.send_bytes(b"").await,
        Err(SendError::Unsendable(Error::EmptyFrame))
    ));
    assert!(matches!(
        client.handle().send_all([&empty]).await,
        Err(SendError::Unsendable(Error::EmptyFrame))
    ));
    client.send(&"go".to_string()).await.unwrap();
    assert_eq!(
        within("what the handler's send said", said.recv())
            .await
            .as_deref(),
        Some("Err(EmptyFrame)")
    );
    // The first frame to arrive is the echo: nothing empty came before it.
    assert_eq!(
        within("the echo", client.recv()).await.as_deref(),
        Some("go")
    );
    assert!(matches!(server.broadcast(&empty), Err(Error::EmptyFrame)));
    assert!(matches!(
        server.send_to(client.local_addr(), &empty).await,
        Err(Error::EmptyFrame)
    ));
    assert!(!Error::EmptyFrame.is_fatal());
    client.close().await;
    server.cut().await;

    // Off (the default): the empty frame is sent and received.
    let (tx, mut got) = mpsc::unbounded_channel();
    let collect = handler_fn(
        move |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(line)?;
            Ok(())
        },
    );
    let server = Server::listen("127.0.0.1:0", collect).await.unwrap();
    let client = within("connect", Client::<String>::connect(server.local_addr()))
        .await
        .unwrap();
    client.send(&empty).await.unwrap();
    assert_eq!(
        within("the empty line", got.recv()).await.as_deref(),
        Some("")
    );
    client.close().await;
    server.cut().await;
}

// ---------------------------------------------------------------------------
// Wrong-peer detection
// ---------------------------------------------------------------------------

/// What the clients send and the server accepts.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Command {
    #[message(tag = 1)]
    Get { key: String },
    #[message(tag = 2)]
    Put { key: String, value: String },
}

/// What the server sends back: `NotFound { key }` has the shape of
/// `Command::Get { key }`, tag included.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Reply {
    #[message(tag = 1)]
    NotFound { key: String },
    #[message(tag = 2)]
    Found { key: String, value: String },
}

/// Fingerprints of types that differ in one way each from `Command`.
mod shapes {
    pub mod renamed_field {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "bincode")]
        pub enum Command {
            #[message(tag = 1)]
            Get { name: String },
            #[message(tag = 2)]
            Put { key: String, value: String },
        }
    }

    pub mod reordered {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "bincode")]
        pub enum Command {
            #[message(tag = 2)]
            Put { key: String, value: String },
            #[message(tag = 1)]
            Get { key: String },
        }
    }

    pub mod retagged {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "bincode")]
        pub enum Command {
            #[message(tag = 1)]
            Get { key: String },
            #[message(tag = 3)]
            Put { key: String, value: String },
        }
    }

    pub mod retyped {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "bincode")]
        pub enum Command {
            #[message(tag = 1)]
            Get { key: Vec<u8> },
            #[message(tag = 2)]
            Put { key: String, value: String },
        }
    }

    pub mod postcard {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "postcard")]
        pub enum Command {
            #[message(tag = 1)]
            Get { key: String },
            #[message(tag = 2)]
            Put { key: String, value: String },
        }
    }

    pub mod renamed_variant {
        #[derive(Debug, chitchat_net::Message)]
        #[message(codec = "bincode")]
        pub enum Command {
            #[message(tag = 1)]
            Fetch { key: String },
            #[message(tag = 2)]
            Put { key: String, value: String },
        }
    }

    /// A message whose field is a derived message: a change inside the
    /// field's type shows in the outer fingerprint.
    pub mod nested {
        pub mod a {
            #[derive(Debug, serde::Serialize, serde::Deserialize, chitchat_net::Message)]
            #[message(codec = "bincode")]
            pub struct Entry {
                pub key: String,
            }

            #[derive(Debug, chitchat_net::Message)]
            #[message(codec = "bincode")]
            pub enum Batch {
                Add(Entry),
            }
        }

        pub mod b {
            #[derive(Debug, serde::Serialize, serde::Deserialize, chitchat_net::Message)]
            #[message(codec = "bincode")]
            pub struct Entry {
                pub name: String,
            }

            #[derive(Debug, chitchat_net::Message)]
            #[message(codec = "bincode")]
            pub enum Batch {
                Add(Entry),
            }
        }
    }
}

#[test]
fn fingerprints_cover_names_tags_fields_and_codec_but_not_order() {
    let command = Command::fingerprint().expect("derived types have one");
    assert_ne!(Some(command), Reply::fingerprint());
    assert_ne!(Some(command), shapes::renamed_field::Command::fingerprint());
    assert_ne!(Some(command), shapes::retagged::Command::fingerprint());
    assert_ne!(Some(command), shapes::retyped::Command::fingerprint());
    assert_ne!(Some(command), shapes::postcard::Command::fingerprint());
    // Reordering variants with pinned tags keeps the wire, and the
    // fingerprint; so does renaming a variant.
    assert_eq!(Some(command), shapes::reordered::Command::fingerprint());
    assert_eq!(
        Some(command),
        shapes::renamed_variant::Command::fingerprint()
    );
    // Recursively through derived field types.
    assert_ne!(
        shapes::nested::a::Batch::fingerprint(),
        shapes::nested::b::Batch::fingerprint()
    );
    // Types that are not derived declare none.
    assert_eq!(String::fingerprint(), None);
    assert_eq!(bytes::Bytes::fingerprint(), None);
    assert_eq!(Plain::fingerprint(), None);
    // Stable: the same type gives the same value in every build.
    assert_eq!(Command::fingerprint(), Command::fingerprint());
}

/// A server of `Command` that answers with `Reply` and counts what reaches
/// its handler.
async fn store_server(
    timeout: Duration,
) -> (
    Server<impl chitchat_net::Handler<Message = Command>>,
    Arc<AtomicUsize>,
) {
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let store = handler_fn(
        move |cmd: Command, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            count.fetch_add(1, Ordering::SeqCst);
            match cmd {
                Command::Get { key } => ctx.send(&Reply::NotFound { key })?,
                Command::Put { key, value } => ctx.send(&Reply::Found { key, value })?,
            }
            Ok(())
        },
    );
    let server = Server::builder(store)
        .handshake::<Reply>()
        .handshake_timeout(timeout)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    (server, handled)
}

fn handshake_error(error: &Error) -> Option<&HandshakeError> {
    match error {
        Error::Handshake(error) => Some(error),
        _ => None,
    }
}

#[tokio::test]
async fn matching_peers_pass_the_handshake() {
    let (server, handled) = store_server(WAIT).await;
    let (tx, mut replies) = mpsc::unbounded_channel();
    let collect = handler_fn(
        move |reply: Reply, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(reply)?;
            Ok(())
        },
    );
    let client = within(
        "connect",
        Client::<Command>::builder()
            .handshake()
            .handler(collect)
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    // Sent before the server's hello is in: held until it is, then handled.
    client
        .send(&Command::Get { key: "a".into() })
        .await
        .unwrap();
    assert_eq!(
        within("the reply", replies.recv()).await,
        Some(Reply::NotFound { key: "a".into() })
    );
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    // A write-only client (accepting anything) matches too.
    let writer = within(
        "connect",
        Client::<Command>::builder()
            .handshake()
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    writer
        .send(&Command::Put {
            key: "k".into(),
            value: "v".into(),
        })
        .await
        .unwrap();
    common::wait_until("the put is handled", || handled.load(Ordering::SeqCst) == 2).await;
    assert!(server.errors().try_recv().is_none());
    assert!(client.errors().try_recv().is_none());
    client.close().await;
    writer.close().await;
    server.cut().await;
}

/// The case: a client built with `Reply` as what it sends. Its
/// frames would decode as `Command`s; the handshake stops them on both
/// sides before any reaches the handler, and `connect` says so.
#[tokio::test]
async fn a_client_with_the_wrong_message_type_is_refused_on_both_sides() {
    let (server, handled) = store_server(WAIT).await;
    let server_errors = server.errors();
    let refused = within(
        "connect",
        Client::<Reply>::builder()
            .handshake()
            .receive::<Command>(4)
            .connect(server.local_addr()),
    )
    .await;
    let Err(chitchat_net::ConnectError::Handshake(HandshakeError::Mismatch(mismatch))) = refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(
        mismatch.to_string(),
        "the server sends `Reply`, this client accepts `Command`"
    );
    let event = next_event(&server_errors).await;
    let Some(HandshakeError::Mismatch(theirs)) = handshake_error(&event.error) else {
        panic!("{:?}", event.error)
    };
    assert_eq!(
        theirs.to_string(),
        "the client sends `Reply`, this server accepts `Command`"
    );
    assert!(event.error.is_fatal());
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    server.cut().await;
}

/// A server without the handshake (which never writes first): it refuses
/// the client's hello, and the client's `connect` fails at once saying so
/// (not after its handshake timeout, long here; not a hang).
#[tokio::test]
async fn a_server_without_the_handshake_refuses_the_hello_at_once() {
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let refused = within(
        "connect",
        Client::<Command>::builder()
            .handshake()
            .handshake_timeout(Duration::from_secs(60))
            .connect(server.local_addr()),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(chitchat_net::ConnectError::Handshake(
                HandshakeError::NoHandshake { .. }
            ))
        ),
        "{refused:?}"
    );
    server.cut().await;
}

/// A client without the handshake: its first frame is not a hello, or it
/// refuses the server's hello; either way a typed error at once on the
/// server (well within its handshake timeout, long here), whether the
/// client sends or stays silent; the server's hello never reaches the
/// client as a message, nor the client's frames the server's handler.
#[tokio::test]
async fn a_client_without_the_handshake_is_refused() {
    let (server, handled) = store_server(Duration::from_secs(60)).await;
    let errors = server.errors();
    let client = within(
        "connect",
        Client::<Command>::builder()
            .no_handshake()
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    // Sent, or refused if the client has already read the server's hello.
    let _ = client.send(&Command::Get { key: "a".into() }).await;
    let event = next_event(&errors).await;
    assert!(
        matches!(
            handshake_error(&event.error),
            Some(HandshakeError::NotAHello { .. } | HandshakeError::NoHandshake { .. })
        ),
        "{:?}",
        event.error
    );
    assert!(
        event.error.to_string().contains("handshake"),
        "{}",
        event.error
    );
    let event = next_event(&client.errors()).await;
    assert!(
        matches!(
            handshake_error(&event.error),
            Some(HandshakeError::UnexpectedHello { .. })
        ),
        "{:?}",
        event.error
    );
    assert_eq!(
        within("the client's end", client.closed()).await,
        CloseReason::Failed
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    server.cut().await;

    let (server, _) = store_server(Duration::from_secs(60)).await;
    let silent = within(
        "connect",
        Client::<Command>::builder()
            .no_handshake()
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    let event = next_event(&server.errors()).await;
    assert!(
        matches!(
            handshake_error(&event.error),
            Some(HandshakeError::NoHandshake { .. })
        ),
        "{:?}",
        event.error
    );
    drop(silent);
    server.cut().await;
}

/// The handshake needs more than one frame per stream, and a hello that
/// the framing can carry.
#[tokio::test]
async fn framings_that_cannot_carry_a_hello_are_refused() {
    let refused = Server::builder(())
        .framing(chitchat_net::Framing::eof())
        .handshake::<bytes::Bytes>()
        .listen("127.0.0.1:0")
        .await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    let refused = Server::builder(())
        .framing(chitchat_net::Framing::delimited(b' ').raw())
        .handshake::<bytes::Bytes>()
        .listen("127.0.0.1:0")
        .await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    // The hello is cut at the first byte that cannot be in it, whatever
    // the peer's framing: a delimiter that can be in it is refused even
    // escaped; any other will do.
    let refused = Server::builder(())
        .framing(chitchat_net::Framing::delimited(b'-').escaped())
        .handshake::<bytes::Bytes>()
        .listen("127.0.0.1:0")
        .await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    let server = Server::builder(())
        .framing(chitchat_net::Framing::delimited(b';').escaped())
        .handshake::<bytes::Bytes>()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    server.cut().await;
}
