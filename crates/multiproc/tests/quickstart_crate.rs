//! The quickstart, as a new user's own crate: a fresh cargo project that depends on
//! multiproc by path, with `examples/quickstart.rs` as its `main.rs`, built and run
//! offline. Catches what tests inside this crate cannot: a bootstrap that only works
//! in test binaries, a missing re-export, an unusable public API.

mod common;

const MAIN: &str = include_str!("../examples/quickstart.rs");

#[test]
fn quickstart_as_a_separate_crate() {
    let out = common::run_user_crate("quickstart", MAIN, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("total: 1249999975000000"),
        "unexpected output:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("process ").count(), 2, "{stdout}");
}
