//! Compile-time behaviour of the derives: each mistake gives the errors in
//! its `.stderr` file, pointing at the user's code. The valid uses are
//! `tests/ui_pass.rs`.
//!
//! The mistakes are grouped by kind, one module per mistake, in a few
//! files: trybuild compiles each file on its own. With no case that must
//! pass, trybuild checks them all in one `cargo check` (no code generated
//! for the dependencies): a few seconds once those are built, where 24
//! cases built one by one took minutes.
//!
//! The `.stderr` files depend on the compiler's wording. Regenerate them
//! with `TRYBUILD=overwrite cargo test -p chitchat-net-derive --test ui`
//! when the toolchain changes, and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
}
