//! Addresses of connections: a TCP socket address, (on Unix) a Unix-domain
//! socket, or a name for a stream that has no socket address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
#[cfg(unix)]
use std::path::Path;
use std::sync::Arc;

/// Where one end of a connection is: what [`Context::peer_addr`],
/// [`ErrorEvent::peer`], [`Server::remote_addrs`] and the accept filter
/// report, and what [`Server::close_remote`] and [`Server::send_to`] take.
///
/// # Examples
///
/// ```
/// use chitchat_net::Addr;
/// use std::net::SocketAddr;
///
/// let tcp: SocketAddr = "127.0.0.1:7000".parse().unwrap();
/// let addr = Addr::from(tcp);
/// assert_eq!(addr.tcp(), Some(tcp));
/// assert!(addr.ip().is_some_and(|ip| ip.is_loopback()));
/// assert_eq!(addr.to_string(), "127.0.0.1:7000");
/// assert_eq!(addr, tcp);
///
/// // A stream with no socket address (in memory, simulated, a serial line):
/// let named = Addr::named("duplex-1");
/// assert_eq!(named.name(), Some("duplex-1"));
/// assert_eq!(named.tcp(), None);
/// assert_eq!(named.to_string(), "duplex-1");
/// ```
///
/// [`Context::peer_addr`]: crate::Context::peer_addr
/// [`ErrorEvent::peer`]: crate::ErrorEvent::peer
/// [`Server::remote_addrs`]: crate::Server::remote_addrs
/// [`Server::close_remote`]: crate::Server::close_remote
/// [`Server::send_to`]: crate::Server::send_to
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Addr {
    /// A TCP (or TLS over TCP) connection's socket address.
    Tcp(SocketAddr),
    /// A Unix-domain socket.
    #[cfg(unix)]
    Unix(UnixAddr),
    /// A stream that has no socket address, named by whoever made it: an
    /// in-memory [`tokio::io::duplex`], a simulated network, a QUIC stream,
    /// a serial line. Made with [`Addr::named`]; the peers of
    /// [`ClientBuilder::connect_io`](crate::ClientBuilder::connect_io) and
    /// [`ServerBuilder::serve`](crate::ServerBuilder::serve) are named so.
    /// Displayed as the name.
    Named(Arc<str>),
}

impl Addr {
    /// The address of a stream that has no socket address: `name`, as the
    /// user chose it. A server tells its peers apart by their address, so
    /// give each connection of a server its own name.
    pub fn named(name: impl Into<Arc<str>>) -> Self {
        Addr::Named(name.into())
    }

    /// The Unix-domain socket at `path`: something to connect to, or to
    /// listen on with [`Server::listen`](crate::Server::listen).
    #[cfg(unix)]
    pub fn unix_path(path: impl AsRef<Path>) -> Self {
        Addr::Unix(UnixAddr::named(Some(path.as_ref())))
    }

    /// The TCP socket address, if this is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(addr) => Some(*addr),
            #[cfg(unix)]
            Addr::Unix(_) => None,
            Addr::Named(_) => None,
        }
    }

    /// The name, if this is a [named](Addr::Named) address.
    pub fn name(&self) -> Option<&str> {
        match self {
            Addr::Named(name) => Some(name),
            _ => None,
        }
    }

    /// The IP address, if this is a TCP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.tcp().map(|addr| addr.ip())
    }

    /// The Unix-domain socket address, if this is one.
    #[cfg(unix)]
    pub fn unix(&self) -> Option<&UnixAddr> {
        match self {
            Addr::Unix(addr) => Some(addr),
            Addr::Tcp(_) | Addr::Named(_) => None,
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        Addr::Tcp(addr)
    }
}

impl From<&SocketAddr> for Addr {
    fn from(addr: &SocketAddr) -> Self {
        Addr::Tcp(*addr)
    }
}

impl From<&Addr> for Addr {
    fn from(addr: &Addr) -> Self {
        addr.clone()
    }
}

#[cfg(unix)]
impl From<UnixAddr> for Addr {
    fn from(addr: UnixAddr) -> Self {
        Addr::Unix(addr)
    }
}

impl PartialEq<SocketAddr> for Addr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.tcp() == Some(*other)
    }
}

impl PartialEq<Addr> for SocketAddr {
    fn eq(&self, other: &Addr) -> bool {
        other == self
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => addr.fmt(f),
            #[cfg(unix)]
            Addr::Unix(addr) => addr.fmt(f),
            Addr::Named(name) => f.write_str(name),
        }
    }
}

/// One end of a Unix-domain socket connection.
///
/// A client's socket usually has no path, so a server tells its peers apart
/// by a connection number ([`id`](UnixAddr::id)), unique within the server,
/// and records the peer's credentials as the kernel reports them: an accept
/// filter can admit local peers by user id.
///
/// Displayed as `unix:PATH`, or `unix:#ID` with the credentials for an
/// accepted peer, for example `unix:#3 (uid 1000, gid 1000, pid 4242)`.
#[cfg(unix)]
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixAddr {
    id: u64,
    path: Option<Arc<Path>>,
    credentials: Option<Credentials>,
}

/// A Unix peer's process credentials (`SO_PEERCRED`).
#[cfg(unix)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Credentials {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

#[cfg(unix)]
impl UnixAddr {
    /// An address for a socket bound at `path`, or unnamed, with
    /// connection number 0 (a listener's or a client's own address).
    pub(crate) fn named(path: Option<&Path>) -> Self {
        UnixAddr {
            id: 0,
            path: path.map(Arc::from),
            credentials: None,
        }
    }

    /// An accepted peer: connection number `id`, its path if it bound one,
    /// and its credentials if the kernel gives them.
    pub(crate) fn peer(
        id: u64,
        path: Option<&Path>,
        cred: Option<tokio::net::unix::UCred>,
    ) -> Self {
        UnixAddr {
            id,
            path: path.map(Arc::from),
            credentials: cred.map(|cred| Credentials {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            }),
        }
    }

    /// The connection number a server gave this peer (from 1, unique within
    /// the server); 0 for a listener's or a client's own address.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The socket's path, if it is bound to one (a listener's always is; a
    /// client's usually is not).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The peer process's user id, for an accepted peer.
    pub fn uid(&self) -> Option<u32> {
        self.credentials.map(|c| c.uid)
    }

    /// The peer process's group id, for an accepted peer.
    pub fn gid(&self) -> Option<u32> {
        self.credentials.map(|c| c.gid)
    }

    /// The peer process's id, for an accepted peer, where the platform
    /// reports it.
    pub fn pid(&self) -> Option<i32> {
        self.credentials.and_then(|c| c.pid)
    }
}

#[cfg(unix)]
impl fmt::Display for UnixAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unix:")?;
        if self.id != 0 || self.path.is_none() {
            write!(f, "#{}", self.id)?;
            if self.path.is_some() {
                f.write_str(" ")?;
            }
        }
        if let Some(path) = &self.path {
            write!(f, "{}", path.display())?;
        }
        if let Some(c) = self.credentials {
            write!(f, " (uid {}, gid {}", c.uid, c.gid)?;
            if let Some(pid) = c.pid {
                write!(f, ", pid {pid}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// What a client can connect to: anything [`tokio::net::ToSocketAddrs`]
/// takes (`"host:port"`, a [`SocketAddr`], an `(ip, port)` pair), or an
/// [`Addr`] — TCP or, on Unix, a Unix-domain socket — such as a server's
/// [`local_addr`](crate::Server::local_addr). A [named](Addr::Named)
/// address cannot be dialled: connect over its stream with
/// [`ClientBuilder::connect_io`](crate::ClientBuilder::connect_io).
///
/// # Examples
///
/// ```no_run
/// use chitchat_net::{Client, Server};
///
/// # async fn run(server: Server<()>) -> Result<(), chitchat_net::Error> {
/// let by_name = Client::<String>::connect("localhost:7000").await?;
/// let same_transport = Client::<String>::connect(server.local_addr()).await?;
/// # Ok(()) }
/// ```
pub trait ConnectAddr: sealed::Sealed {}

pub(crate) mod sealed {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    use super::Addr;

    /// Where to connect, resolved from a [`ConnectAddr`](super::ConnectAddr).
    #[derive(Debug, Clone)]
    pub enum Target {
        /// A name to resolve: `"host:port"`.
        Name(String),
        /// Socket addresses, tried in order.
        Tcp(Vec<SocketAddr>),
        /// A Unix-domain socket path.
        #[cfg(unix)]
        Unix(std::path::PathBuf),
        /// A named stream's address: nothing to dial.
        Named(std::sync::Arc<str>),
    }

    pub trait Sealed {
        fn target(self) -> Target;
    }

    macro_rules! socket_addrs {
        ($($ty:ty),*) => {$(
            impl Sealed for $ty {
                fn target(self) -> Target {
                    Target::Tcp(vec![SocketAddr::from(self)])
                }
            }
            impl super::ConnectAddr for $ty {}
        )*};
    }
    socket_addrs!(
        SocketAddr,
        SocketAddrV4,
        SocketAddrV6,
        (IpAddr, u16),
        (Ipv4Addr, u16),
        (Ipv6Addr, u16)
    );

    macro_rules! names {
        ($($ty:ty),*) => {$(
            impl Sealed for $ty {
                fn target(self) -> Target {
                    Target::Name(self.to_string())
                }
            }
            impl super::ConnectAddr for $ty {}
        )*};
    }
    names!(&str, String, &String);

    impl Sealed for (&str, u16) {
        fn target(self) -> Target {
            match self.0.parse::<IpAddr>() {
                Ok(ip) => Target::Tcp(vec![SocketAddr::new(ip, self.1)]),
                Err(_) => Target::Name(format!("{}:{}", self.0, self.1)),
            }
        }
    }
    impl super::ConnectAddr for (&str, u16) {}

    impl Sealed for &[SocketAddr] {
        fn target(self) -> Target {
            Target::Tcp(self.to_vec())
        }
    }
    impl super::ConnectAddr for &[SocketAddr] {}

    impl Sealed for &SocketAddr {
        fn target(self) -> Target {
            Target::Tcp(vec![*self])
        }
    }
    impl super::ConnectAddr for &SocketAddr {}

    impl Sealed for &Addr {
        fn target(self) -> Target {
            match self {
                Addr::Tcp(addr) => Target::Tcp(vec![*addr]),
                #[cfg(unix)]
                Addr::Unix(addr) => match addr.path() {
                    Some(path) => Target::Unix(path.to_path_buf()),
                    // An unnamed socket cannot be connected to: no such file.
                    None => Target::Unix(std::path::PathBuf::new()),
                },
                Addr::Named(name) => Target::Named(name.clone()),
            }
        }
    }
    impl super::ConnectAddr for &Addr {}

    impl Sealed for Addr {
        fn target(self) -> Target {
            (&self).target()
        }
    }
    impl super::ConnectAddr for Addr {}
}
