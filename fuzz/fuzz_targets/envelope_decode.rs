//! The request envelope's decoder (`chitchat_net::envelope::decode`) on
//! arbitrary frames.
//!
//! Checks: no panic; a header is never longer than `MAX_HEADER_LEN`; what
//! decodes re-encodes to the very same bytes (one encoding per id, so two
//! peers can never disagree on which request a reply answers); and what the
//! encoder writes for the decoded envelope decodes back to it.
#![no_main]

use chitchat_net::envelope::{self, MAX_HEADER_LEN};
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
});
