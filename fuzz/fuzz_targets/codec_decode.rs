//! Every built-in codec's `decode` on arbitrary frames.
//!
//! Input: a selector byte picks a codec and a target type (see `CASES` in `src/codecs.rs`), the
//! rest is the frame (placed one byte past an allocation's start, so it is
//! misaligned for any type wider than a byte).
//!
//! Checks: no panic, no large allocation (run with `-malloc_limit_mb`); when
//! decode succeeds, the value re-encodes, the encoding decodes to an equal
//! value and encodes to the same bytes again; Raw, Text and Pod re-encode to
//! the very frame; a `BincodeWithLimit<64>` value holds no string, byte array,
//! sequence or map longer than 64.
#![no_main]

use bytes::Bytes;
use chitchat_net_fuzz::codecs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    // One byte of padding, then the frame: misaligned for wider types.
    let mut padded = Vec::with_capacity(body.len() + 1);
    padded.push(0);
    padded.extend_from_slice(body);
    codecs::run(selector, &Bytes::from(padded).slice(1..));
});
