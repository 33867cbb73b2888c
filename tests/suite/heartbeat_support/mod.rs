//! Helpers shared by `tests/heartbeat.rs` and `tests/heartbeat_spans.rs`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chitchat_net::heartbeat::{HeartbeatConfig, PeerEvent, PeerEvents, PeerState, Responder};
use chitchat_net::Server;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn fast() -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
}

pub async fn next_event(events: &mut PeerEvents) -> PeerEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no peer event in time")
        .expect("event stream ended")
}

pub async fn next_state(events: &mut PeerEvents) -> PeerState {
    next_event(events).await.state
}

/// Polls `cond` every 10 ms for at most [`WAIT`].
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

pub async fn node() -> (Server<Responder>, SocketAddr) {
    let node = Server::listen("127.0.0.1:0", Responder::new())
        .await
        .unwrap();
    let addr = node.local_addr().tcp().unwrap();
    (node, addr)
}
