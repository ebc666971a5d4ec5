//! What the gateway tests share: where the workspace's fixtures are, starting
//! a gateway binary and reading the address it says it listens on, a steady
//! load, and whether a process is still alive.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::kill;
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

/// Spawns `command`, a gateway, and returns it with the `http://` address from
/// the first line it prints; its stdout is drained from then on, so that it
/// never blocks on it.
pub fn spawn_gateway(command: &mut Command) -> (Child, String) {
    let (child, mut lines) = spawn_piped(command);
    let first = lines
        .next()
        .expect("the gateway prints its address")
        .expect("a line of text");
    let base = address(&first).unwrap_or_else(|| panic!("no address in {first:?}"));
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

/// [`spawn_gateway`] for a gateway that logs (at `warn`) before it listens:
/// also returns the lines it printed before the one with its address.
pub fn spawn_gateway_logging(command: &mut Command) -> (Child, String, Vec<String>) {
    let (child, mut lines) = spawn_piped(command);
    let mut logged = Vec::new();
    let base = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the gateway exited without an address: {logged:?}"))
            .expect("a line of text");
        match address(&line) {
            Some(base) => break base,
            None => logged.push(line),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base, logged)
}

fn spawn_piped(command: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the gateway starts");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

/// The `http://` address in `line`, if it is the one where the gateway says
/// it listens.
fn address(line: &str) -> Option<String> {
    if !line.contains(": listening on ") {
        return None;
    }
    let word = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"));
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
    /// `http://HOST:PORT`, as the gateway printed it.
    pub base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`spawn_gateway`], as a [`Gateway`] that is killed when dropped.
pub fn start_gateway(command: &mut Command) -> Gateway {
    let (child, base) = spawn_gateway(command);
    Gateway { child, base }
}
