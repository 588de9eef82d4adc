//! The clients under the contention section's workload (acquire → hold 1 ms → release →
//! think 1 ms on one key), and what their keepalive costs.
//!
//! - Python (`benches/clients/contend.py`, one process per contender, one monotonic clock
//!   for all): `redis_dlock.Lock` next to python-redis-lock, pottery's `Redlock` and
//!   redis-py's `Lock`, each used the way its documentation shows, and the bare commands sent
//!   with redis-py as the floor. python-redis-lock and pottery are installed for the bench
//!   only, in `target/bench/python`; a smoke run does not install them and skips them until
//!   a full run has.
//! - Rust: `dlock_client::Lock` (blocking `acquire(None)`, a `Client` per contender as if
//!   each were its own process) next to the raw `DLOCK.ACQUIRE ... WAIT 0` of the
//!   contention section, in interleaved rounds; and the client again with each `Client`
//!   holding another lease all along, so that its background threads are already running
//!   when a lease comes (otherwise each lease starts them: a client whose last lease went
//!   stops them).
//! - Keepalive: many leases held at once, renewed every ttl/3 by each client's background
//!   thread, over one ttl: the client's CPU time, and the server's commands and CPU time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use dlock_client::{Client, Lease, Lock};

use super::Sizes;
use super::common::{Connection, Server, cmd, python_package};
use super::contention::{self, Contender, Grant, Metrics, ROWS, Strategy};
use super::report::{Figure, Target, median};

/// The Python locks, by the names `contend.py` knows them; the first is dlock's.
const PYTHON_DLOCK: &str = "redis_dlock";
const PYTHON_BASELINE: &str = "python-redis-lock";
const PYTHON_OTHERS: [&str; 4] = [
    "redis_dlock-keepalive",
    "redis-py-raw",
    "pottery",
    "redis-py",
];
/// Not part of redis-py or the client: installed for the bench, at these versions.
const THIRD_PARTY: [(&str, &str, &str); 2] = [
    ("python-redis-lock", "4.0.1", "redis_lock"),
    ("pottery", "3.0.1", "pottery"),
];

pub fn clients(server: &Server, c: &mut Connection, sizes: &Sizes, figures: &mut Vec<Figure>) {
    python_contention(server, sizes, figures);
    rust_contention(server, sizes, figures);
    let ttl = Duration::from_millis(sizes.keepalive_ttl_ms);
    for (client, cost) in [
        ("Python client", python_keepalive(server, c, sizes)),
        ("Rust client", rust_keepalive(server, c, sizes)),
    ] {
        cost.report(client, sizes.keepalive_leases, ttl, figures);
    }
}

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/clients/contend.py")
}

fn site_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/python")
}

/// `contend.py mode port args...` with the client's sources on the path, and the
/// third-party locks after the system's packages when `site` has them.
fn python(mode: &str, port: u16, args: &[String], site: Option<&Path>) -> Command {
    let mut command = Command::new("python3");
    command
        .arg(driver())
        .arg(mode)
        .arg(port.to_string())
        .args(args)
        .env("PYTHONPATH", python_package().join("src"));
    if let Some(site) = site {
        command.env("BENCH_SITE", site);
    }
    command
}

fn installed(site: &Path) -> bool {
    THIRD_PARTY
        .iter()
        .all(|(_, _, module)| site.join(module).is_dir())
}

/// The directory holding the third-party locks, installing them there first when missing and
/// `install` allows; None when they are not there.
fn third_party(install: bool) -> Option<PathBuf> {
    let site = site_dir();
    if installed(&site) {
        return Some(site);
    }
    let names: Vec<&str> = THIRD_PARTY.iter().map(|(name, _, _)| *name).collect();
    if !install {
        eprintln!(
            "   clients: skipping {} (not installed yet; a full run installs them in {})",
            names.join(" and "),
            site.display()
        );
        return None;
    }
    // The same redis-py as the client's own tests use, which also stays first on the path.
    let redis_py = Command::new("python3")
        .args(["-c", "import redis; print(redis.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(redis_py) = redis_py else {
        eprintln!("   clients: no redis-py for python3 (make deps installs it): no Python runs");
        return None;
    };
    eprintln!(
        "   clients: installing {} in {}",
        names.join(" and "),
        site.display()
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&site)
        .args(
            THIRD_PARTY
                .iter()
                .map(|(name, v, _)| format!("{name}=={v}")),
        )
        .arg(format!("redis=={redis_py}"))
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status();
    if status.is_ok_and(|s| s.success()) && installed(&site) {
        Some(site)
    } else {
        eprintln!("   clients: pip could not install them: skipping them");
        None
    }
}

/// `grant LIBRARY ROUND CLIENT REQUESTED GRANTED RELEASED` lines, by library and round.
fn parse_grants(output: &str) -> HashMap<(String, usize), Vec<Grant>> {
    let mut runs: HashMap<(String, usize), Vec<Grant>> = HashMap::new();
    for line in output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [
            "grant",
            library,
            round,
            client,
            requested,
            granted,
            released,
        ] = fields[..]
        else {
            panic!("unexpected line from contend.py: {line:?}");
        };
        let number = |s: &str| -> usize { s.parse().expect("a number from contend.py") };
        let time = |s: &str| -> Duration {
            Duration::from_secs_f64(s.parse().expect("a time from contend.py"))
        };
        runs.entry((library.to_string(), number(round)))
            .or_default()
            .push(Grant {
                client: number(client),
                requested: time(requested),
                granted: time(granted),
                released: time(released),
            });
    }
    runs
}

/// The median of each row's metric over the rounds of each library, in ROWS' order plus
/// longest / mean wait.
fn medians(rounds: &[Metrics]) -> Vec<f64> {
    let mut picks: Vec<contention::Pick> = ROWS.iter().map(|(_, _, pick)| *pick).collect();
    picks.push(|m| m.longest_wait_vs_mean);
    picks
        .into_iter()
        .map(|pick| median(rounds.iter().map(pick).collect()))
        .collect()
}

/// The rows' names and units, ROWS' plus longest / mean wait.
fn row_names() -> Vec<(&'static str, &'static str)> {
    let mut rows: Vec<(&str, &str)> = ROWS.iter().map(|(name, unit, _)| (*name, *unit)).collect();
    rows.push(("longest wait / mean wait", "ratio"));
    rows
}

fn python_contention(server: &Server, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let site = third_party(sizes.install_baselines);
    let libraries: Vec<&str> = std::iter::once(PYTHON_DLOCK)
        .chain(std::iter::once(PYTHON_BASELINE))
        .chain(PYTHON_OTHERS)
        .filter(|library| site.is_some() || !THIRD_PARTY.iter().any(|(name, _, _)| name == library))
        .collect();
    let contenders = sizes.python_contenders;
    let args: Vec<String> = [
        contenders.to_string(),
        (sizes.contention_ms as f64 / 1000.0).to_string(),
        sizes.rounds.to_string(),
    ]
    .into_iter()
    .chain(libraries.iter().map(|l| l.to_string()))
    .collect();
    let output = python("contend", server.port, &args, site.as_deref())
        .stderr(Stdio::inherit())
        .output()
        .expect("run python3 benches/clients/contend.py");
    assert!(
        output.status.success(),
        "contend.py failed: {}",
        output.status
    );
    let mut runs = parse_grants(&String::from_utf8_lossy(&output.stdout));
    let mut by_library: HashMap<&str, Vec<f64>> = HashMap::new();
    for library in &libraries {
        let rounds: Vec<Metrics> = (0..sizes.rounds)
            .map(|round| {
                let grants = runs
                    .remove(&(library.to_string(), round))
                    .unwrap_or_else(|| panic!("no grants for {library} in round {round}"));
                contention::measure(grants, contenders)
            })
            .collect();
        by_library.insert(library, medians(&rounds));
    }
    for (i, (name, unit)) in row_names().into_iter().enumerate() {
        let target = match name {
            "lock utilization" => Some(Target::RatioAtLeast(1.3)),
            "longest wait / mean wait" => Some(Target::AtMost(3.0)),
            _ => None,
        };
        let value = |library: &str| by_library.get(library).map(|m| m[i]);
        figures.push(Figure {
            name: format!(
                "Python, {contenders} processes: {name}, {PYTHON_DLOCK} vs {PYTHON_BASELINE}"
            ),
            unit,
            dlock: value(PYTHON_DLOCK).unwrap_or(f64::NAN),
            baseline: value(PYTHON_BASELINE),
            target,
            others: PYTHON_OTHERS
                .iter()
                .filter_map(|library| Some((library.to_string(), value(library)?)))
                .collect(),
        });
    }
}

/// A contender through the Rust client, with a `Client` of its own as a separate process
/// would have.
struct RustClient {
    lock: Lock,
    lease: Option<Lease>,
    /// A lease on a key of its own held through the whole run, or none: while a client holds
    /// any lease its background threads run, so that its leases on the contended key do not
    /// each start them.
    _running: Option<Lease>,
}

impl RustClient {
    fn new(url: &str, key: &str, ttl: Duration, client: usize, threads_running: bool) -> Self {
        let redis = Client::open(url).expect("a client");
        let _running = threads_running.then(|| {
            Lock::new(&redis, &format!("{key}:running:{client}"))
                .ttl(Duration::from_secs(600))
                .acquire(None)
                .expect("a lease that keeps the client's threads running")
        });
        RustClient {
            lock: Lock::new(&redis, key).ttl(ttl),
            lease: None,
            _running,
        }
    }
}

impl Contender for RustClient {
    fn take(&mut self) {
        self.lease = Some(self.lock.acquire(None).expect("acquire through the client"));
    }

    fn give_back(&mut self) {
        let lease = self.lease.take().expect("a lease to release");
        assert!(lease.release().expect("release"), "released a lock it held");
    }
}

fn rust_contention(server: &Server, sizes: &Sizes, figures: &mut Vec<Figure>) {
    let length = Duration::from_millis(sizes.contention_ms);
    let url = format!("redis://127.0.0.1:{}/", server.port);
    let lease = Duration::from_millis(contention::LEASE_MS as u64);
    // A key of its own: the raw contenders' key is free again when their run ends anyway.
    let key = format!("{}:client", contention::KEY);
    for &contenders in sizes.contenders {
        let (mut client_runs, mut running_runs, mut raw_runs) = (vec![], vec![], vec![]);
        for _ in 0..sizes.rounds {
            for (threads_running, runs) in [(false, &mut client_runs), (true, &mut running_runs)] {
                let through_client = (0..contenders)
                    .map(|i| RustClient::new(&url, &key, lease, i, threads_running))
                    .collect();
                runs.push(contention::measure(
                    contention::run(through_client, length),
                    contenders,
                ));
            }
            let raw = (0..contenders)
                .map(|client| contention::Raw::new(server, Strategy::Dlock, client))
                .collect();
            raw_runs.push(contention::measure(
                contention::run(raw, length),
                contenders,
            ));
        }
        let (client, running, raw) = (
            medians(&client_runs),
            medians(&running_runs),
            medians(&raw_runs),
        );
        for (i, (name, unit)) in row_names().into_iter().enumerate() {
            figures.push(Figure {
                name: format!(
                    "Rust client, {contenders} threads: {name}, dlock_client::Lock vs raw WAIT 0"
                ),
                unit,
                dlock: client[i],
                baseline: Some(raw[i]),
                // Within 5% of the raw commands where that means something: the share of
                // time the lock is held and the grants it makes. Hand-over latencies are
                // tenths of a millisecond, where 5% is below the machine's noise.
                target: (i < 2).then_some(Target::RatioAtLeast(0.95)),
                others: vec![(
                    "client, background threads already running".into(),
                    running[i],
                )],
            });
        }
    }
}

/// The server's command count (all but INFO) and CPU seconds.
fn server_usage(c: &mut Connection) -> (f64, f64) {
    let info: String = cmd("INFO")
        .arg("commandstats")
        .arg("cpu")
        .query(c)
        .expect("INFO");
    let mut commands = 0.0;
    let mut cpu = 0.0;
    for line in info.lines() {
        if let Some(stats) = line.strip_prefix("cmdstat_")
            && !stats.starts_with("info:")
        {
            commands += stats
                .split([':', ','])
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    (commands, cpu)
}

/// What keeping leases alive cost over a window.
struct KeepaliveCost {
    window_s: f64,
    client_cpu_s: f64,
    server_commands: f64,
    server_cpu_s: f64,
}

impl KeepaliveCost {
    fn report(&self, client: &str, leases: usize, ttl: Duration, figures: &mut Vec<Figure>) {
        let n = leases as f64;
        let per_lease = |v: f64| v / self.window_s / n;
        let share = |cpu: f64| 100.0 * cpu / self.window_s;
        let title = format!(
            "keepalive of {leases} leases (ttl {} s), {client}",
            ttl.as_secs_f64()
        );
        let rows = [
            (
                "client CPU per lease (us/s)",
                "us/s",
                per_lease(self.client_cpu_s) * 1e6,
                ("% of a core", share(self.client_cpu_s)),
            ),
            (
                "server commands/s",
                "commands/s",
                self.server_commands / self.window_s,
                ("per lease", per_lease(self.server_commands)),
            ),
            (
                "server CPU per lease (us/s)",
                "us/s",
                per_lease(self.server_cpu_s) * 1e6,
                ("% of a core", share(self.server_cpu_s)),
            ),
        ];
        for (name, unit, value, (other, other_value)) in rows {
            figures.push(Figure {
                name: format!("{title}: {name}"),
                unit,
                dlock: value,
                baseline: None,
                target: None,
                others: vec![(other.to_string(), other_value)],
            });
        }
    }
}

/// Hold the leases in a Python process (`contend.py keepalive`), which reports its own CPU
/// time over the window; the server's is read when the window starts and ends.
fn python_keepalive(server: &Server, c: &mut Connection, sizes: &Sizes) -> KeepaliveCost {
    let args = [
        sizes.keepalive_leases.to_string(),
        sizes.keepalive_ttl_ms.to_string(),
    ];
    let mut child = python("keepalive", server.port, &args, None)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 benches/clients/contend.py keepalive");
    let stdout = child.stdout.take().expect("the driver's stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next = || {
        lines
            .next()
            .and_then(Result::ok)
            .expect("a line from contend.py keepalive")
    };
    assert_eq!(next(), "held");
    let (commands, cpu) = server_usage(c);
    let line = next();
    let (commands, cpu) = {
        let (now_commands, now_cpu) = server_usage(c);
        (now_commands - commands, now_cpu - cpu)
    };
    let fields: Vec<f64> = line
        .strip_prefix("cpu ")
        .expect("cpu SECONDS WALL")
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect();
    assert!(child.wait().expect("wait for python3").success());
    KeepaliveCost {
        window_s: fields[1],
        client_cpu_s: fields[0],
        server_commands: commands,
        server_cpu_s: cpu,
    }
}

/// CPU seconds of this process's threads whose name starts with `prefix` (the client's
/// background threads are named `dlock-keepalive` and `dlock-deadline`).
fn threads_cpu(prefix: &str) -> f64 {
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    let nanos: u64 = tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .filter_map(|task| {
            std::fs::read_to_string(task.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    nanos as f64 / 1e9
}

/// Hold the leases through one `Client` in this process: the client's CPU is its two
/// background threads', the only ones that run during the window.
fn rust_keepalive(server: &Server, c: &mut Connection, sizes: &Sizes) -> KeepaliveCost {
    let client = Client::open(&format!("redis://127.0.0.1:{}/", server.port)).expect("client");
    let ttl = Duration::from_millis(sizes.keepalive_ttl_ms);
    let leases: Vec<Lease> = (0..sizes.keepalive_leases)
        .map(|i| {
            Lock::new(&client, &format!("keepalive:rust:{i}"))
                .ttl(ttl)
                .keepalive(true)
                .acquire(None)
                .expect("acquire a lease to keep alive")
        })
        .collect();
    // From half a renewal period after the last grant, for one ttl: three renewals each.
    thread::sleep(ttl / 6);
    let started = Instant::now();
    let client_cpu = threads_cpu("dlock-");
    let (commands, cpu) = server_usage(c);
    thread::sleep(ttl);
    let (now_commands, now_cpu) = server_usage(c);
    let cost = KeepaliveCost {
        client_cpu_s: threads_cpu("dlock-") - client_cpu,
        window_s: started.elapsed().as_secs_f64(),
        server_commands: now_commands - commands,
        server_cpu_s: now_cpu - cpu,
    };
    let lost = leases.iter().filter(|l| l.is_lost()).count();
    if lost > 0 {
        eprintln!("   clients: {lost} of the Rust client's kept leases were lost (a stall)");
    }
    for lease in leases {
        let _ = lease.release();
    }
    cost
}
