//! The outbox relay: publishes a processor's outbox rows in order with an idempotent, acks=all
//! producer, then deletes them (the broker has them now; deleting costs Postgres less than the
//! update that marking them sent was). One relay per processor leads at a time (a Postgres advisory
//! lock held on its own connection); a standby takes over when the leader's connection dies.
//! It wakes on LISTEN/NOTIFY from the committing transaction, with a slow poll as a fallback.
//! A crash between publish and delete re-sends rows: consumers drop the copies by event id.

use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use kassa_schemas::trace::TRACEPARENT;

use super::backoff::Backoff;
use super::store::outbox_channel;

/// Rows published per round.
const ROUND: i64 = 5_000;
/// How long a quiet relay waits for a notification before looking anyway.
const POLL: Duration = Duration::from_secs(1);
/// Inbox entries are kept this long: longer than Kafka can deliver a record again after it was
/// written (retention plus one segment, `kassa_schemas::kafka`), plus a day, so a replay from the
/// beginning never meets an event id the inbox has forgotten.
pub const KEEP_INBOX: Duration =
    Duration::from_millis(kassa_schemas::kafka::LONGEST_REDELIVERY_MS + 24 * 3600 * 1000);

/// A failure of one relay round; every one is retried with backoff.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Kafka: {0}")]
    Broker(#[from] rdkafka::error::KafkaError),
}

/// Runs the relay for `schema` until `shutdown` turns true; then drains what is committed and
/// returns. Transient failures are retried with backoff, never given up on.
pub async fn run(
    pool: PgPool,
    schema: &'static str,
    producer: FutureProducer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let progress = super::liveness::register(format!("{schema} outbox relay"));
    loop {
        progress.busy();
        match lead(&pool, schema, &producer, &mut shutdown, &progress).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(schema, error = %e, ?delay, "outbox relay failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => if *shutdown.borrow() { return },
                }
            }
        }
    }
}

/// Becomes the leader (waiting as a standby while another relay leads), then publishes until
/// shutdown. Returns Err on a database or broker failure, to be retried.
async fn lead(
    pool: &PgPool,
    schema: &'static str,
    producer: &FutureProducer,
    shutdown: &mut watch::Receiver<bool>,
    progress: &super::liveness::Loop,
) -> Result<(), Failure> {
    // The lock lives as long as this connection: a dead leader's lock goes with its connection.
    // Detached from the pool, so that when this attempt ends (a failure included) the connection
    // closes and the lock goes with it; a pooled one would keep it held, and every retry after a
    // failure would wait as a standby behind its own lock.
    let mut lock_conn = pool.acquire().await?.detach();
    loop {
        let leader: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('kassa.outbox.' || $1))")
                .bind(schema)
                .fetch_one(&mut lock_conn)
                .await?;
        if leader {
            break;
        }
        progress.idle(); // a standby waits for the leader to go
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return Ok(()) },
        }
    }
    tracing::info!(schema, "outbox relay leading");
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(&outbox_channel(schema)).await?;
    let mut last_prune = Instant::now();
    let mut last_alive = Instant::now();
    loop {
        progress.busy();
        // Read before the round: once shutdown is asked, everything that is to be published is
        // committed (the loop's last batch, the writers' last records), so a round that starts
        // after it sees all of it.
        let stopping = *shutdown.borrow();
        let published = publish_round(pool, schema, producer).await?;
        if last_prune.elapsed() > Duration::from_secs(60) {
            // Rows marked sent by an older relay, which kept them a while.
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {schema}.outbox WHERE sent_at IS NOT NULL"
            )))
            .execute(pool)
            .await?;
            sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {schema}.inbox WHERE processed_at < now() - make_interval(secs => $1)"
            )))
            .bind(KEEP_INBOX.as_secs_f64())
            .execute(pool)
            .await?;
            last_prune = Instant::now();
        }
        // A full round may have left more; a partial one took all that was committed when it
        // looked, and whatever commits after that notifies: wait for it rather than look again
        // at once (one statement a round fewer, the look that finds nothing).
        if published as i64 == ROUND {
            continue;
        }
        if stopping {
            return Ok(()); // drained: nothing committed is left unpublished
        }
        progress.idle();
        tokio::select! {
            n = listener.recv() => { n?; }
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => {}
        }
        // Notifications already here are for rows the next round takes anyway: one round for
        // all of them, not one each.
        while let Ok(notification) = tokio::time::timeout(Duration::ZERO, listener.try_recv()).await
        {
            if notification?.is_none() {
                break; // the connection was lost; recv reconnects next time
            }
        }
        // Keep the lock connection alive (and notice if it died, which ends leadership); once a
        // poll interval is enough.
        if last_alive.elapsed() >= POLL {
            sqlx::query("SELECT 1").execute(&mut lock_conn).await?;
            last_alive = Instant::now();
        }
    }
}

/// Publishes the oldest unsent rows, in id order, and deletes them. Returns how many.
async fn publish_round(
    pool: &PgPool,
    schema: &str,
    producer: &FutureProducer,
) -> Result<usize, Failure> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT id, topic, key, payload, traceparent, headers FROM {schema}.outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1"
    )))
    .bind(ROUND)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    // Exported: a span a row, from enqueueing to the broker's acknowledgement, a child of the
    // span that wrote it.
    let mut spans = Vec::new();
    for row in &rows {
        let id: i64 = row.get("id");
        let topic: &str = row.get("topic");
        let key: Option<&str> = row.get("key");
        let payload: Option<&[u8]> = row.get("payload");
        // The trace context's column, and any other headers (rows written before migration 0031
        // have the trace context among them).
        let traceparent: Option<&str> = row.get("traceparent");
        let headers: Option<serde_json::Value> = row.get("headers");
        let others = headers.as_ref().and_then(serde_json::Value::as_object);
        let mut kafka_headers = OwnedHeaders::new();
        if let Some(value) = traceparent {
            kafka_headers = kafka_headers.insert(Header {
                key: TRACEPARENT,
                value: Some(value),
            });
        }
        for (name, value) in others.into_iter().flatten() {
            kafka_headers = kafka_headers.insert(Header {
                key: name,
                value: value.as_str(),
            });
        }
        if kassa_schemas::trace::exporting() {
            let span = tracing::info_span!("publish", otel.name = %format!("{schema} publishes to {topic}"));
            let parent = traceparent.or_else(|| {
                others
                    .and_then(|o| o.get(TRACEPARENT))
                    .and_then(|v| v.as_str())
            });
            kassa_schemas::trace::continue_trace(&span, parent);
            spans.push(span);
        }
        let mut record = FutureRecord::to(topic).headers(kafka_headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        // Enqueue everything first (the idempotent producer keeps per-partition order), then wait.
        let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
        deliveries.push(delivery);
        ids.push(id);
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => return Err(rdkafka::error::KafkaError::Canceled.into()),
        }
    }
    drop(spans);
    let published_ms = started.elapsed().as_secs_f64() * 1000.0;
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {schema}.outbox WHERE id = ANY($1)"
    )))
    .bind(&ids)
    .execute(pool)
    .await?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::debug!(
        schema,
        rows = ids.len(),
        published_ms,
        total_ms,
        "outbox round"
    );
    metrics::histogram!("kassa_outbox_publish_duration_seconds", "group" => schema.to_owned())
        .record(published_ms / 1000.0);
    metrics::counter!("kassa_outbox_published_total", "group" => schema.to_owned())
        .increment(ids.len() as u64);
    Ok(ids.len())
}
