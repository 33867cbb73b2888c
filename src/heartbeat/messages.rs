//! The heartbeat wire messages.

use std::net::SocketAddr;

use bytes::BytesMut;
use serde::{Deserialize, Serialize};

use crate::codec::{Bincode, Message, Request};
use crate::codec::{SerdeFormat, Tagged, TaggedEnum, UnknownTag};
use crate::wire::error::Error;

/// A heartbeat: the monitor sends `Ping`, the node answers `Pong` with the
/// same sequence number. A monitor that suspects the node sends `Suspect`
/// instead, and the node refutes the suspicion with `Alive` at a higher
/// incarnation (SWIM's refutation). Tags are pinned: `Ping` is 0, `Pong`
/// is 1, `Suspect` is 2, `Alive` is 3. A node from before `Suspect` does
/// not answer it; a monitor then falls back to `Ping` on the next check.
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
    /// Are you there? I suspect you are dead at `incarnation`. (monitor →
    /// node)
    Suspect {
        /// Sequence number, echoed in the answer.
        seq: u64,
        /// The node's incarnation the suspicion is about: the highest the
        /// monitor has seen (0 before any).
        incarnation: u64,
    },
    /// I am, at `incarnation`: an answer to `Suspect` that refutes it
    /// (`incarnation` is above the suspected one). (node → monitor)
    Alive {
        /// The sequence number of the `Suspect` answered.
        seq: u64,
        /// The node's incarnation now.
        incarnation: u64,
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
            Beat::Suspect { .. } => 2,
            Beat::Alive { .. } => 3,
        }
    }

    fn encode_fields<F: SerdeFormat>(&self, format: &F, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Beat::Ping { seq } | Beat::Pong { seq } => format.encode_value(&(seq,), dst),
            Beat::Suspect { seq, incarnation } | Beat::Alive { seq, incarnation } => {
                format.encode_value(&(seq, incarnation), dst)
            }
        }
    }

    fn decode_fields<F: SerdeFormat>(
        format: &F,
        tag: u32,
        bytes: &[u8],
    ) -> Result<(Self, usize), Error> {
        match tag {
            0 | 1 => {
                let ((seq,), used) = format.decode_prefix::<(u64,)>(bytes)?;
                let beat = if tag == 0 {
                    Beat::Ping { seq }
                } else {
                    Beat::Pong { seq }
                };
                Ok((beat, used))
            }
            2 | 3 => {
                let ((seq, incarnation), used) = format.decode_prefix::<(u64, u64)>(bytes)?;
                let beat = if tag == 2 {
                    Beat::Suspect { seq, incarnation }
                } else {
                    Beat::Alive { seq, incarnation }
                };
                Ok((beat, used))
            }
            _ => Err(Error::decode(format.name(), UnknownTag { tag })),
        }
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
