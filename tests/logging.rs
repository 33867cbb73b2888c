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
