//! The README's client examples run against a real server, so they cannot rot.

mod common;

#[path = "../examples/lock_pattern.rs"]
mod lock_pattern;

use std::process::Command;

use common::Server;

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

/// Run `examples/python/{name}` against a fresh server; its output lines.
fn run_python(name: &str) -> Vec<String> {
    let server = Server::start();
    let script = format!("{}/examples/python/{name}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(script)
        .arg(server.port.to_string())
        .output()
        .expect("run python3 (make deps installs redis-py)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

#[test]
fn the_python_example_runs() {
    assert_eq!(run_python("lock_pattern.py"), EXPECTED);
}

#[test]
fn the_python_session_and_guard_example_runs() {
    assert_eq!(
        run_python("session_and_guard.py"),
        [
            "node-a leads",
            "node-a wrote v1",
            "node-b leads, with a newer token",
            "old token refused: stale token, the lock is held with a newer one",
            "jobs:config is v2",
        ]
    );
}
