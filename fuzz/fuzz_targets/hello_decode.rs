//! The handshake's hello decoder (`chitchat_net::handshake::Hello::decode`)
//! on arbitrary frames.
//!
//! Checks: no panic; what decodes re-encodes to the very same bytes (one
//! encoding per hello), and checking it against itself and against an
//! undeclared hello never fails.
#![no_main]

use bytes::BytesMut;
use chitchat_net::handshake::Hello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = Hello::decode(data) else {
        return;
    };
    let mut again = BytesMut::new();
    hello.encode(&mut again);
    assert_eq!(&again[..], data, "{hello:?}");
    let open = Hello {
        sends: None,
        accepts: None,
    };
    assert_eq!(open.check(&hello), Ok(()));
    assert_eq!(hello.check(&open), Ok(()));
});
