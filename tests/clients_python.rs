//! The Python client (`clients/python`) in the repository's test run: its unittest suite
//! against real servers with the freshly built module, and its installation with pip.

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::{python_client, python_package, succeed};

/// One at a time: the suite measures timing (lost-signal margins), which a concurrent pip
/// build on a small machine would only blur.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn the_python_client_suite_passes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let command = python_client("unittest", &["discover", "-s", "tests", "-t", ".", "-v"]);
    succeed(command, "the Python client's tests");
}

#[test]
fn the_python_client_installs_with_pip() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::temp_dir().join(format!("dlock-pip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&target);
    // Build with the local setuptools when it can make wheels; otherwise pip fetches one.
    let local = Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u, setuptools; \
                      assert u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut install = Command::new("python3");
    install
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
        .arg(&target)
        .arg(python_package());
    if local {
        install.arg("--no-build-isolation");
    }
    succeed(install, "pip install ./clients/python");
    let mut import = Command::new("python3");
    import
        .args([
            "-c",
            "import redis_dlock, redis_dlock.asyncio; print(redis_dlock.__file__)",
        ])
        .current_dir(&target)
        .env("PYTHONPATH", &target);
    let imported = succeed(import, "import redis_dlock");
    let _ = std::fs::remove_dir_all(&target);
    let _ = std::fs::remove_dir_all(python_package().join("build"));
    let _ = std::fs::remove_dir_all(python_package().join("src/redis_dlock.egg-info"));
    assert_eq!(
        imported.trim(),
        target.join("redis_dlock/__init__.py").to_string_lossy()
    );
}
