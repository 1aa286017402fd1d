//! The operator's commands, run as an operator runs them (the `kassa` binary, in the suite's own
//! world), against the real services: `kassa lag` sees a stopped processor fall behind, says so
//! in its exit code, and sees it catch up; `kassa offsets reset --to-time` replays from a time
//! and the inboxes keep every effect once; `kassa reconcile` passes on square books and names each
//! discrepancy injected on purpose; `kassa order` tells a completed, a rejected, a cancelled and
//! a stuck order's story with the right diagnosis; `kassa tail` finds an order's records across
//! topics and shows an undecodable record (and its dead letter) with its raw bytes; `kassa dlq`
//! lists dead letters, redrives one once its cause is fixed (once at most, past the inbox) and
//! discards one, on the record.

mod admin_http;
mod dlq;
mod lag;
mod reconcile;
mod story;

use crate::common;

use std::time::Duration;

use common::saga::{Saga, start_processor, start_processors, stock, stop_processor, wait_for};
use serde_json::Value;

/// The processors' settings for these tests (a set of their own: they stop some of them).
const ENV: &[(&str, &str)] = &[
    ("KASSA_INSTANCE_ID", "ops-tests"),
    // A 3-D Secure challenge nobody completes cancels the order after 5 s.
    ("KASSA_PAYMENT_ACTION_SECONDS", "5"),
];

/// The tests stop and restart the shared processors: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `kassa` with `args`: its exit code, what it printed and what it logged.
async fn kassa(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
        .args(args)
        .output()
        .await
        .expect("run kassa");
    (
        out.status.code().expect("an exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `kassa lag --json` with `args`: its exit code and what it printed.
async fn lag(args: &[&str]) -> (i32, Value) {
    let (code, out, err) = kassa(&[&["lag", "--json"], args].concat()).await;
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kassa lag printed no JSON ({e}), exit {code}: {err}"));
    (code, report)
}

/// Runs `kassa tail --json` with `args`: the records it printed.
async fn tail(args: &[&str]) -> Vec<Value> {
    let (code, out, err) = kassa(&[&["tail", "--json"], args].concat()).await;
    assert_eq!(code, 0, "kassa tail {args:?}: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
