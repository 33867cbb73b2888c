//! TLS over tokio-rustls (feature `tls`): the rustls types that
//! [`ServerBuilder::tls`](crate::ServerBuilder::tls) and
//! [`ClientBuilder::tls`](crate::ClientBuilder::tls) take, re-exported so that
//! their versions match.
//!
//! rustls is set up with the `ring` crypto provider. For mutual TLS, build
//! the server's config with a client certificate verifier
//! (`rustls::server::WebPkiClientVerifier`) and the client's with
//! `with_client_auth_cert`.

pub use tokio_rustls::rustls;
pub use tokio_rustls::rustls::pki_types;
