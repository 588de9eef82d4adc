//! Quorum locks (issue 19) in the repository's test run: the quorum safety checker
//! (`clients/python/tests/quorum_checker.py`) against five servers, with faults. (The Python
//! client's `QuorumLock` unit tests run with the rest of its suite, in clients_python.rs.)
//!
//! `make test` runs the checker for 30 s (`QUORUM_SECONDS` changes it); `make torture`
//! (DLOCK_TORTURE=1) for 10 minutes, and then the same workload through pottery's Redlock
//! as the contrast (pip installs pottery into a temporary directory for that run).
//!
//! With `FAKETIME_SERVER` naming a redis-server built with `MALLOC=libc` and libfaketime
//! installed (Debian's `faketime`), the checker also steps one server's clock at a time
//! (`make torture FAKETIME_SERVER=...`); this test then fails if that fault did not run.
//! Without it the summary says the clock fault was skipped, and why.

mod common;

use std::sync::Mutex;

use common::{python_client, succeed};

/// One at a time: each run starts several servers and dozens of processes on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn long() -> bool {
    std::env::var_os("DLOCK_TORTURE").is_some()
}

/// The number after `label ` in the checker's summary line.
fn figure(summary: &str, label: &str) -> u64 {
    let at = summary
        .find(&format!("{label} "))
        .unwrap_or_else(|| panic!("no '{label}' in the summary: {summary}"));
    summary[at + label.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after '{label}' in the summary: {summary}"))
}

#[test]
fn the_quorum_checker_finds_no_violation_under_faults() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seconds = std::env::var("QUORUM_SECONDS")
        .unwrap_or_else(|_| (if long() { "600" } else { "30" }).to_string());
    let stdout = succeed(
        python_client("tests.quorum_checker", &["--seconds", &seconds]),
        "the quorum checker",
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("quorum checker:"))
        .unwrap_or_else(|| panic!("no summary from the quorum checker:\n{stdout}"));
    println!("{summary}");
    assert!(figure(summary, "grants") > 0, "{summary}");
    assert!(figure(summary, "faults") > 0, "{summary}");
    assert_eq!(figure(summary, "violations"), 0, "{summary}");
    assert_eq!(figure(summary, "stale writes accepted"), 0, "{summary}");
    assert_eq!(figure(summary, "order inversions"), 0, "{summary}");
    if std::env::var_os("FAKETIME_SERVER").is_some_and(|s| !s.is_empty()) {
        assert!(figure(summary, "clock offset") > 0, "{summary}");
    }
}

#[test]
fn the_redlock_contrast_runs_under_torture() {
    if !long() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seconds = std::env::var("QUORUM_SECONDS").unwrap_or_else(|_| "600".to_string());
    let stdout = succeed(
        python_client(
            "tests.quorum_checker",
            &["--seconds", &seconds, "--redlock"],
        ),
        "the Redlock contrast",
    );
    // Without pottery (no network for pip) the checker says why on stderr and prints nothing.
    if let Some(summary) = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("redlock contrast"))
    {
        println!("{summary}");
        assert!(figure(summary, "grants") > 0, "{summary}");
    }
}
