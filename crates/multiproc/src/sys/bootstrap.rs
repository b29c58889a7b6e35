//! A load-time constructor: a re-executed child becomes a worker before `main` runs.
//!
//! This is what makes children work in `cargo test` binaries (whose `main` belongs to
//! libtest) and in programs that forget [`crate::init`]. It costs one environment
//! lookup in every process that links multiproc, and does nothing else unless the
//! variable set by a multiproc parent is present.
//!
//! The function it runs is handed in by the bootstrap module above (`before_main!`),
//! so that this floor calls nothing up the layers by name.

/// Runs `$f` from a load-time constructor, before `main`.
///
/// The contract `$f` must keep (what makes the constructor sound): it runs before
/// `main`, single-threaded; it returns at once unless this process was started by a
/// multiproc parent, and in that case never returns, so nothing of the program's own
/// start-up depends on it; it uses only std facilities that work before `main` on
/// Linux/glibc (allocation, files, sockets). Invoked once, by `crate::bootstrap`.
macro_rules! before_main {
    ($f:path) => {
        // SAFETY: the constructor runs before `main`, single-threaded, and calls only
        // `$f`, which keeps the contract stated on `before_main!`: it reads one
        // environment variable and returns at once unless this process was started by
        // a multiproc parent; in that case it runs the worker and exits without
        // returning, so nothing of the program's own start-up depends on it. The code
        // it runs uses only std facilities that work before main on Linux/glibc
        // (allocation, files, sockets).
        #[ctor::ctor(unsafe)]
        fn multiproc_bootstrap() {
            $f();
        }
    };
}
pub(crate) use before_main;
