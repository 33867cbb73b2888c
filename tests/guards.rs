//! Guard rails of issue 14: a depth limit on serde decoding (a recursive
//! message type cannot overflow the stack), the wrong-peer handshake, and
//! refusing empty frames toward Go peers. Two chitchat-net peers talk in
//! every test, on loopback.

mod common;

use chitchat_net::codec::DepthLimitExceeded;
use chitchat_net::{handler_fn, BoxError, Client, Context, Error, Message, Server};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use common::{next_event, within};

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
    assert!(matches!(client.send(&empty).await, Err(Error::EmptyFrame)));
    assert!(matches!(client.try_send(&empty), Err(Error::EmptyFrame)));
    assert!(matches!(
        client.send_bytes(b"").await,
        Err(Error::EmptyFrame)
    ));
    assert!(matches!(
        client.handle().send_all([&empty]).await,
        Err(Error::EmptyFrame)
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
