// The heartbeat layer (this folder), the top one: a monitor and the node
// side, built on the public runtime. May import every layer: `client`,
// `server`, `conn`, `transport`, `codec`, `wire`, `base`
// (`.ci/check-layers` checks the layering).

//! Heartbeats: a [`Monitor`] that checks peers every interval with a
//! [`Probe`] and reports their state changes, and the node side: a
//! [`Responder`] that answers pings and [`KeepRegistered`] that keeps the
//! node registered.
//!
//! This is the Go original's demo made reusable. Nodes run a [`Responder`]
//! and [`register`] with the monitor by sending one EOF-framed [`Register`]
//! message, as in the original; the monitor then pings each node every
//! interval over one kept-open connection (reconnecting after a failure)
//! and reports [`PeerState`] changes: alive, missed, dead (by default after
//! more than 3 misses in a row, as the original; or by
//! [phi accrual](PhiAccrual)), alive again, and forgotten after staying dead
//! too long.
//!
//! Go peers work both ways: [`TextProbe`] checks Go nodes (`heartbeat ping`
//! → `heartbeat pong`), the registrar takes their `hello` (with a
//! [Go port](HeartbeatConfigBuilder::go_port)), and a [`TextResponder`] with
//! [`register_go`] answers a Go master.
//!
//! What a peer can make a monitor hold is bounded: at most
//! [`max_peers`](HeartbeatConfigBuilder::max_peers) watched, a typed
//! registration may only name its own connection's IP by default
//! ([`RegisteredIp`]), dead peers are forgotten after
//! [`forget_dead_after`](HeartbeatConfigBuilder::forget_dead_after), the
//! registration server has a connection limit and an optional
//! [filter](MonitorBuilder::registration_filter); all counted in
//! [`MonitorStats`].
//!
//! # Examples
//!
//! ```no_run
//! use chitchat_net::heartbeat::{register, HeartbeatConfig, Monitor, Responder};
//! use chitchat_net::Server;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (monitor, mut events) = Monitor::new(HeartbeatConfig::default());
//! let registrations = monitor.listen_registrations("127.0.0.1:0").await?;
//!
//! let node = Server::listen("127.0.0.1:0", Responder::new()).await?;
//! register(registrations.local_addr(), "node-1", node.local_addr()).await?;
//!
//! while let Some(event) = events.recv().await {
//!     println!("{} {} is {} ({:.1})", event.name, event.addr, event.state, event.suspicion);
//! }
//! # Ok(()) }
//! ```

mod cluster;
mod config;
mod detector;
mod messages;
mod monitor;
mod probe;
mod responder;

pub use self::cluster::{ClusterConfig, ClusterHandler, ClusterMessage};
pub use self::config::{
    ConfigError, Detector, HeartbeatConfig, HeartbeatConfigBuilder, PhiAccrual, RegisteredIp,
    DEFAULT_FORGET_DEAD_AFTER, DEFAULT_INTERVAL, DEFAULT_MAX_PEERS, DEFAULT_MISS_LIMIT,
};
pub use self::messages::{Beat, Register, Registered};
pub use self::monitor::{
    Monitor, MonitorBuilder, MonitorStats, PeerEvent, PeerEvents, PeerInfo, PeerKind, PeerState,
    Registrar, WatchError, DEFAULT_MAX_REGISTRATION_CONNECTIONS, DEFAULT_REGISTRATION_DEADLINE,
};
pub use self::probe::{BeatProbe, BoxStream, Dialer, Dialing, Probe, Stream, TextProbe};
pub use self::responder::{
    register, register_go, KeepRegistered, KeepRegisteredBuilder, LastPing, Registration,
    Responder, TextResponder,
};
