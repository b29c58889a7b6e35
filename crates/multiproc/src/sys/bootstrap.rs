//! A load-time constructor: a re-executed child becomes a worker before `main` runs.
//!
//! This is what makes children work in `cargo test` binaries (whose `main` belongs to
//! libtest) and in programs that forget [`crate::init`]. It costs one environment
//! lookup in every process that links multiproc, and does nothing else unless the
//! variable set by a multiproc parent is present.

// SAFETY: the constructor runs before `main`, single-threaded. It reads one
// environment variable and returns at once unless this process was started by a
// multiproc parent; in that case it runs the worker and exits without returning, so
// nothing of the program's own start-up depends on it. The code it runs uses only std
// facilities that work before main on Linux/glibc (allocation, files, sockets).
#[ctor::ctor(unsafe)]
fn multiproc_bootstrap() {
    crate::child::enter_if_child();
}
