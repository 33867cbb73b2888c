//! Per-connection state: a session made in `on_open`, handed to each call,
//! and given back to `on_close` with the reason the connection ended.

use crate::common;

use std::sync::Mutex;

use chitchat_net::{BoxError, Client, CloseReason, Closed, Context, Handler, Server};
use common::within;
use tokio::sync::mpsc;

/// Numbers each peer's lines, per connection, and reports each
/// connection's count and end.
struct Counter {
    ended: Mutex<Option<mpsc::UnboundedSender<(u64, CloseReason)>>>,
}

#[derive(Default)]
struct Lines {
    count: u64,
}

impl Handler for Counter {
    type Message = String;

    async fn on_open(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.set_session(Lines::default());
        Ok(())
    }

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let lines = ctx.session::<Lines>().ok_or("no session")?;
        lines.count += 1;
        let n = lines.count;
        if line == "bye" {
            ctx.close();
        }
        ctx.send(&format!("{n}: {line}"))?;
        Ok(())
    }

    async fn on_close(&self, mut closed: Closed) {
        let count = closed.take_session::<Lines>().map_or(0, |l| l.count);
        if let Some(tx) = &*self.ended.lock().unwrap() {
            let _ = tx.send((count, closed.reason()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_keeps_its_own_session_until_on_close() {
    let (tx, mut ended) = mpsc::unbounded_channel();
    let server = Server::listen(
        "127.0.0.1:0",
        Counter {
            ended: Mutex::new(Some(tx)),
        },
    )
    .await
    .unwrap();
    // Two clients at once, each numbered from 1 by its own session.
    let a = Client::<String>::builder()
        .receive::<String>(64)
        .connect(server.local_addr())
        .await
        .unwrap();
    let b = Client::<String>::builder()
        .receive::<String>(64)
        .connect(server.local_addr())
        .await
        .unwrap();
    for i in 0..5 {
        a.send(&format!("a{i}")).await.unwrap();
        if i < 3 {
            b.send(&format!("b{i}")).await.unwrap();
        }
    }
    for i in 0..5 {
        assert_eq!(
            within("a's line", a.recv()).await.unwrap(),
            format!("{}: a{i}", i + 1)
        );
    }
    for i in 0..3 {
        assert_eq!(
            within("b's line", b.recv()).await.unwrap(),
            format!("{}: b{i}", i + 1)
        );
    }
    // b says bye: the server closes it (by the server: ByUs there).
    b.send(&"bye".to_string()).await.unwrap();
    assert_eq!(
        within("b's end", ended.recv()).await,
        Some((4, CloseReason::ByUs))
    );
    assert_eq!(within("b closed", b.closed()).await, CloseReason::ByPeer);
    // a closes: the server sees its peer end it.
    a.close().await;
    assert_eq!(
        within("a's end", ended.recv()).await,
        Some((5, CloseReason::ByPeer))
    );
    server.cut().await;
}

mod derived {
    use super::*;
    use chitchat_net::{Handler, Message};

    #[derive(Debug, Message)]
    #[message(codec = "bincode")]
    pub enum Talk {
        #[message(tag = 1)]
        Say { text: String },
    }

    /// A derived handler with both hooks: a per-connection count made in
    /// `on_open`, reported with the close reason by `on_close`.
    #[derive(Handler)]
    #[handler(message = Talk, on_open = Self::hello, on_close = Self::bye)]
    pub struct Chat {
        pub ended: mpsc::UnboundedSender<(u64, CloseReason)>,
    }

    struct Said(u64);

    impl Chat {
        async fn hello(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
            ctx.set_session(Said(0));
            ctx.send(&"welcome".to_string())?;
            Ok(())
        }

        async fn bye(&self, mut closed: Closed) {
            let said = closed.take_session::<Said>().map_or(0, |s| s.0);
            let _ = self.ended.send((said, closed.reason()));
        }
    }

    impl TalkHandler for Chat {
        async fn say(&self, text: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
            ctx.session::<Said>().ok_or("no session")?.0 += 1;
            ctx.send(&format!("heard {text}"))?;
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_derived_handler_takes_on_open_and_on_close_hooks() {
    use derived::{Chat, Talk};
    let (tx, mut ended) = mpsc::unbounded_channel();
    let server = Server::listen("127.0.0.1:0", Chat { ended: tx })
        .await
        .unwrap();
    let client = Client::<Talk>::builder()
        .receive::<String>(8)
        .connect(server.local_addr())
        .await
        .unwrap();
    assert_eq!(
        within("welcome", client.recv()).await.as_deref(),
        Some("welcome")
    );
    for text in ["a", "b", "c"] {
        client.send(&Talk::Say { text: text.into() }).await.unwrap();
        let heard = within("an answer", client.recv()).await.unwrap();
        assert_eq!(heard, format!("heard {text}"));
    }
    client.close().await;
    assert_eq!(
        within("the end", ended.recv()).await,
        Some((3, CloseReason::ByPeer))
    );
    server.cut().await;
}
