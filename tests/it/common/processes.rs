//! kassa components as real child processes (`kassa run <component>`), so tests can SIGKILL or
//! SIGTERM them. Each holds the child's stdin and runs it with `KASSA_STOP_ON_STDIN_EOF`, so a
//! component left behind by a finished test binary stops by itself; its pid is also written to a
//! list the next binary reaps before starting its own.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// A running `kassa run <component>`; SIGKILLed when dropped.
pub struct Component {
    /// `inventory`, `orders`, `payments`, `expiry`, `all`, `api`.
    pub name: String,
    env: Vec<(String, String)>,
    /// Where it serves `/metrics`, `/health` and `/ready`: `http://127.0.0.1:<port>`.
    pub ops: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

fn pid_list() -> std::path::PathBuf {
    std::env::temp_dir().join("kassa-test-components.pids")
}

/// Stops components a previous test binary left behind (SIGTERM, then SIGKILL after 20 s).
pub fn reap_leftovers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(list) = std::fs::read_to_string(pid_list()) else {
            return;
        };
        let alive = |pid: &str| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("kassa"))
        };
        let pids: Vec<&str> = list.lines().filter(|p| alive(p)).collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
        let started = Instant::now();
        while pids.iter().any(|p| alive(p)) {
            if started.elapsed() > Duration::from_secs(20) {
                for pid in &pids {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100)); // poll until they are gone or the deadline
        }
        let _ = std::fs::remove_file(pid_list());
    });
}

impl Component {
    /// Starts `kassa run <name>` with the test settings plus `env`.
    pub fn start(name: &str, env: &[(&str, &str)]) -> Self {
        reap_leftovers();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::spawn(name, env)
    }

    /// Starts `kassa run api` on a free loopback port with `env` added; returns it and its base
    /// URL (`http://127.0.0.1:<port>`).
    pub fn start_api(env: &[(&str, &str)]) -> (Self, String) {
        let addr = format!("127.0.0.1:{}", super::http::free_port());
        let mut env = env.to_vec();
        env.push(("KASSA_HTTP_ADDR", addr.as_str()));
        (Self::start("api", &env), format!("http://{addr}"))
    }

    fn spawn(name: &str, mut env: Vec<(String, String)>) -> Self {
        // A port of its own for its operations endpoints, kept across restarts.
        if !env.iter().any(|(k, _)| k == "KASSA_OPS_ADDR") {
            let port = super::http::free_port();
            env.push(("KASSA_OPS_ADDR".into(), format!("127.0.0.1:{port}")));
        }
        let ops = env
            .iter()
            .find(|(k, _)| k == "KASSA_OPS_ADDR")
            .map(|(_, v)| format!("http://{v}"))
            .unwrap_or_default();
        let log = std::env::var("KASSA_TEST_PROCESSOR_LOG").map(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("log file")
        });
        let mut command = Command::new(env!("CARGO_BIN_EXE_kassa"));
        command
            .args(["run", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .env("KASSA_STOP_ON_STDIN_EOF", "1");
        for (key, value) in &env {
            command.env(key, value);
        }
        match log {
            Ok(file) => command.stderr(file),
            Err(_) => command.stderr(Stdio::null()),
        };
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start kassa run {name}: {e}"));
        if let Ok(mut list) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pid_list())
        {
            let _ = writeln!(list, "{}", child.id());
        }
        let stdin = child.stdin.take();
        Self {
            name: name.to_owned(),
            env,
            ops,
            child,
            stdin,
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, then the same component started again with the same settings.
    pub fn restart_after_kill(&mut self) {
        self.kill();
        let fresh = Self::spawn(&self.name, self.env.clone());
        *self = fresh;
    }

    /// SIGTERM, then waits for the exit status (within `deadline`).
    pub fn terminate(mut self, deadline: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "{} did not exit within {deadline:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50)); // poll the exit status until the deadline
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stdin.take();
        self.kill();
    }
}
