//! The naive baseline: what a tutorial checkout does. Each request in its own transaction, the
//! SKU's row locked (`SELECT … FOR UPDATE`), the outcome produced and acknowledged before the next
//! request on that worker. Eight workers, as an HTTP server would run handlers side by side.
//! Same load, same decisions (kassa's `decide::reserve`), separate tables and topics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kassa_processors::inventory::decide::{self, ReserveAnswer, Stock};
use kassa_schemas::events::checkout::CheckoutPayload;
use kassa_schemas::events::inventory::{InventoryEvent, LineOrder, Rejected, Reserved};
use kassa_schemas::{Codec, Envelope};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

use super::{BenchError, Load, Measured, Outcomes, encode_all, pg_commits, send_all_to};
use kassa_ops::settings::Settings;

const REQUESTS: &str = "kassa-bench.naive-requests";
const EVENTS: &str = "kassa-bench.naive-events";
const WORKERS: usize = 8;

/// Runs the naive design over `load` and measures it.
pub(super) async fn run(
    settings: &Settings,
    pool: &PgPool,
    codec: &Codec,
    producer: &FutureProducer,
    load: &Load,
) -> Result<Measured, BenchError> {
    create_topics(settings).await?;
    create_tables(pool).await?;
    let skus: Vec<&str> = load.skus.iter().map(String::as_str).collect();
    sqlx::query("INSERT INTO bench.naive_stock (sku, on_hand) SELECT unnest($1::text[]), $2")
        .bind(&skus)
        .bind(load.stock_per_sku)
        .execute(pool)
        .await?;
    let outcomes = Outcomes::start(settings, EVENTS, load.prefix());

    let consumer: StreamConsumer =
        kassa_schemas::kafka_link::client_config(&settings.kafka_brokers)
            .set("group.id", format!("kassa-bench-naive-{}", load.run))
            .set("auto.offset.reset", "latest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
    let metadata = consumer.fetch_metadata(Some(REQUESTS), Duration::from_secs(10))?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer.fetch_watermarks(REQUESTS, p.id(), Duration::from_secs(10))?;
        assignment.add_partition_offset(REQUESTS, p.id(), rdkafka::Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;

    let (tx, rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(1_000);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let shared = Arc::new(Codec::new(&settings.schema_registry_url)?);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (rx, pool, codec, producer) =
            (rx.clone(), pool.clone(), shared.clone(), producer.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((sku, bytes)) = next else { return };
                if let Err(e) = decide_one(&pool, &codec, &producer, &sku, &bytes).await {
                    eprintln!("naive: {e}");
                }
            }
        }));
    }
    let reader = tokio::spawn(async move {
        while let Ok(m) = consumer.recv().await {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            if tx
                .send((key, m.payload().unwrap_or_default().to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    });

    println!("naive: sending {} requests", load.requests);
    let encoded = encode_all(codec, load).await?;
    let before = pg_commits(pool).await?;
    let sample = super::usage::Sample::take(settings, pool).await;
    let started = Instant::now();
    send_all_to(producer, &encoded, REQUESTS).await?;
    outcomes
        .wait(load.requests, Duration::from_secs(900))
        .await?;
    let elapsed = started.elapsed();
    let after = pg_commits(pool).await?;
    let usage = sample.until(&super::usage::Sample::take(settings, pool).await);
    reader.abort();
    for w in workers {
        w.abort();
    }
    Ok(Measured {
        decisions: load.requests,
        elapsed,
        pg_commits: after - before,
        batches: load.requests as u64,
        largest_batch: 1,
        usage,
    })
}

/// One request, the naive way: lock the row, decide, write, commit, produce and wait for the ack.
async fn decide_one(
    pool: &PgPool,
    codec: &Codec,
    producer: &FutureProducer,
    sku: &str,
    bytes: &[u8],
) -> Result<(), BenchError> {
    let request: Envelope<CheckoutPayload> = codec.decode(bytes).await?;
    let CheckoutPayload::Reserve(r) = &request.payload;
    let mut tx = pool.begin().await?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT on_hand, reserved FROM bench.naive_stock WHERE sku = $1 FOR UPDATE")
            .bind(sku)
            .fetch_optional(&mut *tx)
            .await?;
    let mut stock = row.map(|(on_hand, reserved)| Stock {
        on_hand,
        reserved,
        committed: 0,
    });
    let (answer, _) = decide::reserve(
        stock.as_mut(),
        None,
        r.quantity,
        chrono::Duration::minutes(15),
        Utc::now(),
    );
    if let Some(stock) = stock {
        sqlx::query("UPDATE bench.naive_stock SET on_hand = $2, reserved = $3 WHERE sku = $1")
            .bind(sku)
            .bind(stock.on_hand)
            .bind(stock.reserved)
            .execute(&mut *tx)
            .await?;
    }
    let status = if matches!(answer, ReserveAnswer::Reserved { .. }) {
        "active"
    } else {
        "rejected"
    };
    sqlx::query("INSERT INTO bench.naive_reservations (order_id, line_index, sku, quantity, status) VALUES ($1, $2, $3, $4, $5)")
        .bind(&r.order_id)
        .bind(r.line_index)
        .bind(sku)
        .bind(r.quantity)
        .bind(status)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let (order_id, line_index, sku, quantity) =
        (r.order_id.clone(), r.line_index, r.sku.clone(), r.quantity);
    let event: InventoryEvent = match answer {
        ReserveAnswer::Reserved { expires_at } => Reserved {
            order_id,
            line_index,
            sku,
            quantity,
            expires_at,
            order: Some(LineOrder::of(r)),
        }
        .into(),
        ReserveAnswer::Rejected(reason) => Rejected {
            order_id,
            line_index,
            sku,
            quantity,
            reason,
            order: Some(LineOrder::of(r)),
        }
        .into(),
    };
    let bytes = codec
        .encode(&Envelope::new(
            r.order_id.clone(),
            Some(request.event_id),
            event,
        ))
        .await?;
    producer
        .send(
            FutureRecord::to(EVENTS).key(&r.order_id).payload(&bytes),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// The naive design's tables, in the bench's own schema (kassa's migrations carry none of them).
async fn create_tables(pool: &PgPool) -> Result<(), sqlx::Error> {
    for statement in [
        "CREATE SCHEMA IF NOT EXISTS bench",
        "CREATE TABLE IF NOT EXISTS bench.naive_stock (
             sku      text   PRIMARY KEY,
             on_hand  bigint NOT NULL CHECK (on_hand >= 0),
             reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0))",
        "CREATE TABLE IF NOT EXISTS bench.naive_reservations (
             order_id   text    NOT NULL,
             line_index integer NOT NULL,
             sku        text    NOT NULL,
             quantity   integer NOT NULL,
             status     text    NOT NULL,
             PRIMARY KEY (order_id, line_index))",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}

async fn create_topics(settings: &Settings) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        kassa_schemas::kafka_link::client_config(&settings.kafka_brokers).create()?;
    let topics = [REQUESTS, EVENTS]
        .map(|t| NewTopic::new(t, settings.topics.partitions, TopicReplication::Fixed(1)));
    admin.create_topics(&topics, &AdminOptions::new()).await?;
    Ok(())
}
