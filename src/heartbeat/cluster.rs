//! Several monitors sharing the watch: membership, who watches whom
//! (rendezvous hashing), verdicts combined by quorum, indirect probes. All
//! to all over chitchat-net connections between a handful of monitors.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::codec::{Bincode, Message, Request};
use crate::conn::handle::ConnectionHandle;
use crate::conn::handler::{Context, Handler};
use crate::wire::error::BoxError;

/// Monitors heard from within this many intervals are live.
const LIVE_INTERVALS: u32 = 2;
/// Messages queued toward one monitor before new ones are dropped and
/// counted (`cluster_dropped`), by default: see [`ClusterConfig::queue`].
const QUEUE: usize = 16 * 1024;

/// How a monitor takes part in a cluster of monitors: see
/// [`MonitorBuilder::cluster`](super::MonitorBuilder::cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    me: String,
    others: Vec<(String, SocketAddr)>,
    watchers: usize,
    indirect: bool,
    queue: usize,
}

impl ClusterConfig {
    /// This monitor, named `me` (unique in the cluster), with no other
    /// monitor yet, each node watched by 2 monitors, indirect probes on.
    pub fn new(me: impl Into<String>) -> Self {
        ClusterConfig {
            me: me.into(),
            others: Vec::new(),
            watchers: 2,
            indirect: true,
            queue: QUEUE,
        }
    }

    /// Another monitor of the cluster, named `name`, whose
    /// [cluster server](super::Monitor::cluster_server) is at `addr`.
    pub fn monitor(mut self, name: impl Into<String>, addr: SocketAddr) -> Self {
        self.others.push((name.into(), addr));
        self
    }

    /// How many live monitors watch each node (`k`, default 2, at least
    /// 1). A node is declared dead when a majority of its watchers
    /// (`k / 2 + 1`) find it dead.
    pub fn watchers(mut self, k: usize) -> Self {
        self.watchers = k.max(1);
        self
    }

    /// Whether a watcher whose check failed asks another monitor to probe
    /// the node before counting the miss (default on).
    pub fn indirect_probes(mut self, on: bool) -> Self {
        self.indirect = on;
        self
    }

    /// How many messages (nodes and votes) may wait toward one other
    /// monitor (default 16,384, at least 1). Past it they are dropped and
    /// counted in
    /// [`MonitorStats::cluster_dropped`](super::MonitorStats::cluster_dropped),
    /// and that monitor is sent every node and this monitor's every vote
    /// again, so nothing dropped is lost.
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// This monitor's name.
    pub fn name(&self) -> &str {
        &self.me
    }
}

/// What monitors of a cluster send each other (bincode, over one
/// chitchat-net connection each way, with request ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterMessage {
    /// I am live (every interval).
    Heartbeat {
        /// The sender.
        from: String,
        /// The sender's run: another value after a restart (the receiver
        /// then sends it everything again).
        epoch: u64,
    },
    /// A node to watch (registered with the sender, or synced).
    Node {
        /// Its name.
        name: String,
        /// Where it is checked.
        addr: SocketAddr,
        /// Whether it is a Go node.
        go: bool,
    },
    /// What the sender, one of the node's watchers, makes of it.
    Verdict {
        /// The node's name.
        node: String,
        /// The sender.
        from: String,
        /// 0 alive, 1 suspect, 2 dead, 3 no longer watched by the sender.
        state: u8,
        /// Misses in a row.
        misses: u32,
        /// The node's incarnation as the sender knows it.
        incarnation: u64,
    },
    /// Probe this node for me (an indirect probe): answered by
    /// `ProbeResult`.
    Probe {
        /// Where it is checked.
        addr: SocketAddr,
        /// Whether it is a Go node.
        go: bool,
    },
    /// The answer to a `Probe`: whether the node answered.
    ProbeResult {
        /// It answered.
        ok: bool,
    },
}

impl Message for ClusterMessage {
    type Codec = Bincode;
}

/// A `Probe` is answered by a `ProbeResult`.
impl Request for ClusterMessage {
    type Reply = ClusterMessage;
}

/// What an indirect probe found (Lifeguard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Indirect {
    /// Another monitor reached the node: it is alive.
    Reached,
    /// Another monitor answered that it could not reach the node (a
    /// `ProbeResult { ok: false }`, Lifeguard's nack): this monitor's own
    /// messages get through, so the failure is evidence against the node,
    /// not against this monitor's health.
    Nack,
    /// No answer (or no helper to ask, or indirect probes off): this
    /// monitor may be the one cut off.
    Silent,
}

/// The cluster's verdict on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combined {
    Alive,
    Suspect { misses: u32, incarnation: u64 },
    Dead { misses: u32 },
}

/// A future, boxed.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the cluster needs of its monitor, whatever its probe.
pub(crate) trait Local: Send + Sync + 'static {
    /// Watch a node learned from another monitor.
    fn learn(&self, name: String, addr: SocketAddr, go: bool);
    /// Probe a node once for another monitor.
    fn probe_once(&self, addr: SocketAddr, go: bool) -> BoxFuture<'_, bool>;
    /// Every node watched: name, address, Go.
    fn nodes(&self) -> Vec<(String, SocketAddr, bool)>;
    /// Reports the cluster's verdict on a node: `false` if the node is not
    /// watched here (not reported).
    fn emit(&self, node: &str, state: Combined, previous: Option<Combined>) -> bool;
}

/// One vote: a monitor's verdict on a node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Vote {
    state: u8,
    misses: u32,
    incarnation: u64,
}

pub(crate) struct Member {
    name: String,
    pub(crate) addr: SocketAddr,
    /// When it was last heard from.
    heard: Mutex<Option<Instant>>,
    pub(crate) queue: mpsc::Sender<ClusterMessage>,
    /// The connection to it, for indirect probes.
    pub(crate) client: Mutex<Option<Arc<crate::client::Client<ClusterMessage>>>>,
    /// Its run, as last heard.
    epoch: Mutex<Option<u64>>,
    /// Tells its link to connect again (it restarted).
    pub(crate) reset: tokio::sync::Notify,
    /// Tells its link to send it everything again (a message toward it was
    /// dropped).
    pub(crate) resync: tokio::sync::Notify,
    /// The connection it dialled to this monitor's cluster server (the
    /// last one a heartbeat came on): what it is heard on.
    inbound: Mutex<Option<ConnectionHandle>>,
}

impl Member {
    /// Closes the connection it dialled to this monitor (it was not heard
    /// on it): if that connection died one way only, its own side sees the
    /// close and dials again. Redialling this monitor's own link to it
    /// would not help: that link may be the healthy one.
    pub(crate) fn cut_inbound(&self) {
        if let Some(handle) = lock(&self.inbound).take() {
            tracing::debug!(monitor = %self.name, peer = %handle.peer_addr(), "silent: closing the connection it dialled");
            handle.close();
        }
    }
}

/// A monitor's view of its cluster.
pub(crate) struct Cluster {
    pub(crate) me: String,
    k: usize,
    pub(crate) indirect: bool,
    interval: Duration,
    pub(crate) members: Vec<Arc<Member>>,
    /// Votes by node, then by monitor.
    votes: Mutex<HashMap<String, HashMap<String, Vote>>>,
    /// The combined verdict last reported, by node.
    combined: Mutex<HashMap<String, Combined>>,
    pub(crate) counters: ClusterCounters,
}

/// Cluster counters.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    pub(crate) indirect_probes: AtomicU64,
    pub(crate) indirect_answered: AtomicU64,
    pub(crate) indirect_nacks: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .field("k", &self.k)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// FNV-1a, 64 bits: the same on every monitor, whatever its build.
fn score(monitor: &str, node: &str) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in monitor.bytes().chain([0xff]).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix so that names differing in their last byte spread too.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// The `k` monitors of `live` watching `node`: the highest scores
/// (rendezvous hashing: losing a monitor moves only its nodes, each to the
/// next monitor in its own order).
pub(crate) fn watchers<'a>(live: &[&'a str], node: &str, k: usize) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = live.iter().map(|m| (score(m, node), *m)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.into_iter().take(k).map(|(_, m)| m).collect()
}

impl Cluster {
    pub(crate) fn new(
        config: &ClusterConfig,
        interval: Duration,
    ) -> (Self, Vec<mpsc::Receiver<ClusterMessage>>) {
        let mut queues = Vec::new();
        let members = config
            .others
            .iter()
            .filter(|(name, _)| *name != config.me)
            .map(|(name, addr)| {
                let (queue, rx) = mpsc::channel(config.queue);
                queues.push(rx);
                Arc::new(Member {
                    name: name.clone(),
                    addr: *addr,
                    heard: Mutex::new(None),
                    queue,
                    client: Mutex::new(None),
                    epoch: Mutex::new(None),
                    reset: tokio::sync::Notify::new(),
                    resync: tokio::sync::Notify::new(),
                    inbound: Mutex::new(None),
                })
            })
            .collect();
        let cluster = Cluster {
            me: config.me.clone(),
            k: config.watchers,
            indirect: config.indirect,
            interval,
            members,
            votes: Mutex::default(),
            combined: Mutex::default(),
            counters: ClusterCounters::default(),
        };
        (cluster, queues)
    }

    /// The live monitors, this one included.
    pub(crate) fn live(&self) -> Vec<&str> {
        let now = Instant::now();
        let within = self.interval * LIVE_INTERVALS;
        let mut live = vec![self.me.as_str()];
        for member in &self.members {
            let heard = *lock(&member.heard);
            if heard.is_some_and(|at| now.saturating_duration_since(at) <= within) {
                live.push(member.name.as_str());
            }
        }
        live
    }

    /// Whether `member` was heard from within 2 intervals.
    pub(crate) fn is_live(&self, member: &Member) -> bool {
        let heard = *lock(&member.heard);
        heard.is_some_and(|at| {
            Instant::now().saturating_duration_since(at) <= self.interval * LIVE_INTERVALS
        })
    }

    /// Whether this monitor is one of `node`'s watchers now.
    pub(crate) fn watches(&self, node: &str) -> bool {
        watchers(&self.live(), node, self.k).contains(&self.me.as_str())
    }

    /// The live monitors other than this one, in `node`'s rendezvous order
    /// (helpers for an indirect probe).
    pub(crate) fn helpers(&self, node: &str) -> Vec<Arc<Member>> {
        let live = self.live();
        watchers(&live, node, live.len())
            .into_iter()
            .filter_map(|name| self.members.iter().find(|m| m.name == name).cloned())
            .collect()
    }

    /// Sends `message` to every other monitor. Toward one whose queue is
    /// full it is dropped, counted, and that monitor is sent everything
    /// again ([`sync`](Self::sync)) once its link has room: a drop delays
    /// what it carried, never loses it.
    pub(crate) fn broadcast(&self, message: &ClusterMessage) {
        for member in &self.members {
            if member.queue.try_send(message.clone()).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                member.resync.notify_one();
            }
        }
    }

    pub(crate) fn heard(&self, from: &str) {
        if let Some(member) = self.members.iter().find(|m| m.name == from) {
            *lock(&member.heard) = Some(Instant::now());
        }
    }

    /// This monitor's own verdict on `node`: shared, and counted.
    /// `code`: 0 alive, 1 suspect, 2 dead.
    pub(crate) fn local_verdict(
        &self,
        local: &dyn Local,
        node: &str,
        (code, misses, incarnation): (u8, u32, u64),
    ) {
        let vote = Vote {
            state: code,
            misses,
            incarnation,
        };
        let changed = lock(&self.votes)
            .entry(node.to_owned())
            .or_default()
            .insert(self.me.clone(), vote)
            != Some(vote);
        if changed {
            self.broadcast(&ClusterMessage::Verdict {
                node: node.to_owned(),
                from: self.me.clone(),
                state: code,
                misses,
                incarnation,
            });
            self.combine(local, node);
        }
    }

    /// This monitor no longer watches `node`: its vote is withdrawn.
    pub(crate) fn withdraw(&self, local: &dyn Local, node: &str) {
        let had = lock(&self.votes)
            .get_mut(node)
            .and_then(|by| by.remove(&self.me))
            .is_some();
        if had {
            self.broadcast(&ClusterMessage::Verdict {
                node: node.to_owned(),
                from: self.me.clone(),
                state: 3,
                misses: 0,
                incarnation: 0,
            });
            self.combine(local, node);
        }
    }

    /// Everything this monitor tells another, for one that (re)connects
    /// or missed a message: every node watched here, then this monitor's
    /// vote on each (a withdrawal, state 3, where it has none, so that a
    /// withdrawal dropped is repaired too), then its votes on nodes it no
    /// longer watches.
    pub(crate) fn sync(&self, local: &dyn Local) -> Vec<ClusterMessage> {
        let nodes = local.nodes();
        let votes = lock(&self.votes);
        let verdict = |node: &str, vote: Option<&Vote>| {
            let vote = vote.copied().unwrap_or(Vote {
                state: 3,
                misses: 0,
                incarnation: 0,
            });
            ClusterMessage::Verdict {
                node: node.to_owned(),
                from: self.me.clone(),
                state: vote.state,
                misses: vote.misses,
                incarnation: vote.incarnation,
            }
        };
        let mut sync = Vec::with_capacity(nodes.len() * 2);
        let mut verdicts = Vec::with_capacity(nodes.len());
        for (name, addr, go) in nodes {
            let mine = votes.get(&name).and_then(|by| by.get(&self.me));
            verdicts.push(verdict(&name, mine));
            sync.push(ClusterMessage::Node { name, addr, go });
        }
        sync.extend(verdicts);
        let known: std::collections::HashSet<&str> = sync
            .iter()
            .filter_map(|m| match m {
                ClusterMessage::Node { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let rest: Vec<ClusterMessage> = votes
            .iter()
            .filter(|(node, _)| !known.contains(node.as_str()))
            .filter_map(|(node, by)| by.get(&self.me).map(|v| verdict(node, Some(v))))
            .collect();
        drop(known);
        sync.extend(rest);
        sync
    }

    /// A message from another monitor.
    pub(crate) fn receive(&self, local: &dyn Local, message: ClusterMessage) {
        match message {
            ClusterMessage::Heartbeat { from, epoch } => {
                self.heard(&from);
                if let Some(member) = self.members.iter().find(|m| m.name == from) {
                    let before = lock(&member.epoch).replace(epoch);
                    if before.is_some_and(|before| before != epoch) {
                        // It restarted knowing nothing: send it all again.
                        member.reset.notify_one();
                    }
                }
            }
            ClusterMessage::Node { name, addr, go } => {
                local.learn(name.clone(), addr, go);
                // Votes on it that came first are reported now.
                self.combine(local, &name);
            }
            ClusterMessage::Verdict {
                node,
                from,
                state,
                misses,
                incarnation,
            } => {
                self.heard(&from);
                {
                    let mut votes = lock(&self.votes);
                    let by = votes.entry(node.clone()).or_default();
                    if state == 3 {
                        by.remove(&from);
                    } else {
                        by.insert(
                            from,
                            Vote {
                                state,
                                misses,
                                incarnation,
                            },
                        );
                    }
                }
                self.combine(local, &node);
            }
            ClusterMessage::Probe { .. } | ClusterMessage::ProbeResult { .. } => {}
        }
    }

    /// Recomputes every node's combined verdict (membership may have
    /// changed).
    pub(crate) fn combine_all(&self, local: &dyn Local) {
        let nodes: Vec<String> = lock(&self.votes).keys().cloned().collect();
        for node in nodes {
            self.combine(local, &node);
        }
    }

    /// The cluster's verdict on `node` from its watchers' votes: dead when
    /// a majority of them find it dead; suspect when one suspects it (or
    /// finds it dead without a majority); alive otherwise. A suspicion at
    /// incarnation `i` is refuted by any monitor's alive vote at a higher
    /// incarnation (SWIM).
    fn combine(&self, local: &dyn Local, node: &str) {
        let live = self.live();
        let watching = watchers(&live, node, self.k);
        let state = {
            let votes = lock(&self.votes);
            let Some(by) = votes.get(node) else { return };
            let refuted_above = by
                .values()
                .filter(|v| v.state == 0)
                .map(|v| v.incarnation)
                .max();
            let mut dead = 0;
            let mut suspect: Option<Vote> = None;
            let mut voted = 0;
            let mut misses = 0;
            for name in &watching {
                let Some(vote) = by.get(*name) else { continue };
                voted += 1;
                let refuted =
                    vote.state > 0 && refuted_above.is_some_and(|inc| inc > vote.incarnation);
                if refuted {
                    continue;
                }
                if vote.state == 2 {
                    dead += 1;
                    misses = misses.max(vote.misses);
                }
                if vote.state >= 1 {
                    suspect = Some(suspect.map_or(*vote, |s: Vote| {
                        if s.misses >= vote.misses {
                            s
                        } else {
                            *vote
                        }
                    }));
                }
            }
            if voted == 0 {
                return;
            }
            let quorum = watching.len() / 2 + 1;
            if dead >= quorum {
                Combined::Dead { misses }
            } else if let Some(vote) = suspect {
                Combined::Suspect {
                    misses: vote.misses,
                    incarnation: vote.incarnation,
                }
            } else {
                Combined::Alive
            }
        };
        let previous = {
            let mut combined = lock(&self.combined);
            let previous = combined.insert(node.to_owned(), state);
            let same = match (previous, state) {
                (Some(Combined::Suspect { .. }), Combined::Suspect { .. }) => true,
                (Some(Combined::Dead { .. }), Combined::Dead { .. }) => true,
                (previous, state) => previous == Some(state),
            };
            if same {
                return;
            }
            previous
        };
        if !local.emit(node, state, previous) {
            // Not watched here yet (another watcher's vote came before the
            // node did): not recorded, so that it is reported once the
            // node is learned.
            let mut combined = lock(&self.combined);
            if combined.get(node) == Some(&state) {
                combined.remove(node);
            }
        }
    }
}

/// The handler of a monitor's cluster server: takes other monitors'
/// messages, and answers their indirect probes.
pub struct ClusterHandler {
    pub(crate) local: Arc<dyn Local>,
    pub(crate) cluster: Arc<Cluster>,
}

impl fmt::Debug for ClusterHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterHandler")
            .field("me", &self.cluster.me)
            .finish_non_exhaustive()
    }
}

impl Handler for ClusterHandler {
    type Message = ClusterMessage;

    async fn handle(&self, message: ClusterMessage, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match message {
            ClusterMessage::Probe { addr, go } => {
                let ok = self.local.probe_once(addr, go).await;
                ctx.reply(&ClusterMessage::ProbeResult { ok })?;
            }
            message => {
                if let ClusterMessage::Heartbeat { from, .. } = &message {
                    // The connection `from` dialled: closed if it falls
                    // silent (see `Member::cut_inbound`).
                    if let Some(member) = self.cluster.members.iter().find(|m| m.name == *from) {
                        let mut inbound = lock(&member.inbound);
                        if inbound
                            .as_ref()
                            .is_none_or(|h| h.id() != ctx.connection_id())
                        {
                            *inbound = Some(ctx.handle());
                        }
                    }
                }
                self.cluster.receive(&*self.local, message)
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_past_a_full_queue_are_dropped_and_counted() {
        let config = ClusterConfig::new("m1").monitor("m2", ([127, 0, 0, 1], 7100).into());
        let (cluster, _queues) = Cluster::new(&config, Duration::from_secs(1));
        let heartbeat = ClusterMessage::Heartbeat {
            from: "m1".into(),
            epoch: 1,
        };
        for _ in 0..QUEUE {
            cluster.broadcast(&heartbeat);
        }
        assert_eq!(cluster.counters.dropped.load(Ordering::Relaxed), 0);
        for _ in 0..3 {
            cluster.broadcast(&heartbeat);
        }
        assert_eq!(cluster.counters.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn rendezvous_moves_only_the_lost_monitors_share() {
        let all = ["m1", "m2", "m3", "m4"];
        let nodes: Vec<String> = (0..1000).map(|i| format!("node-{i}")).collect();
        let before: Vec<Vec<&str>> = nodes.iter().map(|n| watchers(&all, n, 2)).collect();
        // Balanced: each monitor watches about half the nodes (k/4 of 2,000 slots).
        for m in all {
            let share = before.iter().filter(|w| w.contains(&m)).count();
            assert!((400..600).contains(&share), "{m}: {share}");
        }
        let without = ["m1", "m2", "m4"];
        for (node, was) in nodes.iter().zip(&before) {
            let now = watchers(&without, node, 2);
            // A watcher other than m3 stays a watcher.
            for m in was.iter().filter(|m| **m != "m3") {
                assert!(now.contains(m), "{node}: {was:?} → {now:?}");
            }
        }
    }
}
