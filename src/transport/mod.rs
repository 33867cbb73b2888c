//! Transports: the byte streams a connection runs on and the listeners that
//! accept them ([`stream`]: TCP, TLS over TCP, Unix-domain sockets, any
//! `AsyncRead + AsyncWrite` stream), the rustls types of feature `tls`
//! ([`tls`]), and the one write a sender may make to a socket itself
//! ([`direct`], which the outgoing queue above uses). A peer's address
//! (`Addr`) lives in `base`, since the error type names it.
//!
//! May import: `codec`, `wire`, `base`. Nothing above (`.ci/check-layers`
//! checks it).

pub(crate) mod direct;
pub(crate) mod stream;
#[cfg(feature = "tls")]
pub mod tls;
