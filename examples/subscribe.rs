//! A key-value store whose clients watch keys over reply streams, while
//! the server restarts once: a subscription (`#[message(stream = Change)]`)
//! answered by a stream of changes under credit-based flow control, next
//! to ordinary requests on the same connection; a graceful shutdown that
//! ends every open stream at once (`ErrorCode::StreamRefused`); reconnecting
//! clients that subscribe again once connected to the new server. Exits 0
//! after checking what every watcher saw.
//!
//! ```text
//! cargo run --example subscribe
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::envelope::ErrorCode;
use chitchat_net::{
    BoxError, Client, Context, Handler, Message, Reconnect, ReplySink, Server, StreamError,
};
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

/// What a client asks the store; tags pinned so that versions agree.
#[derive(Debug, Message)]
#[message(codec = "bincode", reply = Reply, stream = Change)]
enum Command {
    #[message(tag = 1)]
    Put { key: String, value: String },
    #[message(tag = 2)]
    Get { key: String },
    /// The key's value now (if it has one), then every change to it.
    #[message(tag = 3, stream)]
    Watch { key: String },
}

#[derive(Debug, PartialEq, Message)]
#[message(codec = "bincode")]
enum Reply {
    #[message(tag = 1)]
    Value { value: Option<String> },
    #[message(tag = 2)]
    Ok,
}

/// One item of a watch.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Change {
    #[message(tag = 1)]
    Set { key: String, value: String },
}

/// The data: it outlives a server (a store that restarts keeps it).
type Data = Arc<Mutex<HashMap<String, String>>>;

#[derive(Handler)]
#[handler(message = Command)]
struct Store {
    data: Data,
    changes: broadcast::Sender<Change>,
}

impl CommandHandler for Store {
    async fn put(
        &self,
        key: String,
        value: String,
        _ctx: &mut Context<'_>,
    ) -> Result<Reply, BoxError> {
        // Under the lock, so that changes are broadcast in the order applied.
        let mut data = self.data.lock().map_err(|_| "poisoned")?;
        data.insert(key.clone(), value.clone());
        let _ = self.changes.send(Change::Set { key, value });
        Ok(Reply::Ok)
    }

    async fn get(&self, key: String, _ctx: &mut Context<'_>) -> Result<Reply, BoxError> {
        let data = self.data.lock().map_err(|_| "poisoned")?;
        Ok(Reply::Value {
            value: data.get(&key).cloned(),
        })
    }

    async fn watch(
        &self,
        key: String,
        mut sink: ReplySink<Change>,
        _ctx: &mut Context<'_>,
    ) -> Result<(), BoxError> {
        // Subscribed before the value is read: no change falls in between.
        let mut changes = self.changes.subscribe();
        let now = self.data.lock().map_err(|_| "poisoned")?.get(&key).cloned();
        tokio::spawn(async move {
            if let Some(value) = now {
                let current = Change::Set {
                    key: key.clone(),
                    value,
                };
                if sink.send(&current).await.is_err() {
                    return;
                }
            }
            loop {
                let change = tokio::select! {
                    _ = sink.closed() => return, // cancelled, or the server closes
                    change = changes.recv() => change,
                };
                match change {
                    Ok(change) if matches!(&change, Change::Set { key: k, .. } if *k == key) => {
                        if sink.send(&change).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        sink.fail(&format!("the watcher fell {n} changes behind"));
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return sink.end(),
                }
            }
        });
        Ok(())
    }
}

async fn start(addr: SocketAddr, data: &Data) -> Result<Server<Store>, BoxError> {
    let (changes, _) = broadcast::channel(1024);
    let store = Store {
        data: data.clone(),
        changes,
    };
    Ok(Server::builder(store).request_ids().listen(addr).await?)
}

async fn connect(addr: SocketAddr) -> Result<Client<Command>, BoxError> {
    Ok(Client::<Command>::builder()
        .request_ids()
        .reconnect(Reconnect::new().initial_delay(Duration::from_millis(20)))
        .connect(addr)
        .await?)
}

/// What one watcher saw.
#[derive(Debug, Default, Clone)]
struct Seen {
    values: Vec<String>,
    /// Subscriptions made (1 + one per re-subscribe).
    subscriptions: u32,
    /// How each stream but the last ended.
    ends: Vec<String>,
}

/// Watches `key` until told to stop, subscribing again whenever a stream
/// ends with an error (the server restarting); publishes what it saw.
async fn watcher(
    client: Client<Command>,
    key: &'static str,
    seen: watch::Sender<Seen>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    loop {
        // Waits for the reconnect if the client is down (within its
        // request timeout).
        let mut stream = client
            .subscribe(&Command::Watch { key: key.into() })
            .await?;
        seen.send_modify(|s| s.subscriptions += 1);
        loop {
            let next = tokio::select! {
                _ = stop.changed() => None,
                next = stream.next() => Some(next),
            };
            let Some(next) = next else {
                client.close().await;
                return Ok(());
            };
            match next {
                Some(Ok(Change::Set { value, .. })) => seen.send_modify(|s| s.values.push(value)),
                Some(Err(StreamError::Remote {
                    code: ErrorCode::StreamRefused,
                    ..
                })) => {
                    seen.send_modify(|s| s.ends.push("StreamRefused".into()));
                    break;
                }
                Some(Err(StreamError::ConnectionLost)) => {
                    seen.send_modify(|s| s.ends.push("ConnectionLost".into()));
                    break;
                }
                Some(Err(other)) => return Err(other.into()),
                None => return Err("the watch ended without an error".into()),
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let data = Data::default();
    let server = start("127.0.0.1:0".parse()?, &data).await?;
    let addr: SocketAddr = server.local_addr().to_string().parse()?;
    println!("store on {addr}");

    // Two watchers of "color", each on its own reconnecting client.
    let (stop_tx, stop) = watch::channel(false);
    let mut watchers = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = watch::channel(Seen::default());
        let client = connect(addr).await?;
        watchers.push(tokio::spawn(watcher(client, "color", tx, stop.clone())));
        seen.push(rx);
    }
    let wait_all = |seen: &[watch::Receiver<Seen>], what: &'static str, cond: fn(&Seen) -> bool| {
        let mut seen = seen.to_vec();
        async move {
            for rx in &mut seen {
                tokio::time::timeout(Duration::from_secs(30), rx.wait_for(cond))
                    .await
                    .map_err(|_| format!("timed out waiting until {what}"))??;
            }
            Ok::<_, BoxError>(())
        }
    };
    // A writer, on a reconnecting client too: a first value, seen by both
    // watchers (so both watch from then on), five more, a restart, five
    // more.
    let writer = connect(addr).await?;
    let put = Command::Put {
        key: "color".into(),
        value: "v00".into(),
    };
    assert_eq!(writer.request(&put).await?, Reply::Ok);
    wait_all(&seen, "both watchers saw v00", |s| {
        s.values.last().map(String::as_str) == Some("v00")
    })
    .await?;
    for i in 1..=5 {
        let put = Command::Put {
            key: "color".into(),
            value: format!("v{i:02}"),
        };
        assert_eq!(writer.request(&put).await?, Reply::Ok);
    }
    wait_all(&seen, "both watchers saw v05", |s| {
        s.values.last().map(String::as_str) == Some("v05")
    })
    .await?;

    // The restart: a graceful shutdown ends every open stream at once
    // (StreamRefused), then a new server on the same address, same data.
    let report = server.shutdown(Duration::from_secs(5)).await;
    assert!(
        report.finished,
        "the shutdown waited for nothing: {report:?}"
    );
    println!("server stopped; restarting");
    let server = start(addr, &data).await?;
    // Subscribed again, and watching: the new stream's first item, the
    // value now (v05), has arrived. (A watcher that subscribed again before
    // its client saw the old connection end was refused there, and
    // subscribed once more.)
    wait_all(&seen, "both watchers watch again", |s| s.values.len() == 7).await?;

    for i in 6..=10 {
        let put = Command::Put {
            key: "color".into(),
            value: format!("v{i:02}"),
        };
        // The writer reconnected too: `request` waits for it.
        assert_eq!(writer.request(&put).await?, Reply::Ok);
    }
    assert_eq!(
        writer
            .request(&Command::Get {
                key: "color".into()
            })
            .await?,
        Reply::Value {
            value: Some("v10".into())
        }
    );
    wait_all(&seen, "both watchers saw v10", |s| {
        s.values.last().map(String::as_str) == Some("v10")
    })
    .await?;

    stop_tx.send(true)?;
    for watcher in watchers {
        watcher.await??;
    }
    for (n, rx) in seen.iter().enumerate() {
        let seen = rx.borrow().clone();
        println!("watcher {n}: {seen:?}");
        // Every value from v00 on, in order; a watch starts with the value
        // then current, so the re-subscription may repeat v05.
        let expected: Vec<String> = (0..=10).map(|i| format!("v{i:02}")).collect();
        let mut deduped = seen.values.clone();
        deduped.dedup();
        assert_eq!(deduped, expected, "watcher {n} saw {:?}", seen.values);
        // The restart ended the first stream typed: StreamRefused (the
        // graceful shutdown); a subscription made on the closing connection
        // ended typed too (StreamRefused, or ConnectionLost). Every stream
        // but the last ended once, with an error.
        assert!(seen.subscriptions >= 2, "{seen:?}");
        assert_eq!(seen.ends[0], "StreamRefused", "{seen:?}");
        assert_eq!(seen.ends.len() as u32, seen.subscriptions - 1, "{seen:?}");
    }
    writer.close().await;
    server.shutdown(Duration::from_secs(5)).await;
    println!("ok: both watchers saw v00..v10 in order across the restart");
    Ok(())
}
