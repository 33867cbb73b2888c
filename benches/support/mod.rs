//! Code shared by `benches/compare.rs` and `examples/scale.rs`: the message
//! types of the end-to-end scenarios, process memory, and the two-process
//! scale scenario.

pub mod scale;

use std::marker::PhantomData;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use bytes::{BufMut, Bytes, BytesMut};
use chitchat_net::{Message, PodCodec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{
    AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder, LengthDelimitedCodec,
};

/// A 16-byte heartbeat: what the scale scenario and the ping-pong send.
/// (Serde too, for the typed `Framed` + bincode baseline.)
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable, serde::Serialize, serde::Deserialize,
)]
#[repr(C)]
pub struct Heartbeat {
    /// Sequence number within one connection.
    pub seq: u64,
    /// Which client sent it.
    pub node: u32,
    /// Unused, keeps the struct at 16 bytes.
    pub flags: u32,
}

impl Message for Heartbeat {
    type Codec = PodCodec;
}

/// A heartbeat is answered by a heartbeat.
impl chitchat_net::Request for Heartbeat {
    type Reply = Heartbeat;
}

/// The resident set size of process `pid` (`"self"` for this one), in KiB,
/// from `/proc/<pid>/status`.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) used so far by process `pid` (`"self"` for this
/// one), from `/proc/<pid>/stat`, in clock ticks of 10 ms (Linux's
/// `USER_HZ` is 100).
pub fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends with the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// A counter of the kernel's `TcpExt` statistics (`/proc/net/netstat`),
/// such as `ListenOverflows`: connections dropped because an accept queue
/// was full. System-wide.
pub fn tcp_ext(name: &str) -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The plain tokio-util baseline's codec: frames cut by
/// [`AnyDelimiterCodec`] (byte by byte), and any bytes written back followed
/// by the delimiter (`AnyDelimiterCodec` only encodes `str`).
#[derive(Debug)]
pub struct EchoCodec {
    inner: AnyDelimiterCodec,
}

impl EchoCodec {
    /// Frames end with `\n`.
    pub fn lines() -> Self {
        EchoCodec {
            inner: AnyDelimiterCodec::new(b"\n".to_vec(), b"\n".to_vec()),
        }
    }
}

impl Decoder for EchoCodec {
    type Item = Bytes;
    type Error = AnyDelimiterCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, Self::Error> {
        self.inner.decode(src)
    }
}

impl Encoder<Bytes> for EchoCodec {
    type Error = AnyDelimiterCodecError;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), Self::Error> {
        dst.reserve(frame.len() + 1);
        dst.put_slice(&frame);
        dst.put_u8(b'\n');
        Ok(())
    }
}

/// The typed baseline: what a user who does not pick chitchat-net writes,
/// the tokio-serde way: `Framed` with a length-delimited codec around a
/// serde format (bincode 2, standard configuration, as ours). Each value
/// is serialized into its own vector, then framed (tokio-serde's
/// `Bincode` serializer and `LengthDelimitedCodec`); each frame is
/// deserialized from the frame's bytes.
#[derive(Debug)]
#[allow(dead_code)] // `examples/scale.rs` shares this module and does not use it
pub struct TypedBincode<T> {
    frames: LengthDelimitedCodec,
    _type: PhantomData<fn(T) -> T>,
}

impl<T> Default for TypedBincode<T> {
    fn default() -> Self {
        TypedBincode {
            frames: LengthDelimitedCodec::new(),
            _type: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Decoder for TypedBincode<T> {
    type Item = T;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, Self::Error> {
        let Some(frame) = self.frames.decode(src)? else {
            return Ok(None);
        };
        let (value, _) = bincode::serde::decode_from_slice(&frame, bincode::config::standard())
            .map_err(std::io::Error::other)?;
        Ok(Some(value))
    }
}

impl<T: Serialize> Encoder<&T> for TypedBincode<T> {
    type Error = std::io::Error;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let bytes = bincode::serde::encode_to_vec(item, bincode::config::standard())
            .map_err(std::io::Error::other)?;
        self.frames.encode(Bytes::from(bytes), dst)
    }
}

/// `d` in the most readable unit.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}
