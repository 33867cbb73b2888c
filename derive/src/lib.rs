//! Derive macros for `chitchat-net`. Use them through the main crate.
#![forbid(unsafe_code)]
