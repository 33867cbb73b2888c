//! The heartbeat wire messages.

use std::net::SocketAddr;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::codec::{Bincode, Message, Request};
use crate::codec::{SerdeFormat, Tagged, TaggedEnum, UnknownTag};
use crate::wire::error::Error;

/// A heartbeat: the monitor sends `Ping`, the node answers `Pong` with the
/// same sequence number. Tags are pinned: `Ping` is 0, `Pong` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Beat {
    /// Are you there? (monitor → node)
    Ping {
        /// Sequence number, echoed in the answer.
        seq: u64,
    },
    /// I am. (node → monitor)
    Pong {
        /// The sequence number of the ping answered.
        seq: u64,
    },
}

impl Message for Beat {
    type Codec = Tagged<Bincode>;
}

/// A `Ping` is answered by a `Pong`.
impl Request for Beat {
    type Reply = Beat;
}

impl TaggedEnum for Beat {
    fn tag(&self) -> u32 {
        match self {
            Beat::Ping { .. } => 0,
            Beat::Pong { .. } => 1,
        }
    }

    fn encode_fields<F: SerdeFormat>(&self, format: &F, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Beat::Ping { seq } | Beat::Pong { seq } => format.encode_value(&(seq,), dst),
        }
    }

    fn decode_fields<F: SerdeFormat>(
        format: &F,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(Self, usize), Error> {
        let ((seq,), used) = match tag {
            0 | 1 => format.decode_prefix::<(u64,)>(bytes)?,
            _ => return Err(Error::decode(format.name(), UnknownTag { tag })),
        };
        let beat = if tag == 0 {
            Beat::Ping { seq }
        } else {
            Beat::Pong { seq }
        };
        Ok((beat, used))
    }
}

/// A node's registration with a monitor, sent once in EOF framing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// A name for logs.
    pub name: String,
    /// Where the node's [`Responder`](super::Responder) listens.
    pub addr: SocketAddr,
}

impl Message for Register {
    type Codec = Bincode;
}

/// A monitor's answer to a typed registration: the monitor's check
/// interval, so that a [`KeepRegistered`](super::KeepRegistered) node
/// follows it without being told by hand. Sent back on the registration
/// connection (EOF-framed, bincode: the interval as seconds `u64` then
/// nanoseconds `u32`) before the monitor closes it. Monitors before it
/// send nothing, and nodes before it ignore it: both still register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// Time between two checks of the node.
    pub interval: std::time::Duration,
}

impl Message for Registered {
    type Codec = Bincode;
}
