//! A `redis-server` of a test's own, on a free port of 127.0.0.1, without persistence,
//! stopped on drop: the fixture the CLI's bench uses too (crate `multiproc-testkit`).
//! Debian's `redis-server`; the README's test command, `cargo xtask test`, installs it.

#[allow(unused_imports)] // each test binary uses part of `common`
pub use multiproc_testkit::Redis;
