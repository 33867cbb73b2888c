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
//! A server that answers each line with its length, and a client that asks
//! (a `String` request is answered by a `String`):
//!
//! ```
//! use chitchat_net::{handler_fn, BoxError, Client, Context, Server};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lengths = handler_fn(|line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
//!     ctx.reply(&line.len().to_string())?;
//!     Ok(())
//! });
//! let server = Server::builder(lengths).request_ids().listen("127.0.0.1:0").await?;
//!
//! let client = Client::<String>::builder().request_ids().connect(server.local_addr()).await?;
//! let len = client.request(&"hello".to_string()).await?;
//! assert_eq!(len, "5");
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
//! use chitchat_net::{BoxError, Client, Context, Handler, Message, Server};
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
//! // What the server sends back is buffered for `recv`.
//! let client = Client::<Beat>::builder()
//!     .receive::<Beat>(16)
//!     .connect(server.local_addr())
//!     .await?;
//! client.send(&Beat::Ping { seq: 1 }).await?;
//! assert_eq!(client.recv().await, Some(Beat::Pong { seq: 1 }));
//! client.close().await;
//! server.cut().await;
//! # Ok(()) }
//! ```
//!
//! # Where things live
//!
//! The source is a stack of layers, bottom to top (README "Layout"); the
//! public items of each are re-exported here.
//!
//! - Plain values: [`Addr`] (who a peer is), [`CloseReason`], [`Stats`].
//! - The wire format (pure): [`frame`] with [`Framing`] and [`FrameCodec`],
//!   bytes ⇄ frames; [`envelope`], the request envelope; the hello of the
//!   [`handshake`]; and [`Error`], the one error type.
//! - [`codec`]: [`Codec`] and [`Message`], frames ⇄ typed values (pure);
//!   [`Request`], a message that names its reply type;
//!   [`TypedCodec`]: typed messages for a [`Framed`](tokio_util::codec::Framed)
//!   you drive yourself, on our framing and codecs (pure).
//! - Transports: TCP, TLS (feature `tls`, module `tls`), on Unix a Unix-domain
//!   socket ([`ServerBuilder::listen_unix`]), or any `AsyncRead + AsyncWrite`
//!   stream ([`ClientBuilder::connect_io`], [`ServerBuilder::serve`]).
//! - One connection: [`Handler`], [`Context`], [`handler_fn`] (what users
//!   write), [`ConnectionHandle`], [`ConnectionId`], [`Options`], and
//!   [`ErrorEvents`], the bounded stream of error events.
//! - [`Client`] (with [`Reconnect`] and [`WhileDown`]) and [`Server`]: the
//!   runtime on tokio.
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

// The layers, bottom to top (README "Layout"; `.ci/check-layers` checks
// that each imports only the ones below it, never through this root).
mod base;
mod client;
pub mod codec;
mod conn;
pub mod heartbeat;
mod server;
mod transport;
mod wire;

// The public modules that live in a layer's folder, at their public paths.
pub use crate::conn::handshake;
#[cfg(feature = "tls")]
pub use crate::transport::tls;
pub use crate::wire::{envelope, frame};

#[cfg(unix)]
pub use crate::base::addr::UnixAddr;
pub use crate::base::addr::{Addr, ConnectAddr};
pub use crate::base::close::CloseReason;
pub use crate::base::stats::Stats;
pub use crate::client::link::WhileDown;
pub use crate::client::reconnect::{
    Reconnect, DEFAULT_HEALTHY_AFTER, DEFAULT_MAX_RECONNECT_DELAY, DEFAULT_RECONNECT_DELAY,
};
pub use crate::client::{
    Client, ClientBuilder, CloseReport, NoReceive, Receivable, DEFAULT_CONNECT_TIMEOUT,
};
pub use crate::codec::typed_codec::TypedCodec;
#[cfg(feature = "postcard")]
pub use crate::codec::Postcard;
pub use crate::codec::{
    Bincode, BincodeWithLimit, Codec, Format, Message, PodCodec, Raw, Request, SizeMismatch,
    Subscription, Text, TrailingBytes, DEFAULT_BINCODE_LIMIT,
};
pub use crate::conn::config::{
    DEFAULT_CLOSE_TIMEOUT, DEFAULT_CONCURRENT_REQUESTS, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_QUEUE_BYTES, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WRITE_STALL_TIMEOUT,
};
pub use crate::conn::events::{ErrorEvent, ErrorEvents, DEFAULT_EVENT_CAPACITY};
pub use crate::conn::handle::{ConnectionHandle, ConnectionId};
pub use crate::conn::handler::{
    handler_fn, Closed, Context, Dispatch, Handler, HandlerFn, Replier,
};
pub use crate::conn::op_error::{ConnectError, RequestError, SendError, TrySendError};
pub use crate::conn::options::Options;
pub use crate::conn::receive::Inbox;
pub use crate::conn::reply_stream::{NoStream, ReplySink, SinkError};
pub use crate::conn::subscriptions::{ReplyStream, StreamError, DEFAULT_STREAM_WINDOW};
pub use crate::server::{Server, ServerBuilder, ShutdownReport};
pub use crate::wire::error::{BoxError, Error, Report};
pub use crate::wire::frame::{Escaping, FrameCodec, Framing, DEFAULT_MAX_FRAME_LENGTH};

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
