//! `FrameCodec::decode` / `decode_eof` on arbitrary streams, in every mode.
//!
//! Input: a header (mode, delimiter, max frame length 0..=4096, whether to
//! keep decoding after an error, chunk sizes; see `src/lib.rs`), then the
//! stream, fed in those chunks.
//!
//! Checks: no panic; every call that yields something consumes input (no
//! hang); frames within the limit and no longer than their wire bytes; the
//! read buffer bounded by limit + chunk + 4; and the frames and errors are
//! exactly those of a reference model applied to the whole stream at once,
//! so they do not depend on how the stream was cut into reads.
#![no_main]

use chitchat_net_fuzz::{drive, reference, Header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, stream) = Header::parse(data);
    let got = drive(
        header.mode,
        header.max,
        &header.chunks,
        header.keep_going,
        stream,
    );
    let want = reference(header.mode, header.max, header.keep_going, stream);
    assert_eq!(got, want, "{header:?}");
});
