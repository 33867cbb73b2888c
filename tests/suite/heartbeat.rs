//! The heartbeat monitor, probes, registrar and node side, over loopback TCP.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat_net::heartbeat::{
    register, register_go, Beat, ConfigError, Detector, HeartbeatConfig, KeepRegistered, Monitor,
    PeerState, PhiAccrual, Register, RegisteredIp, Registration, Responder, TextProbe,
    TextResponder, WatchError,
};
use chitchat_net::{Client, Codec, Framing, Message, Server};

use crate::heartbeat_support;

use heartbeat_support::{fast, next_event, next_state, node, until, CHECK_TIMEOUT, WAIT};

#[test]
fn defaults_follow_the_go_original() {
    let config = HeartbeatConfig::default();
    assert_eq!(config.interval(), Duration::from_secs(3));
    assert_eq!(config.timeout(), Duration::from_secs(3));
    assert_eq!(config.detector(), Detector::MissLimit(3));
    assert_eq!(config.registered_ip(), RegisteredIp::SameAsConnection);
    assert_eq!(config.go_port(), None);
    assert_eq!(HeartbeatConfig::builder().build().unwrap(), config);
}

#[test]
fn zero_intervals_and_timeouts_are_refused_when_built() {
    let build = |b: chitchat_net::heartbeat::HeartbeatConfigBuilder| b.build().unwrap_err();
    let zero = Duration::ZERO;
    assert_eq!(
        build(HeartbeatConfig::builder().interval(zero)),
        ConfigError::ZeroInterval
    );
    assert_eq!(
        HeartbeatConfig::with_interval(zero).unwrap_err(),
        ConfigError::ZeroInterval
    );
    assert_eq!(
        build(HeartbeatConfig::builder().timeout(zero)),
        ConfigError::ZeroTimeout
    );
    assert_eq!(
        build(HeartbeatConfig::builder().max_peers(0)),
        ConfigError::ZeroMaxPeers
    );
    assert_eq!(
        build(HeartbeatConfig::builder().forget_dead_after(Some(zero))),
        ConfigError::ZeroForgetDeadAfter
    );
    let phi = |p: PhiAccrual| HeartbeatConfig::builder().detector(Detector::PhiAccrual(p));
    assert_eq!(
        build(phi(PhiAccrual::new(0.0))),
        ConfigError::BadPhiThreshold(0.0)
    );
    assert!(matches!(
        build(phi(PhiAccrual::new(f64::NAN))),
        ConfigError::BadPhiThreshold(_)
    ));
    assert_eq!(
        build(phi(PhiAccrual::new(8.0).window(1))),
        ConfigError::SmallPhiWindow(1)
    );
    assert_eq!(
        build(phi(PhiAccrual::new(8.0).min_std_dev(zero))),
        ConfigError::ZeroMinStdDev
    );
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
    let (node, addr) = node().await;
    monitor.watch("n1", addr).unwrap();
    assert_eq!(next_state(&mut events).await, PeerState::Alive);
    assert!(node.handler().last_ping().is_some());

    node.cut().await;
    drop(node);
    for misses in 1..=3 {
        let event = next_event(&mut events).await;
        assert_eq!(event.state, PeerState::Missed { misses });
        assert_eq!(event.suspicion, f64::from(misses));
    }
    assert_eq!(next_state(&mut events).await, PeerState::Dead { misses: 4 });
    // `Dead { misses }` keeps the count it was declared dead with.
    until("two more checks", || monitor.stats().misses >= 6).await;
    assert_eq!(monitor.peers()[0].2, Some(PeerState::Dead { misses: 4 }));
    assert_eq!(monitor.stats().deaths, 1);

    // Back on the same address: reported alive again.
    let node = Server::listen(addr, Responder::new()).await.unwrap();
    let back = next_event(&mut events).await;
    assert_eq!(back.state, PeerState::Alive);
    assert_eq!(back.previous, Some(PeerState::Dead { misses: 4 }));
    assert!(node.handler().answered() >= 1);
    monitor.stop().await;
    node.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phi_accrual_declares_a_stopped_node_dead_with_its_suspicion() {
    let config = HeartbeatConfig::builder()
        .interval(Duration::from_millis(50))
        .timeout(CHECK_TIMEOUT)
        // A pause of about 3.1 × min_std_dev beyond the interval is
        // tolerated at φ = 3: 1.2 s, over 5× the pauses a loaded machine
        // gives a healthy node's answers (a spurious miss would end the
        // test's sequence of events).
        .detector(Detector::PhiAccrual(
            PhiAccrual::new(3.0).min_std_dev(Duration::from_millis(400)),
        ))
        .build()
        .unwrap();
    let (monitor, mut events) = Monitor::new(config);
    let (node, addr) = node().await;
    monitor.watch("n1", addr).unwrap();
    assert_eq!(next_state(&mut events).await, PeerState::Alive);
    until("some history", || node.handler().answered() >= 10).await;
    node.cut().await;
    drop(node);
    let dead = loop {
        let event = next_event(&mut events).await;
        match event.state {
            PeerState::Missed { .. } => assert!(event.suspicion < 3.0, "{event:?}"),
            PeerState::Dead { .. } => break event,
            other => panic!("unexpected {other}"),
        }
    };
    assert!(dead.suspicion >= 3.0, "{dead:?}");
    monitor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_nodes_are_checked_and_healthy_ones_stay_alive() {
    let (monitor, mut events) = Monitor::new(fast());
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    let (a, a_addr) = node().await;
    let (b, b_addr) = node().await;
    register(registrations.local_addr(), "a", a_addr)
        .await
        .unwrap();
    register(registrations.local_addr(), "b", b_addr)
        .await
        .unwrap();
    let mut alive = Vec::new();
    for _ in 0..2 {
        let event = next_event(&mut events).await;
        assert_eq!(event.state, PeerState::Alive);
        assert_eq!(event.previous, None);
        alive.push(event.name);
    }
    alive.sort();
    assert_eq!(alive, ["a", "b"]);
    // Ten more rounds: every ping answered, no state change.
    let answered = |s: &Server<Responder>| s.handler().answered();
    until("pings answered", || {
        answered(&a) >= 10 && answered(&b) >= 10
    })
    .await;
    assert_eq!(monitor.stats().registrations, 2);
    monitor.stop().await;
    let change = events.recv().await;
    assert!(
        change.is_none(),
        "no state change for healthy nodes: {change:?}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_probe_checks_a_go_node_registered_with_hello() {
    // A Go node: answers `heartbeat ping` on its heartbeat port, registers
    // with `hello`.
    let go_node = TextResponder::new();
    let server = Server::builder(go_node.clone())
        .framing(Framing::lines())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let port = server.local_addr().tcp().unwrap().port();
    let config = HeartbeatConfig::builder()
        .interval(Duration::from_millis(50))
        .timeout(CHECK_TIMEOUT)
        .go_port(port)
        .build()
        .unwrap();
    let (monitor, mut events) = Monitor::builder(config).probe(TextProbe).build();
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    register_go(registrations.local_addr()).await.unwrap();
    let event = next_event(&mut events).await;
    assert_eq!(event.state, PeerState::Alive);
    assert_eq!(event.addr, SocketAddr::from(([127, 0, 0, 1], port)));
    until("pings answered", || go_node.answered() >= 5).await;
    assert!(go_node.last_ping().is_some());
    monitor.stop().await;
    registrations.cut().await;
    server.cut().await;
}

#[tokio::test]
async fn hello_without_a_go_port_and_garbage_are_refused_and_counted() {
    let (monitor, _events) = Monitor::new(fast());
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    register_go(registrations.local_addr()).await.unwrap();
    let garbage = Client::<String>::builder()
        .framing(Framing::eof())
        .connect(registrations.local_addr())
        .await
        .unwrap();
    garbage
        .send(&"\u{1}\u{2}nonsense".to_string())
        .await
        .unwrap();
    garbage.close().await;
    until("two refusals", || monitor.stats().refused_invalid == 2).await;
    assert!(monitor.peers().is_empty());
    assert_eq!(monitor.stats().registrations, 0);
    monitor.stop().await;
    registrations.cut().await;
}

#[tokio::test]
async fn registration_naming_another_ip_is_refused_unless_allowed() {
    let elsewhere: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let (monitor, _events) = Monitor::new(fast());
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    // From 127.0.0.1, naming 127.0.0.2.
    register(registrations.local_addr(), "x", elsewhere)
        .await
        .unwrap();
    until("refusal", || monitor.stats().refused_ip == 1).await;
    assert!(monitor.peers().is_empty());
    monitor.stop().await;
    registrations.cut().await;

    let config = HeartbeatConfig::builder()
        .interval(Duration::from_secs(60))
        .registered_ip(RegisteredIp::Any)
        .build()
        .unwrap();
    let (monitor, _events) = Monitor::new(config);
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    register(registrations.local_addr(), "x", elsewhere)
        .await
        .unwrap();
    until("registration", || monitor.stats().registrations == 1).await;
    assert_eq!(monitor.peers()[0].1, elsewhere);
    monitor.stop().await;
    registrations.cut().await;
}

#[tokio::test]
async fn watched_peers_are_bounded_and_refusals_counted() {
    let config = HeartbeatConfig::builder()
        .interval(Duration::from_secs(60))
        .max_peers(2)
        .build()
        .unwrap();
    let (monitor, _events) = Monitor::new(config);
    let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    monitor.watch("a", addr(1)).unwrap();
    monitor.watch("b", addr(2)).unwrap();
    // Renaming a watched peer is not a new one.
    monitor.watch("b2", addr(2)).unwrap();
    assert_eq!(
        monitor.watch("c", addr(3)),
        Err(WatchError::Full { max: 2 })
    );
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    for port in 4..14 {
        register(registrations.local_addr(), "r", addr(port))
            .await
            .unwrap();
    }
    until("refusals", || monitor.stats().refused_full == 11).await;
    assert_eq!(monitor.peers().len(), 2);
    assert_eq!(monitor.stats().watched, 2);
    assert!(monitor.unwatch(addr(1)));
    monitor.watch("c", addr(3)).unwrap();
    monitor.stop().await;
    assert_eq!(monitor.watch("d", addr(5)), Err(WatchError::Stopped));
    registrations.cut().await;
}

#[tokio::test]
async fn registration_filter_refuses_connections_and_counts_them() {
    let (monitor, _events) = Monitor::builder(fast())
        .registration_filter(|peer| peer.ip() != Some([127, 0, 0, 1].into()))
        .build();
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    let errors = registrations.errors();
    let _ = register(
        registrations.local_addr(),
        "x",
        "127.0.0.1:9".parse::<SocketAddr>().unwrap(),
    )
    .await;
    let refused = tokio::time::timeout(WAIT, errors.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(refused.error, chitchat_net::Error::Refused(_)),
        "{refused}"
    );
    assert_eq!(monitor.stats().refused_filter, 1);
    assert!(monitor.peers().is_empty());
    monitor.stop().await;
    registrations.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peers_are_forgotten_after_the_configured_time() {
    let config = HeartbeatConfig::builder()
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(100))
        .miss_limit(1)
        .forget_dead_after(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let (monitor, mut events) = Monitor::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = listener.local_addr().unwrap();
    drop(listener);
    monitor.watch("gone", nobody).unwrap();
    let states: Vec<PeerState> = vec![
        next_state(&mut events).await,
        next_state(&mut events).await,
        next_state(&mut events).await,
    ];
    assert_eq!(
        states,
        [
            PeerState::Missed { misses: 1 },
            PeerState::Dead { misses: 2 },
            PeerState::Forgotten
        ]
    );
    assert!(monitor.peers().is_empty());
    assert_eq!(monitor.stats().forgotten, 1);
    // Its task is over: stop returns at once.
    tokio::time::timeout(WAIT, monitor.stop()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_monitor_handle_stops_its_checks() {
    let (monitor, mut events) = Monitor::new(fast());
    let (node, addr) = node().await;
    let other_handle = monitor.clone();
    monitor.watch("n1", addr).unwrap();
    assert_eq!(next_state(&mut events).await, PeerState::Alive);
    until("connected", || node.connection_count() == 1).await;
    drop(monitor);
    // One handle left: still checking.
    let answered = node.handler().answered();
    until("more pings", || node.handler().answered() > answered + 2).await;
    drop(other_handle);
    // The check task ends: its connection closes and no ping comes after.
    until("check connection closed", || node.connection_count() == 0).await;
    assert!(tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .is_none());
    let answered = node.handler().answered();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        node.handler().answered(),
        answered,
        "no ping after the drop"
    );
    node.cut().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_registered_node_comes_back_after_the_monitor_restarts() {
    let interval = Duration::from_millis(50);
    let config = HeartbeatConfig::builder()
        .interval(interval)
        .timeout(CHECK_TIMEOUT)
        .build()
        .unwrap();
    let (monitor, mut events) = Monitor::new(config);
    let registrations = monitor.listen_registrations("127.0.0.1:0").await.unwrap();
    let registration_addr = registrations.local_addr().tcp().unwrap();
    let responder = Responder::new();
    let node = Server::listen("127.0.0.1:0", responder.clone())
        .await
        .unwrap();
    let registration = Registration::Typed(Register {
        name: "n".into(),
        addr: node.local_addr().tcp().unwrap(),
    });
    let keeper = KeepRegistered::builder(registration_addr, registration)
        .interval(interval)
        .seed(7)
        .spawn(responder.clone());
    assert_eq!(next_state(&mut events).await, PeerState::Alive);
    assert_eq!(keeper.registrations(), 1);

    // The monitor goes away and a new one, knowing nothing, comes back on
    // the same port.
    monitor.stop().await;
    registrations.cut().await;
    drop((monitor, events));
    tokio::time::sleep(interval * 4).await;
    let (monitor, mut events) = Monitor::new(config);
    let registrations = monitor
        .listen_registrations(registration_addr)
        .await
        .unwrap();
    let back = tokio::time::Instant::now();
    assert_eq!(next_state(&mut events).await, PeerState::Alive);
    // Needed: 3 intervals without a ping + 1 interval + the largest backoff
    // (2 intervals), plus a check: about 7 intervals (350 ms). The bound is
    // over 5× that on a loaded machine, and still far under the keeper's
    // alternative (never).
    assert!(back.elapsed() < interval * 60, "{:?}", back.elapsed());
    assert!(keeper.registrations() >= 2);
    keeper.stop().await;
    monitor.stop().await;
    registrations.cut().await;
    node.cut().await;
}
