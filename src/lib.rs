//! chitchat-net: typed messages over TCP.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![doc(test(attr(deny(warnings))))]

mod client;
pub mod codec;
mod config;
mod connection;
mod error;
mod events;
pub mod frame;
mod handle;
mod handler;
pub mod heartbeat;
mod outbox;
mod server;
mod wire;

pub use crate::client::{Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT};
#[cfg(feature = "postcard")]
pub use crate::codec::Postcard;
pub use crate::codec::{
    Bincode, Codec, Message, PodCodec, Raw, SizeMismatch, Text, TrailingBytes,
    DEFAULT_BINCODE_LIMIT,
};
pub use crate::config::{DEFAULT_CLOSE_TIMEOUT, DEFAULT_QUEUE_BYTES, DEFAULT_WRITE_TIMEOUT};
pub use crate::error::{BoxError, Error};
pub use crate::events::{ErrorEvent, ErrorEvents, DEFAULT_EVENT_CAPACITY};
pub use crate::frame::{Escaping, FrameCodec, Framing, DEFAULT_MAX_FRAME_LENGTH};
pub use crate::handle::ConnectionHandle;
pub use crate::handler::{handler_fn, Context, Dispatch, Handler, HandlerFn};
pub use crate::server::{Server, ServerBuilder};

#[cfg(feature = "derive")]
pub use chitchat_net_derive::{Handler, Message};

/// Items the derive macros' generated code uses. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use bytemuck;
    pub use bytes;
    pub use serde;
}
