//! Derive macros for `chitchat-net`. Use them through the main crate.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;

/// Placeholder until the derive lands.
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Placeholder until the derive lands.
#[proc_macro_derive(Handler, attributes(handler))]
pub fn derive_handler(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
