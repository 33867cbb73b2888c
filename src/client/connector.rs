//! Many write-only connections started from one client setup: what a
//! heartbeat monitor keeps open to each peer it checks.
//!
//! A [`Client`](super::Client) holds, for its one connection, its own
//! settings, wire, counters, event stream, link and a task that waits for
//! the connection's task: several kilobytes that a monitor watching
//! thousands of peers would pay once per peer. A [`Connector`] holds those
//! once; each connection it makes is its handle and its task (spawned
//! directly, unboxed), nothing more. What goes on the wire is the same as
//! a client's built from the same builder.

use std::time::Duration;

use super::{dial_within, handshaken, say_hello, ClientBuilder, OnConnect, Starter};
use crate::base::addr::{Addr, ConnectAddr};
use crate::base::close::CloseReason;
use crate::base::stats::Counters;
use crate::codec::Message;
use crate::conn::events::event_channel;
use crate::conn::handle::ConnectionHandle;
use crate::conn::wire::{default_is_binary, Wire};
use crate::transport::stream::ClientTls;
use crate::wire::error::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// Event slots shared by every connection of a connector: nobody reads
/// them (a monitor judges a peer by its checks), so they are few.
const EVENT_CAPACITY: usize = 16;

/// Starts connections with one write-only client's settings (see the
/// module docs). Made by [`ClientBuilder::connector`].
pub(crate) struct Connector {
    starter: Starter<()>,
    connect_timeout: Duration,
    tls: Option<ClientTls>,
    on_connect: Option<OnConnect>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl<M: Message> ClientBuilder<M> {
    /// A connector with this builder's settings. A reconnect policy is
    /// ignored: its connections end when they fail.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for settings that cannot work (or no tokio
    /// runtime).
    pub(crate) fn connector(self) -> Result<Connector, Error> {
        self.validate()?;
        let (binary, overrides) = match self.codec {
            Some((binary, codec)) => (binary, vec![codec]),
            None => (default_is_binary::<M>(), Vec::new()),
        };
        // Write-only, as `start` builds it.
        let wire = Wire::build(&self.config, binary, overrides)?;
        let mut config = self.config;
        config.hello = crate::conn::wire::client_plan::<M, Bytes>(&config, &wire, false)?;
        let counters = std::sync::Arc::new(Counters::default());
        let ended = tokio_util::sync::CancellationToken::new();
        let (events, _errors) = event_channel(EVENT_CAPACITY, ended, counters.clone());
        Ok(Connector {
            starter: Starter {
                handler: std::sync::Arc::new(()),
                config: std::sync::Arc::new(config),
                wire,
                counters,
                events,
            },
            connect_timeout: self.connect_timeout,
            tls: self.tls,
            on_connect: self.on_connect,
        })
    }
}

type Bytes = bytes::Bytes;

impl Connector {
    /// Connects to `addr` and starts the connection (its handshake done,
    /// its `on_connect` hook run).
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect`].
    pub(crate) async fn connect(&self, addr: impl ConnectAddr) -> Result<Owned, Error> {
        let (stream, peer, local) =
            dial_within(self.connect_timeout, addr.target(), self.tls.as_ref()).await?;
        self.started(self.spawn(stream.split(), peer, local)).await
    }

    /// Starts a connection over `io`, as
    /// [`ClientBuilder::connect_io`] does.
    ///
    /// # Errors
    ///
    /// As [`ClientBuilder::connect_io`].
    pub(crate) async fn connect_io<S>(&self, io: S, peer: Addr) -> Result<Owned, Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let local = Addr::named("local");
        let owned = match self.tls.clone() {
            None => self.spawn(tokio::io::split(io), peer, local),
            Some(tls) => {
                let stream = tokio::time::timeout(self.connect_timeout, tls.connect(io))
                    .await
                    .map_err(|_| Error::ConnectTimeout(self.connect_timeout))??;
                self.spawn(tokio::io::split(stream), peer, local)
            }
        };
        self.started(owned).await
    }

    fn spawn<Rd, Wr>(&self, halves: (Rd, Wr), peer: Addr, local: Addr) -> Owned
    where
        Rd: AsyncRead + Send + Unpin + 'static,
        Wr: crate::transport::stream::SocketWrite + Send + 'static,
    {
        let (conn, task) = self.starter.connection(halves, peer, local);
        drop(tokio::spawn(task));
        Owned(conn)
    }

    /// Waits for the handshake and runs the hook (on failure `owned` is
    /// dropped: the connection ends).
    async fn started(&self, owned: Owned) -> Result<Owned, Error> {
        handshaken(&owned.0).await?;
        if let Some(hook) = &self.on_connect {
            say_hello(hook, owned.0.clone()).await?;
        }
        Ok(owned)
    }
}

/// A connection made by a [`Connector`]: dropping it ends the connection
/// at once, as dropping a client does.
#[derive(Debug)]
pub(crate) struct Owned(ConnectionHandle);

impl Owned {
    /// The connection.
    pub(crate) fn handle(&self) -> &ConnectionHandle {
        &self.0
    }

    /// Closes the connection gracefully and waits for its end (bounded by
    /// its close timeout).
    pub(crate) async fn close(self) -> CloseReason {
        self.0.close();
        self.0.closed().await
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.inner.signal.abort();
    }
}
