//! Settings that cannot work are refused when the server or client is
//! built, with a typed error naming the setting, instead of hanging or
//! panicking later.

use std::time::Duration;

use chitchat_net::{Client, Error, Framing, Reconnect, Server};

fn refused<T: std::fmt::Debug, E: Into<Error>>(what: &str, result: Result<T, E>, setting: &str) {
    match result.map_err(Into::into) {
        Err(Error::Config(why)) => assert!(why.contains(setting), "{what}: {why}"),
        other => panic!("{what}: expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_refuses_settings_that_cannot_work() {
    let listen = |b: chitchat_net::ServerBuilder<()>| b.listen("127.0.0.1:0");
    refused(
        "queue",
        listen(Server::builder(()).queue_bytes(0)).await,
        "queue_bytes",
    );
    refused(
        "frame",
        listen(Server::builder(()).max_frame_length(0)).await,
        "max_frame_length",
    );
    refused(
        "idle",
        listen(Server::builder(()).idle_timeout(Duration::ZERO)).await,
        "idle_timeout",
    );
    refused(
        "stall",
        listen(Server::builder(()).write_stall_timeout(Some(Duration::ZERO))).await,
        "write_stall_timeout",
    );
    refused(
        "events",
        listen(Server::builder(()).event_capacity(0)).await,
        "event_capacity",
    );
    refused(
        "connections",
        listen(Server::builder(()).max_connections(0)).await,
        "max_connections",
    );
    refused(
        "handshake",
        listen(Server::builder(()).handshake_timeout(Duration::ZERO)).await,
        "handshake_timeout",
    );
    refused(
        "raw ids",
        listen(
            Server::builder(())
                .framing(Framing::lines().raw())
                .request_ids(),
        )
        .await,
        "raw",
    );
    // Sound settings still work.
    let server = listen(Server::builder(()).queue_bytes(1)).await.unwrap();
    let client = Client::<String>::builder()
        .queue_bytes(1)
        .connect(server.local_addr())
        .await
        .unwrap();
    // With a one-byte queue every send still goes through, one at a time.
    for n in 0..100 {
        tokio::time::timeout(Duration::from_secs(10), client.send(&n.to_string()))
            .await
            .expect("a send with a one-byte queue hung")
            .unwrap();
    }
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn a_client_refuses_settings_that_cannot_work() {
    let server = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let addr = server.local_addr();
    let builder = Client::<String>::builder;
    refused(
        "queue",
        builder().queue_bytes(0).connect(&addr).await,
        "queue_bytes",
    );
    refused(
        "connect",
        builder()
            .connect_timeout(Duration::ZERO)
            .connect(&addr)
            .await,
        "connect_timeout",
    );
    refused(
        "request",
        builder()
            .request_timeout(Duration::ZERO)
            .connect(&addr)
            .await,
        "request_timeout",
    );
    refused(
        "in flight",
        builder().max_requests_in_flight(0).connect(&addr).await,
        "max_requests_in_flight",
    );
    refused(
        "receive",
        builder().receive::<String>(0).connect(&addr).await,
        "receive",
    );
    refused(
        "reconnect delay",
        builder()
            .reconnect(Reconnect::new().initial_delay(Duration::ZERO))
            .connect(&addr)
            .await,
        "reconnect",
    );
    refused(
        "reconnect tries",
        builder()
            .reconnect(Reconnect::new().max_tries(0))
            .connect(&addr)
            .await,
        "max_tries",
    );
    server.cut().await;
}

#[test]
fn outside_a_runtime_the_api_says_so_instead_of_panicking() {
    // Polled by a plain executor, without tokio.
    let result = futures_util::FutureExt::now_or_never(Server::listen("127.0.0.1:0", ()));
    match result {
        Some(Err(Error::Runtime(why))) => assert!(why.contains("tokio"), "{why}"),
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
    let result = futures_util::FutureExt::now_or_never(Client::<String>::connect("127.0.0.1:1"));
    assert!(
        matches!(
            result,
            Some(Err(chitchat_net::ConnectError::Config(Error::Runtime(_))))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn one_options_value_configures_both_ends() {
    use chitchat_net::{handler_fn, BoxError, Context, Options};
    let options = Options::new()
        .framing(Framing::delimited(b';'))
        .max_frame_length(64)
        .idle_timeout(Duration::from_millis(1))
        // Turned off again: the connection below idles without being cut.
        .idle_timeout(None)
        .request_ids();
    let echo = handler_fn(
        |line: String, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            ctx.reply(&line)?;
            Ok(())
        },
    );
    let server = Server::builder(echo)
        .options(options.clone())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let client = Client::<String>::builder()
        .options(options)
        .connect(server.local_addr())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Request ids and the `;` framing on both ends: a request goes through.
    let back: String = client.request(&"a;b".to_string()).await.unwrap();
    assert_eq!(back, "a;b");
    // The frame limit applies.
    let long = "x".repeat(100);
    assert!(matches!(
        client.send(&long).await,
        Err(chitchat_net::SendError::Unsendable(Error::FrameTooLong {
            limit: 64,
            ..
        }))
    ));
    client.close().await;
    server.cut().await;
}

#[cfg(unix)]
#[tokio::test]
async fn listen_takes_what_connect_takes_a_unix_address_too() {
    let dir = std::env::temp_dir().join(format!("chitchat-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("listen.sock");
    let unix = chitchat_net::Addr::unix_path(&path);
    let server = Server::listen(unix.clone(), ()).await.unwrap();
    assert!(server.local_addr().unix().is_some());
    let client = Client::<String>::connect(&unix).await.unwrap();
    client.send(&"hello".to_string()).await.unwrap();
    client.close().await;
    server.cut().await;
    let _ = std::fs::remove_dir_all(&dir);
}
