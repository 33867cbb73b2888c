//! How a monitor probes a peer ([`Probe`]: typed [`Beat`], the Go
//! original's text, or your own) and how it reaches it ([`Dialer`]: TCP, or
//! any byte stream).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Beat;
use crate::client::{Client, ClientBuilder};
use crate::codec::Message;
use crate::wire::frame::Framing;

/// The Go original's ping line.
pub(crate) const TEXT_PING: &str = "heartbeat ping";
/// The Go original's answer.
pub(crate) const TEXT_PONG: &str = "heartbeat pong";

/// How a [`Monitor`](super::Monitor) checks a peer: one request (a ping)
/// answered by one reply (a pong) on a kept-open connection, every
/// interval.
///
/// The connection is a [`Client`] configured by [`client`](Self::client):
/// its framing, codecs, and how replies are matched to requests
/// ([`ordered_replies`](ClientBuilder::ordered_replies) for peers that
/// answer in order, or [`request_ids`](ClientBuilder::request_ids) if the
/// peer's server has them too). The monitor sets the timeouts. After a
/// failed check the connection is dropped and the next check connects
/// again, so a late or missing answer never shifts later ones.
///
/// # Examples
///
/// A probe of your own: a peer that answers `"ruok"` with `"imok"`.
///
/// ```
/// use chitchat_net::heartbeat::Probe;
/// use chitchat_net::{Client, ClientBuilder};
///
/// #[derive(Debug)]
/// struct Ruok;
///
/// impl Probe for Ruok {
///     type Ping = String;
///     type Pong = String;
///     fn client(&self) -> ClientBuilder<String> {
///         Client::<String>::builder().ordered_replies()
///     }
///     fn ping(&self, _seq: u64) -> String {
///         "ruok".into()
///     }
///     fn is_answer(&self, _seq: u64, pong: &String) -> bool {
///         pong == "imok"
///     }
/// }
/// ```
pub trait Probe: std::fmt::Debug + Send + Sync + 'static {
    /// What the monitor sends.
    type Ping: Message + Sync;
    /// What the peer answers.
    type Pong: Message;

    /// How to talk to a peer: a client builder with the framing, codec and
    /// reply matching the peer needs.
    fn client(&self) -> ClientBuilder<Self::Ping>;

    /// The ping of check number `seq` (from 1).
    fn ping(&self, seq: u64) -> Self::Ping;

    /// Whether `pong` is the right answer to the ping of check `seq`.
    fn is_answer(&self, seq: u64, pong: &Self::Pong) -> bool;

    /// Whether a peer may be answering with
    /// [request ids](ClientBuilder::request_ids) on (a node whose server
    /// serves requests too) while [`client`](Self::client) matches replies
    /// in order (default `false`; [`BeatProbe`]: `true`). If so, until a
    /// peer has answered, each connection to it is tried both ways at once
    /// (two connections; the one answered is kept, and its way remembered
    /// for that peer until it misses a check).
    fn request_ids_fallback(&self) -> bool {
        false
    }

    /// The ping to send a peer suspected dead at `incarnation`, asking it
    /// to refute the suspicion (SWIM); `None` (the default): the plain
    /// [`ping`](Self::ping), for peers that cannot refute.
    fn suspect(&self, seq: u64, incarnation: u64) -> Option<Self::Ping> {
        let _ = (seq, incarnation);
        None
    }

    /// The incarnation a valid answer carries, if any (the default: none).
    fn incarnation(&self, pong: &Self::Pong) -> Option<u64> {
        let _ = pong;
        None
    }
}

/// The typed probe, the default: [`Beat::Ping`] answered by [`Beat::Pong`]
/// with the same sequence number, as a [`Responder`](super::Responder)
/// does. Replies are matched in order, so the responder's server needs no
/// request ids; it may have them (a node that serves requests too): such a
/// peer is found answering with request ids at its first check (see
/// [`Probe::request_ids_fallback`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct BeatProbe;

impl Probe for BeatProbe {
    type Ping = Beat;
    type Pong = Beat;

    fn client(&self) -> ClientBuilder<Beat> {
        Client::<Beat>::builder().ordered_replies()
    }

    fn ping(&self, seq: u64) -> Beat {
        Beat::Ping { seq }
    }

    fn is_answer(&self, seq: u64, pong: &Beat) -> bool {
        match *pong {
            Beat::Pong { seq: answered } | Beat::Alive { seq: answered, .. } => answered == seq,
            _ => false,
        }
    }

    fn request_ids_fallback(&self) -> bool {
        true
    }

    fn suspect(&self, seq: u64, incarnation: u64) -> Option<Beat> {
        Some(Beat::Suspect { seq, incarnation })
    }

    fn incarnation(&self, pong: &Beat) -> Option<u64> {
        match *pong {
            Beat::Alive { incarnation, .. } => Some(incarnation),
            _ => None,
        }
    }
}

/// The Go original's probe: the line `heartbeat ping` answered by
/// `heartbeat pong` (`\n` framing, raw, byte for byte what a Go chitchat
/// master sends), matched in order. Unlike the Go master, which dials for
/// every check, the connection is kept open between checks; a node that
/// closes it is dialled again at the next check. A
/// [`TextResponder`](super::TextResponder) answers it too.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextProbe;

impl Probe for TextProbe {
    type Ping = String;
    type Pong = String;

    fn client(&self) -> ClientBuilder<String> {
        Client::<String>::builder()
            .framing(Framing::lines().raw())
            .max_frame_length(1024)
            .ordered_replies()
    }

    fn ping(&self, _seq: u64) -> String {
        TEXT_PING.to_string()
    }

    fn is_answer(&self, _seq: u64, pong: &String) -> bool {
        pong == TEXT_PONG
    }
}

/// A byte stream a [`Dialer`] returns.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection to a peer, boxed.
pub type BoxStream = Box<dyn Stream>;

/// What [`Dialer::dial`] returns.
pub type Dialing<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// How the monitor (and [`KeepRegistered`](super::KeepRegistered)) reach a
/// peer, when not over the operating system's TCP: a simulated network
/// (turmoil), a tunnel. The connection is then run with
/// [`ClientBuilder::connect_io`]. Any
/// `Fn(SocketAddr) -> impl Future<Output = io::Result<impl Stream>>` is a
/// dialer.
///
/// # Examples
///
/// ```
/// use chitchat_net::heartbeat::{HeartbeatConfig, Monitor};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Plain TCP, as the default does, but through the dialer path.
/// let (monitor, _events) = Monitor::builder(HeartbeatConfig::default())
///     .dialer(|addr| tokio::net::TcpStream::connect(addr))
///     .build();
/// # drop(monitor);
/// # }
/// ```
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `addr`.
    fn dial(&self, addr: SocketAddr) -> Dialing<'_>;
}

impl<F, Fut, S> Dialer for F
where
    F: Fn(SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: Stream,
{
    fn dial(&self, addr: SocketAddr) -> Dialing<'_> {
        let connecting = self(addr);
        Box::pin(async move { Ok(Box::new(connecting.await?) as BoxStream) })
    }
}
