//! Typed messages over TCP: a lightweight, high-concurrency server and client.
//!
//! A frame's way: socket → read side → [framing](frame) → [codec] →
//! [`Handler`] → [`Context::send`] → the connection's bounded outgoing queue →
//! write side → socket. Each connection reads and writes independently: a
//! write in progress never stops reading, and a handler that waits never
//! stops writing.
//!
//! # Examples
//!
//! A server that answers each line with its length, and a client:
//!
//! ```
//! use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lengths = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
//!     ctx.send(&line.len().to_string())?;
//!     Ok(())
//! });
//! let server = Server::listen("127.0.0.1:0", lengths).await?;
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let print = handler_fn(move |reply: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
//!     tx.send(reply)?;
//!     Ok(())
//! });
//! let client = Client::<String>::builder().handler(print).connect(server.local_addr()).await?;
//! client.send(&"hello".to_string()).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("5"));
//! client.close().await;
//! server.cut().await;
//! # Ok(()) }
//! ```
//!
//! # Typed messages with the derives
//!
//! Derive [`Message`](derive@Message) to pick a codec and get a handler trait with
//! one method per kind of message, then derive [`Handler`](derive@Handler) on the
//! type that implements it:
//!
//! ```
//! use chitchat_net::{handler_fn, BoxError, Client, Context, Handler, Message, Server};
//!
//! #[derive(Debug, PartialEq, Message)]
//! #[message(codec = "bincode")]
//! enum Beat {
//!     #[message(tag = 1)]
//!     Ping { seq: u64 },
//!     #[message(tag = 2)]
//!     Pong { seq: u64 },
//! }
//!
//! /// Answers each ping with a pong.
//! #[derive(Handler)]
//! #[handler(message = Beat)]
//! struct Responder;
//!
//! impl BeatHandler for Responder {
//!     async fn ping(&self, seq: u64, ctx: &mut Context<'_>) -> Result<(), BoxError> {
//!         ctx.send(&Beat::Pong { seq })?;
//!         Ok(())
//!     }
//!
//!     async fn pong(&self, _seq: u64, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::listen("127.0.0.1:0", Responder).await?;
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let collect = handler_fn(move |beat: Beat, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
//!     tx.send(beat)?;
//!     Ok(())
//! });
//! let client = Client::<Beat>::builder().handler(collect).connect(server.local_addr()).await?;
//! client.send(&Beat::Ping { seq: 1 }).await?;
//! assert_eq!(rx.recv().await, Some(Beat::Pong { seq: 1 }));
//! client.close().await;
//! server.cut().await;
//! # Ok(()) }
//! ```
//!
//! # Where things live
//!
//! - [`frame`]: [`Framing`] and [`FrameCodec`], bytes ⇄ frames (pure).
//! - [`codec`]: [`Codec`] and [`Message`], frames ⇄ typed values (pure).
//! - [`Handler`], [`Context`], [`handler_fn`]: what users write.
//! - [`TypedCodec`]: typed messages for a [`Framed`](tokio_util::codec::Framed)
//!   you drive yourself, on our framing and codecs (pure).
//! - [`Server`], [`Client`], [`ConnectionHandle`], [`ConnectionId`]: the runtime on tokio, over
//!   TCP, TLS (feature `tls`), on Unix a Unix-domain socket
//!   ([`ServerBuilder::listen_unix`]), or any `AsyncRead + AsyncWrite` stream
//!   ([`ClientBuilder::connect_io`], [`ServerBuilder::serve`]); peers are named by
//!   an [`Addr`].
//! - [`ErrorEvents`]: the bounded stream of error events.
//! - [`heartbeat`]: a reusable heartbeat monitor and responder.
//! - [`derive@Message`], [`derive@Handler`] (feature `derive`, on by default).
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

mod addr;
mod client;
pub mod codec;
mod config;
mod connection;
pub mod envelope;
mod error;
mod events;
pub mod frame;
mod handle;
mod handler;
pub mod handshake;
pub mod heartbeat;
mod link;
#[macro_use]
mod options;
mod op_error;
mod outbox;
mod reader;
mod receive;
mod reconnect;
mod requests;
mod server;
mod signal;
mod stats;
mod sync;
#[cfg(feature = "tls")]
pub mod tls;
mod transport;
mod typed_codec;
mod wire;
mod writer;

#[cfg(unix)]
pub use crate::addr::UnixAddr;
pub use crate::addr::{Addr, ConnectAddr};
pub use crate::client::{Client, ClientBuilder, CloseReport, DEFAULT_CONNECT_TIMEOUT};
#[cfg(feature = "postcard")]
pub use crate::codec::Postcard;
pub use crate::codec::{
    Bincode, BincodeWithLimit, Codec, Format, Message, PodCodec, Raw, SizeMismatch, Text,
    TrailingBytes, DEFAULT_BINCODE_LIMIT,
};
pub use crate::config::{
    DEFAULT_CLOSE_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_QUEUE_BYTES, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WRITE_STALL_TIMEOUT,
};
pub use crate::error::{BoxError, Error, Report};
pub use crate::events::{ErrorEvent, ErrorEvents, DEFAULT_EVENT_CAPACITY};
pub use crate::frame::{Escaping, FrameCodec, Framing, DEFAULT_MAX_FRAME_LENGTH};
pub use crate::handle::{CloseReason, ConnectionHandle, ConnectionId};
pub use crate::handler::{handler_fn, Closed, Context, Dispatch, Handler, HandlerFn, Replier};
pub use crate::link::WhileDown;
pub use crate::op_error::{ConnectError, RequestError, SendError, TrySendError};
pub use crate::options::Options;
pub use crate::receive::Inbox;
pub use crate::reconnect::{
    Reconnect, DEFAULT_HEALTHY_AFTER, DEFAULT_MAX_RECONNECT_DELAY, DEFAULT_RECONNECT_DELAY,
};
pub use crate::server::{Server, ServerBuilder};
pub use crate::stats::Stats;
pub use crate::typed_codec::TypedCodec;
pub use crate::wire::DEFAULT_MAX_IN_FLIGHT;

#[cfg(feature = "derive")]
pub use chitchat_net_derive::{Handler, Message};

/// Items the derive macros' generated code uses. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use bytemuck;
    pub use bytes;
    pub use serde;
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
