//! The expiry ticker: once a second, fires the deadlines that are due onto `expiry.events`
//! through the expiry outbox, in the same transaction that marks them fired. Rows are taken
//! `FOR UPDATE SKIP LOCKED`, so several instances share the work and never fire one twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kassa_schemas::events::expiry::{DeadlinePassed, ExpiryEvent};
use kassa_schemas::{Codec, Envelope, Topic};
use crate::ConsumerGroup;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::runtime::TaskError;
use crate::runtime::backoff::Backoff;
use crate::runtime::outbox::{self, Caused};

/// How often due deadlines are looked for.
pub const TICK: Duration = Duration::from_secs(1);
/// Most deadlines fired in one transaction.
const ROUND: i64 = 1_000;

/// Fires due deadlines every [`TICK`] until `shutdown` turns true.
pub async fn run(pool: PgPool, codec: Arc<Codec>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut ticks: u64 = 0;
    let progress = crate::runtime::liveness::register("expiry ticker");
    while !*shutdown.borrow() {
        progress.busy();
        let wait = match fire_due(&pool, &codec).await {
            Ok(fired) if fired as i64 == ROUND => Duration::ZERO,
            Ok(_) => {
                backoff.reset();
                TICK
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "firing deadlines failed; retrying");
                delay
            }
        };
        ticks += 1;
        if ticks % 10 == 1 {
            sample_pending(&pool).await;
        }
        // About hourly: fired and cancelled deadlines are kept a day, for the record.
        if ticks.is_multiple_of(3600) {
            let pruned = sqlx::query(
                "DELETE FROM expiry.deadlines WHERE state <> 'pending' AND updated_at < now() - interval '1 day'",
            )
            .execute(&pool)
            .await;
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "pruning deadlines failed");
            }
        }
        progress.idle();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Sets `kassa_deadlines_pending{kind}`: the deadlines waiting to fire, by kind.
async fn sample_pending(pool: &PgPool) {
    let counted: Result<Vec<(String, i64)>, _> = sqlx::query_as(
        "SELECT kind, count(*) FROM expiry.deadlines WHERE state = 'pending' GROUP BY kind",
    )
    .fetch_all(pool)
    .await;
    match counted {
        Ok(rows) => {
            for kind in super::KINDS.map(super::kind_name) {
                let n = rows.iter().find(|(k, _)| k == kind).map_or(0, |(_, n)| *n);
                metrics::gauge!("kassa_deadlines_pending", "kind" => kind).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "counting pending deadlines failed"),
    }
}

/// Fires up to [`ROUND`] due deadlines in one transaction; returns how many.
async fn fire_due(pool: &PgPool, codec: &Codec) -> Result<usize, TaskError> {
    let mut tx = pool.begin().await?;
    // A recurring deadline (progress) stays pending, due again after its interval, which doubles
    // up to an hour: an order stuck for long is asked again, ever less often.
    let due: Vec<(String, String, DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "WITH due AS (
             SELECT order_id, kind, due_at FROM expiry.deadlines
             WHERE state = 'pending' AND due_at <= now()
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE expiry.deadlines d
         SET state = CASE WHEN d.repeat_every IS NULL THEN 'fired' ELSE 'pending' END,
             due_at = CASE WHEN d.repeat_every IS NULL THEN d.due_at ELSE now() + d.repeat_every END,
             repeat_every = least(d.repeat_every * 2, interval '1 hour'),
             fired_at = now(), updated_at = now()
         FROM due WHERE d.order_id = due.order_id AND d.kind = due.kind
         RETURNING d.order_id, d.kind, due.due_at, d.traceparent",
    )
    .bind(ROUND)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let fired_at = Utc::now();
    let mut events = Vec::with_capacity(due.len());
    let mut spans = Vec::new();
    for (order_id, kind, due_at, traceparent) in &due {
        let Some(kind) = super::parse_kind(kind) else {
            tracing::error!(
                order = order_id,
                kind,
                "a deadline of an unknown kind: not fired"
            );
            continue;
        };
        let event = Envelope::new(
            order_id.as_str(),
            None,
            ExpiryEvent::from(DeadlinePassed {
                order_id: order_id.clone(),
                kind,
                due_at: *due_at,
                fired_at,
            }),
        );
        // Exported: a span for the firing, in the order's trace.
        let span = tracing::info_span!(
            "deadline passed",
            otel.name = %format!("expiry fires {kind:?}"),
            order_id = %order_id,
            trace_id = traceparent.as_deref().and_then(kassa_schemas::trace::trace_id),
        );
        kassa_schemas::trace::continue_trace(&span, traceparent.as_deref());
        events.push(Caused {
            topic: Topic::ExpiryEvents,
            key: order_id.clone(),
            payload: codec.encode(&event).await?,
            parent: traceparent.as_deref(),
            writer: kassa_schemas::trace::of_span(&span),
        });
        spans.push(span);
    }
    outbox::append(&mut tx, ConsumerGroup::Expiry, events).await?;
    tx.commit().await?;
    drop(spans);
    let late_ms = due
        .iter()
        .map(|(_, _, at, _)| (fired_at - *at).num_milliseconds())
        .max()
        .unwrap_or(0);
    tracing::debug!(fired = due.len(), late_ms, "deadlines fired");
    for (_, kind, due_at, _) in &due {
        let late = (fired_at - *due_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("kassa_deadline_lateness_seconds", "kind" => kind.clone()).record(late);
        metrics::counter!("kassa_deadlines_fired_total", "kind" => kind.clone()).increment(1);
    }
    Ok(due.len())
}
