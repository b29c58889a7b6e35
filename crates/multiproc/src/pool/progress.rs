//! Progress of long maps: an indicatif bar on a terminal, and/or a callback.

use std::io::IsTerminal;
use std::sync::Arc;

/// A callback told `(done, total)` as results arrive; `total` is `None` for an input
/// of unknown length.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// How a pool reports progress of `map`, `map_results` and `imap` calls.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use multiproc::prelude::*;
///
/// fn id(x: u32) -> u32 { x }
///
/// # fn main() -> multiproc::Result<()> {
/// let seen = Arc::new(AtomicU64::new(0));
/// let s = seen.clone();
/// let pool = ThreadPool::builder()
///     .threads(2)
///     .progress(Progress::callback(move |done, _total| { s.store(done, Ordering::Relaxed); }))
///     .build()?;
/// pool.map(id, 0..100)?;
/// assert_eq!(seen.load(Ordering::Relaxed), 100);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Progress {
    bar: bool,
    callback: Option<ProgressFn>,
}

impl Progress {
    /// No progress reporting (the default).
    pub fn off() -> Self {
        Progress::default()
    }

    /// A progress bar on stderr, drawn only when stderr is a terminal (and only with
    /// the default feature `progress-bar`; without it, nothing is drawn).
    pub fn bar() -> Self {
        Progress {
            bar: true,
            callback: None,
        }
    }

    /// A callback, for programs that draw their own.
    pub fn callback(f: impl Fn(u64, Option<u64>) + Send + Sync + 'static) -> Self {
        Progress {
            bar: false,
            callback: Some(Arc::new(f)),
        }
    }

    /// Adds a terminal bar to this configuration.
    pub fn with_bar(mut self) -> Self {
        self.bar = true;
        self
    }

    pub(crate) fn start(&self, total: Option<u64>) -> Bar {
        let bar = (self.bar && std::io::stderr().is_terminal())
            .then(|| term::TermBar::new(total))
            .flatten();
        Bar {
            bar,
            callback: self.callback.clone(),
            total,
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("bar", &self.bar)
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

/// The terminal bar: indicatif's, with feature `progress-bar`.
#[cfg(feature = "progress-bar")]
mod term {
    pub(crate) struct TermBar(indicatif::ProgressBar);

    impl TermBar {
        pub(crate) fn new(total: Option<u64>) -> Option<TermBar> {
            let b = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::new_spinner(),
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {per_sec}",
            ) {
                b.set_style(style);
            }
            Some(TermBar(b))
        }

        pub(crate) fn set_position(&self, done: u64) {
            self.0.set_position(done);
        }

        pub(crate) fn finish_and_clear(&self) {
            self.0.finish_and_clear();
        }
    }
}

/// Without feature `progress-bar`, no bar is drawn.
#[cfg(not(feature = "progress-bar"))]
mod term {
    pub(crate) enum TermBar {}

    impl TermBar {
        pub(crate) fn new(_total: Option<u64>) -> Option<TermBar> {
            None
        }

        pub(crate) fn set_position(&self, _done: u64) {
            match *self {}
        }

        pub(crate) fn finish_and_clear(&self) {
            match *self {}
        }
    }
}

/// Progress of one call in flight.
pub(crate) struct Bar {
    bar: Option<term::TermBar>,
    callback: Option<ProgressFn>,
    total: Option<u64>,
}

impl Bar {
    pub(crate) fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        if let Some(cb) = &self.callback {
            cb(done, self.total);
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.finish();
    }
}
