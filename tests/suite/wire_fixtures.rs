//! Golden wire fixtures (issue 22, item 6): the bytes of a fixed value of
//! every message type of the examples, of each envelope kind and of the
//! hello, compared with the files committed under `tests/fixtures/wire/`
//! (one per case: a `#` line saying what it is, then the bytes in hex, 16
//! a line). A change of the wire fails here with a diff, so that it shows
//! in review; if it is meant, regenerate the files with
//!
//! ```text
//! CHITCHAT_BLESS_WIRE=1 cargo test -p chitchat-net-tests --all-features --test suite -- wire_fixtures::
//! ```
//!
//! and commit them. The examples' types are copied here (the examples are
//! binaries); `*_types_are_the_examples` checks that each copy is still
//! the example's definition, token for token.
#![cfg(feature = "postcard")]

use crate::common;

use std::path::PathBuf;

use bytes::BytesMut;
use chitchat_net::envelope::{self, Envelope, ErrorCode};
use chitchat_net::handshake::Hello;
use chitchat_net::heartbeat::{Beat, Register};
use chitchat_net::{Bincode, Client, Codec, Message, Postcard, Text};
use tokio::io::AsyncReadExt;

/// Defines the items, and a test that they are, token for token (comments,
/// spacing and `pub(crate)` aside), in the example `$file`.
macro_rules! kept {
    ($check:ident, $file:literal, $($item:tt)*) => {
        $($item)*

        #[test]
        fn $check() {
            let example = include_str!(concat!("../../examples/", $file));
            super::assert_kept(example, stringify!($($item)*), $file);
        }
    };
}

fn assert_kept(example: &str, copy: &str, file: &str) {
    let squeeze = |text: &str| -> String {
        text.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .flat_map(str::chars)
            .filter(|c| !c.is_whitespace())
            .collect()
    };
    assert!(
        // Made visible to this file: `pub(crate)` is not in the example.
        squeeze(example).contains(&squeeze(copy).replace("pub(crate)", "")),
        "the types copied into tests/suite/wire_fixtures.rs are no longer those of \
         examples/{file}: copy them again (and bless the fixtures if the wire changed)"
    );
}

#[allow(dead_code)]
mod request {
    use chitchat_net::Message;
    kept! { request_types_are_the_examples, "request.rs",
        #[derive(Debug, Message)]
        #[message(codec = "bincode", reply = Reply)]
        pub(crate) enum Command {
            #[message(tag = 1)]
            Put { key: String, value: String },
            #[message(tag = 2)]
            Get { key: String },
            #[message(tag = 3)]
            Delete { key: String },
            #[message(tag = 4, deferred)]
            Slow { millis: u64 },
        }

        #[derive(Debug, PartialEq, Message)]
        #[message(codec = "bincode")]
        pub(crate) enum Reply {
            #[message(tag = 1)]
            Value { key: String, value: String },
            #[message(tag = 2)]
            NotFound { key: String },
            #[message(tag = 3)]
            Ok,
        }
    }
    pub(crate) use self::{Command as RequestCommand, Reply as RequestReply};
}

#[allow(dead_code)]
mod typed {
    use bytemuck::{Pod, Zeroable};
    use chitchat_net::Message;
    use serde::{Deserialize, Serialize};
    kept! { typed_types_are_the_examples, "typed.rs",
        #[derive(Debug, Clone, Copy, Pod, Zeroable, Message)]
        #[repr(C)]
        #[message(codec = "pod")]
        pub(crate) struct Sample {
            pub(crate) sensor: u32,
            pub(crate) value: u32,
        }

        #[derive(Debug, Message)]
        #[message(codec = "bincode")]
        pub(crate) enum Command {
            #[message(tag = 1)]
            SetRate { per_second: u32 },
            #[message(tag = 2)]
            Pause,
            #[message(tag = 3)]
            Rename(String),
        }

        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
        #[message(codec = "bincode")]
        pub(crate) struct Status {
            pub(crate) name: String,
            pub(crate) per_second: u32,
            pub(crate) paused: bool,
        }
    }
    pub(crate) use self::Command as TypedCommand;
}

#[allow(dead_code)]
mod codecs {
    use chitchat_net::{Bincode, Message};
    use serde::{Deserialize, Serialize};
    kept! { codecs_types_are_the_examples, "codecs.rs",
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub(crate) struct Reading {
            pub(crate) sensor: String,
            pub(crate) celsius: f32,
            pub(crate) seq: u64,
        }

        impl Message for Reading {
            type Codec = Bincode;
        }
    }
}

use codecs::Reading;
use request::{RequestCommand, RequestReply};
use typed::{Sample, Status, TypedCommand};

/// The bytes of `value` in `M`'s own codec.
fn encoded<M: Message>(value: &M) -> Vec<u8> {
    encoded_with(&M::Codec::default(), value)
}

fn encoded_with<M, C: Codec<M>>(codec: &C, value: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec.encode(value, &mut buf).unwrap();
    buf.to_vec()
}

/// A fixture file's text: the comment, then the bytes in hex.
fn render(what: &str, bytes: &[u8]) -> String {
    let mut out = format!("# {what}\n");
    // Text (a hello, a text message) is shown as text too, for review.
    if !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\n')
    {
        let text = String::from_utf8_lossy(bytes).replace('\n', "\\n");
        out.push_str(&format!("# as text: {text}\n"));
    }
    for line in bytes.chunks(16) {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        out.push_str(&hex.join(" "));
        out.push('\n');
    }
    out
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/wire")
}

/// Every case: its file name, what it is, and its bytes now.
async fn cases() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut cases: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |name: &'static str, what: &str, bytes: Vec<u8>| {
        cases.push((name, what.to_owned(), bytes));
    };
    let (k, v) = (String::from("k"), String::from("v"));

    // examples/request.rs (bincode, tags pinned)
    let what = "examples/request.rs, bincode: ";
    add(
        "request_command_put",
        &format!("{what}Command::Put {{ key: \"k\", value: \"v\" }}"),
        encoded(&RequestCommand::Put {
            key: k.clone(),
            value: v.clone(),
        }),
    );
    add(
        "request_command_get",
        &format!("{what}Command::Get {{ key: \"k\" }}"),
        encoded(&RequestCommand::Get { key: k.clone() }),
    );
    add(
        "request_command_delete",
        &format!("{what}Command::Delete {{ key: \"k\" }}"),
        encoded(&RequestCommand::Delete { key: k.clone() }),
    );
    add(
        "request_command_slow",
        &format!("{what}Command::Slow {{ millis: 300 }}"),
        encoded(&RequestCommand::Slow { millis: 300 }),
    );
    add(
        "request_reply_value",
        &format!("{what}Reply::Value {{ key: \"k\", value: \"v\" }}"),
        encoded(&RequestReply::Value {
            key: k.clone(),
            value: v.clone(),
        }),
    );
    add(
        "request_reply_not_found",
        &format!("{what}Reply::NotFound {{ key: \"k\" }}"),
        encoded(&RequestReply::NotFound { key: k.clone() }),
    );
    add(
        "request_reply_ok",
        &format!("{what}Reply::Ok"),
        encoded(&RequestReply::Ok),
    );

    // examples/typed.rs (pod, bincode)
    add(
        "typed_sample",
        "examples/typed.rs, pod: Sample { sensor: 7, value: 0x01020304 }",
        encoded(&Sample {
            sensor: 7,
            value: 0x0102_0304,
        }),
    );
    let what = "examples/typed.rs, bincode: ";
    add(
        "typed_command_set_rate",
        &format!("{what}Command::SetRate {{ per_second: 300 }}"),
        encoded(&TypedCommand::SetRate { per_second: 300 }),
    );
    add(
        "typed_command_pause",
        &format!("{what}Command::Pause"),
        encoded(&TypedCommand::Pause),
    );
    add(
        "typed_command_rename",
        &format!("{what}Command::Rename(\"dev\")"),
        encoded(&TypedCommand::Rename("dev".into())),
    );
    add(
        "typed_status",
        &format!("{what}Status {{ name: \"dev\", per_second: 300, paused: true }}"),
        encoded(&Status {
            name: "dev".into(),
            per_second: 300,
            paused: true,
        }),
    );

    // examples/codecs.rs (bincode and postcard; its text codec is its own)
    let reading = Reading {
        sensor: "t1".into(),
        celsius: 21.5,
        seq: 3,
    };
    let what = "examples/codecs.rs: Reading { sensor: \"t1\", celsius: 21.5, seq: 3 }";
    add(
        "codecs_reading_bincode",
        &format!("{what}, bincode"),
        encoded_with(&Bincode, &reading),
    );
    add(
        "codecs_reading_postcard",
        &format!("{what}, postcard"),
        encoded_with(&Postcard, &reading),
    );

    // examples/echo.rs (text lines)
    add(
        "echo_text",
        "examples/echo.rs, text: \"hello\"",
        encoded_with(&Text, &String::from("hello")),
    );

    // examples/heartbeat.rs (the library's heartbeat messages)
    add(
        "heartbeat_ping",
        "examples/heartbeat.rs, bincode: Beat::Ping { seq: 300 }",
        encoded(&Beat::Ping { seq: 300 }),
    );
    add(
        "heartbeat_pong",
        "examples/heartbeat.rs, bincode: Beat::Pong { seq: 300 }",
        encoded(&Beat::Pong { seq: 300 }),
    );
    add(
        "heartbeat_register",
        "examples/heartbeat.rs, bincode: Register { name: \"n1\", addr: 127.0.0.1:7000 }",
        encoded(&Register {
            name: "n1".into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
        }),
    );

    // The envelope, each kind (payload, before framing).
    let get = encoded(&RequestCommand::Get { key: k.clone() });
    let value = encoded(&RequestReply::Value {
        key: k.clone(),
        value: v.clone(),
    });
    let with = |kind: Envelope, body: &[u8]| {
        let mut frame = Vec::new();
        envelope::encode(kind, &mut frame);
        frame.extend_from_slice(body);
        frame
    };
    add(
        "envelope_message",
        "envelope 0x00, a one-way message: request.rs Command::Get { key: \"k\" }",
        with(Envelope::Message, &get),
    );
    add(
        "envelope_request",
        "envelope 0x01, request 300: request.rs Command::Get { key: \"k\" }",
        with(Envelope::Request(300), &get),
    );
    add(
        "envelope_reply",
        "envelope 0x02, the reply to request 300: request.rs Reply::Value { key: \"k\", value: \"v\" }",
        with(Envelope::Reply(300), &value),
    );
    for (name, code, text) in [
        ("envelope_error_handler", ErrorCode::Handler, "no such key"),
        (
            "envelope_error_bad_request",
            ErrorCode::BadRequest,
            "bad frame",
        ),
        ("envelope_error_unanswered", ErrorCode::Unanswered, ""),
        (
            "envelope_error_unknown_variant",
            ErrorCode::UnknownVariant,
            "unknown variant: tag 3",
        ),
        (
            "envelope_error_deadline_exceeded",
            ErrorCode::DeadlineExceeded,
            "deadline exceeded",
        ),
        (
            "envelope_error_overloaded",
            ErrorCode::Overloaded,
            "overloaded",
        ),
        ("envelope_error_cancelled", ErrorCode::Cancelled, ""),
        ("envelope_error_draining", ErrorCode::Draining, "draining"),
        (
            "envelope_error_stream_refused",
            ErrorCode::StreamRefused,
            "no streams",
        ),
    ] {
        let mut frame = Vec::new();
        envelope::encode_error(300, code, text, &mut frame);
        add(
            name,
            &format!("envelope 0x03, the error reply to request 300: {code:?}, {text:?}"),
            frame,
        );
    }

    add(
        "envelope_deadline_request",
        "envelope 0x04, request 300 whose caller waits 1500 ms more: request.rs Command::Get { key: \"k\" }",
        with(
            Envelope::DeadlineRequest {
                id: 300,
                remaining_ms: 1500,
            },
            &get,
        ),
    );
    add(
        "envelope_cancel",
        "envelope 0x05, the caller gave up request 300",
        with(Envelope::Cancel(300), &[]),
    );
    add(
        "envelope_drain",
        "envelope 0x06, drain (no id)",
        with(Envelope::Drain, &[]),
    );
    add(
        "envelope_stream_item",
        "envelope 0x07, an item of the reply stream of request 300: request.rs Reply::Value { key: \"k\", value: \"v\" }",
        with(Envelope::StreamItem(300), &value),
    );
    let mut end = Vec::new();
    envelope::encode_stream_end(300, None, &mut end);
    add(
        "envelope_stream_end",
        "envelope 0x08, the end of the reply stream of request 300",
        end,
    );
    let mut end = Vec::new();
    envelope::encode_stream_end(300, Some((ErrorCode::Handler, "gone")), &mut end);
    add(
        "envelope_stream_end_error",
        "envelope 0x08, the end of the reply stream of request 300 with an error: Handler, \"gone\"",
        end,
    );
    let mut credit = Vec::new();
    envelope::encode_credit(300, 31, &mut credit);
    add(
        "envelope_credit",
        "envelope 0x09, 31 more items of the reply stream of request 300",
        credit,
    );

    // The hello: of a fixed pair of types, and as a client with fixed
    // settings writes it on the socket (its first frame, in its framing).
    let mut hello = BytesMut::new();
    Hello::of::<TypedCommand, Status>().encode(&mut hello);
    add(
        "hello_of_typed",
        "hello: Hello::of::<typed.rs Command, typed.rs Status>()",
        hello.to_vec(),
    );
    add(
        "hello_request_client",
        "hello on the socket: Client::<request.rs Command> with request_ids() and \
         cluster(\"prod-eu\"), lines framing",
        client_hello().await,
    );
    add(
        "no_hello_refusal",
        "the refusal of a hello on the socket: what a Server of String (no handshake, lines \
         framing) answers a hello with, before it closes",
        refusal().await,
    );
    cases
}

/// What a server without the handshake answers a hello with: read off a
/// raw peer that sends one, to the end of the stream.
async fn refusal() -> Vec<u8> {
    let server = chitchat_net::Server::listen("127.0.0.1:0", ())
        .await
        .unwrap();
    let mut peer = common::RawPeer::connect(server.local_addr()).await;
    peer.write(&client_hello().await).await;
    let refusal = peer.read_to_end().await;
    server.cut().await;
    refusal
}

/// The first frame a fixed client writes: read off a raw listener.
async fn client_hello() -> Vec<u8> {
    let (listener, addr) = common::raw_listener().await;
    let connect = tokio::spawn(
        Client::<RequestCommand>::builder()
            .request_ids()
            .cluster("prod-eu")
            .connect(addr),
    );
    let (mut socket, _) = common::within("the client", listener.accept())
        .await
        .unwrap();
    let mut hello = Vec::new();
    while hello.last() != Some(&b'\n') {
        let mut byte = [0u8];
        common::within("its hello", socket.read_exact(&mut byte))
            .await
            .unwrap();
        hello.push(byte[0]);
    }
    connect.abort();
    hello
}

/// The committed bytes of every case are what this build writes.
#[tokio::test]
async fn the_wire_is_what_the_fixtures_say() {
    let bless = std::env::var_os("CHITCHAT_BLESS_WIRE").is_some_and(|v| v != "0");
    let dir = dir();
    let mut failed = Vec::new();
    for (name, what, bytes) in cases().await {
        let path = dir.join(format!("{name}.hex"));
        let now = render(&what, &bytes);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &now).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != now {
            failed.push(format!(
                "{}:\n--- committed\n{committed}+++ now\n{now}",
                path.display()
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "the wire changed (or a fixture is missing):\n\n{}\nIf the change is meant, \
         regenerate the fixtures with CHITCHAT_BLESS_WIRE=1 cargo test -p chitchat-net-tests \
         --all-features --test suite -- wire_fixtures:: and commit them.",
        failed.join("\n")
    );
}

/// Every envelope kind and every error code this build knows has a
/// fixture: a kind or a code added without one fails here, so that no wire
/// form escapes review.
#[tokio::test]
async fn every_envelope_kind_and_error_code_has_a_fixture() {
    let cases = cases().await;
    let starts: Vec<(u8, Option<u8>)> = cases
        .iter()
        .filter(|(name, _, _)| name.starts_with("envelope_"))
        .map(|(_, _, bytes)| {
            // An error reply: kind, id 300 (two bytes), the code.
            let code = (bytes[0] == 0x03).then(|| bytes[3]);
            (bytes[0], code)
        })
        .collect();
    for kind in 0..=u8::MAX {
        // A frame of this kind with id 300, a varint 300 (or a deadline)
        // and no body: whatever the kind needs after its byte.
        let frame = [kind, 0xac, 0x02, 0xac, 0x02];
        if envelope::decode(&frame).is_ok() {
            assert!(
                starts.iter().any(|(k, _)| *k == kind),
                "envelope kind {kind:#04x} has no fixture in wire_fixtures::cases"
            );
        }
    }
    for byte in 0..=u8::MAX {
        if !matches!(ErrorCode::from_byte(byte), ErrorCode::Other(_)) {
            assert!(
                starts.iter().any(|(_, code)| *code == Some(byte)),
                "error code {byte:#04x} ({}) has no fixture in wire_fixtures::cases",
                ErrorCode::from_byte(byte)
            );
        }
    }
}
