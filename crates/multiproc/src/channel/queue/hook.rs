//! Test-only: a one-shot action at a named point of a put or a get, to reproduce an
//! interleaving, or a death at that exact point, deterministically. Outside tests,
//! every point is a no-op.

#[cfg(test)]
use std::cell::RefCell;

#[cfg(test)]
type Action = Box<dyn FnOnce()>;

#[cfg(test)]
thread_local! {
    static AT: RefCell<Vec<(&'static str, Action)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `action` (on this thread) the next time it reaches `point`.
#[cfg(test)]
pub(super) fn set(point: &'static str, action: impl FnOnce() + 'static) {
    AT.with(|a| a.borrow_mut().push((point, Box::new(action))));
}

#[cfg(test)]
pub(super) fn run(point: &'static str) {
    let action = AT.with(|a| {
        let mut a = a.borrow_mut();
        let i = a.iter().position(|(p, _)| *p == point)?;
        Some(a.remove(i).1)
    });
    if let Some(f) = action {
        f();
    }
}

#[cfg(not(test))]
#[inline(always)]
pub(super) fn run(_point: &'static str) {}
