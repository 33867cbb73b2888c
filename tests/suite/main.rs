//! chitchat-net's integration tests, in one test binary: one module per
//! subject (each was a test binary of its own; linking the crate thirty
//! times cost more than running the tests). Run one subject with
//! `cargo test -p chitchat-net-tests --test suite -- client::`.
//!
//! Tests that need a process of their own run as a child of this binary
//! ([`child`]); the two that install a tracing subscriber are binaries of
//! their own (`tests/logging.rs`, `tests/heartbeat_spans.rs`).

mod child;
mod common;
mod heartbeat_support;

mod anystream;
mod backpressure;
mod batch;
mod client;
mod codec_bincode;
mod codec_pod;
mod codec_postcard;
mod codec_text;
mod concur;
mod conversations;
mod decode_slice;
mod derive;
mod drain;
mod duplex;
mod errors;
mod evolve;
mod framing;
mod guards;
mod handshake_protocol;
mod heartbeat;
mod heartbeat_cluster;
mod heartbeat_fleet;
mod heartbeat_health;
mod hostile;
mod interop;
mod lifecycle_connection;
mod lifecycle_model;
mod lifecycle_reconnect;
mod lifecycle_shutdown;
mod reply_streams;
mod request_timers;
mod server;
mod session;
mod settings;
mod shutdown;
mod sim_cluster;
mod sim_heartbeat;
mod sim_suspect;
mod switching;
mod tls;
mod typed_codec;
mod typed_requests;
mod unix;
mod wire_fixtures;
mod write_bursts;
mod write_through;

use std::alloc::System;

use cap::Cap;

/// Counts heap bytes, so that a test run alone in a child process
/// ([`child`]) can tell what it allocated and its peak heap use.
#[global_allocator]
static HEAP: Cap<System> = Cap::new(System, usize::MAX);
