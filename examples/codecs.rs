//! One handler, three codecs: bincode, postcard, and a codec written here.
//! Switching is one line: the codec given to the server and client builders.
//!
//! ```text
//! cargo run --example codecs --features postcard
//! ```

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chitchat_net::{
    handler_fn, Bincode, BoxError, Client, Codec, Context, Error, Handler, Message, Postcard,
    Server,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// A temperature reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    celsius: f32,
    seq: u64,
}

impl Message for Reading {
    type Codec = Bincode;
}

/// A codec of our own: `sensor=NAME celsius=21.5 seq=3`, as text.
#[derive(Debug, Clone, Copy, Default)]
struct KeyValue;

impl Codec<Reading> for KeyValue {
    fn name(&self) -> &'static str {
        "key-value"
    }

    fn is_binary(&self) -> bool {
        false // plain text: raw framing, readable on the wire
    }

    fn encode(&self, r: &Reading, dst: &mut BytesMut) -> Result<(), Error> {
        if r.sensor.contains([' ', '=', '\n']) {
            return Err(Error::encode("key-value", "sensor name holds a separator"));
        }
        let text = format!("sensor={} celsius={} seq={}", r.sensor, r.celsius, r.seq);
        dst.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn decode(&self, frame: Bytes) -> Result<Reading, Error> {
        let bad = |why: &str| Error::decode("key-value", why.to_string());
        let text = std::str::from_utf8(&frame).map_err(|e| Error::decode("key-value", e))?;
        let mut reading = Reading {
            sensor: String::new(),
            celsius: 0.0,
            seq: 0,
        };
        for pair in text.split(' ') {
            match pair.split_once('=') {
                Some(("sensor", v)) => reading.sensor = v.to_string(),
                Some(("celsius", v)) => reading.celsius = v.parse().map_err(|_| bad("celsius"))?,
                Some(("seq", v)) => reading.seq = v.parse().map_err(|_| bad("seq"))?,
                _ => return Err(bad("expected key=value")),
            }
        }
        Ok(reading)
    }
}

/// The one handler: answers each reading converted to Fahrenheit.
fn converter() -> impl Handler<Message = Reading> {
    handler_fn(
        |r: Reading, ctx: &mut Context<'_>| -> Result<(), BoxError> {
            let fahrenheit = Reading {
                celsius: r.celsius * 9.0 / 5.0 + 32.0,
                ..r
            };
            ctx.send(&fahrenheit)?;
            Ok(())
        },
    )
}

/// Serves the converter with `codec`, sends three readings, prints the
/// answers and what the first one looked like on the wire.
async fn exchange<C: Codec<Reading> + Clone>(codec: C) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(converter())
        .codec(codec.clone())
        .listen("127.0.0.1:0")
        .await?;
    let (tx, mut replies) = mpsc::unbounded_channel();
    let collect = handler_fn(
        move |r: Reading, _ctx: &mut Context<'_>| -> Result<(), BoxError> {
            tx.send(r)?;
            Ok(())
        },
    );
    let client = Client::<Reading>::builder()
        .codec(codec.clone())
        .handler(collect)
        .connect(server.local_addr())
        .await?;

    let first = Reading {
        sensor: "greenhouse".into(),
        celsius: 21.5,
        seq: 1,
    };
    let mut wire = BytesMut::new();
    codec.encode(&first, &mut wire)?;
    println!(
        "--- codec {} ({} bytes for one reading)",
        codec.name(),
        wire.len()
    );
    let hex: Vec<String> = wire.iter().map(|b| format!("{b:02x}")).collect();
    println!("    payload: {}", hex.join(" "));

    for (seq, celsius) in [(1, 21.5), (2, -4.0), (3, 100.0)] {
        let reading = Reading {
            seq,
            celsius,
            ..first.clone()
        };
        client.send(&reading).await?;
        let answer = tokio::time::timeout(Duration::from_secs(5), replies.recv())
            .await?
            .ok_or("connection closed")?;
        println!(
            "    sent {celsius:>6.1} °C  got {:>6.1} °F  (seq {})",
            answer.celsius, answer.seq
        );
        assert_eq!(answer.seq, seq);
    }
    client.close().await;
    server.cut().await;
    if let Some(event) = server.errors().try_recv() {
        return Err(format!("unexpected error event: {event}").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    exchange(Bincode).await?;
    exchange(Postcard).await?;
    exchange(KeyValue).await?;
    println!("all three codecs served the same handler");
    Ok(())
}
