//! Turns at the processors: one set of processors runs at a time, with one set of settings. Tests
//! that need the same settings share a turn (they run together); a test that needs other
//! settings (or none: the inventory tests, which run their own inventory) waits until every
//! holder of the current turn is done, then the set is stopped, the backlog skipped and the new
//! set started.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::processes::Component;

/// What runs now: the settings of the running set (None: no set), how many tests hold a turn,
/// and whether a switch is under way.
struct State {
    settings: Option<Vec<(String, String)>>,
    holders: usize,
    switching: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    settings: None,
    holders: 0,
    switching: false,
});
static CHANGED: Notify = Notify::const_new();

/// The processors of the current turn (for tests that kill or restart one).
pub static RUNNING: Mutex<Vec<Component>> = Mutex::new(Vec::new());

/// A held turn: while it lives, the processors keep the settings it was taken with.
#[must_use = "the turn ends when this is dropped"]
pub struct Turn(());

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        state.holders -= 1;
        drop(state);
        CHANGED.notify_waiters();
    }
}

/// Takes a turn with the processors running with `settings` (`start`: whether any run at all),
/// switching the set once nobody holds the current one.
pub async fn take(settings: &[(&str, &str)], start: bool) -> Turn {
    let wanted: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let wanted = start.then_some(wanted);
    loop {
        let notified = CHANGED.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match decide(&wanted) {
            Decision::Join => return Turn(()),
            Decision::Switch => {
                let unfinished = Unfinished;
                switch(&wanted).await;
                std::mem::forget(unfinished);
                let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
                state.settings = wanted;
                state.switching = false;
                drop(state);
                CHANGED.notify_waiters();
                return Turn(());
            }
            Decision::Wait => notified.await,
        }
    }
}

/// A switch under way: dropped before it finished (its test panicked, say a processor did not
/// stop in time), it kills what the switch had started and leaves no set and no holder, so the
/// next test switches afresh. Without it, every later test would wait for the switch for ever
/// and the suite would hang instead of failing.
struct Unfinished;

impl Drop for Unfinished {
    fn drop(&mut self) {
        // Dropping a component kills it.
        drop(std::mem::take(
            &mut *RUNNING.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        state.settings = None;
        state.holders = 0;
        state.switching = false;
        drop(state);
        CHANGED.notify_waiters();
    }
}

/// What a test asking for a turn does now.
enum Decision {
    /// The set runs with the wanted settings: share it.
    Join,
    /// Nobody holds the set: this test switches it (marked as switching and held).
    Switch,
    /// Others hold a set with other settings, or a switch is under way: wait.
    Wait,
}

fn decide(wanted: &Option<Vec<(String, String)>>) -> Decision {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if state.switching {
        return Decision::Wait;
    }
    let same = state.settings == *wanted;
    let running = wanted.is_none() || !RUNNING.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
    if same && (state.holders > 0 || running) {
        state.holders += 1;
        return Decision::Join;
    }
    if state.holders > 0 {
        return Decision::Wait;
    }
    state.switching = true;
    state.holders = 1;
    Decision::Switch
}

/// Stops the running set and, with `settings`, starts a new one after skipping the backlog.
async fn switch(settings: &Option<Vec<(String, String)>>) {
    let stopping: Vec<Component> =
        std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|p| p.into_inner()));
    for component in stopping {
        let name = component.name.clone();
        let status = component.terminate(std::time::Duration::from_secs(30));
        assert!(status.success(), "{name} exited with {status:?}");
    }
    let Some(settings) = settings else { return };
    super::processes::reap_leftovers();
    let config = super::setup().await;
    let env: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Each processor's backlog is skipped where it keeps its offsets: its own database, when the
    // settings give it one (`KASSA_<PROCESSOR>_DATABASE_URL`).
    let main = kassa::migrate::connect(&config).await.expect("database");
    for group in kassa_processors::ConsumerGroup::ALL {
        let own = group.database_url_variable();
        let pool = match env.iter().find(|(key, _)| *key == own) {
            Some((_, url)) => sqlx::PgPool::connect(url).await.expect("its database"),
            None => main.clone(),
        };
        super::saga::skip_backlog(&config, &pool, group).await;
    }
    let mut running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    for group in kassa_processors::ConsumerGroup::ALL {
        running.push(Component::start(group.name(), &env));
    }
}
