//! Heartbeats: a [`Monitor`] that checks peers with typed ping/pong and
//! reports their state changes, and a [`Responder`] that answers pings.
//!
//! This is the Go original's demo made reusable. Nodes run a [`Responder`]
//! and [`register`] with the monitor by sending one EOF-framed [`Register`]
//! message, as in the original; the monitor then pings each node every
//! interval over one kept-open connection (reconnecting after a failure),
//! counts misses, and reports [`PeerState`] changes: alive, missed, dead after
//! more than `miss_limit` misses in a row, alive again.
//!
//! For Go peers, [`TextResponder`] answers the original's text
//! `heartbeat ping` with `heartbeat pong`.
//!
//! # Examples
//!
//! ```no_run
//! use chitchat_net::heartbeat::{register, HeartbeatConfig, Monitor, Responder};
//! use chitchat_net::Server;
//!
//! # async fn run() -> Result<(), chitchat_net::Error> {
//! let (monitor, mut events) = Monitor::new(HeartbeatConfig::default());
//! let registrations = monitor.listen_registrations("127.0.0.1:0").await?;
//!
//! let node = Server::listen("127.0.0.1:0", Responder::default()).await?;
//! register(registrations.local_addr(), "node-1", node.local_addr()).await?;
//!
//! while let Some(event) = events.recv().await {
//!     println!("{} {} is {}", event.name, event.addr, event.state);
//! }
//! # Ok(()) }
//! ```

mod messages;
mod monitor;
mod responder;

pub use self::messages::{Beat, Register};
pub use self::monitor::{HeartbeatConfig, Monitor, PeerEvent, PeerEvents, PeerState, Registrar};
pub use self::responder::{register, Responder, TextResponder};
