//! What errors say: their `Display` carries the cause and, where there is
//! one, the address; decode errors name the Rust type.

use crate::common;

use chitchat_net::{handler_fn, BoxError, Client, Context, Error, Message, Report, Server};
use common::{next_event, within};

#[tokio::test]
async fn a_refused_connect_names_the_address_and_the_cause() {
    let dead = common::dead_addr().await;
    let error = Client::<String>::connect(dead).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&dead.to_string()), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    // The kind is kept for code that matches on it.
    assert!(
        matches!(&error, chitchat_net::ConnectError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{error:?}"
    );
    // A reporter that walks the sources does not repeat them.
    let report = Report(&error).to_string();
    assert_eq!(report.matches("refused").count(), 1, "{report}");
}

#[tokio::test]
async fn a_bad_host_name_and_a_taken_port_say_what_failed() {
    let error = Client::<String>::connect("no-such-host.invalid:80")
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("no-such-host.invalid:80"), "{text}");

    let taken = Server::listen("127.0.0.1:0", ()).await.unwrap();
    let addr = taken.local_addr().tcp().unwrap();
    let error = Server::builder(())
        .listen(addr)
        .await
        .map(|_| ())
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.to_lowercase().contains("in use"), "{text}");
    taken.cut().await;
}

#[derive(Debug, Message)]
#[message(codec = "bincode")]
enum Command {
    #[message(tag = 1)]
    Get { key: String },
}

#[tokio::test]
async fn a_decode_error_names_the_type_it_decoded_into() {
    let server = Server::listen(
        "127.0.0.1:0",
        handler_fn(|_c: Command, _ctx: &mut Context<'_>| -> Result<(), BoxError> { Ok(()) }),
    )
    .await
    .unwrap();
    let client = Client::<Command>::connect(server.local_addr())
        .await
        .unwrap();
    // A frame with tag 1 and a string length running past the frame.
    client.send_bytes(&[1, 200]).await.unwrap();
    let event = next_event(&server.errors()).await;
    let text = event.to_string();
    assert!(
        text.contains("Command::Get"),
        "the variant is named: {text}"
    );
    assert!(text.contains("bincode"), "{text}");
    assert!(
        matches!(
            event.error,
            Error::Decode {
                message: Some("Command::Get"),
                ..
            }
        ),
        "{:?}",
        event.error
    );
    within("close", client.close()).await;
    server.cut().await;
}

#[tokio::test]
async fn a_handler_error_shows_its_cause() {
    let failing = handler_fn(
        |_line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            Err("the store is read-only".into())
        },
    );
    let server = Server::listen("127.0.0.1:0", failing).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    client.send(&"put".to_string()).await.unwrap();
    let event = next_event(&server.errors()).await;
    assert!(
        event
            .to_string()
            .ends_with("handler failed: the store is read-only"),
        "{event}"
    );
    client.close().await;
    server.cut().await;
}

#[tokio::test]
async fn every_event_is_read_once_whichever_handle_reads_it() {
    let failing = handler_fn(
        |line: String, _ctx: &mut Context<'_>| -> Result<(), BoxError> { Err(line.into()) },
    );
    let server = Server::listen("127.0.0.1:0", failing).await.unwrap();
    let client = Client::<String>::connect(server.local_addr())
        .await
        .unwrap();
    for n in 0..4 {
        client.send(&format!("failure {n}")).await.unwrap();
    }
    // Two handles (one a clone, one taken later) on the one stream: the
    // four events come out once each, in order, between them.
    let first = server.errors();
    let second = first.clone();
    let mut seen = Vec::new();
    for n in 0..4 {
        let handle = if n % 2 == 0 { &first } else { &second };
        seen.push(next_event(handle).await.to_string());
    }
    let late = server.errors();
    assert!(late.try_recv().is_none(), "an event was read twice");
    for (n, text) in seen.iter().enumerate() {
        assert!(text.ends_with(&format!("failure {n}")), "{seen:?}");
    }
    client.close().await;
    server.cut().await;
}
