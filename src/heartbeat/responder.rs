//! The node side: answering pings, and registering with a monitor.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Beat, Register};
use crate::{BoxError, Client, Context, Error, Framing, Handler};

/// Answers every [`Beat::Ping`] with a [`Beat::Pong`] of the same sequence
/// number. Serve it with [`Server`](crate::Server) on the node's address.
#[derive(Debug, Default)]
pub struct Responder {
    answered: AtomicU64,
}

impl Responder {
    /// How many pings were answered, over all connections.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

impl Handler for Responder {
    type Message = Beat;

    async fn handle(&self, beat: Beat, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        match beat {
            Beat::Ping { seq } => {
                ctx.send(&Beat::Pong { seq })?;
                self.answered.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Beat::Pong { seq } => Err(format!("unexpected pong {seq} at a responder").into()),
        }
    }
}

/// Answers the Go original's text heartbeat: `heartbeat ping` with
/// `heartbeat pong`, in `\n` framing (raw, as the original writes it).
#[derive(Debug, Default)]
pub struct TextResponder;

/// The Go original's ping line.
const TEXT_PING: &str = "heartbeat ping";
/// The Go original's answer.
const TEXT_PONG: &str = "heartbeat pong";

impl Handler for TextResponder {
    type Message = String;

    async fn handle(&self, line: String, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        if line != TEXT_PING {
            return Err(format!("expected {TEXT_PING:?}, got {line:?}").into());
        }
        ctx.send(&TEXT_PONG.to_string())?;
        Ok(())
    }
}

/// Registers a node (`name`, listening on `node`) with the monitor whose
/// registration server is at `monitor`: one [`Register`] message in EOF
/// framing, delivered when the connection closes.
///
/// `node` is a TCP address, such as the node server's
/// [`local_addr`](crate::Server::local_addr).
///
/// # Errors
///
/// [`Error::Io`] or [`Error::ConnectTimeout`] if the monitor cannot be
/// reached; `InvalidInput` if `node` is not a TCP address.
pub async fn register(
    monitor: impl crate::ConnectAddr,
    name: impl Into<String>,
    node: impl Into<crate::Addr>,
) -> Result<(), Error> {
    let Some(node) = node.into().tcp() else {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a node registers the TCP address it answers on",
        )));
    };
    let client = Client::<Register>::builder()
        .framing(Framing::eof())
        .connect(monitor)
        .await?;
    let registration = Register {
        name: name.into(),
        addr: node,
    };
    client.send(&registration).await?;
    client.close().await;
    match client.errors().try_recv() {
        Some(event) => Err(event.error),
        None => Ok(()),
    }
}
