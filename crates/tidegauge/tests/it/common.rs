//! Helpers for tests that run the real binary on real files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidegauge_api::client::{AdminClient, Reply};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The shared material beside the checkout (W1 kit, SKAB data).
pub fn shared() -> PathBuf {
    root().join("../shared")
}

/// A command running the tidegauge binary.
pub fn tidegauge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tidegauge"));
    c.env_remove("TIDEGAUGE_LOG");
    c
}

/// Runs `tidegauge args...` to completion.
pub fn run(args: &[&str]) -> Output {
    tidegauge()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tidegauge")
}

/// Runs a pipeline given as text, with extra environment variables.
pub fn run_pipeline(dir: &Path, text: &str, env: &[(&str, &str)]) -> Output {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    let mut c = tidegauge();
    c.arg("run").arg(&path).stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run tidegauge")
}

/// Writes a pipeline given as text to `dir/p.toml` and starts `tidegauge run --quiet` on
/// it with stdin, stdout and stderr piped: the test feeds the input and reads the output.
pub fn spawn_piped(dir: &Path, text: &str) -> Child {
    let path = dir.join("p.toml");
    std::fs::write(&path, text).unwrap();
    tidegauge()
        .arg("run")
        .arg("--quiet")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Generates W1 events with the shared generator.
pub fn w1_events(n: usize, seed: u64, out: &Path) {
    let status = Command::new("python3")
        .arg(shared().join("bench/w1_gen.py"))
        .arg(n.to_string())
        .arg(out)
        .arg(seed.to_string())
        .status()
        .expect("python3 runs the W1 generator");
    assert!(status.success());
}

/// The W1 oracle's anomalies for `input`, as (sensor_id, ts) pairs.
pub fn w1_oracle(input: &Path) -> std::collections::BTreeSet<(String, i64)> {
    let out = Command::new("python3")
        .arg(shared().join("bench/w1_reference.py"))
        .arg(input)
        .output()
        .expect("python3 runs the W1 oracle");
    assert!(out.status.success());
    keys(&String::from_utf8(out.stdout).unwrap())
}

/// (sensor_id, ts) of every JSON line.
pub fn keys(jsonl: &str) -> std::collections::BTreeSet<(String, i64)> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON line");
            (
                v["sensor_id"].as_str().unwrap().to_string(),
                v["ts"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The admin token the tests' pipelines use.
pub const TOKEN: &str = "t0k3n-for-tests-0123";

/// A running `tidegauge run` with its admin API, its stderr collected.
pub struct Running {
    pub child: Child,
    pub address: String,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub runtime: tokio::runtime::Runtime,
}

impl Running {
    /// Starts `tidegauge run <args>` with the admin token and `env`, and waits until the
    /// admin API listens (the pipeline, or `TIDEGAUGE_ADMIN` in `env`, must enable it).
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Running {
        Running::start_in(None, args, env)
    }

    /// Starts `tidegauge run <args>` in working directory `dir` (the process's own when
    /// `None`) with the admin token and `env`, collecting its stderr; waits for nothing.
    pub fn launch<S: AsRef<std::ffi::OsStr>>(
        dir: Option<&Path>,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Running {
        let mut c = tidegauge();
        if let Some(dir) = dir {
            c.current_dir(dir);
        }
        c.arg("run")
            .args(args)
            .env("TIDEGAUGE_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("start tidegauge");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = collected.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Running {
            child,
            address: String::new(),
            stderr,
            reader: Some(reader),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// [`Running::launch`], then waits until the admin API listens and keeps its address.
    pub fn start_in<S: AsRef<std::ffi::OsStr>>(
        dir: Option<&Path>,
        args: &[S],
        env: &[(&str, &str)],
    ) -> Running {
        let mut running = Running::launch(dir, args, env);
        let marker = "admin API on http://";
        let line = running.wait_stderr(|s| s.contains(marker));
        let start = line.find(marker).unwrap() + marker.len();
        running.address = line[start..].split_whitespace().next().unwrap().to_string();
        running
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr satisfies `what`; returns it.
    pub fn wait_stderr(&self, what: impl Fn(&str) -> bool) -> String {
        let mut text = String::new();
        wait_until("stderr", || {
            text = self.stderr();
            what(&text)
        });
        text
    }

    /// A client of the admin API, without a token.
    pub fn client(&self) -> AdminClient {
        AdminClient::new(self.address.clone())
    }

    /// A request with `token` (none: anonymous).
    pub fn request(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Reply {
        let client = self.client().with_token(token.map(String::from));
        self.send(client, method, path, body)
    }

    /// A request by `client`.
    pub fn send(&self, client: AdminClient, method: &str, path: &str, body: Option<&str>) -> Reply {
        self.runtime
            .block_on(client.request(method, path, body.map(|b| b.as_bytes().to_vec())))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A GET with the token, which must succeed.
    pub fn get(&self, path: &str) -> Value {
        let reply = self.request(Some(TOKEN), "GET", path, None);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
        reply.json().unwrap()
    }

    /// Parameter `name` of component `id`, as `/components/{id}/params` lists it.
    pub fn param(&self, id: &str, name: &str) -> Value {
        let params = self.get(&format!("/components/{id}/params"));
        params["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{id} has no parameter {name}: {params}"))
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        self.request(None, "GET", "/metrics", None).text()
    }

    /// The value of one sample of the exposition (`name{labels}`); 0 while it is not
    /// exposed yet (a component's counters appear once it has reported them).
    pub fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    /// Sends signal `sig` to the process.
    pub fn signal(&self, sig: i32) {
        signal(&self.child, sig);
    }

    /// Ctrl-C, then waits for the exit; returns the exit code and all of stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.signal(libc::SIGINT);
        let status = self.child.wait().unwrap();
        // The pipe closes with the process: the reader has then read every line.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status.code(), self.stderr())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `sig` to a child process.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child process we started and still own; kill(2) has no
    // memory-safety preconditions.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0);
}

/// Polls `ok` until it holds; fails after a minute, naming `what`.
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A terminal program running in a detached tmux session of its own (own socket), as a
/// user sees it on a 150x40 terminal. The session is killed when this is dropped.
pub struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new session whose socket lives in `dir`.
    pub fn start(dir: &Path, command: &str) -> Tmux {
        assert!(
            Command::new("tmux").arg("-V").output().is_ok(),
            "tmux is needed (scripts/test installs it)"
        );
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
            session: format!("tg-{}", std::process::id()),
        };
        let started = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            "150",
            "-y",
            "40",
            command,
        ]);
        assert!(started.status.success(), "{}", stderr(&started));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// The screen now.
    pub fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-t", &self.session]))
    }

    /// Polls the screen until `ok` holds for it; fails after a minute, showing the screen.
    pub fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} on screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types `keys`.
    pub fn send_keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", &self.session, keys]);
    }

    /// Waits until the program has ended (and with it the session).
    pub fn wait_closed(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .run(&["has-session", "-t", &self.session])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
