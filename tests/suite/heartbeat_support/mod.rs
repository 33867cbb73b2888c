//! Helpers shared by `heartbeat.rs` and `tests/heartbeat_spans.rs`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chitchat_net::heartbeat::{HeartbeatConfig, PeerEvent, PeerEvents, PeerState, Responder};
use chitchat_net::Server;

/// Upper bound of a wait for one peer event or condition: these come
/// within a few check intervals (50 ms), so this is far over 5× what they
/// need on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// A check every 50 ms, so that tests see many checks in little time. The
/// timeout (how long an answer may take) is 1 s: a ping's round trip on
/// loopback takes a millisecond, up to a couple of hundred on a loaded
/// 2-CPU machine; a healthy node must never be missed because the machine
/// is busy. A stopped node is missed at once (its port refuses).
pub fn fast() -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(Duration::from_millis(50))
        .timeout(CHECK_TIMEOUT)
        .build()
        .unwrap()
}

/// The check timeout of the tests' configurations (see [`fast`]).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

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
