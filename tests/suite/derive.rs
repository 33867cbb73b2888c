//! The `Message` and `Handler` derives, through the public API: the codec
//! each derive picks, the wire bytes of tagged enums, and the handler traits
//! they generate.
//!
//! Calling a handler needs a `Context`, which only a connection builds: the
//! server tests cover that end to end.

use std::any::TypeId;

use bytes::{Bytes, BytesMut};
use chitchat_net::codec::{Tagged, UnknownTag};
use chitchat_net::{
    Bincode, BoxError, Codec, Context, Dispatch, Error, Handler, Message, PodCodec, TrailingBytes,
};
use serde::{Deserialize, Serialize};

fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    M::Codec::default().encode(msg, &mut buf).unwrap();
    buf.to_vec()
}

fn decode<M: Message>(bytes: &[u8]) -> Result<M, Error> {
    M::Codec::default().decode(Bytes::copy_from_slice(bytes))
}

fn codec_of<M: Message>() -> TypeId {
    TypeId::of::<M::Codec>()
}

/// The error's source, if it is a decode error with a source of type `E`.
fn decode_source<E: std::error::Error + Copy + 'static>(err: &Error) -> Option<(&'static str, E)> {
    match err {
        Error::Decode { codec, source, .. } => source.downcast_ref::<E>().map(|e| (*codec, *e)),
        _ => None,
    }
}

// ---------------------------------------------------------------- structs

#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Message)]
#[repr(C)]
#[message(codec = "pod")]
struct Sample {
    id: u32,
    value: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Message)]
#[message(codec = "bincode")]
struct Reading {
    sensor: String,
    celsius: f32,
}

#[test]
fn pod_struct_uses_pod_codec_and_writes_its_bytes() {
    assert_eq!(codec_of::<Sample>(), TypeId::of::<PodCodec>());
    let bytes = encode(&Sample { id: 1, value: 2 });
    let expected: Vec<u8> = [1u32.to_ne_bytes(), 2u32.to_ne_bytes()].concat();
    assert_eq!(bytes, expected);
    assert_eq!(
        decode::<Sample>(&bytes).unwrap(),
        Sample { id: 1, value: 2 }
    );
}

#[test]
fn bincode_struct_uses_plain_bincode() {
    assert_eq!(codec_of::<Reading>(), TypeId::of::<Bincode>());
    let reading = Reading {
        sensor: "hall".into(),
        celsius: 21.5,
    };
    let mut plain = BytesMut::new();
    Bincode.encode(&reading, &mut plain).unwrap();
    let bytes = encode(&reading);
    assert_eq!(bytes, plain.to_vec());
    assert_eq!(decode::<Reading>(&bytes).unwrap(), reading);
}

// ---------------------------------------------------------------- enums

/// Heartbeats between two peers.
#[derive(Debug, Clone, PartialEq, Message)]
#[message(codec = "bincode")]
pub enum Beat {
    /// Tag 0, from its position.
    Ping { seq: u64 },
    /// Tag 10, pinned.
    #[message(tag = 10)]
    Pong { seq: u64, note: String },
    /// Tag 2, from its position, although `Pong` is pinned.
    Stop,
    /// Tag 3: a tuple variant.
    Pair(u8, u16),
}

#[test]
fn enum_uses_tagged_bincode() {
    assert_eq!(codec_of::<Beat>(), TypeId::of::<Tagged<Bincode>>());
}

#[test]
fn enum_tags_default_to_declaration_index() {
    assert_eq!(encode(&Beat::Ping { seq: 5 }), [0, 5]);
    assert_eq!(encode(&Beat::Stop), [2]);
    // 300 as a bincode varint: the marker 251, then the u16 little-endian.
    assert_eq!(encode(&Beat::Pair(1, 300)), [3, 1, 251, 0x2c, 0x01]);
}

#[test]
fn enum_pinned_tag_is_written_before_the_fields() {
    let pong = Beat::Pong {
        seq: 3,
        note: "hi".into(),
    };
    let bytes = encode(&pong);
    // tag 10, seq 3, then the string: length 2 and its bytes.
    assert_eq!(bytes, [10, 3, 2, b'h', b'i']);
    assert_eq!(decode::<Beat>(&bytes).unwrap(), pong);
}

#[test]
fn enum_round_trips_every_variant() {
    let all = [
        Beat::Ping { seq: u64::MAX },
        Beat::Pong {
            seq: 0,
            note: String::new(),
        },
        Beat::Stop,
        Beat::Pair(u8::MAX, u16::MAX),
    ];
    for beat in all {
        assert_eq!(decode::<Beat>(&encode(&beat)).unwrap(), beat);
    }
}

#[test]
fn enum_unknown_tag_is_a_decode_error() {
    // 1 is free: `Pong` took 10 instead.
    for tag in [1u8, 9, 11] {
        let err = decode::<Beat>(&[tag]).unwrap_err();
        let tag = u32::from(tag);
        assert_eq!(decode_source(&err), Some(("bincode", UnknownTag { tag })));
    }
}

#[test]
fn enum_bytes_after_the_fields_are_a_decode_error() {
    let err = decode::<Beat>(&[2, 0]).unwrap_err();
    let expected = ("bincode", TrailingBytes { trailing: 1 });
    assert_eq!(decode_source(&err), Some(expected));
}

#[test]
fn enum_missing_fields_are_a_decode_error() {
    let err = decode::<Beat>(&[10, 3]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Decode {
                codec: "bincode",
                ..
            }
        ),
        "{err:?}"
    );
}

/// Version 1 of a protocol, every tag pinned.
mod v1 {
    use chitchat_net::Message;

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        #[message(tag = 1)]
        Start { id: u32 },
        #[message(tag = 2)]
        Stop,
        #[message(tag = 3)]
        Data(Vec<u8>),
    }
}

/// Version 2: reordered, with a new variant in the middle.
mod v2 {
    use chitchat_net::Message;

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "bincode")]
    pub enum Command {
        #[message(tag = 3)]
        Data(Vec<u8>),
        #[message(tag = 4)]
        Pause { millis: u64 },
        #[message(tag = 1)]
        Start { id: u32 },
        #[message(tag = 2)]
        Stop,
    }
}

#[test]
fn enum_reordered_with_pinned_tags_keeps_the_bytes() {
    let pairs = [
        (v1::Command::Start { id: 7 }, v2::Command::Start { id: 7 }),
        (v1::Command::Stop, v2::Command::Stop),
        (v1::Command::Data(vec![1, 2]), v2::Command::Data(vec![1, 2])),
    ];
    for (old, new) in pairs {
        let bytes = encode(&old);
        assert_eq!(bytes, encode(&new));
        assert_eq!(decode::<v2::Command>(&bytes).unwrap(), new);
        assert_eq!(decode::<v1::Command>(&bytes).unwrap(), old);
    }
    assert_eq!(encode(&v2::Command::Start { id: 7 }), [1, 7]);
    // An old peer refuses the new variant.
    let pause = encode(&v2::Command::Pause { millis: 5 });
    let err = decode::<v1::Command>(&pause).unwrap_err();
    assert_eq!(
        decode_source(&err),
        Some(("bincode", UnknownTag { tag: 4 }))
    );
}

/// An enum without fields anywhere: nothing but tags on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Message)]
#[message(codec = "bincode")]
enum Signal {
    Go,
    #[message(tag = 200)]
    Halt,
}

#[test]
fn enum_without_fields_writes_only_tags() {
    assert_eq!(encode(&Signal::Go), [0]);
    assert_eq!(encode(&Signal::Halt), [200]);
    assert_eq!(decode::<Signal>(&[200]).unwrap(), Signal::Halt);
}

#[cfg(feature = "postcard")]
mod postcard {
    use super::*;
    use chitchat_net::Postcard;

    #[derive(Debug, Clone, PartialEq, Message)]
    #[message(codec = "postcard")]
    enum Beat {
        Ping {
            seq: u64,
        },
        #[message(tag = 300)]
        Pong(u64, String),
    }

    #[test]
    fn postcard_enum_uses_tagged_postcard() {
        assert_eq!(codec_of::<Beat>(), TypeId::of::<Tagged<Postcard>>());
        let pong = Beat::Pong(1, "a".into());
        // tag 300 as a postcard varint (0xac 0x02), then the fields.
        let bytes = encode(&pong);
        assert_eq!(bytes, [0xac, 0x02, 1, 1, b'a']);
        assert_eq!(decode::<Beat>(&bytes).unwrap(), pong);
        assert_eq!(encode(&Beat::Ping { seq: 2 }), [0, 2]);
        let err = decode::<Beat>(&[7]).unwrap_err();
        assert_eq!(
            decode_source(&err),
            Some(("postcard", UnknownTag { tag: 7 }))
        );
    }
}

// ---------------------------------------------------------------- own codecs

/// Temperatures as decimal text: a user codec.
#[derive(Debug, Default)]
struct DecimalCodec;

#[derive(Debug, Clone, Copy, PartialEq, Message)]
#[message(codec = DecimalCodec)]
struct Celsius(i32);

impl Codec<Celsius> for DecimalCodec {
    fn name(&self) -> &'static str {
        "decimal"
    }
    fn is_binary(&self) -> bool {
        false
    }
    fn encode(&self, item: &Celsius, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(item.0.to_string().as_bytes());
        Ok(())
    }
    fn decode(&self, frame: Bytes) -> Result<Celsius, Error> {
        let text = std::str::from_utf8(&frame).map_err(|e| Error::decode("decimal", e))?;
        text.parse()
            .map(Celsius)
            .map_err(|e| Error::decode("decimal", e))
    }
}

/// An enum with its own codec: no tags, the codec writes everything.
#[derive(Debug, Clone, Copy, PartialEq, Message)]
#[message(codec = self::SwitchCodec)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Default)]
struct SwitchCodec;

impl Codec<Switch> for SwitchCodec {
    fn name(&self) -> &'static str {
        "switch"
    }
    fn is_binary(&self) -> bool {
        false
    }
    fn encode(&self, item: &Switch, dst: &mut BytesMut) -> Result<(), Error> {
        dst.extend_from_slice(match item {
            Switch::On => b"on",
            Switch::Off => b"off",
        });
        Ok(())
    }
    fn decode(&self, frame: Bytes) -> Result<Switch, Error> {
        match &frame[..] {
            b"on" => Ok(Switch::On),
            b"off" => Ok(Switch::Off),
            _ => Err(Error::decode("switch", "expected on or off")),
        }
    }
}

#[test]
fn own_codec_path_is_the_codec() {
    assert_eq!(codec_of::<Celsius>(), TypeId::of::<DecimalCodec>());
    assert_eq!(encode(&Celsius(-4)), b"-4");
    assert_eq!(decode::<Celsius>(b"12").unwrap(), Celsius(12));

    assert_eq!(codec_of::<Switch>(), TypeId::of::<SwitchCodec>());
    assert_eq!(encode(&Switch::Off), b"off");
    assert_eq!(decode::<Switch>(b"on").unwrap(), Switch::On);
}

// ---------------------------------------------------------------- handlers

fn assert_handler<H: Handler<Message = Beat>>() {}

fn assert_dispatch<M: Dispatch<H>, H>() {}

/// Answers pings; the derive makes it a `Handler<Message = Beat>`.
#[derive(Default, Handler)]
#[handler(message = Beat)]
struct Monitor;

impl BeatHandler for Monitor {
    async fn ping(&self, seq: u64, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        let note = format!("pong {seq}");
        ctx.send(&Beat::Pong { seq, note })?;
        Ok(())
    }

    async fn pong(&self, _seq: u64, _note: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn stop(&self, ctx: &mut Context<'_>) -> Result<(), BoxError> {
        ctx.close();
        Ok(())
    }

    async fn pair(&self, _low: u8, _high: u16, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A generic handler: `Handler` where its parameter allows.
#[derive(Handler)]
#[handler(message = Beat)]
struct Forward<T> {
    _to: T,
}

impl<T: Send + Sync + 'static> BeatHandler for Forward<T> {
    async fn ping(&self, _seq: u64, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn pong(&self, _seq: u64, _note: String, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn stop(&self, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }

    async fn pair(&self, _low: u8, _high: u16, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Samples are handled whole, by one method named after the type.
#[derive(Handler)]
#[handler(message = Sample)]
struct Recorder;

impl SampleHandler for Recorder {
    async fn sample(&self, _msg: Sample, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn derived_handler_is_a_handler() {
    assert_handler::<Monitor>();
    assert_handler::<Forward<u32>>();
    assert_dispatch::<Beat, Monitor>();

    fn assert_sample_handler<H: Handler<Message = Sample>>() {}
    assert_sample_handler::<Recorder>();
    assert_dispatch::<Sample, Recorder>();
}

#[test]
fn derived_handler_serves_a_server_generic_over_handler() {
    // What the runtime requires of a handler value: shareable across tasks.
    fn serve<H: Handler>(handler: H) -> std::sync::Arc<H> {
        std::sync::Arc::new(handler)
    }
    let _shared = serve(Monitor);
}

/// `handler = "..."` renames the generated trait.
#[derive(Debug, Serialize, Deserialize, Message)]
#[message(codec = "bincode", handler = "Alarms")]
enum Alarm {
    Fire { floor: u8 },
}

#[derive(Handler)]
#[handler(message = Alarm)]
struct Siren;

impl Alarms for Siren {
    async fn fire(&self, _floor: u8, _ctx: &mut Context<'_>) -> Result<(), BoxError> {
        Ok(())
    }
}

#[test]
fn renamed_handler_trait() {
    fn assert_alarm_handler<H: Handler<Message = Alarm>>() {}
    assert_alarm_handler::<Siren>();
}

/// `crate = "..."` for code that reaches chitchat-net through a re-export.
mod reexport {
    pub use chitchat_net::*;
}

mod renamed {
    #[derive(Debug, Clone, PartialEq, chitchat_net::Message)]
    #[message(codec = "bincode", crate = "crate::derive::reexport")]
    pub enum Light {
        Red,
        #[message(tag = 5)]
        Green(u8),
    }

    #[derive(chitchat_net::Handler)]
    #[handler(message = Light, crate = "crate::derive::reexport")]
    pub struct Crossing;

    impl LightHandler for Crossing {
        async fn red(&self, _ctx: &mut super::Context<'_>) -> Result<(), super::BoxError> {
            Ok(())
        }

        async fn green(
            &self,
            _seconds: u8,
            _ctx: &mut super::Context<'_>,
        ) -> Result<(), super::BoxError> {
            Ok(())
        }
    }
}

#[test]
fn crate_path_reaches_a_reexport() {
    fn assert_light_handler<H: Handler<Message = renamed::Light>>() {}
    assert_light_handler::<renamed::Crossing>();
    assert_eq!(encode(&renamed::Light::Green(9)), [5, 9]);
    assert_eq!(decode::<renamed::Light>(&[0]).unwrap(), renamed::Light::Red);
}
