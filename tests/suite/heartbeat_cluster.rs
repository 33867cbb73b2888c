//! Several monitors sharing the watch on loopback (real time, real
//! sockets): what one monitor tells the others is never lost for good,
//! whatever the order it arrives in or a full queue toward a monitor.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat_net::heartbeat::{
    ClusterConfig, ClusterHandler, HeartbeatConfig, Monitor, PeerEvents, PeerState, Responder,
};
use chitchat_net::{Addr, Server};
use futures_util::future::BoxFuture;
use tokio::net::TcpStream;

use crate::heartbeat_support::CHECK_TIMEOUT;

const INTERVAL: Duration = Duration::from_millis(100);
/// Every node alive at every monitor: a few intervals of work (a check, a
/// vote shared, a sync after a drop), well under a second on loopback;
/// this is over 20× that on a loaded 2-CPU machine.
const ALL_ALIVE_WITHIN: Duration = Duration::from_secs(20);

fn config(max_peers: usize) -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(CHECK_TIMEOUT)
        .max_peers(max_peers)
        .build()
        .unwrap()
}

/// How a monitor of [`cluster`] reaches others: TCP, the connection to
/// `slow` (a cluster address) made only after `delay`.
fn dialer(
    slow: Option<(SocketAddr, Duration)>,
) -> impl Fn(SocketAddr) -> BoxFuture<'static, io::Result<TcpStream>> + Send + Sync + 'static {
    move |addr| {
        Box::pin(async move {
            if let Some((_, delay)) = slow.filter(|(at, _)| *at == addr) {
                tokio::time::sleep(delay).await;
            }
            TcpStream::connect(addr).await
        })
    }
}

struct Cluster {
    monitors: Vec<Monitor>,
    events: Vec<PeerEvents>,
    _servers: Vec<Server<ClusterHandler>>,
}

/// `m` monitors named m0.., each node watched by `k`; `tune` changes each
/// monitor's cluster settings; `slow(i, addrs)`: the cluster address
/// monitor `i` connects to late, and how late.
async fn cluster(
    m: usize,
    k: usize,
    max_peers: usize,
    tune: impl Fn(ClusterConfig) -> ClusterConfig,
    slow: impl Fn(usize, &[SocketAddr]) -> Option<(SocketAddr, Duration)>,
) -> Cluster {
    cluster_with(config(max_peers), m, k, tune, slow).await
}

/// [`cluster`] with every monitor on `heartbeat`.
async fn cluster_with(
    heartbeat: HeartbeatConfig,
    m: usize,
    k: usize,
    tune: impl Fn(ClusterConfig) -> ClusterConfig,
    slow: impl Fn(usize, &[SocketAddr]) -> Option<(SocketAddr, Duration)>,
) -> Cluster {
    let mut listeners = Vec::new();
    for _ in 0..m {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (mut monitors, mut events, mut servers) = (Vec::new(), Vec::new(), Vec::new());
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut config_m = ClusterConfig::new(format!("m{i}")).watchers(k);
        for (j, addr) in addrs.iter().enumerate().filter(|(j, _)| *j != i) {
            config_m = config_m.monitor(format!("m{j}"), *addr);
        }
        let (monitor, stream) = Monitor::builder(heartbeat)
            .cluster(tune(config_m))
            .dialer(dialer(slow(i, &addrs)))
            .build();
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            let accepted = listener
                .accept()
                .await
                .map(|(io, peer)| (io, Addr::from(peer)));
            Some((accepted, listener))
        });
        let server = monitor.cluster_server().unwrap();
        servers.push(server.serve(addrs[i], incoming).unwrap());
        monitors.push(monitor);
        events.push(stream);
    }
    Cluster {
        monitors,
        events,
        _servers: servers,
    }
}

async fn nodes(n: usize) -> (Vec<Server<Responder>>, Vec<SocketAddr>) {
    let (mut servers, mut addrs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (server, addr) = crate::heartbeat_support::node().await;
        servers.push(server);
        addrs.push(addr);
    }
    (servers, addrs)
}

/// Reads every monitor's events until each has reported every one of
/// `names` alive; panics with what is missing after [`ALL_ALIVE_WITHIN`].
async fn all_alive_everywhere(events: &mut [PeerEvents], names: &[String]) {
    let mut alive: Vec<HashSet<String>> = vec![HashSet::new(); events.len()];
    let deadline = tokio::time::Instant::now() + ALL_ALIVE_WITHIN;
    for (i, stream) in events.iter_mut().enumerate() {
        while names.iter().any(|n| !alive[i].contains(n)) {
            match tokio::time::timeout_at(deadline, stream.recv()).await {
                Ok(Some(event)) if event.state == PeerState::Alive => {
                    alive[i].insert(event.name);
                }
                Ok(Some(event)) => panic!("m{i}: {} is {}", event.name, event.state),
                Ok(None) => panic!("m{i} stopped"),
                Err(_) => {
                    let missing: Vec<&String> =
                        names.iter().filter(|n| !alive[i].contains(*n)).collect();
                    panic!(
                        "m{i} reported {} of {} nodes alive; missing {missing:?}",
                        alive[i].len(),
                        names.len()
                    );
                }
            }
        }
    }
}

/// Polls until each node is checked by exactly `k` monitors.
async fn each_checked_by(monitors: &[Monitor], addrs: &[SocketAddr], k: usize) {
    let counts = || -> Vec<usize> {
        addrs
            .iter()
            .map(|addr| {
                monitors
                    .iter()
                    .filter(|m| m.peer(*addr).is_some_and(|p| p.checking))
                    .count()
            })
            .collect()
    };
    let within = tokio::time::timeout(ALL_ALIVE_WITHIN, async {
        while counts().iter().any(|c| *c != k) {
            tokio::time::sleep(INTERVAL).await;
        }
    })
    .await;
    if within.is_err() {
        panic!("watchers per node, want {k} each: {:?}", counts());
    }
}

/// A verdict that reaches a monitor before the node it is about (here:
/// m1 learns of the nodes from m0 and votes at once, while m0's own
/// connection to m2 is late) is reported once the node is known, not lost.
/// Before the fix m2 recorded the cluster's verdict without a peer to
/// report it for, and never reported it after.
#[tokio::test]
async fn verdict_before_the_node_is_reported_once_the_node_is_known() {
    let (_nodes, addrs) = nodes(12).await;
    // m0 reaches m2 only after 10 intervals: m1 has learned of every node
    // (from m0), checked it and told m2 by then.
    let late = INTERVAL * 10;
    let mut cluster = cluster(
        3,
        2,
        100,
        |c| c,
        |i, addrs| (i == 0).then(|| (addrs[2], late)),
    )
    .await;
    let names: Vec<String> = (0..addrs.len()).map(|i| format!("n{i}")).collect();
    for (name, addr) in names.iter().zip(&addrs) {
        cluster.monitors[0].watch(name.clone(), *addr).unwrap();
    }
    all_alive_everywhere(&mut cluster.events, &names).await;
    each_checked_by(&cluster.monitors, &addrs, 2).await;
}

/// A burst of watches at one monitor past the queue toward the others (4
/// messages here): what was dropped is sent again, so every node is
/// learned by the others, checked by `k` of them and reported alive by
/// every monitor.
#[tokio::test]
async fn burst_past_the_cluster_queue_is_resynchronised() {
    let (_nodes, addrs) = nodes(41).await;
    let mut cluster = cluster(3, 2, 100, |c| c.queue(4), |_, _| None).await;
    let names: Vec<String> = (0..addrs.len()).map(|i| format!("n{i}")).collect();
    // One node first, so that the links between monitors are up (it is
    // alive at every monitor once they share).
    cluster.monitors[0]
        .watch(names[0].clone(), addrs[0])
        .unwrap();
    all_alive_everywhere(&mut cluster.events, &names[..1]).await;
    for (name, addr) in names.iter().zip(&addrs).skip(1) {
        cluster.monitors[0].watch(name.clone(), *addr).unwrap();
    }
    let dropped: u64 = cluster
        .monitors
        .iter()
        .map(|m| m.stats().cluster_dropped)
        .sum();
    // The fault fired: the burst overflowed the queues.
    assert!(dropped > 0, "no cluster message dropped");
    all_alive_everywhere(&mut cluster.events, &names[1..]).await;
    each_checked_by(&cluster.monitors, &addrs, 2).await;
    for monitor in &cluster.monitors {
        assert_eq!(monitor.stats().watched, addrs.len() as u64);
    }
}

/// Lifeguard's nack rule: a node that refuses every connection is missed
/// by both its watchers, and each one's indirect probe is answered by the
/// other "could not reach it" (a nack). That proves the asking monitor's
/// own messages get through, so its local health is not raised by those
/// misses (only a check starting late may raise it). Before the rule every
/// failed check raised it: 1 per miss, here at least 3.
#[tokio::test]
async fn a_miss_answered_by_a_nack_does_not_raise_local_health() {
    // Half an interval late is 250 ms: a busy machine rarely delays a
    // timer that much, and a late check is counted (and allowed for).
    let heartbeat = HeartbeatConfig::builder()
        .interval(Duration::from_millis(500))
        .timeout(CHECK_TIMEOUT)
        .local_health(8)
        .build()
        .unwrap();
    let cluster = cluster_with(heartbeat, 2, 2, |c| c, |_, _| None).await;
    // A port nobody listens on: every check is refused at once.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    cluster.monitors[0].watch("gone", addr).unwrap();
    // 3 nacks at each monitor: 3 checks and their indirect probes, about
    // 1.5 s; this is over 10× that on a loaded 2-CPU machine.
    let nacked = tokio::time::timeout(ALL_ALIVE_WITHIN, async {
        while cluster
            .monitors
            .iter()
            .any(|m| m.stats().indirect_nacks < 3)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let stats: Vec<_> = cluster.monitors.iter().map(Monitor::stats).collect();
    assert!(nacked.is_ok(), "fewer than 3 nacks: {stats:?}");
    for (i, s) in stats.iter().enumerate() {
        assert!(s.misses >= 3, "m{i}: {s:?}");
        assert!(s.local_health <= s.late_checks, "m{i}: {s:?}");
    }
}
