#![cfg(feature = "tls")]
//! Integration tests of TLS (feature `tls`) over loopback: typed round trips,
//! mutual TLS, certificate and name checks, plain peers against TLS ends,
//! the handshake timeout, and cutting a server with TLS connections open.
//!
//! Certificates are made at run time with rcgen: a CA, and leaves it signs.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chitchat_net::tls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use chitchat_net::tls::rustls;
use chitchat_net::{handler_fn, BoxError, Client, Context, Error, Message, Server};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

// ------------------------------------------------------------------- pki --

/// A certificate authority made for one test.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate chain (leaf first) and its private key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Identity {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A root store holding this CA alone.
    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        roots
    }

    fn leaf(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Identity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "chitchat test leaf");
        params.use_authority_key_identifier_extension = true;
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        params.extended_key_usages.push(purpose);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn server(&self, names: &[&str]) -> Identity {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    fn client(&self) -> Identity {
        self.leaf(&[], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A server config without client authentication.
fn server_config(id: &Identity) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key())
        .unwrap();
    Arc::new(config)
}

/// A server config that requires a client certificate signed by `clients`,
/// speaking only `versions`.
fn mtls_server_config(
    id: &Identity,
    clients: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(clients.roots()), provider())
            .build()
            .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key())
        .unwrap();
    Arc::new(config)
}

/// A client config trusting `ca`, presenting `id` if given.
fn client_config(ca: &Ca, id: Option<&Identity>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let config = match id {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// The rustls error inside an I/O error, if that is what it holds.
fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The rustls error of an [`Error::Tls`]; fails on any other error.
#[track_caller]
fn tls_cause(error: &Error) -> &rustls::Error {
    match error {
        Error::Tls(e) => {
            rustls_error(e).unwrap_or_else(|| panic!("Error::Tls without a rustls cause: {e:?}"))
        }
        other => panic!("expected Error::Tls, got {other:?}"),
    }
}

// --------------------------------------------------------------- helpers --

/// A TLS server with the [`Probe`] handler.
async fn tls_probe(probe: Probe, config: Arc<ServerConfig>) -> Server<Probe> {
    Server::builder(probe)
        .tls(config)
        .listen("127.0.0.1:0")
        .await
        .unwrap()
}

/// A TLS server that echoes every `M`.
async fn tls_echo<M: Message + Clone>(
    config: Arc<ServerConfig>,
) -> Server<impl chitchat_net::Handler> {
    let echo = handler_fn(|msg: M, ctx: &mut Context<'_>| -> Result<(), BoxError> {
        ctx.send(&msg)?;
        Ok(())
    });
    Server::builder(echo)
        .tls(config)
        .listen("127.0.0.1:0")
        .await
        .unwrap()
}

/// Connects a TLS client whose replies go into a channel.
async fn tls_client<M: Message>(
    addr: impl chitchat_net::ConnectAddr,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<(Client<M>, UnboundedReceiver<M>), Error> {
    let (handler, rx) = collector::<M>();
    let client = within(
        "a TLS connect",
        Client::<M>::builder()
            .tls(config, name)
            .handler(handler)
            .connect(addr),
    )
    .await?;
    Ok((client, rx))
}

/// Every event of a stream until it ends (bounded).
async fn drain(events: &chitchat_net::ErrorEvents) -> Vec<chitchat_net::ErrorEvent> {
    let mut all = Vec::new();
    while let Some(event) = within("an event or the end", events.recv()).await {
        all.push(event);
    }
    all
}

/// Reads a raw socket until EOF or reset (bounded); returns what came.
async fn read_until_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match within("the end of the stream", stream.read(&mut buf)).await {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if is_reset(&e) => return all,
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
}

// ------------------------------------------------------------- plain TLS --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_messages_round_trip_over_tls_and_close_delivers() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::new(), server_config(&ca.server(&["localhost"]))).await;
    let (client, mut rx) =
        tls_client::<String>(server.local_addr(), client_config(&ca, None), localhost())
            .await
            .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    for i in 0..20 {
        client.send(&format!("echo {i}")).await.unwrap();
    }
    for i in 0..20 {
        assert_eq!(recv(&mut rx).await, format!("echo {i}"));
    }
    // The server speaks first too, over the same TLS stream.
    server
        .send_to(client.local_addr(), &"from the server".to_string())
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await, "from the server");
    assert_eq!(server.broadcast(&"to all".to_string()).unwrap(), 1);
    assert_eq!(recv(&mut rx).await, "to all");

    // close() delivers what was sent just before it, and ends both sides
    // cleanly (close_notify both ways: no error events).
    client.send(&"last words".to_string()).await.unwrap();
    within("client close", client.close()).await;
    assert_eq!(server.handler().next_closed().await, client.local_addr());
    let seen = server.handler().seen_from(client.local_addr());
    assert_eq!(seen.len(), 22);
    assert_eq!(seen.last().map(String::as_str), Some("last words"));
    assert_eq!(recv(&mut rx).await, "last words");
    assert!(drain(&client.errors()).await.is_empty());
    assert!(server.errors().try_recv().is_none());
    let stats = server.stats();
    assert_eq!((stats.connections_total, stats.frames_in), (1, 22));
    within("cut", server.cut()).await;
}

/// TLS shares one state between the two directions (its halves are split
/// behind a lock): a client streaming 16 MiB to an echo server while its
/// handler counts the 16 MiB of echoes gets every one, in order, with no
/// error event on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_at_once_over_tls() {
    let ca = Ca::new("test ca");
    let server = tls_echo::<String>(server_config(&ca.server(&["localhost"]))).await;
    let tally = Arc::new(Tally::default());
    let client = within(
        "a TLS connect",
        Client::<String>::builder()
            .tls(client_config(&ca, None), localhost())
            .handler(counting(tally.clone()))
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    stream_through_echo(&client, &tally, 16 * 1024, 1023).await;
    assert_no_event("server", &server.errors());
    within("close", client.close()).await;
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bincode_messages_round_trip_over_tls() {
    let ca = Ca::new("test ca");
    let server = tls_echo::<Reading>(server_config(&ca.server(&["localhost"]))).await;
    let (client, mut rx) =
        tls_client::<Reading>(server.local_addr(), client_config(&ca, None), localhost())
            .await
            .unwrap();
    let readings: Vec<Reading> = (0..10)
        .map(|i| Reading {
            sensor: i * 0x0a0a, // bytes of the delimiter, escaped on the wire
            label: format!("line\nbreak {i}"),
        })
        .collect();
    for reading in &readings {
        client.send(reading).await.unwrap();
    }
    for reading in &readings {
        assert_eq!(&recv(&mut rx).await, reading);
    }
    within("client close", client.close()).await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_messages_round_trip_over_tls() {
    let ca = Ca::new("test ca");
    let server = tls_echo::<Pair>(server_config(&ca.server(&["localhost"]))).await;
    let (client, mut rx) =
        tls_client::<Pair>(server.local_addr(), client_config(&ca, None), localhost())
            .await
            .unwrap();
    let pairs: Vec<Pair> = (0..10)
        .map(|i| Pair {
            a: i,
            b: 0x0a0a_0a0a ^ i,
        })
        .chain([Pair::TYPED])
        .collect();
    for pair in &pairs {
        client.send(pair).await.unwrap();
    }
    for pair in &pairs {
        assert_eq!(&recv(&mut rx).await, pair);
    }
    within("client close", client.close()).await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn server_name_can_be_an_ip_address() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::new(), server_config(&ca.server(&["127.0.0.1"]))).await;
    let name = ServerName::from(tcp(server.local_addr()).ip());
    let (client, mut rx) =
        tls_client::<String>(server.local_addr(), client_config(&ca, None), name)
            .await
            .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    within("client close", client.close()).await;
    within("cut", server.cut()).await;
}

// ------------------------------------------------------------ mutual TLS --

/// A mutual-TLS server (greeting on open, so that any frame sent to a
/// refused client would show) whose clients must be signed by `clients`.
async fn mtls_probe(
    servers: &Ca,
    clients: &Ca,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Server<Probe> {
    let config = mtls_server_config(&servers.server(&["localhost"]), clients, versions);
    tls_probe(Probe::greeting(), config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_a_client_with_a_ca_signed_certificate() {
    let ca = Ca::new("test ca");
    let server = mtls_probe(&ca, &ca, rustls::ALL_VERSIONS).await;
    let id = ca.client();
    let (client, mut rx) = tls_client::<String>(
        server.local_addr(),
        client_config(&ca, Some(&id)),
        localhost(),
    )
    .await
    .unwrap();
    assert_eq!(
        recv(&mut rx).await,
        format!("hello {}", client.local_addr())
    );
    for _ in 0..3 {
        client.send(&"ping".to_string()).await.unwrap();
        assert_eq!(recv(&mut rx).await, "pong");
    }
    within("client close", client.close()).await;
    assert_eq!(server.handler().next_closed().await, client.local_addr());
    assert_eq!(server.handler().count(), 3);
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

/// With TLS 1.3 the client's side of the handshake ends before the server
/// has checked the client's certificate: `connect` succeeds, then the
/// server's alert ends the connection with an [`Error::Io`] event on the
/// client. Nothing reaches the server's handler, nothing comes back.
async fn assert_refused_after_connect(
    server: &Server<Probe>,
    config: Arc<ClientConfig>,
    alert: AlertDescription,
    server_cause: impl Fn(&rustls::Error) -> bool,
) {
    let events = server.errors();
    let (client, mut rx) = tls_client::<String>(server.local_addr(), config, localhost())
        .await
        .expect("with TLS 1.3, connect returns before the server checks the certificate");
    // Sending may succeed or fail: the connection is being torn down.
    let _ = client.send(&"ping".to_string()).await;

    let event = next_event(&events).await;
    assert_peer(&event, client.local_addr());
    assert!(server_cause(tls_cause(&event.error)), "{:?}", event.error);

    wait_until("the refused client's connection ends", || {
        client.is_closed()
    })
    .await;
    let client_events = drain(&client.errors()).await;
    let first = client_events.first().expect("the client reports the alert");
    match &first.error {
        Error::Io(e) => assert_eq!(
            rustls_error(e),
            Some(&rustls::Error::AlertReceived(alert)),
            "{e:?}"
        ),
        other => panic!("expected Error::Io with the server's alert, got {other:?}"),
    }
    assert!(rx.try_recv().is_err(), "the refused client got a frame");
    within("client close", client.close()).await;

    assert_eq!(server.handler().count(), 0);
    wait_until("the server forgets the refused client", || {
        server.connection_count() == 0
    })
    .await;
    assert!(events.try_recv().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let ca = Ca::new("test ca");
    let server = mtls_probe(&ca, &ca, &[&rustls::version::TLS13]).await;
    assert_refused_after_connect(
        &server,
        client_config(&ca, None),
        AlertDescription::CertificateRequired,
        |e| matches!(e, rustls::Error::NoCertificatesPresented),
    )
    .await;
    assert_eq!(server.stats().connections_open, 0);
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_certificate_from_an_untrusted_ca() {
    let ca = Ca::new("test ca");
    let rogue = Ca::new("rogue ca");
    let server = mtls_probe(&ca, &ca, &[&rustls::version::TLS13]).await;
    let id = rogue.client();
    assert_refused_after_connect(
        &server,
        client_config(&ca, Some(&id)),
        AlertDescription::UnknownCA,
        |e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            )
        },
    )
    .await;
    within("cut", server.cut()).await;
}

/// With TLS 1.2 the client waits for the server's Finished, so the refusal
/// fails `connect` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_over_tls12_refuses_at_connect() {
    let ca = Ca::new("test ca");
    let rogue = Ca::new("rogue ca");
    let server = mtls_probe(&ca, &ca, &[&rustls::version::TLS12]).await;
    let events = server.errors();

    let refused = tls_client::<String>(server.local_addr(), client_config(&ca, None), localhost())
        .await
        .expect_err("a client without a certificate is refused");
    assert!(
        matches!(tls_cause(&refused), rustls::Error::AlertReceived(_)),
        "{refused:?}"
    );
    let event = next_event(&events).await;
    assert!(
        matches!(
            tls_cause(&event.error),
            rustls::Error::NoCertificatesPresented
        ),
        "{:?}",
        event.error
    );

    let id = rogue.client();
    let refused = tls_client::<String>(
        server.local_addr(),
        client_config(&ca, Some(&id)),
        localhost(),
    )
    .await
    .expect_err("a client signed by another CA is refused");
    assert!(
        matches!(tls_cause(&refused), rustls::Error::AlertReceived(_)),
        "{refused:?}"
    );
    let event = next_event(&events).await;
    assert!(
        matches!(
            tls_cause(&event.error),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{:?}",
        event.error
    );

    // A good client still gets in over TLS 1.2.
    let id = ca.client();
    let (client, mut rx) = tls_client::<String>(
        server.local_addr(),
        client_config(&ca, Some(&id)),
        localhost(),
    )
    .await
    .unwrap();
    assert_eq!(
        recv(&mut rx).await,
        format!("hello {}", client.local_addr())
    );
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    within("client close", client.close()).await;
    assert_eq!(server.handler().count(), 1);
    within("cut", server.cut()).await;
}

// -------------------------------------------------- server verification --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_does_not_trust_the_server_ca_fails_connect() {
    let ca = Ca::new("test ca");
    let other = Ca::new("other ca");
    let server = tls_probe(Probe::greeting(), server_config(&ca.server(&["localhost"]))).await;
    let events = server.errors();
    let result = tls_client::<String>(
        server.local_addr(),
        client_config(&other, None),
        localhost(),
    )
    .await;
    let error = result.expect_err("connect must fail");
    assert_eq!(
        tls_cause(&error),
        &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    // The server sees the client's alert.
    let event = next_event(&events).await;
    assert!(
        matches!(
            tls_cause(&event.error),
            rustls::Error::AlertReceived(AlertDescription::UnknownCA)
        ),
        "{:?}",
        event.error
    );
    assert_eq!(server.handler().count(), 0);
    wait_until("no connection is left", || server.connection_count() == 0).await;
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_the_wrong_server_name_fails_connect() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::new(), server_config(&ca.server(&["localhost"]))).await;
    let events = server.errors();
    let name = ServerName::try_from("elsewhere.example").unwrap();
    let result = tls_client::<String>(server.local_addr(), client_config(&ca, None), name).await;
    let error = result.expect_err("connect must fail");
    assert!(
        matches!(
            tls_cause(&error),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{error:?}"
    );
    let event = next_event(&events).await;
    assert!(matches!(event.error, Error::Tls(_)), "{:?}", event.error);
    assert_eq!(server.handler().count(), 0);
    within("cut", server.cut()).await;
}

// ------------------------------------------------- plain peers, timeouts --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_peer_is_closed_with_a_tls_event() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::greeting(), server_config(&ca.server(&["localhost"]))).await;
    let events = server.errors();
    let mut raw = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    raw.write_all(b"hello\n").await.unwrap();
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr().unwrap());
    assert!(
        matches!(tls_cause(&event.error), rustls::Error::InvalidMessage(_)),
        "{:?}",
        event.error
    );
    // At most a TLS alert comes back (content type 21), never plaintext.
    let reply = read_until_end(&mut raw).await;
    assert!(reply.is_empty() || reply[0] == 21, "{reply:?}");
    assert_eq!(server.handler().count(), 0);
    wait_until("no connection is left", || server.connection_count() == 0).await;
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_chitchat_client_against_a_tls_server_is_closed() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::greeting(), server_config(&ca.server(&["localhost"]))).await;
    let events = server.errors();
    let (handler, mut rx) = collector::<String>();
    let client = within(
        "connect",
        Client::<String>::builder()
            .handler(handler)
            .connect(server.local_addr()),
    )
    .await
    .expect("plain TCP connects: the server's TLS refusal comes later");
    client.send(&"ping".to_string()).await.unwrap();
    let event = next_event(&events).await;
    assert_peer(&event, client.local_addr());
    assert!(matches!(event.error, Error::Tls(_)), "{:?}", event.error);
    wait_until("the plain client's connection ends", || client.is_closed()).await;
    // What the server sent (an alert, at most) is not a frame the handler
    // could decode as a pong.
    within("client close", client.close()).await;
    while let Ok(frame) = rx.try_recv() {
        assert_ne!(frame, "pong");
    }
    assert_eq!(server.handler().count(), 0);
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn silent_peer_is_closed_after_the_handshake_timeout() {
    let ca = Ca::new("test ca");
    let timeout = Duration::from_millis(300);
    let server = Server::builder(Probe::new())
        .tls(server_config(&ca.server(&["localhost"])))
        .handshake_timeout(timeout)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let events = server.errors();
    let started = Instant::now();
    let mut raw = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    let event = next_event(&events).await;
    assert_peer(&event, raw.local_addr().unwrap());
    match &event.error {
        Error::Tls(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e:?}"),
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    assert!(read_until_end(&mut raw).await.is_empty());
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout, "closed after {elapsed:?}");
    // Over 5× the 300 ms it needs on a loaded machine, and under the 10 s
    // default: it is this timeout that closed it.
    assert!(elapsed < Duration::from_secs(5), "closed after {elapsed:?}");
    wait_until("no connection is left", || server.connection_count() == 0).await;
    assert_eq!(server.stats().connections_open, 0);
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn tls_client_against_a_plain_server_fails_within_the_connect_timeout() {
    let ca = Ca::new("test ca");
    // The ClientHello is not a line (unless its random bytes hold a 0x0a):
    // the plain server waits for more, answering nothing or an echo of
    // binary junk; either way the client must give up in time.
    let server = Server::listen("127.0.0.1:0", Probe::new()).await.unwrap();
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let result = within(
        "connect",
        Client::<String>::builder()
            .tls(client_config(&ca, None), localhost())
            .connect_timeout(timeout)
            .connect(server.local_addr()),
    )
    .await;
    let elapsed = started.elapsed();
    match result {
        Err(chitchat_net::ConnectError::Timeout(_)) => assert!(elapsed >= timeout, "{elapsed:?}"),
        Err(chitchat_net::ConnectError::Tls(_)) => {}
        other => panic!("expected a TLS error or a connect timeout, got {other:?}"),
    }
    within("cut", server.cut()).await;
}

#[tokio::test]
async fn tls_client_against_a_peer_answering_plaintext_fails_with_a_tls_error() {
    let ca = Ca::new("test ca");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"hello\n").await.unwrap();
        // Hold the socket until the client hangs up.
        let mut buf = [0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let result = within(
        "connect",
        Client::<String>::builder()
            .tls(client_config(&ca, None), localhost())
            .connect(addr),
    )
    .await;
    let error: Error = result.expect_err("connect must fail").into();
    assert!(
        matches!(tls_cause(&error), rustls::Error::InvalidMessage(_)),
        "{error:?}"
    );
    within("the raw peer to see the client go", peer)
        .await
        .unwrap();
}

/// A peer that accepts TCP and reads, but never answers the ClientHello.
async fn mute_tls_peer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    (addr, peer)
}

/// The handshake counts against the connect timeout.
#[tokio::test]
async fn tls_handshake_counts_against_the_connect_timeout() {
    let ca = Ca::new("test ca");
    let (addr, peer) = mute_tls_peer().await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = within(
        "connect",
        Client::<String>::builder()
            .tls(client_config(&ca, None), localhost())
            .connect_timeout(timeout)
            .connect(addr),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(chitchat_net::ConnectError::Timeout(_))),
        "{result:?}"
    );
    assert!(elapsed >= timeout, "gave up after {elapsed:?}");
    within("the mute peer to see the client go", peer)
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_handshake_timeout_reports_the_configured_connect_timeout() {
    let ca = Ca::new("test ca");
    let (addr, _peer) = mute_tls_peer().await;
    let timeout = Duration::from_millis(300);
    let result = within(
        "connect",
        Client::<String>::builder()
            .tls(client_config(&ca, None), localhost())
            .connect_timeout(timeout)
            .connect(addr),
    )
    .await;
    match result {
        Err(chitchat_net::ConnectError::Timeout(t)) => {
            assert_eq!(t, timeout, "the reported timeout")
        }
        other => panic!("expected Error::ConnectTimeout, got {other:?}"),
    }
}

// ----------------------------------------------------------- cut, close --

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_closes_open_tls_connections_promptly() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::new(), server_config(&ca.server(&["localhost"]))).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (client, mut rx) =
            tls_client::<String>(server.local_addr(), client_config(&ca, None), localhost())
                .await
                .unwrap();
        client.send(&"ping".to_string()).await.unwrap();
        assert_eq!(recv(&mut rx).await, "pong");
        clients.push(client);
    }
    // And one peer in the middle of its handshake (default timeout: 10 s).
    let mut silent = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    wait_until("all four are registered", || server.connection_count() == 4).await;

    let started = Instant::now();
    within("cut", server.cut()).await;
    let elapsed = started.elapsed();
    // A cut takes milliseconds (under a second on a loaded machine): 5 s is
    // over 5× that, and under the 10 s handshake timeout it must not wait
    // for.
    assert!(elapsed < Duration::from_secs(5), "cut took {elapsed:?}");
    assert_eq!(server.connection_count(), 0);

    for client in &clients {
        wait_until("the client sees the end", || client.is_closed()).await;
        assert!(matches!(
            client.send(&"late".to_string()).await,
            Err(chitchat_net::SendError::Closed)
        ));
        // No close_notify came: the client may report an unexpected EOF;
        // else the server closed first.
        for event in drain(&client.errors()).await {
            assert!(
                matches!(event.error, Error::Io(_) | Error::ClosedByPeer),
                "{:?}",
                event.error
            );
        }
        within("client close", client.close()).await;
    }
    assert!(read_until_end(&mut silent).await.is_empty());
}

/// A graceful shutdown closes connections after flushing them; a peer that
/// has not finished its handshake has nothing to flush and must not hold
/// the shutdown until its handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_does_not_wait_for_pending_handshakes() {
    let ca = Ca::new("test ca");
    let server = Server::builder(Probe::new())
        .tls(server_config(&ca.server(&["localhost"])))
        .handshake_timeout(Duration::from_secs(60))
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let (client, mut rx) =
        tls_client::<String>(server.local_addr(), client_config(&ca, None), localhost())
            .await
            .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    let mut silent = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    wait_until("both are registered", || server.connection_count() == 2).await;

    let finished = within("shutdown", server.shutdown(Duration::from_secs(3)))
        .await
        .finished;
    assert!(read_until_end(&mut silent).await.is_empty());
    wait_until("the client sees the end", || client.is_closed()).await;
    within("client close", client.close()).await;
    assert!(finished, "shutdown waited for a pending handshake");
}

/// `close_remote` on a peer listed by `remote_addrs` (as a handshaking peer
/// is) closes it, rather than leaving it until its handshake timeout.
#[tokio::test]
async fn close_remote_ends_a_pending_handshake() {
    let ca = Ca::new("test ca");
    let server = Server::builder(Probe::new())
        .tls(server_config(&ca.server(&["localhost"])))
        .handshake_timeout(Duration::from_secs(60))
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut silent = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    let peer = silent.local_addr().unwrap();
    wait_until("the peer is registered", || {
        server.remote_addrs().contains(&peer.into())
    })
    .await;
    server.close_remote(peer).unwrap();
    assert!(read_until_end(&mut silent).await.is_empty());
    wait_until("no connection is left", || server.connection_count() == 0).await;
    within("cut", server.cut()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_framing_over_tls_close_delivers_the_frame_and_waits_for_the_reply() {
    let ca = Ca::new("test ca");
    let server = Server::builder(Probe::new())
        .framing(chitchat_net::Framing::eof())
        .tls(server_config(&ca.server(&["localhost"])))
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let (handler, mut rx) = collector::<String>();
    let client = within(
        "connect",
        Client::<String>::builder()
            .framing(chitchat_net::Framing::eof())
            .tls(client_config(&ca, None), localhost())
            .handler(handler)
            .connect(server.local_addr()),
    )
    .await
    .unwrap();
    for part in ["part one\n", "part two, ", "part three"] {
        client.send(&part.to_string()).await.unwrap();
    }
    within("close", client.close()).await;
    let whole = "part one\npart two, part three";
    assert_eq!(rx.try_recv().ok().as_deref(), Some(whole));
    assert!(rx.try_recv().is_err());
    assert_eq!(server.handler().seen_from(client.local_addr()), [whole]);
    assert_events_end(&client.errors()).await;
    assert!(server.errors().try_recv().is_none());
    within("cut", server.cut()).await;
}

/// Unlike plain TCP (a clean EOF, no event), a dropped TLS client sends no
/// close_notify: the server reports the truncation as an I/O error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_tls_client_between_frames_is_a_normal_end() {
    let ca = Ca::new("test ca");
    let server = tls_probe(Probe::new(), server_config(&ca.server(&["localhost"]))).await;
    let events = server.errors();
    let (client, mut rx) =
        tls_client::<String>(server.local_addr(), client_config(&ca, None), localhost())
            .await
            .unwrap();
    client.send(&"ping".to_string()).await.unwrap();
    assert_eq!(recv(&mut rx).await, "pong");
    let local = client.local_addr();
    drop(client);
    assert_eq!(server.handler().next_closed().await, local);
    // No close_notify, but between frames: as on plain TCP, no event.
    within("cut", server.cut()).await;
    assert_events_end(&events).await;
}

#[cfg(unix)]
#[tokio::test]
async fn tls_is_refused_on_unix_domain_sockets() {
    let ca = Ca::new("test ca");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-unix-{}.sock", std::process::id()));
    let server = Server::builder(Probe::new())
        .tls(server_config(&ca.server(&["localhost"])))
        .listen_unix(&path)
        .await;
    match server {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(!path.exists(), "nothing was bound");
    let client = Client::<String>::builder()
        .tls(client_config(&ca, None), localhost())
        .connect_unix(&path)
        .await;
    match client {
        Err(chitchat_net::ConnectError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput)
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}
