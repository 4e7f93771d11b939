//! Diagnostics: each file under tests/ui is one misuse of `#[gpu_kernel]`, with the
//! expected compiler output beside it. Regenerate with `TRYBUILD=overwrite`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
