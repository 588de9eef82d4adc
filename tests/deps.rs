//! `scripts/deps.sh` (the first step of `make run` and `make test`) decides what to install the
//! way bindgen looks for libclang. Each case runs the script against a made-up file tree
//! (`DLOCK_DEPS_ROOT`) with stub commands on PATH (`id`, `apt-get`, `python3`, ...) that record
//! what they were asked, so nothing on this machine is read or changed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct Machine {
    dir: PathBuf,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
    /// Every `apt-get` call, one line each.
    apt: String,
}

impl Machine {
    /// Root (uid 0 unless `uid` says otherwise) with cargo and apt-get; redis-server,
    /// redis-cli and redis-py present, libclang not.
    fn new() -> Machine {
        let dir = std::env::temp_dir().join(format!(
            "dlock-deps-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("root")).unwrap();
        let m = Machine { dir };
        m.uid(0);
        m.command("cargo", "exit 0");
        m.command("redis-server", "exit 0");
        m.command("redis-cli", "exit 0");
        m.command("python3", "exit 0");
        let log = m.dir.join("apt.log");
        m.command("apt-get", &format!("echo \"$*\" >> '{}'", log.display()));
        m
    }

    fn command(&self, name: &str, body: &str) {
        let path = self.dir.join("bin").join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn remove_command(&self, name: &str) {
        fs::remove_file(self.dir.join("bin").join(name)).unwrap();
    }

    fn uid(&self, uid: u32) {
        self.command("id", &format!("echo {uid}"));
    }

    /// Creates an (empty) file at `path` under the made-up root.
    fn file(&self, path: &str) {
        let full = self.root().join(path.trim_start_matches('/'));
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(full, b"").unwrap();
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn run(&self, env: &[(&str, &str)]) -> Outcome {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/deps.sh");
        let out = Command::new("/bin/sh")
            .arg(script)
            .env_clear()
            .env("PATH", self.dir.join("bin"))
            .env("DLOCK_DEPS_ROOT", self.root())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            apt: fs::read_to_string(self.dir.join("apt.log")).unwrap_or_default(),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const INSTALL_LIBCLANG: &str = "update -qq\ninstall -y -qq libclang-dev\n";

#[test]
fn nothing_present_installs_everything() {
    let m = Machine::new();
    m.remove_command("redis-server");
    m.remove_command("redis-cli");
    let out = m.run(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "Installing: redis-server redis-tools libclang-dev\n"
    );
    assert_eq!(
        out.apt,
        "update -qq\ninstall -y -qq redis-server redis-tools libclang-dev\n"
    );
}

#[test]
fn libclang_cpp_is_not_libclang() {
    // The stock Debian 12 image: LLVM 14 with the C++ library only.
    let m = Machine::new();
    m.file("/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    m.file("/usr/lib/llvm-14/lib/libclang-cpp.so.14");
    m.file("/usr/lib/llvm-14/lib/libLLVM-14.so");
    m.command("llvm-config", "echo /usr/lib/llvm-14/lib");
    let out = m.run(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.apt, INSTALL_LIBCLANG);
}

#[test]
fn a_versioned_libclang_is_enough() {
    // What libclang1-14 installs.
    let m = Machine::new();
    m.file("/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    m.file("/usr/lib/x86_64-linux-gnu/libclang-14.so.1");
    let out = m.run(&[]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.apt.as_str()),
        (0, "", "")
    );
}

#[test]
fn llvm_config_libdir_is_searched() {
    let m = Machine::new();
    m.file("/opt/llvm/lib/libclang.so.1");
    m.command("llvm-config", "echo /opt/llvm/lib");
    let out = m.run(&[]);
    assert_eq!((out.code, out.apt.as_str()), (0, ""));
}

#[test]
fn libclang_path_must_hold_libclang() {
    let m = Machine::new();
    m.file("/opt/clang/lib/libclang.so");
    m.file("/opt/cpp-only/libclang-cpp.so");
    for (path, apt) in [
        ("/opt/clang/lib", ""),
        ("/opt/clang/lib/libclang.so", ""),
        ("/opt/cpp-only", INSTALL_LIBCLANG),
        ("/opt/cpp-only/libclang-cpp.so", INSTALL_LIBCLANG),
        ("/nowhere", INSTALL_LIBCLANG),
    ] {
        let _ = fs::remove_file(m.dir.join("apt.log"));
        let out = m.run(&[("LIBCLANG_PATH", path)]);
        assert_eq!(
            (out.code, out.apt.as_str()),
            (0, apt),
            "LIBCLANG_PATH={path}"
        );
    }
}

#[test]
fn redis_py_is_installed_with_pip() {
    let m = Machine::new();
    m.file("/usr/lib/llvm-14/lib/libclang.so.1");
    let pip_log = m.dir.join("pip.log");
    m.command(
        "python3",
        &format!(
            "case \"$1\" in -c) [ -e '{log}' ] ;; *) echo \"$*\" >> '{log}' ;; esac",
            log = pip_log.display()
        ),
    );
    let out = m.run(&[]);
    assert_eq!((out.code, out.apt.as_str()), (0, ""), "{}", out.stderr);
    assert_eq!(out.stdout, "Installing redis-py\n");
    assert_eq!(
        fs::read_to_string(pip_log).unwrap(),
        "-m pip install --quiet --disable-pip-version-check --root-user-action=ignore redis\n"
    );
}

#[test]
fn without_root_it_says_what_to_install() {
    let m = Machine::new();
    m.uid(1000);
    m.remove_command("redis-server");
    m.remove_command("redis-cli");
    m.command("python3", "exit 1");
    m.file("/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14");
    let out = m.run(&[]);
    assert_eq!(out.code, 1);
    assert_eq!(out.apt, "");
    assert_eq!(
        out.stderr,
        "dlock needs: redis-server redis-tools libclang-dev\n\
         Install them with: sudo apt-get install -y redis-server redis-tools libclang-dev\n\
         dlock's tests need redis-py: python3 -m pip install --user redis\n"
    );
}

#[test]
fn without_cargo_it_points_to_rustup() {
    let m = Machine::new();
    m.remove_command("cargo");
    let out = m.run(&[]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "dlock needs a Rust toolchain (cargo): see https://rustup.rs\n"
    );
}

/// `make run` (scripts/run.sh) on a port something already listens on says so and how to
/// pick another, instead of Redis's bare bind error.
#[test]
fn run_says_when_its_port_is_taken() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run.sh");
    let out = Command::new("/bin/sh")
        .arg(script)
        .env("PORT", port.to_string())
        .env("REDIS_SERVER", "/bin/false")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "Port {port} on 127.0.0.1 is already in use.\n\
             To run dlock's Redis on another port: make run PORT=6380\n"
        )
    );
}
