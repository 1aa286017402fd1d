//! Where a bench runs the processors ([`Processing`]): in its own process, or as separate
//! processes, as deployed: one `kassa run <processor>` each, started by the bench from its own
//! executable with its settings, ready before the load starts and stopped (stdin closed, then
//! killed if it lingers) when the bench is done. They run with the bench's environment
//! (`scripts/dev env`), so with the same settings.

use std::process::Stdio;
use std::time::{Duration, Instant};

use kassa_ops::settings::Settings;
use kassa_ops::supervisor::Component;
use kassa_processors::ConsumerGroup;
use tokio::process::{Child, ChildStdin, Command};

/// How long a processor may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(90);
/// How long a processor may take to stop once asked.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Why the processors could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bench's own executable could not be found or started.
    #[error("starting `kassa run {0}`: {1}")]
    Spawn(&'static str, std::io::Error),
    /// A processor exited or did not answer `/ready` in time.
    #[error("`kassa run {0}` was not ready within {READY_WITHIN:?} (its log: {1})")]
    NotReady(&'static str, String),
}

/// One running processor.
struct Running {
    name: &'static str,
    child: Child,
    /// Held open: the processor runs with `KASSA_STOP_ON_STDIN_EOF`, so it stops when this closes
    /// (also when the bench dies).
    stdin: Option<ChildStdin>,
}

/// The processors, one process each.
pub struct Processors {
    running: Vec<Running>,
}

/// A free loopback port (bound, then let go).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Processors {
    /// Starts `kassa run <group>` for every consumer group, its output in `logs/<group>.log`,
    /// and waits until each answers `/ready` (its consumers hold their assignment).
    pub async fn start(logs: &std::path::Path) -> Result<Self, StartError> {
        let exe = std::env::current_exe().map_err(|e| StartError::Spawn("all", e))?;
        let http = reqwest::Client::new();
        let mut running = Vec::new();
        let mut ops = Vec::new();
        for group in ConsumerGroup::ALL {
            let name = group.name();
            let spawn = |e| StartError::Spawn(name, e);
            let port = free_port().map_err(spawn)?;
            let log_path = logs.join(format!("{name}.log"));
            let log = std::fs::File::create(&log_path).map_err(spawn)?;
            let mut child = Command::new(&exe)
                .args(["run", name])
                .env("KASSA_STOP_ON_STDIN_EOF", "true")
                .env("KASSA_OPS_ADDR", format!("127.0.0.1:{port}"))
                .stdin(Stdio::piped())
                .stdout(log.try_clone().map_err(spawn)?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .map_err(spawn)?;
            let stdin = child.stdin.take();
            running.push(Running { name, child, stdin });
            ops.push((name, port, log_path));
        }
        let started = Instant::now();
        for (name, port, log) in ops {
            loop {
                let ready = http
                    .get(format!("http://127.0.0.1:{port}/ready"))
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if started.elapsed() > READY_WITHIN {
                    return Err(StartError::NotReady(name, log.display().to_string()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await; // poll /ready until the deadline
            }
        }
        Ok(Self { running })
    }

    /// Stops every processor: closes its stdin (a graceful stop), waits, then kills any that
    /// linger.
    pub async fn stop(mut self) {
        for r in &mut self.running {
            r.stdin = None;
        }
        for r in &mut self.running {
            if tokio::time::timeout(STOP_WITHIN, r.child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    processor = r.name,
                    "did not stop within {STOP_WITHIN:?}: killed"
                );
                let _ = r.child.kill().await;
            }
        }
    }
}

/// Where the processors run during a bench: in the bench's process or one process each.
pub(crate) enum Processing {
    /// In this process.
    Here(kassa_ops::supervisor::Running),
    /// One process each.
    Apart(Processors),
}

impl Processing {
    /// Starts every processor, one process each if `separate`, else in this process.
    pub(crate) async fn start(settings: &Settings, separate: bool) -> anyhow::Result<Self> {
        if separate {
            let logs = std::env::temp_dir().join("kassa-bench-saga");
            std::fs::create_dir_all(&logs)?;
            println!("processors' logs: {}/<processor>.log", logs.display());
            return Ok(Self::Apart(Processors::start(&logs).await?));
        }
        let processors: Vec<Component> = ConsumerGroup::ALL
            .into_iter()
            .map(Component::Processor)
            .collect();
        Ok(Self::Here(super::start_here(settings, &processors)?))
    }

    /// Stops them and waits until they have.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Here(running) => {
                running.stop();
                running.wait().await?;
            }
            Self::Apart(processes) => processes.stop().await,
        }
        Ok(())
    }
}
