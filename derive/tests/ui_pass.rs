//! Valid uses of the derives compile and run: each file of
//! `tests/ui/pass` is a module here (of a test binary without the test
//! harness, as a user's program would be), with its own strict lints
//! (`#![deny(warnings, missing_docs ...)]`) where it checks that the
//! generated code warns about nothing. `tests/ui.rs` checks the mistakes.
// The handlers name tuple fields `_0`, `_1` ... as the generated traits do.
#![allow(clippy::just_underscores_and_digits)]

#[path = "ui/pass/enum_with_every_variant_kind.rs"]
pub mod enum_with_every_variant_kind;
#[path = "ui/pass/reexported_crate.rs"]
pub mod reexported_crate;
#[path = "ui/pass/struct_messages.rs"]
pub mod struct_messages;

fn main() {
    enum_with_every_variant_kind::check();
    reexported_crate::check();
    struct_messages::check();
}
