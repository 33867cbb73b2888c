//! `TypedCodec` (issue 12, item 6): typed messages through a
//! `tokio_util::codec::Framed` the test drives itself, over an in-memory
//! duplex and against a real chitchat-net server and client over loopback
//! TCP; arbitrary payloads through encode and decode; over-long frames.

use crate::common;

use bytes::{Bytes, BytesMut};
use chitchat_net::{
    handler_fn, Addr, BoxError, Client, CloseReason, Context, Error, Escaping, Framing, Message,
    Server, TypedCodec,
};
use common::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// What a peer asks for (tagged bincode: binary, so lines are escaped).
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Command {
    #[message(tag = 1)]
    Put { key: String, value: Vec<u8> },
    #[message(tag = 2)]
    Get { key: String },
    #[message(tag = 3)]
    Quit,
}

/// What a server answers.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
enum Reply {
    #[message(tag = 1)]
    Stored { key: String },
    #[message(tag = 2)]
    Value { key: String, value: Option<Vec<u8>> },
    #[message(tag = 3)]
    Notice(String),
}

/// Commands whose fields hold the delimiter, the escape byte and a
/// trailing `\r`.
fn commands() -> Vec<Command> {
    vec![
        Command::Put {
            key: "line\nbreak".into(),
            value: vec![b'\n', 0xFF, 0x00, b'\r'],
        },
        Command::Get {
            key: "line\nbreak".into(),
        },
        Command::Put {
            key: "big".into(),
            value: (0..=255u8).cycle().take(100_000).collect(),
        },
        Command::Quit,
    ]
}

/// Answers `Put` with `Stored`, `Get` with the value's length in a
/// `Value`, `Quit` by closing.
fn store() -> impl chitchat_net::Handler<Message = Command> {
    handler_fn(
        |command: Command, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            match command {
                Command::Put { key, value } => {
                    ctx.send(&Reply::Stored { key })?;
                    ctx.send(&Reply::Value {
                        key: "echo".into(),
                        value: Some(value),
                    })?;
                }
                Command::Get { key } => ctx.send(&Reply::Value { key, value: None })?,
                Command::Quit => {
                    ctx.send(&Reply::Notice("bye".into()))?;
                    ctx.close();
                }
            }
            Ok(())
        },
    )
}

/// The next item of `framed`, within [`WAIT`]: a message, or the error.
async fn next<T, U: Decoder>(framed: &mut Framed<T, U>) -> Option<Result<U::Item, U::Error>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("a frame", framed.next()).await
}

// ------------------------------------------------------------- in memory --

/// A derived enum both ways through two `Framed`s over a duplex: with
/// `Framing::lines()` the binary codec makes it escaped, and every field
/// (delimiters, escape bytes, 100 kB of bytes) arrives as sent.
#[tokio::test]
async fn a_derived_enum_round_trips_through_framed_over_a_duplex() {
    let (a, b) = tokio::io::duplex(4096);
    let codec = TypedCodec::<Command>::new(Framing::lines());
    assert_eq!(codec.framing_out().escaping(), Some(Escaping::Escaped));
    let mut left = Framed::new(a, codec.clone());
    let mut right = Framed::new(b, codec);

    let sender = tokio::spawn(async move {
        for command in commands() {
            left.feed(&command).await?;
        }
        left.flush().await?;
        Ok::<_, Error>(left)
    });
    for command in commands() {
        assert_eq!(next(&mut right).await.unwrap().unwrap(), command);
    }
    let mut left = within("the sender", sender).await.unwrap().unwrap();
    // And back.
    right.send(&Command::Quit).await.unwrap();
    assert_eq!(next(&mut left).await.unwrap().unwrap(), Command::Quit);
    drop(right);
    assert!(next(&mut left).await.is_none(), "the stream ends");
}

/// `String` through `Framed` in lines: raw, byte for byte the Go
/// original's wire; a `\r\n` line decodes without its `\r`; a line holding
/// the delimiter is refused and nothing is written.
#[tokio::test]
async fn text_round_trips_through_framed_in_raw_lines() {
    let (a, mut bare) = tokio::io::duplex(4096);
    let mut framed = Framed::new(a, TypedCodec::<String>::new(Framing::lines()));
    assert_eq!(framed.codec().framing_out().escaping(), Some(Escaping::Raw));

    framed.send(&"héllo wörld".to_string()).await.unwrap();
    let error = framed.send(&"two\nlines".to_string()).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::DelimiterInPayload {
                delimiter: b'\n',
                offset: 3
            }
        ),
        "{error:?}"
    );
    framed.send(&"after".to_string()).await.unwrap();
    let mut wire = vec![0; "héllo wörld\nafter\n".len()];
    within("the wire", bare.read_exact(&mut wire))
        .await
        .unwrap();
    assert_eq!(wire, "héllo wörld\nafter\n".as_bytes());

    bare.write_all(b"from go\r\nand \xFF then\n").await.unwrap();
    assert_eq!(next(&mut framed).await.unwrap().unwrap(), "from go");
    let error = next(&mut framed).await.unwrap().unwrap_err();
    assert!(
        matches!(error, Error::Decode { codec: "text", .. }),
        "{error:?}"
    );
}

// -------------------------------------------------- against chitchat-net --

/// A `Framed` over TCP as the client of a chitchat-net server: its
/// commands reach the server's handler, the handler's replies and a
/// `send_to` pushed by the server reach the `Framed`, and `Quit` closes the
/// connection from the server's side.
#[tokio::test]
async fn a_framed_client_talks_with_a_chitchat_server() {
    // A `Framed` speaks no hello: the handshake is off toward it.
    let server = Server::builder(store())
        .no_handshake()
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    let tcp = within("connect", TcpStream::connect(tcp(server.local_addr())))
        .await
        .unwrap();
    let me = Addr::from(tcp.local_addr().unwrap());
    let mut framed = Framed::new(tcp, TypedCodec::<Command, Reply>::new(Framing::lines()));

    let [put, get, big, quit] = <[Command; 4]>::try_from(commands()).unwrap();
    framed.send(&put).await.unwrap();
    assert_eq!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Stored {
            key: "line\nbreak".into()
        }
    );
    assert_eq!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Value {
            key: "echo".into(),
            value: Some(vec![b'\n', 0xFF, 0x00, b'\r'])
        }
    );
    framed.send(&get).await.unwrap();
    assert_eq!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Value {
            key: "line\nbreak".into(),
            value: None
        }
    );
    let Command::Put { value, .. } = &big else {
        unreachable!()
    };
    let big_value = value.clone();
    framed.send(&big).await.unwrap();
    assert!(matches!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Stored { .. }
    ));
    assert_eq!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Value {
            key: "echo".into(),
            value: Some(big_value)
        }
    );

    // Pushed by the server, not a reply.
    server
        .send_to(me.clone(), &Reply::Notice("pushed".into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Notice("pushed".into())
    );

    let at_server = server.connection(me).unwrap();
    framed.send(&quit).await.unwrap();
    assert_eq!(
        next(&mut framed).await.unwrap().unwrap(),
        Reply::Notice("bye".into())
    );
    assert!(next(&mut framed).await.is_none(), "the server closed");
    drop(framed);
    assert_eq!(
        within("the server's end", at_server.closed()).await,
        CloseReason::ByUs
    );
    assert_no_event("server", &server.errors());
    within("cut", server.cut()).await;
}

/// A chitchat-net client against a `Framed` as the server over TCP: the
/// client's commands decode, the `Framed`'s replies reach the client's
/// handler, and the client's `close` ends the `Framed`'s stream.
#[tokio::test]
async fn a_chitchat_client_talks_with_a_framed_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let framed_server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut framed = Framed::new(tcp, TypedCodec::<Reply, Command>::new(Framing::lines()));
        let mut seen = Vec::new();
        while let Some(command) = framed.next().await {
            let command = command?;
            if let Command::Get { key } = &command {
                framed
                    .send(&Reply::Value {
                        key: key.clone(),
                        value: Some(key.as_bytes().to_vec()),
                    })
                    .await?;
            }
            seen.push(command);
        }
        Ok::<_, Error>(seen)
    });

    let (handler, mut replies) = collector::<Reply>();
    let client = Client::<Command>::builder()
        .no_handshake()
        .handler(handler)
        .connect(addr)
        .await
        .unwrap();
    client.send_all(&commands()).await.unwrap();
    assert_eq!(
        recv(&mut replies).await,
        Reply::Value {
            key: "line\nbreak".into(),
            value: Some(b"line\nbreak".to_vec())
        }
    );
    within("close", client.close()).await;
    assert_eq!(client.closed().await, CloseReason::ByUs);
    let seen = within("the framed server", framed_server)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, commands());
    assert_no_event("client", &client.errors());
}

// ----------------------------------------------------------------- limits --

/// A frame longer than the limit is `Error::FrameTooLong`, both ways, and
/// never a panic: decoding a peer's endless line, decoding a length header
/// announcing 2 GiB (nothing is allocated for it), and encoding a message
/// too long to send (nothing is written).
#[tokio::test]
async fn an_over_long_frame_is_a_typed_error() {
    const LIMIT: usize = 64;
    let (a, mut bare) = tokio::io::duplex(4096);
    let codec = TypedCodec::<String>::new(Framing::lines().max_frame_length(LIMIT));
    let mut framed = Framed::new(a, codec);
    bare.write_all(&[b'a'; 1000]).await.unwrap();
    let error = next(&mut framed).await.unwrap().unwrap_err();
    assert!(
        matches!(error, Error::FrameTooLong { limit: LIMIT, len } if len > LIMIT),
        "{error:?}"
    );
    assert!(error.is_fatal());
    assert!(
        next(&mut framed).await.is_none(),
        "Framed ends after an error"
    );

    let mut codec = TypedCodec::<Bytes>::new(Framing::length_prefixed().max_frame_length(LIMIT));
    let mut src = BytesMut::from(&[0x80, 0, 0, 0, 1, 2, 3][..]);
    let error = codec.decode(&mut src).unwrap_err();
    assert!(
        matches!(error, Error::FrameTooLong { limit: LIMIT, .. }),
        "{error:?}"
    );

    let mut dst = BytesMut::from(&b"kept"[..]);
    let error = codec
        .encode(&Bytes::from(vec![7; LIMIT + 1]), &mut dst)
        .unwrap_err();
    assert!(matches!(error, Error::FrameTooLong { limit: LIMIT, .. }));
    assert_eq!(&dst[..], b"kept", "nothing written");
    codec
        .encode(&Bytes::from(vec![7; LIMIT]), &mut dst)
        .unwrap();
    assert_eq!(dst.len(), 4 + 4 + LIMIT);
}

// ----------------------------------------------------------------- proptest --

/// Encodes `payloads` with `framing`, then decodes the wire fed in chunks
/// of the given sizes (appended to the read buffer, as a socket would).
fn through(framing: Framing, payloads: &[Vec<u8>], chunks: &[usize]) -> Vec<Bytes> {
    let mut codec = TypedCodec::<Bytes>::new(framing);
    let mut wire = BytesMut::new();
    for payload in payloads {
        codec
            .encode(&Bytes::copy_from_slice(payload), &mut wire)
            .unwrap();
    }
    let mut decoder = codec.clone();
    let mut src = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = &wire[..];
    for size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let take = (*size).min(rest.len());
        src.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        while let Some(frame) = decoder.decode(&mut src).unwrap() {
            out.push(frame);
        }
    }
    while let Some(frame) = decoder.decode_eof(&mut src).unwrap() {
        out.push(frame);
    }
    out
}

/// Byte strings rich in the bytes framing cares about: delimiters, escape
/// bytes, escaped forms, `\r`.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    const SPECIALS: [u8; 6] = [b'\n', b'\r', 0x00, 0xFF, 0xFE, 0xDF];
    prop::collection::vec(any::<u8>(), 0..128).prop_map(|bytes| {
        bytes
            .into_iter()
            .map(|b| {
                if b < 96 {
                    SPECIALS[usize::from(b) % 6]
                } else {
                    b
                }
            })
            .collect()
    })
}

proptest! {
    /// Any byte strings, the delimiter and escape bytes included, come back
    /// exactly through an escaped framing (and a length-prefixed one),
    /// whatever the reads' sizes.
    #[test]
    fn arbitrary_payloads_round_trip_through_encode_and_decode(
        payloads in prop::collection::vec(payload(), 0..12),
        chunks in prop::collection::vec(1usize..64, 1..8),
        delimiter in prop_oneof![Just(b'\n'), Just(0u8), Just(0xFF), Just(0xDF), any::<u8>()],
    ) {
        let escaped = Framing::delimited(delimiter).escaped();
        let back = through(escaped, &payloads, &chunks);
        prop_assert_eq!(back.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), payloads.clone());

        let prefixed = Framing::length_prefixed();
        let back = through(prefixed, &payloads, &chunks);
        prop_assert_eq!(back.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), payloads);
    }
}
