//! Local health (Lifeguard) on a paused tokio clock: nodes are `Responder`
//! servers reached through an in-memory dialer (`tokio::io::duplex`), so
//! time moves only when every task waits (or when the test advances it),
//! and a timer can be made to fire late on purpose.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chitchat_net::heartbeat::{HeartbeatConfig, Monitor, PeerState, Responder};
use chitchat_net::{Addr, Server};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_millis(500);

/// An in-memory network: addresses served by a `Responder`, every other
/// address a silent peer (the connection opens, nothing ever answers).
#[derive(Default, Clone)]
struct Net {
    servers: Arc<Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<DuplexStream>>>>,
    /// The far ends of connections to silent peers, kept open.
    silent: Arc<Mutex<Vec<DuplexStream>>>,
}

impl Net {
    /// A node answering at `addr`; keep the server.
    fn node(&self, addr: SocketAddr) -> Server<Responder> {
        let (tx, rx) = mpsc::unbounded_channel::<DuplexStream>();
        self.servers.lock().unwrap().insert(addr, tx);
        let incoming = futures_util::stream::unfold(rx, move |mut rx| async move {
            let io = rx.recv().await?;
            Some((Ok::<_, std::io::Error>((io, Addr::from(addr))), rx))
        });
        Server::builder(Responder::new())
            .serve(addr, incoming)
            .unwrap()
    }

    fn dialer(&self) -> impl Fn(SocketAddr) -> std::future::Ready<std::io::Result<DuplexStream>> {
        let net = self.clone();
        move |addr| {
            let (near, far) = tokio::io::duplex(64 * 1024);
            let unserved = match net.servers.lock().unwrap().get(&addr) {
                Some(server) => server.send(far).err().map(|e| e.0),
                None => Some(far),
            };
            if let Some(far) = unserved {
                net.silent.lock().unwrap().push(far);
            }
            std::future::ready(Ok(near))
        }
    }
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000 + i))
}

fn config(miss_limit: u32, local_health: u32) -> HeartbeatConfig {
    HeartbeatConfig::builder()
        .interval(INTERVAL)
        .timeout(TIMEOUT)
        .miss_limit(miss_limit)
        .local_health(local_health)
        .build()
        .unwrap()
}

/// README, "Local health": a check that starts more than half an interval
/// late raises the score (`late_checks`). One silent peer: each of its
/// checks fails (+1); a check whose timer fires 0.7 interval late adds one
/// more.
#[tokio::test(start_paused = true)]
async fn a_check_starting_more_than_half_an_interval_late_raises_local_health() {
    let net = Net::default();
    let (monitor, _events) = Monitor::builder(config(100, 10))
        .dialer(net.dialer())
        .build();
    monitor.watch("silent", addr(0)).unwrap();
    // Checks at 0, 1, 2 s, each failed 0.5 s later: 3, on time.
    tokio::time::sleep(Duration::from_millis(2700)).await;
    let stats = monitor.stats();
    assert_eq!((stats.misses, stats.late_checks), (3, 0), "{stats:?}");
    assert_eq!(stats.local_health, 3, "{stats:?}");
    // The clock jumps 1 s at once: the check due at 3 s starts at 3.7 s.
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = monitor.stats();
    assert_eq!((stats.misses, stats.late_checks), (4, 1), "{stats:?}");
    // 3 + the late start + its miss.
    assert_eq!(stats.local_health, 5, "{stats:?}");
}

/// README, "Local health": one dead peer among answering ones does not
/// widen the limits: with a miss limit of 1 it is dead at its second miss
/// (1.5 s), as without local health.
#[tokio::test(start_paused = true)]
async fn one_dead_peer_among_answering_ones_is_not_judged_with_wider_limits() {
    let net = Net::default();
    let _nodes: Vec<_> = (1..=4).map(|i| net.node(addr(i))).collect();
    let (monitor, mut events) = Monitor::builder(config(1, 8)).dialer(net.dialer()).build();
    let start = tokio::time::Instant::now();
    for i in 1..=4 {
        monitor.watch(format!("node-{i}"), addr(i)).unwrap();
    }
    monitor.watch("dead", addr(0)).unwrap();
    // Bound: simulated time, 10 intervals, far past the 1.5 s it takes.
    let dead_at = tokio::time::timeout(10 * INTERVAL, async {
        loop {
            let event = events.recv().await.expect("events ended");
            if matches!(event.state, PeerState::Dead { .. }) {
                assert_eq!(event.name, "dead", "{event:?}");
                return start.elapsed();
            }
        }
    })
    .await
    .expect("the dead peer was never declared dead");
    assert_eq!(dead_at, INTERVAL + TIMEOUT, "declared dead at {dead_at:?}");
    let stats = monitor.stats();
    assert_eq!(stats.misses, 2, "{stats:?}");
    assert!(stats.checks >= 10, "{stats:?}");
}
