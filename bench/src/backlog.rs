//! Before a saga bench: the environment's processors caught up on what was left for them (a
//! `kassa bench inventory` leaves its answers on `inventory.events`, which become orders and
//! payments; a `kassa bench api` its orders on `checkout.requests`), so that the runs measure
//! their own orders only. The bench runs the processors until the backlog is gone (every
//! processor's unprocessed inputs and unpublished outbox, and the payments worker's due work),
//! printing it as it shrinks, instead of asking for a clean environment.

use std::time::{Duration, Instant};

use kassa_ops::databases::Databases;
use kassa_ops::lag::{GroupLag, Markers};
use kassa_ops::settings::Settings;
use kassa_processors::ConsumerGroup;

use super::processes::Processing;

/// Records (inputs not yet processed, or outbox rows not yet published) a processor may be behind
/// by when a run starts without catching up first: a quiet environment is a few short at most.
const BACKLOG_LIMIT: i64 = 10_000;
/// Caught up: every processor within this many records (a batch in flight).
const CAUGHT_UP: i64 = 100;
/// Within `BACKLOG_LIMIT` with nothing processed for this long also counts as caught up: what
/// is left is not work the processors do.
const SETTLED: Duration = Duration::from_secs(10);
/// Catching up gives up when nothing was processed for this long (a total that stays put says
/// nothing: an authorization done makes a capture due).
const STALLED: Duration = Duration::from_secs(60);
/// How often the backlog is measured (and printed) while the processors work it off.
const EVERY: Duration = Duration::from_secs(2);

/// Runs the processors (one process each if `separate`) until the environment's backlog is
/// worked off; returns at once when there is none. Fails if it stops shrinking while still over
/// `BACKLOG_LIMIT` (then the processors cannot process it, and the runs would measure that).
pub(crate) async fn catch_up(settings: &Settings, separate: bool) -> anyhow::Result<()> {
    let databases = Databases::connect(settings).await?;
    let lag = measure(settings, &databases).await?;
    if worst(&lag) <= BACKLOG_LIMIT && lag.payments_due <= CAUGHT_UP {
        return Ok(());
    }
    println!(
        "the environment's processors are behind ({}): running them until they catch up, so the \
         runs measure their own orders only …",
        describe(&lag)
    );
    let started = Instant::now();
    let processors = Processing::start(settings, separate).await?;
    let worked_off = work_off(settings, &databases).await;
    processors.stop().await?;
    let left = worked_off?;
    println!(
        "caught up in {:.0} s ({left} records left)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Measures the backlog every `EVERY` until it is caught up or settled; returns what is left.
async fn work_off(settings: &Settings, databases: &Databases) -> anyhow::Result<i64> {
    let started = Instant::now();
    let (mut done, mut moved) = (None, Instant::now());
    loop {
        tokio::time::sleep(EVERY).await;
        let lag = measure(settings, databases).await?;
        let left = total(&lag);
        println!(
            "  {:>4.0} s: {left} records behind ({})",
            started.elapsed().as_secs_f64(),
            describe(&lag)
        );
        if done != Some(lag.done) {
            (done, moved) = (Some(lag.done), Instant::now());
        }
        let worst = worst(&lag);
        if worst <= CAUGHT_UP || (worst <= BACKLOG_LIMIT && moved.elapsed() >= SETTLED) {
            return Ok(left);
        }
        anyhow::ensure!(
            moved.elapsed() < STALLED,
            "the environment's processors stopped catching up ({}, nothing processed for \
             {STALLED:?}): the runs would measure that backlog; see `kassa lag` and `kassa dlq`, \
             or start from a clean environment (`scripts/dev reset`)",
            describe(&lag)
        );
    }
}

/// What the processors have left to do.
struct Backlog {
    /// Each processor's inputs and outbox.
    groups: Vec<GroupLag>,
    /// Payments whose provider calls are due (the payments worker's queue, which is not on Kafka).
    payments_due: i64,
    /// How much has been done: the processors' stored offsets added up, and the payments
    /// worker's last attempt (either moves while anything is processed).
    done: (i64, i64),
}

/// Measures the backlog (partitions far behind are counted as they stand, without reading
/// them).
async fn measure(settings: &Settings, databases: &Databases) -> anyhow::Result<Backlog> {
    let groups =
        kassa_ops::lag::measure_with(settings, databases, &ConsumerGroup::ALL, Markers::Near(2))
            .await?;
    let (payments_due, attempt) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payments.payments WHERE work IS NOT NULL AND due_at <= now()),
                (SELECT coalesce(max(id), 0) FROM payments.attempts)",
    )
    .fetch_one(databases.of(ConsumerGroup::Payments))
    .await?;
    let offsets = groups
        .iter()
        .flat_map(|g| &g.partitions)
        .filter_map(|p| p.stored)
        .sum();
    Ok(Backlog {
        groups,
        payments_due,
        done: (offsets, attempt),
    })
}

/// A processor's backlog: its inputs not processed and its outbox not published.
fn behind(group: &GroupLag) -> i64 {
    group.total_lag + group.outbox_unsent
}

/// The largest backlog of any processor, the payments worker's included.
fn worst(lag: &Backlog) -> i64 {
    lag.groups
        .iter()
        .map(behind)
        .chain([lag.payments_due])
        .max()
        .unwrap_or(0)
}

/// Everything left together.
fn total(lag: &Backlog) -> i64 {
    lag.groups.iter().map(behind).sum::<i64>() + lag.payments_due
}

/// The processors that are behind, and by how much.
fn describe(lag: &Backlog) -> String {
    let mut parts: Vec<String> = lag
        .groups
        .iter()
        .filter(|g| behind(g) > 0)
        .map(|g| format!("{} {}", g.group, behind(g)))
        .collect();
    if lag.payments_due > 0 {
        parts.push(format!("payment calls due {}", lag.payments_due));
    }
    if parts.is_empty() {
        "none behind".into()
    } else {
        parts.join(", ")
    }
}
