//! A key-value control plane with request/reply: typed commands that name
//! their reply type (`#[message(reply = Reply)]`), replies matched by
//! request id, a derived handler over shared state that answers by
//! returning, one command answered later from another task (`deferred`),
//! a handler error that reaches the caller, concurrent requests on one
//! connection, and a request that times out.
//!
//! ```text
//! cargo run --example request
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chitchat_net::envelope::ErrorCode;
use chitchat_net::{BoxError, Client, Context, Handler, Message, Replier, RequestError, Server};

/// What a client asks the store; tags pinned so that versions agree. Every
/// command is answered by a `Reply`: `client.request(&cmd)` returns one.
#[derive(Debug, Message)]
#[message(codec = "bincode", reply = Reply)]
enum Command {
    #[message(tag = 1)]
    Put { key: String, value: String },
    #[message(tag = 2)]
    Get { key: String },
    #[message(tag = 3)]
    Delete { key: String },
    /// Answers after `millis`, from another task (a slow backend).
    #[message(tag = 4, deferred)]
    Slow { millis: u64 },
}

/// What the store answers.
#[derive(Debug, PartialEq, Message)]
#[message(codec = "bincode")]
enum Reply {
    #[message(tag = 1)]
    Value { key: String, value: String },
    #[message(tag = 2)]
    NotFound { key: String },
    #[message(tag = 3)]
    Ok,
}

/// The store: one map shared by every connection (`CommandHandler` comes
/// from the derive: one method per command).
#[derive(Debug, Default, Handler)]
#[handler(message = Command)]
struct Store {
    map: Mutex<HashMap<String, String>>,
}

impl Store {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// Each method returns the reply; the derive sends it with the request's
// id. Forgetting to answer does not compile, and an error is answered with
// an error reply: the caller gets `RequestError::Remote` at once.
impl CommandHandler for Store {
    async fn put(
        &self,
        key: String,
        value: String,
        _ctx: &mut Context<'_>,
    ) -> Result<Reply, BoxError> {
        if key.is_empty() {
            return Err("a key must not be empty".into());
        }
        self.map().insert(key, value);
        Ok(Reply::Ok)
    }

    async fn get(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        let value = self.map().get(&key).cloned();
        Ok(match value {
            Some(value) => Reply::Value { key, value },
            None => Reply::NotFound { key },
        })
    }

    async fn delete(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        self.map().remove(&key);
        Ok(Reply::Ok)
    }

    async fn slow(
        &self,
        millis: u64,
        replier: Replier,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        // `deferred`: answer later, from another task. The replier
        // remembers which request it answers, and the handler is free for
        // the next frame.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            let _ = replier.reply(&Reply::Ok).await;
        });
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(Store::default())
        .request_ids()
        .listen("127.0.0.1:0")
        .await?;
    let client = Client::<Command>::builder()
        .request_ids()
        .request_timeout(Duration::from_secs(5))
        .connect(server.local_addr())
        .await?;
    println!("store listening on {}", server.local_addr());

    // 1,000 puts in flight at once on one connection.
    let started = Instant::now();
    let puts = (0..1000).map(|i| {
        let put = Command::Put {
            key: format!("node-{i}"),
            value: format!("10.0.{}.{}", i / 256, i % 256),
        };
        let client = &client;
        async move { client.request(&put).await }
    });
    for reply in futures_util::future::join_all(puts).await {
        assert_eq!(reply?, Reply::Ok);
    }
    let elapsed = started.elapsed();
    println!(
        "1000 concurrent puts answered in {:.1} ms ({:.1} µs per request)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / 1000.0
    );

    // Gets, a delete, a get of what is gone.
    let got = client
        .request(&Command::Get {
            key: "node-42".into(),
        })
        .await?;
    println!("get node-42 -> {got:?}");
    assert_eq!(
        got,
        Reply::Value {
            key: "node-42".into(),
            value: "10.0.0.42".into()
        }
    );
    let deleted = client
        .request(&Command::Delete {
            key: "node-42".into(),
        })
        .await?;
    assert_eq!(deleted, Reply::Ok);
    let gone = client
        .request(&Command::Get {
            key: "node-42".into(),
        })
        .await?;
    println!("after delete    -> {gone:?}");
    assert_eq!(
        gone,
        Reply::NotFound {
            key: "node-42".into()
        }
    );

    // A command the store refuses: its error reaches the caller at once.
    let refused = client
        .request(&Command::Put {
            key: String::new(),
            value: "x".into(),
        })
        .await;
    println!("empty key       -> {refused:?}");
    assert!(matches!(
        refused,
        Err(RequestError::Remote { code: ErrorCode::Handler, ref message }) if message.contains("empty")
    ));

    // A request with a timeout of its own that the store cannot meet.
    let slow = client
        .request_within(&Command::Slow { millis: 300 }, Duration::from_millis(50))
        .await;
    println!("slow request    -> {slow:?}");
    assert!(matches!(slow, Err(RequestError::Timeout(_))));
    // Its reply still comes, later: an event, never the answer to the next
    // request.
    let late = tokio::time::timeout(Duration::from_secs(5), client.errors().recv()).await?;
    println!(
        "then, as an event: {}",
        late.map(|e| e.to_string()).unwrap_or_default()
    );
    let after = client
        .request(&Command::Get {
            key: "node-7".into(),
        })
        .await?;
    assert_eq!(
        after,
        Reply::Value {
            key: "node-7".into(),
            value: "10.0.0.7".into()
        }
    );
    println!(
        "next request    -> {after:?}; late replies counted: {}",
        client.stats().late_replies
    );

    client.close().await;
    server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
