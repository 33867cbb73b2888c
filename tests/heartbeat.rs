//! The heartbeat monitor and responder.

use std::time::Duration;

use chitchat_net::heartbeat::{
    register, Beat, HeartbeatConfig, Monitor, PeerEvents, PeerState, Responder,
};
use chitchat_net::{Codec, Message, Server};

const WAIT: Duration = Duration::from_secs(10);

fn fast() -> HeartbeatConfig {
    HeartbeatConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        miss_limit: 3,
    }
}

async fn next_state(events: &mut PeerEvents) -> PeerState {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no peer event in time")
        .expect("event stream ended")
        .state
}

#[test]
fn defaults_follow_the_go_original() {
    let config = HeartbeatConfig::default();
    assert_eq!(config.interval, Duration::from_secs(3));
    assert_eq!(config.miss_limit, 3);
}

#[test]
fn beat_tags_are_pinned() {
    let codec = <Beat as Message>::Codec::default();
    let mut buf = bytes::BytesMut::new();
    codec.encode(&Beat::Pong { seq: 5 }, &mut buf).unwrap();
    assert_eq!(&buf[..], &[1, 5]);
    let back: Beat = codec.decode(buf.freeze()).unwrap();
    assert_eq!(back, Beat::Pong { seq: 5 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_goes_missed_then_dead_then_alive_again_when_back() {
    let (monitor, mut events) = Monitor::new(fast());
    let node = Server::listen("127.0.0.1:0", Responder::default())
        .await
        .unwrap();
    let addr = node.local_addr().tcp().unwrap();
    monitor.watch("n1", addr);
    assert_eq!(next_state(&mut events).await, PeerState::Alive);

    node.cut().await;
    drop(node);
    for misses in 1..=3 {
        assert_eq!(next_state(&mut events).await, PeerState::Missed { misses });
    }
    assert_eq!(next_state(&mut events).await, PeerState::Dead { misses: 4 });

    // Back on the same address: reported alive again.
    let node = Server::listen(addr, Responder::default()).await.unwrap();
    assert_eq!(next_state(&mut events).await, PeerState::Alive);
    assert!(node.handler().answered() >= 1);
    monitor.stop().await;
    node.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_are_checked_and_healthy_ones_stay_alive() {
    let (monitor, mut events) = Monitor::new(fast());
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    let a = Server::listen("127.0.0.1:0", Responder::default())
        .await
        .unwrap();
    let b = Server::listen("127.0.0.1:0", Responder::default())
        .await
        .unwrap();
    register(
        registrations.local_addr(),
        "a",
        a.local_addr().tcp().unwrap(),
    )
    .await
    .unwrap();
    register(
        registrations.local_addr(),
        "b",
        b.local_addr().tcp().unwrap(),
    )
    .await
    .unwrap();
    let mut alive = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.state, PeerState::Alive);
        assert_eq!(event.previous, None);
        alive.push(event.name);
    }
    alive.sort();
    assert_eq!(alive, ["a", "b"]);
    // Ten more rounds: every ping answered, no state change.
    let answered = |s: &Server<Responder>| s.handler().answered();
    tokio::time::timeout(WAIT, async {
        while answered(&a) < 10 || answered(&b) < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("pings keep being answered");
    monitor.stop().await;
    assert!(
        events.recv().await.is_none(),
        "no state change for healthy nodes"
    );
    registrations.cut().await;
}

#[tokio::test]
async fn registering_with_no_monitor_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert!(register(addr, "x", addr).await.is_err());
}
