//! The request envelope's decoder (`chitchat_net::envelope::decode`) on
//! arbitrary frames.
//!
//! Checks: no panic; a header is never longer than `MAX_HEADER_LEN`; what
//! decodes re-encodes to the very same bytes (one encoding per id, so two
//! peers can never disagree on which request a reply answers; one per
//! remaining time of a request with a deadline, kind `0x04`; a cancel,
//! kind `0x05`, is its id alone); and what the
//! encoder writes for the decoded envelope decodes back to it. For an error
//! reply (kind `0x03`), its body (`envelope::decode_error`) too: no panic,
//! a text of at most `MAX_ERROR_TEXT` bytes, and a body that decodes
//! re-encodes (`envelope::encode_error`) to the very frame. For a reply
//! stream's end (kind `0x08`) and credit (`0x09`), their bodies
//! (`envelope::decode_stream_end`, `envelope::decode_credit`) likewise: no
//! panic, and what decodes re-encodes to the very frame.
#![no_main]

use chitchat_net::envelope::{self, Envelope, MAX_ERROR_TEXT, MAX_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((kind, rest)) = envelope::decode(data) else {
        return;
    };
    let header = data.len() - rest.len();
    assert!(
        (1..=MAX_HEADER_LEN).contains(&header),
        "{header}-byte header"
    );
    let mut again = Vec::new();
    envelope::encode(kind, &mut again);
    assert_eq!(&again[..], &data[..header], "{kind:?}");
    assert_eq!(envelope::decode(&again), Ok((kind, &[][..])));
    match kind {
        Envelope::ErrorReply(id) => {
            if let Ok((code, text)) = envelope::decode_error(rest) {
                assert!(text.len() <= MAX_ERROR_TEXT, "{}-byte text", text.len());
                let mut whole = Vec::new();
                envelope::encode_error(id, code, text, &mut whole);
                assert_eq!(&whole[..], data, "{code:?}");
            }
        }
        Envelope::StreamEnd(id) => {
            if let Ok(end) = envelope::decode_stream_end(rest) {
                if let Some((_, text)) = end {
                    assert!(text.len() <= MAX_ERROR_TEXT, "{}-byte text", text.len());
                }
                let mut whole = Vec::new();
                envelope::encode_stream_end(id, end, &mut whole);
                assert_eq!(&whole[..], data, "{end:?}");
            }
        }
        Envelope::Credit(id) => {
            if let Ok(n) = envelope::decode_credit(rest) {
                let mut whole = Vec::new();
                envelope::encode_credit(id, n, &mut whole);
                assert_eq!(&whole[..], data, "credit {n}");
            }
        }
        _ => {}
    }
});
