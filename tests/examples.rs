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

#[test]
fn the_python_example_runs() {
    let server = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/lock_pattern.py"
    );
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
    assert_eq!(stdout.lines().collect::<Vec<_>>(), EXPECTED);
}
