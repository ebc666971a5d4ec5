//! What the gateway tests share: where the workspace's fixtures are, starting
//! a gateway binary and reading the address it says it listens on, a steady
//! load, and whether a process is still alive.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The HTTP gateway's binary, which cargo builds for these tests.
pub const HTTP_GATEWAY: &str = env!("CARGO_BIN_EXE_http_gateway");

/// The Nuclio front end's binary.
pub const NUCLIO_GATEWAY: &str = env!("CARGO_BIN_EXE_nuclio_gateway");

/// `path` in the workspace (the library's crate, whose examples and test
/// fixtures the gateway tests share).
pub fn workspace(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `path` in this crate (gateway/).
pub fn crate_dir(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Whether process `pid` still runs (a zombie does not).
pub fn is_alive(pid: u32) -> bool {
    match kill(Pid::from_raw(pid as i32), None) {
        Err(Errno::ESRCH) => false,
        _ => !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }),
    }
}

/// The worker processes of gateway `pid`, from the kernel's list of its
/// children, in ascending order.
pub fn children(pid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        pids.extend(text.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
    }
    pids.sort_unstable();
    pids
}

/// Stops a gateway with SIGTERM, so that it stops its workers (a gateway
/// killed outright leaves a worker that ignores its lifeline running), and
/// kills it if it has not exited within 10 s.
pub fn terminate(child: &mut Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns `command`, a gateway, and returns it with the `http://` address (or
/// `unix:` path) from the line where it says it listens, and everything else it
/// prints (its log, `RUST_LOG=warn` unless `command` says otherwise: the lines
/// before the address at once, the later ones as they come), so that it never
/// blocks on its stdout.
pub fn spawn_gateway(command: &mut Command) -> (Child, String, Arc<Mutex<String>>) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the gateway starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let log = Arc::new(Mutex::new(String::new()));
    let keep = |log: &Mutex<String>, line: &str| {
        let mut log = log.lock().unwrap();
        log.push_str(line);
        log.push('\n');
    };
    let base = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the gateway exited without an address: {log:?}"))
            .expect("a line of text");
        match address(&line) {
            Some(base) => break base,
            None => keep(&log, &line),
        }
    };
    std::thread::spawn({
        let log = log.clone();
        move || {
            for line in lines.map_while(Result::ok) {
                keep(&log, &line);
            }
        }
    });
    (child, base, log)
}

/// The `http://` address or `unix:` path in `line`, if it is the one where
/// the gateway says it listens.
fn address(line: &str) -> Option<String> {
    if !line.contains(": listening on ") {
        return None;
    }
    let word = line
        .split_whitespace()
        .find(|word| word.starts_with("http://") || word.starts_with("unix:"));
    Some(word?.to_string())
}

/// Posts `body` (the sleepy handlers read it as seconds to sleep) every
/// 10 ms, 100 requests a second, until `stop` is set; returns how many it
/// sent and what went wrong with any that did not get a 200.
pub async fn steady_load(
    base: String,
    body: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Vec<String>) {
    use std::sync::atomic::Ordering::SeqCst;
    let client = reqwest::Client::new();
    let mut every = tokio::time::interval(std::time::Duration::from_millis(10));
    let mut requests = Vec::new();
    while !stop.load(SeqCst) {
        every.tick().await;
        let (client, url) = (client.clone(), format!("{base}/"));
        requests.push(tokio::spawn(async move {
            match client.post(url).body(body).send().await {
                Ok(response) if response.status() == 200 => None,
                Ok(response) => Some(format!(
                    "{}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )),
                Err(error) => Some(error.to_string()),
            }
        }));
    }
    let sent = requests.len();
    let mut failures = Vec::new();
    for request in requests {
        failures.extend(request.await.unwrap());
    }
    (sent, failures)
}

/// A running gateway, killed if the test ends (or fails) before stopping it.
pub struct Gateway {
    pub child: Child,
    /// `http://HOST:PORT` (or `unix:PATH`), as the gateway printed it.
    pub base: String,
    /// What it printed after its address: its log.
    pub log: Arc<Mutex<String>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`spawn_gateway`], as a [`Gateway`] that is killed when dropped.
pub fn start_gateway(command: &mut Command) -> Gateway {
    let (child, base, log) = spawn_gateway(command);
    Gateway { child, base, log }
}

/// The Python of the test virtualenv (`scripts/uvloop_venv.sh`, which it runs
/// once per test binary), or the one `ASGI_TEST_PYTHON` names, checked to
/// import `modules`. Panics saying what is missing, so that no test passes
/// without having run.
pub fn test_python(modules: &[&str]) -> PathBuf {
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let python = match std::env::var_os("ASGI_TEST_PYTHON") {
            Some(python) => PathBuf::from(python),
            None => {
                let output = Command::new("sh")
                    .arg(workspace("scripts/uvloop_venv.sh"))
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|error| format!("cannot run scripts/uvloop_venv.sh: {error}"))?;
                if !output.status.success() {
                    return Err("scripts/uvloop_venv.sh could not make the test virtualenv \
                                (see its message above), and ASGI_TEST_PYTHON is not set"
                        .to_owned());
                }
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
        };
        let output = Command::new(&python)
            .arg("-c")
            .arg(format!("import {}", modules.join(", ")))
            .output()
            .map_err(|error| format!("{python:?} cannot be run: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "{python:?} cannot import {}: {}",
                modules.join(", "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(python)
    });
    match found {
        Ok(python) => python.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The value of the Prometheus sample `name` (with its labels, as written)
/// in `metrics`, the text `/metrics` serves.
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}
