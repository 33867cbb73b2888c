//! Criterion benchmarks of the pure layers (no sockets): framing and codecs,
//! decode and encode, small and 1 KiB frames, against tokio-util's codecs.
//!
//! ```text
//! cargo bench -p chitchat-net-benches --bench codec                      # everything
//! cargo bench -p chitchat-net-benches --bench codec -- decode/1k         # a filter
//! cargo bench -p chitchat-net-benches --bench codec --features postcard
//! ```
//!
//! Groups (throughput in wire bytes, so rows of a group compare directly):
//!
//! - `decode/{16B,1k}`: a buffer of frames cut by `FrameCodec` (raw, escaped
//!   with text or random binary payloads, length-prefixed) and by
//!   `AnyDelimiterCodec`, `LinesCodec`, `LengthDelimitedCodec`;
//! - `encode/{16B,1k}`: the same framings writing payloads into a buffer;
//! - `typed/encode`, `typed/decode`: a frame ⇄ a typed value with each codec
//!   (`Text`, `Raw`, `PodCodec`, `Bincode`, `Postcard`), framing included;
//! - `proto/*`: what-if prototypes of changes suggested for `src/` (see
//!   BENCHMARKS.md), each next to a copy of what `src/` does today.

use std::hint::black_box;
use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use bytes::{Bytes, BytesMut};
use chitchat_net::{Bincode, Codec, FrameCodec, Framing, PodCodec, Raw, Text};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{AnyDelimiterCodec, Decoder, Encoder, LengthDelimitedCodec, LinesCodec};

/// Frames per decode or encode batch.
const FRAMES: usize = 256;

/// `n` pseudo-random bytes (xorshift; the same every run).
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// Printable text with no `\n` and no `0xFF`.
fn text(n: usize, seed: u64) -> Vec<u8> {
    random_bytes(n, seed)
        .into_iter()
        .map(|b| b' ' + b % 95)
        .collect()
}

/// A payload kind.
#[derive(Clone, Copy)]
enum Payload {
    Text,
    Binary,
}

fn payloads(kind: Payload, len: usize) -> Vec<Vec<u8>> {
    (0..FRAMES)
        .map(|i| match kind {
            Payload::Text => text(len, 0x1234 + i as u64),
            Payload::Binary => random_bytes(len, 0x9E37_79B9 + i as u64),
        })
        .collect()
}

fn any_delimiter() -> AnyDelimiterCodec {
    AnyDelimiterCodec::new(b"\n".to_vec(), b"\n".to_vec())
}

/// Decodes every frame of a buffer; returns how many there were.
type Drain = Box<dyn FnMut(&mut BytesMut) -> usize>;

/// The decoders compared: a name, a fresh decoder, the wire it reads.
struct DecodeCase {
    name: &'static str,
    wire: BytesMut,
    decoder: fn() -> Drain,
}

/// Decodes everything in `buf`; returns the number of frames.
fn drain<D>(mut d: D) -> Drain
where
    D: Decoder + 'static,
    D::Item: 'static,
    D::Error: std::fmt::Debug,
{
    Box::new(move |buf| {
        let mut n = 0;
        while let Some(frame) = d.decode(buf).expect("decode") {
            black_box(frame);
            n += 1;
        }
        n
    })
}

fn encode_all(framing: Framing, payloads: &[Vec<u8>]) -> BytesMut {
    let mut codec = FrameCodec::new(framing);
    let mut wire = BytesMut::new();
    for p in payloads {
        codec.encode(&p[..], &mut wire).expect("encode");
    }
    wire
}

fn decode_cases(len: usize) -> Vec<DecodeCase> {
    let text = payloads(Payload::Text, len);
    let binary = payloads(Payload::Binary, len);
    let lines_text = encode_all(Framing::lines().raw(), &text);
    let mut length = BytesMut::new();
    let mut ldc = LengthDelimitedCodec::new();
    for p in &binary {
        ldc.encode(Bytes::copy_from_slice(p), &mut length)
            .expect("encode");
    }
    vec![
        DecodeCase {
            name: "ours-raw",
            wire: lines_text.clone(),
            decoder: || drain(FrameCodec::new(Framing::lines().raw())),
        },
        DecodeCase {
            name: "ours-escaped-text",
            wire: lines_text.clone(),
            decoder: || drain(FrameCodec::new(Framing::lines().escaped())),
        },
        DecodeCase {
            name: "ours-escaped-binary",
            wire: encode_all(Framing::lines().escaped(), &binary),
            decoder: || drain(FrameCodec::new(Framing::lines().escaped())),
        },
        DecodeCase {
            name: "tokio-any-delimiter",
            wire: lines_text.clone(),
            decoder: || drain(any_delimiter()),
        },
        DecodeCase {
            name: "tokio-lines",
            wire: lines_text,
            decoder: || drain(LinesCodec::new()),
        },
        DecodeCase {
            name: "ours-length-prefixed",
            wire: length.clone(),
            decoder: || drain(FrameCodec::new(Framing::length_prefixed())),
        },
        DecodeCase {
            name: "tokio-length-delimited",
            wire: length,
            decoder: || drain(LengthDelimitedCodec::new()),
        },
    ]
}

fn bench_decode(c: &mut Criterion) {
    for (label, len) in [("16B", 16), ("1k", 1024)] {
        let mut group = c.benchmark_group(format!("decode/{label}"));
        for case in decode_cases(len) {
            group.throughput(Throughput::Bytes(case.wire.len() as u64));
            group.bench_function(case.name, |b| {
                b.iter_batched(
                    || (case.wire.clone(), (case.decoder)()),
                    |(mut buf, mut decode)| {
                        let n = decode(&mut buf);
                        assert_eq!(n, FRAMES);
                    },
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

fn bench_encode(c: &mut Criterion) {
    for (label, len) in [("16B", 16), ("1k", 1024)] {
        let mut group = c.benchmark_group(format!("encode/{label}"));
        let text = payloads(Payload::Text, len);
        let binary = payloads(Payload::Binary, len);
        let strings: Vec<String> = text
            .iter()
            .map(|p| String::from_utf8(p.clone()).expect("ascii"))
            .collect();
        let ours: [(&str, Framing, &Vec<Vec<u8>>); 4] = [
            ("ours-raw", Framing::lines().raw(), &text),
            ("ours-escaped-text", Framing::lines().escaped(), &text),
            ("ours-escaped-binary", Framing::lines().escaped(), &binary),
            ("ours-length-prefixed", Framing::length_prefixed(), &binary),
        ];
        group.throughput(Throughput::Bytes((FRAMES * len) as u64));
        for (name, framing, input) in ours {
            group.bench_function(name, |b| {
                let mut codec = FrameCodec::new(framing);
                let mut out = BytesMut::with_capacity(FRAMES * (len * 2 + 8));
                b.iter(|| {
                    out.clear();
                    for p in input {
                        codec.encode(&p[..], &mut out).expect("encode");
                    }
                    black_box(&out);
                })
            });
        }
        group.bench_function("tokio-any-delimiter", |b| {
            let mut codec = any_delimiter();
            let mut out = BytesMut::with_capacity(FRAMES * (len + 8));
            b.iter(|| {
                out.clear();
                for s in &strings {
                    codec.encode(s.as_str(), &mut out).expect("encode");
                }
                black_box(&out);
            })
        });
        group.bench_function("tokio-lines", |b| {
            let mut codec = LinesCodec::new();
            let mut out = BytesMut::with_capacity(FRAMES * (len + 8));
            b.iter(|| {
                out.clear();
                for s in &strings {
                    codec.encode(s.as_str(), &mut out).expect("encode");
                }
                black_box(&out);
            })
        });
        group.bench_function("tokio-length-delimited", |b| {
            let mut codec = LengthDelimitedCodec::new();
            let mut out = BytesMut::with_capacity(FRAMES * (len + 8));
            b.iter(|| {
                out.clear();
                for p in &binary {
                    codec.encode(&p[..], &mut out).expect("encode");
                }
                black_box(&out);
            })
        });
        group.finish();
    }
}

#[derive(Debug, Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Sample16 {
    seq: u64,
    value: u64,
}

#[derive(Debug, Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Block1k {
    bytes: [u8; 1024],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Telemetry {
    node: u16,
    seq: u64,
    value: f64,
    name: String,
}

/// Encodes `values` with `codec` under `framing`, as a connection does.
fn typed_encode<T, C: Codec<T>>(framing: Framing, codec: &C, values: &[T], out: &mut BytesMut) {
    let frame = FrameCodec::new(framing.resolve(codec.is_binary()));
    for v in values {
        frame
            .encode_with(out, |d| codec.encode(v, d))
            .expect("encode");
    }
}

/// One typed case: encode `FRAMES` values, and decode them back from the wire.
fn typed_case<T: Clone, C: Codec<T>>(
    c: &mut Criterion,
    name: &str,
    size: &str,
    codec: C,
    values: Vec<T>,
) {
    let framing = Framing::lines();
    let mut wire = BytesMut::new();
    typed_encode(framing, &codec, &values, &mut wire);
    let wire_len = wire.len() as u64;
    let id = BenchmarkId::new(name, size);

    let mut group = c.benchmark_group("typed/encode");
    group.throughput(Throughput::Bytes(wire_len));
    group.bench_function(id.clone(), |b| {
        let mut out = BytesMut::with_capacity(wire.len() * 2);
        b.iter(|| {
            out.clear();
            typed_encode(framing, &codec, &values, &mut out);
            black_box(&out);
        })
    });
    group.finish();

    let mut group = c.benchmark_group("typed/decode");
    group.throughput(Throughput::Bytes(wire_len));
    group.bench_function(id, |b| {
        let resolved = framing.resolve(codec.is_binary());
        b.iter_batched(
            || wire.clone(),
            |mut buf| {
                let mut frames = FrameCodec::new(resolved);
                let mut n = 0;
                while let Some(frame) = frames.decode(&mut buf).expect("frame") {
                    black_box(codec.decode(frame).expect("decode"));
                    n += 1;
                }
                assert_eq!(n, FRAMES);
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn bench_typed(c: &mut Criterion) {
    let samples: Vec<Sample16> = (0..FRAMES as u64)
        .map(|i| Sample16 {
            seq: i,
            value: i * 31,
        })
        .collect();
    typed_case(c, "pod", "16B", PodCodec, samples);
    let blocks: Vec<Block1k> = (0..FRAMES as u64)
        .map(|i| Block1k {
            bytes: random_bytes(1024, i + 1).try_into().expect("1024"),
        })
        .collect();
    typed_case(c, "pod", "1k", PodCodec, blocks);

    let telemetry: Vec<Telemetry> = (0..FRAMES as u64)
        .map(|i| Telemetry {
            node: 7,
            // A millisecond timestamp: a 9-byte varint, 33 bytes in all.
            seq: 1_700_000_000_000 + i,
            value: 21.5,
            name: "node-0007.rack".to_owned(),
        })
        .collect();
    typed_case(c, "bincode", "32B", Bincode, telemetry.clone());
    #[cfg(feature = "postcard")]
    typed_case(c, "postcard", "32B", chitchat_net::Postcard, telemetry);
    #[cfg(not(feature = "postcard"))]
    drop(telemetry);

    let small: Vec<String> = (0..FRAMES)
        .map(|i| String::from_utf8(text(16, i as u64)).expect("ascii"))
        .collect();
    typed_case(c, "text", "16B", Text, small);
    let large: Vec<String> = (0..FRAMES)
        .map(|i| String::from_utf8(text(1024, i as u64)).expect("ascii"))
        .collect();
    typed_case(c, "text", "1k", Text, large);
    let raw: Vec<Bytes> = (0..FRAMES)
        .map(|i| Bytes::from(text(1024, i as u64)))
        .collect();
    typed_case(c, "raw", "1k", Raw, raw);
}

// ---------------------------------------------------------------------------
// Prototypes of changes suggested for src/ (see BENCHMARKS.md): each pairs a
// copy of what src/ does today (now src/codec/bincode.rs; the frame
// escaping prototypes became src/frame.rs) with the suggested version, on
// the same input, so the expected gain is measured rather than guessed.
// Delete a pair once src/ has adopted the change.

fn bench_proto(c: &mut Criterion) {
    // bincode through chitchat-net's length guard, and plain bincode 2.
    let telemetry: Vec<Telemetry> = (0..FRAMES as u64)
        .map(|i| Telemetry {
            node: 7,
            seq: 1_700_000_000_000 + i,
            value: 21.5,
            name: "node-0007.rack".to_owned(),
        })
        .collect();
    let frames: Vec<Bytes> = telemetry
        .iter()
        .map(|t| {
            let mut b = BytesMut::new();
            Bincode.encode(t, &mut b).expect("encode");
            b.freeze()
        })
        .collect();
    let mut group = c.benchmark_group("proto/bincode-decode-32B");
    group.throughput(Throughput::Bytes(
        frames.iter().map(|f| f.len() as u64).sum(),
    ));
    group.bench_function("src-guarded", |b| {
        b.iter(|| {
            for f in &frames {
                let v: Telemetry = Bincode.decode(f.clone()).expect("decode");
                black_box(v);
            }
        })
    });
    group.bench_function("plain-bincode", |b| {
        b.iter(|| {
            for f in &frames {
                let (v, _): (Telemetry, usize) =
                    bincode::serde::decode_from_slice(f, bincode::config::standard())
                        .expect("decode");
                black_box(v);
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = bench_decode, bench_encode, bench_typed, bench_proto
}
criterion_main!(benches);
