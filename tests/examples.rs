//! The README's client examples run against a real server, so they cannot rot.

mod common;

#[path = "../examples/lock_pattern.rs"]
mod lock_pattern;

use common::{Server, run_python};

const EXPECTED: [&str; 6] = [
    "acquired",
    "extended",
    "written",
    "stale write refused: STALE",
    "released",
    "resource holds 'report v1'",
];

#[test]
fn the_rust_example_runs() {
    let server = Server::start();
    let log = lock_pattern::run(&format!("redis://127.0.0.1:{}/", server.port)).unwrap();
    assert_eq!(log, EXPECTED);
}

#[test]
fn the_python_example_runs() {
    let server = Server::start();
    assert_eq!(run_python("lock_pattern.py", server.port), EXPECTED);
}

#[test]
fn the_python_session_and_guard_example_runs() {
    let server = Server::start();
    assert_eq!(
        run_python("session_and_guard.py", server.port),
        [
            "node-a leads",
            "node-a wrote v1",
            "node-b leads, with a newer token",
            "old token refused: stale token, the lock is held with a newer one",
            "jobs:config is v2",
        ]
    );
}
