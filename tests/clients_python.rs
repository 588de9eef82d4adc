//! The Python client (`clients/python`) in the repository's test run: its unittest suite
//! against real servers with the freshly built module, and its installation with pip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One at a time: the suite measures timing (lost-signal margins), which a concurrent pip
/// build on a small machine would only blur.
static SERIAL: Mutex<()> = Mutex::new(());

fn package() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python")
}

fn python() -> Command {
    Command::new("python3")
}

/// Run `command`, failing the test with its output unless it succeeds; its stdout.
fn succeed(mut command: Command, what: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run python3: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    assert!(
        status.success(),
        "{what} failed ({status}):\n{stdout}{stderr}"
    );
    // Seen with --nocapture: the suite's measured lost-signal margins.
    eprintln!("{stderr}");
    stdout.into_owned()
}

#[test]
fn the_python_client_suite_passes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut command = python();
    command
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "clients/python/tests",
            "-t",
            "clients/python",
            "-v",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PYTHONPATH", package().join("src"))
        .env("DLOCK_MODULE", common::module_path())
        .env(
            "REDIS_SERVER",
            std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string()),
        );
    succeed(command, "the Python client's tests");
}

#[test]
fn the_python_client_installs_with_pip() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::temp_dir().join(format!("dlock-pip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    // Build with the local setuptools when it can make wheels; otherwise pip fetches one.
    let local = python()
        .args([
            "-c",
            "import importlib.util as u, setuptools; \
                      assert u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut install = python();
    install
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&target)
        .arg(package());
    if local {
        install.arg("--no-build-isolation");
    }
    succeed(install, "pip install ./clients/python");
    let mut import = python();
    import
        .args([
            "-c",
            "import redis_dlock, redis_dlock.asyncio; print(redis_dlock.__file__)",
        ])
        .current_dir(&target)
        .env("PYTHONPATH", &target);
    let imported = succeed(import, "import redis_dlock");
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_dir_all(package().join("build"));
    let _ = std::fs::remove_dir_all(package().join("src/redis_dlock.egg-info"));
    assert_eq!(
        imported.trim(),
        target.join("redis_dlock/__init__.py").to_string_lossy()
    );
}
