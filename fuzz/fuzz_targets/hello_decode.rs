//! The handshake's hello decoder (`chitchat_net::handshake::Hello::decode`)
//! on arbitrary frames.
//!
//! Checks: no panic; what decodes re-encodes to a hello that decodes to
//! the same value (the encoding is canonical up to skipped fields), and
//! checking it against itself from either side never panics.
#![no_main]

use bytes::BytesMut;
use chitchat_net::handshake::{Hello, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = Hello::decode(data) else {
        return;
    };
    let mut again = BytesMut::new();
    hello.encode(&mut again);
    assert_eq!(Hello::decode(&again).as_ref(), Ok(&hello), "{hello:?}");
    let _ = hello.check(&hello, Role::Client);
    let _ = hello.check(&hello, Role::Server);
});
