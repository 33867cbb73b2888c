//! What is logged, in a process of its own: the test installs a
//! thread-local tracing subscriber, and tracing caches per call site,
//! process-wide, whether an event is wanted; tests running at the same time
//! on other threads would race with it.

#[path = "suite/common/mod.rs"]
mod common;

use chitchat_net::Server;

/// A writer that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_that_ends_a_connection_is_logged_at_warn_unread() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Nobody reads the server's events.
    let server = Server::builder(())
        .max_frame_length(16)
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let mut raw = common::RawPeer::connect(server.local_addr()).await;
    raw.write(&[b'x'; 64]).await;
    raw.expect_end().await;
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logged
        .lines()
        .find(|l| l.contains("chitchat-net error event"))
        .unwrap_or_else(|| panic!("no event logged: {logged}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("longer than the limit of 16 bytes"), "{line}");
    server.cut().await;
}

/// A reconnecting client logs one WARN per outage, however many tries it
/// takes, and one INFO with the count of tries once reconnected (README,
/// "Tracing").
#[tokio::test(flavor = "current_thread")]
async fn an_outage_logs_one_warn_not_one_per_try() {
    use chitchat_net::{Client, Error, Reconnect};
    use std::time::Duration;

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let port = server.local_addr().tcp().unwrap().port();
    let client = Client::<String>::builder()
        .reconnect(
            Reconnect::new()
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20)),
        )
        .connect(server.local_addr())
        .await
        .unwrap();
    let events = client.errors();
    // A graceful stop: the connection ends normally (no error of its own).
    common::within("shutdown", server.shutdown(common::WAIT)).await;
    drop(server);
    // At least three refused tries before the server is back.
    let mut refused = 0;
    while refused < 3 {
        if let Error::Io(_) = common::next_event(&events).await.error {
            refused += 1;
        }
    }
    let server = Server::listen(("127.0.0.1", port), ()).await.unwrap();
    loop {
        if let Error::Reconnected { .. } = common::next_event(&events).await.error {
            break;
        }
    }
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    // One WARN for the outage, and no other: not the error that ended the
    // connection (here the server's reset, logged at DEBUG by a
    // reconnecting client), none per try.
    let warns: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
    let outage = warns
        .iter()
        .filter(|l| l.contains("disconnected; reconnecting"))
        .count();
    assert_eq!(outage, 1, "{logged}");
    assert_eq!(warns.len(), 1, "{logged}");
    assert!(
        !warns.iter().any(|l| l.contains("connect to")),
        "a failed try logged at WARN: {logged}"
    );
    let reconnected = logged
        .lines()
        .find(|l| l.contains("INFO") && l.contains("reconnected"))
        .unwrap_or_else(|| panic!("no INFO line: {logged}"));
    assert!(!reconnected.contains("attempts=1 "), "{reconnected}");
    client.close().await;
    server.cut().await;
}
