//! Compile-time behaviour of the derives: valid uses compile, each mistake
//! gives one error pointing at the user's code.
//!
//! The `.stderr` files depend on the compiler's wording. Regenerate them
//! with `TRYBUILD=overwrite cargo test --test ui` when the toolchain changes,
//! and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
