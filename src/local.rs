//! State kept on Redis's main thread, where every command, timer and event callback runs.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Run `f` on the state in `cell`. Callers never hold the state across a call into Redis that
/// could re-enter the module, so the borrow cannot fail; should it ever (or should the
/// thread's storage be gone), `f` is skipped and the caller gets `T::default()` rather than a
/// panic that would take the server down.
pub fn with<S, T: Default>(cell: &'static LocalKey<RefCell<S>>, f: impl FnOnce(&mut S) -> T) -> T {
    cell.try_with(|c| c.try_borrow_mut().ok().map(|mut s| f(&mut s)))
        .ok()
        .flatten()
        .unwrap_or_default()
}
