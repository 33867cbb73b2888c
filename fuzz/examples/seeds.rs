//! Writes the seed corpus, `fuzz/seeds/<target>/`: a few small valid inputs
//! per mode and codec.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use chitchat_net::handshake::{Fingerprint, Hello, RequestMode, TypeInfo};
use chitchat_net::FrameCodec;
use chitchat_net_fuzz::{codecs, Header, Mode};
use tokio_util::codec::Encoder;

const PAYLOADS: &[&[u8]] = &[b"hello", b"", b"a\r", b"\x00\x0A\xFF\xDF\xFE\r"];

fn modes() -> Vec<(String, Mode)> {
    let mut out = Vec::new();
    for d in [b'\n', 0x00, 0xFF, 0xDF] {
        out.push((format!("raw-{d:02x}"), Mode::Raw(d)));
        out.push((format!("escaped-{d:02x}"), Mode::Escaped(d)));
    }
    out.push(("eof".into(), Mode::Eof));
    out.push(("length-prefixed".into(), Mode::LengthPrefixed));
    out
}

fn header(mode: Mode, max: usize, keep_going: bool, chunks: &[u8]) -> Vec<u8> {
    Header {
        mode,
        keep_going,
        max,
        chunks: chunks.to_vec(),
    }
    .to_bytes()
}

/// The wire of the payloads this mode accepts.
fn wire(mode: Mode, max: usize, payloads: &[&[u8]]) -> Vec<u8> {
    let mut codec = FrameCodec::new(mode.framing(max));
    let mut wire = BytesMut::new();
    for payload in payloads {
        let _ = codec.encode(*payload, &mut wire);
        if mode == Mode::Eof {
            break;
        }
    }
    wire.to_vec()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");

    // frame_decode: valid streams in every mode, and streams with each error.
    let dir = root.join("frame_decode");
    for (name, mode) in modes() {
        let mut input = header(mode, 64, false, &[3, 0]);
        input.extend(wire(mode, 64, PAYLOADS));
        write(&dir, &name, &input);
    }
    let errors: [(&str, Mode, usize, &[u8]); 5] = [
        (
            "too-long-raw",
            Mode::Raw(b'\n'),
            8,
            b"0123456789abcdef\nok\r\ntail",
        ),
        (
            "bad-escape",
            Mode::Escaped(b'\n'),
            16,
            b"a\xFFzb\nc\xFF\nok\xFF\x2D\n",
        ),
        ("too-long-eof", Mode::Eof, 4, b"0123456789"),
        (
            "too-long-length-prefixed",
            Mode::LengthPrefixed,
            16,
            b"\x00\x00\x00\x20................................\x00\x00\x00\x02ok\x00\x00",
        ),
        (
            "partial-length-prefixed",
            Mode::LengthPrefixed,
            16,
            b"\x00\x00\x00\x05ab",
        ),
    ];
    for (name, mode, max, stream) in errors {
        let mut input = header(mode, max, true, &[1, 5, 0]);
        input.extend_from_slice(stream);
        write(&dir, name, &input);
    }

    // frame_roundtrip: the same payloads in every mode, length-prefixed.
    let dir = root.join("frame_roundtrip");
    for (name, mode) in modes() {
        let mut input = header(mode, 64, false, &[2, 7]);
        for payload in PAYLOADS {
            input.push(payload.len() as u8);
            input.extend_from_slice(payload);
        }
        write(&dir, &name, &input);
    }

    // codec_decode: the selector, then a valid frame of its case.
    let dir = root.join("codec_decode");
    for (case, name) in codecs::CASES.iter().enumerate() {
        let frame = codecs::seed(case);
        assert!(
            codecs::run(case as u8, &frame),
            "seed of {name} does not decode"
        );
        let mut input = vec![case as u8];
        input.extend_from_slice(&frame);
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        write(
            &dir,
            &format!("{case:02}-{}", file.trim_end_matches('_')),
            &input,
        );
    }
    // A tree nested past the depth limit: refused, not a stack overflow.
    let mut deep = vec![28u8];
    deep.extend(std::iter::repeat_n(1u8, 5_000));
    deep.extend_from_slice(&[0, 0]);
    assert!(!codecs::run(28, &bytes::Bytes::from(deep[1..].to_vec())));
    write(&dir, "deep-bincode_Tree", &deep);

    // hello_decode: hellos, and a frame that is almost one.
    let dir = root.join("hello_decode");
    let base = Hello {
        protocol: (1, 1),
        cluster: None,
        requests: RequestMode::None,
        send_framing: Some("delimited:0x0a:escaped".into()),
        receive_framing: "delimited:0x0a:escaped".into(),
        features: 0,
        sends: None,
        accepts: None,
    };
    let command = TypeInfo::new(
        "Command",
        "bincode",
        Fingerprint::from_u64(0x0123_4567_89ab_cdef),
        &[(0, "Put"), (1, "Get")],
    );
    for (name, hello) in [
        ("undeclared", base.clone()),
        (
            "both",
            Hello {
                requests: RequestMode::Ids,
                cluster: Some("prod-eu".into()),
                sends: Some(command.clone()),
                accepts: Some(TypeInfo::new(
                    "Reply",
                    "postcard",
                    Fingerprint::from_u64(7),
                    &[],
                )),
                ..base.clone()
            },
        ),
        (
            "sends-only",
            Hello {
                send_framing: None,
                sends: Some(command),
                ..base.clone()
            },
        ),
    ] {
        let mut frame = BytesMut::new();
        hello.encode(&mut frame);
        write(&dir, name, &frame);
    }
    write(
        &dir,
        "other-version",
        b"chitchat-hello/1 ---------------- ----------------",
    );
}
