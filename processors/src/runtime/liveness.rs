//! Whether this process's loops make progress and its consumers hold their assignment: what a
//! component's `/health` and `/ready` answer.
//!
//! Each loop (a consume loop, an outbox relay, the payments worker, the expiry ticker) says when
//! it starts a step ([`Loop::busy`]) and when it waits for work ([`Loop::idle`]). A loop that has
//! been in one step longer than the stall limit is stuck: a query or a call that never returns.
//! Waiting for work is never a stall, and a loop retrying with backoff starts a step each time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One loop of this process.
#[derive(Debug)]
pub struct Loop {
    name: String,
    /// When its current step began, in Unix milliseconds (0: waiting for work).
    busy_since: AtomicU64,
}

/// The loops of this process, and whether each consumer group holds its assignment.
static LOOPS: Mutex<Vec<Arc<Loop>>> = Mutex::new(Vec::new());
static ASSIGNED: Mutex<BTreeMap<&'static str, bool>> = Mutex::new(BTreeMap::new());

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Registers a loop named `name` (e.g. `inventory consumer`), waiting for work.
pub fn register(name: impl Into<String>) -> Arc<Loop> {
    let registered = Arc::new(Loop {
        name: name.into(),
        busy_since: AtomicU64::new(0),
    });
    LOOPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(registered.clone());
    registered
}

impl Loop {
    /// The loop starts a step now.
    pub fn busy(&self) {
        self.busy_since.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// The loop waits for work.
    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }
}

/// The loops that have been in one step for longer than `limit`, each with how long.
pub fn stalled(limit: Duration) -> Vec<(String, Duration)> {
    let now = now_ms();
    LOOPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|l| {
            let since = l.busy_since.load(Ordering::Relaxed);
            let busy = Duration::from_millis(now.saturating_sub(since));
            (since != 0 && busy > limit).then(|| (l.name.clone(), busy))
        })
        .collect()
}

/// The names of the loops of this process.
pub fn loops() -> Vec<String> {
    LOOPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|l| l.name.clone())
        .collect()
}

/// Records whether consumer group `group` holds its assignment (it joined and got one).
pub fn set_assigned(group: &'static str, assigned: bool) {
    ASSIGNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(group, assigned);
}

/// Whether `group`'s consumer in this process holds its assignment (false until it joined).
pub fn assigned(group: &str) -> bool {
    ASSIGNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(group)
        .copied()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stalled_only_while_one_step_outlasts_the_limit() {
        let name = format!("test loop {}", uuid::Uuid::new_v4());
        let l = register(&name);
        let stalled_now = || {
            stalled(Duration::from_millis(30))
                .iter()
                .any(|(n, _)| *n == name)
        };
        assert!(!stalled_now(), "waiting for work is no stall");
        l.busy();
        assert!(!stalled_now(), "a step just begun");
        std::thread::sleep(Duration::from_millis(60)); // a step that takes longer than the limit
        assert!(stalled_now(), "a step longer than the limit");
        l.busy();
        assert!(!stalled_now(), "a new step (a retry) is progress");
        std::thread::sleep(Duration::from_millis(60)); // waiting for work, however long
        l.idle();
        assert!(!stalled_now());
    }
}
