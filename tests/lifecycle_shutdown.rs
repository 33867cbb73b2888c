//! Issue 21, defects 7, 9 and 10: graceful shutdown waits for outstanding
//! `Replier`s; every public async method runs in a spawned task; a reply
//! given up on at the last moment is a late reply. Two chitchat-net peers
//! (a `Server` and a `Client` of this crate) over loopback.
//!
//! Self-contained: no `mod common`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::heartbeat::{
    KeepRegistered, Monitor, PeerEvents, Registration, Responder, TextResponder,
};
use chitchat_net::{
    BoxError, Client, ConnectionHandle, Context, ErrorEvents, Handler, Replier, Server,
};
use tokio::sync::mpsc;

/// Upper bound of every wait that is not itself under test: about progress
/// on loopback, far (well over 5x) above what each step needs on a busy
/// 2-CPU machine.
const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test after [`WAIT`].
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ------------------------------------------------ defect 9: spawnable --

/// Spawns every public async method of the client, its connection handle
/// and its event stream: this file does not compile if one of their
/// futures cannot go to `tokio::spawn` (`Client::send_all` could not: "implementation of `Copy` is not general enough").
fn spawn_client_methods(
    client: Arc<Client<String, String>>,
    handle: ConnectionHandle,
    events: ErrorEvents,
) -> Vec<tokio::task::JoinHandle<()>> {
    let line = || String::from("spawned");
    let mut tasks = Vec::new();
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        c.send(&line()).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let lines = vec![line(), line()];
        c.send_all(&lines).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let lines = vec![line(), line()];
        c.send_all(lines.iter()).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        c.send_bytes(b"spawned").await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let _: String = c.request(&line()).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let _: String = c.request_within(&line(), WAIT).await.unwrap();
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        assert!(c.recv().await.is_some());
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        h.send(&line()).await.unwrap();
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        let lines = vec![line(), line()];
        h.send_all(&lines).await.unwrap();
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        h.send_bytes(b"spawned").await.unwrap();
    }));
    let h = handle.clone();
    tasks.push(tokio::spawn(async move {
        let _: String = h.request(&line(), WAIT).await.unwrap();
    }));
    // Not awaited by the test (they wait for the end).
    drop(tokio::spawn(async move {
        let _ = handle.closed().await;
    }));
    drop(tokio::spawn(async move {
        let _ = events.recv().await;
    }));
    tasks
}

/// Spawns the client's ends (connect, close, closed); compiled, not run.
#[allow(dead_code)]
fn spawn_client_ends(client: Arc<Client<String, String>>, addr: chitchat_net::Addr) {
    let a = addr.clone();
    drop(tokio::spawn(async move {
        let _ = Client::<String>::connect(a).await;
    }));
    let a = addr.clone();
    drop(tokio::spawn(async move {
        let _ = Client::<String>::builder()
            .receive::<String>(4)
            .connect(a)
            .await;
    }));
    drop(tokio::spawn(async move {
        let _ = Client::<String>::connect_unix("/nonexistent").await;
    }));
    drop(tokio::spawn(async move {
        let _ = Client::<String>::builder()
            .connect_unix("/nonexistent")
            .await;
    }));
    drop(tokio::spawn(async move {
        let (io, _) = tokio::io::duplex(64);
        let _ = Client::<String>::builder().connect_io(io, addr).await;
    }));
    let c = client.clone();
    drop(tokio::spawn(async move { c.close().await }));
    drop(tokio::spawn(async move { client.closed().await }));
}

/// Spawns every public async method of the server and of a `Replier`;
/// compiled, not run.
#[allow(dead_code)]
fn spawn_server_methods(server: Arc<Server<Deferred>>, replier: Replier) {
    drop(tokio::spawn(async move {
        let _ = Server::listen("127.0.0.1:0", ()).await;
    }));
    drop(tokio::spawn(async move {
        let _ = Server::builder(()).listen("127.0.0.1:0").await;
    }));
    drop(tokio::spawn(async move {
        let _ = Server::builder(()).listen_unix("/nonexistent/x").await;
    }));
    let s = server.clone();
    drop(tokio::spawn(async move {
        let _ = s.send_to(s.local_addr(), &String::new()).await;
    }));
    let s = server.clone();
    drop(tokio::spawn(async move {
        let _ = s.shutdown(WAIT).await;
    }));
    drop(tokio::spawn(async move { server.cut().await }));
    let r = replier.clone();
    drop(tokio::spawn(async move {
        let _ = r.reply(&String::new()).await;
    }));
    drop(tokio::spawn(async move {
        let _ = replier.try_reply(&String::new());
    }));
}

/// Spawns every public async function and method of the heartbeat module;
/// compiled, not run.
#[allow(dead_code)]
fn spawn_heartbeat_methods(
    monitor: Monitor,
    mut events: PeerEvents,
    keeper: KeepRegistered,
    registration: Registration,
) {
    let m = monitor.clone();
    drop(tokio::spawn(async move {
        let _ = m.listen_registrations("127.0.0.1:0").await;
    }));
    drop(tokio::spawn(async move { monitor.stop().await }));
    drop(tokio::spawn(async move {
        let _ = events.recv().await;
    }));
    drop(tokio::spawn(async move { keeper.stop().await }));
    drop(tokio::spawn(async move {
        let node: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
        let _ = chitchat_net::heartbeat::register("127.0.0.1:1", "node", node).await;
    }));
    drop(tokio::spawn(async move {
        let _ = chitchat_net::heartbeat::register_go("127.0.0.1:1").await;
    }));
    let _ = (registration, Responder::new(), TextResponder::new());
}

/// Answers every frame with itself: requests with their reply, one-way
/// messages with a message (to the client's receive buffer).
struct Echo;

impl Handler for Echo {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.reply(&line)?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_public_async_method_runs_in_a_spawned_task() {
    let server = Server::builder(Echo)
        .request_ids()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .request_ids()
        .receive::<String>(64)
        .connect(server.local_addr())
        .await
        .unwrap();
    let client = Arc::new(client);
    let tasks = spawn_client_methods(client.clone(), client.handle(), client.errors());
    for task in tasks {
        within("a spawned call", task).await.unwrap();
    }
    client.close().await;
    server.cut().await;
}

// ---------------------------------- defect 7: shutdown and Repliers --

/// Hands the `Replier` of every request to the test, which answers it (or
/// not) when it likes.
struct Deferred {
    repliers: mpsc::UnboundedSender<Replier>,
}

impl Handler for Deferred {
    type Message = String;

    async fn handle(&self, _line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        self.repliers.send(ctx.replier())?;
        Ok(())
    }
}
