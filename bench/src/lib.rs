//! `kassa bench`: speed figures printed side by side with the naive baseline, in one run,
//! against the real services. Benchmarks, not tests: they print what they measured.

pub mod api;
mod backlog;
pub mod http;
pub mod limits;
mod naive;
mod naive_checkout;
mod orders;
pub mod polls;
mod processes;
pub mod saga;
pub mod traffic;
pub mod usage;

use std::time::{Duration, Instant};

use kassa_processors::runtime::stats::BATCHES;
use kassa_schemas::events::checkout::{CheckoutPayload, Reserve};
use kassa_schemas::events::inventory::{InventoryCommand, SetStock};
use kassa_schemas::{Codec, Envelope, Payload, Topic};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

use kassa_ops::settings::Settings;
use kassa_ops::supervisor::{Component, Running, SupervisorError};

/// The `q` quantile (0 to 1) of `sorted`, by nearest rank (None when empty).
pub(crate) fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(rank).copied()
}

/// What one side of the benchmark measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Requests decided.
    pub decisions: usize,
    /// The time measured: kassa from its first decision to its last, the naive design from its
    /// first request sent to its last outcome.
    pub elapsed: Duration,
    /// Transactions the database committed meanwhile (from pg_stat_database).
    pub pg_commits: i64,
    /// Batches (transactions of the processor), and the largest.
    pub batches: u64,
    /// The largest batch.
    pub largest_batch: u64,
    /// What the machine spent meanwhile (CPU per process group).
    pub usage: usage::Usage,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.decisions as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU milliseconds per 1,000 decisions of the process group `group`.
    fn cpu_per_thousand(&self, group: &str) -> f64 {
        self.usage
            .cpu
            .iter()
            .filter(|(g, _)| *g == group)
            .map(|(_, s)| s * 1e6 / self.decisions.max(1) as f64)
            .sum()
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Encoding failed.
    #[error("{0}")]
    Codec(#[from] kassa_schemas::CodecError),
    /// The processor under test failed.
    #[error("processor: {0}")]
    Processor(#[from] SupervisorError),
    /// Outcomes did not all arrive in time.
    #[error("only {seen} of {wanted} outcomes within {within:?}")]
    Timeout {
        /// Outcomes seen.
        seen: usize,
        /// Outcomes wanted.
        wanted: usize,
        /// The deadline.
        within: Duration,
    },
}

/// A benchmark's load: SKUs `B-<run>-<i>` with stock for about half the requests.
struct Load {
    run: String,
    skus: Vec<String>,
    stock_per_sku: i64,
    requests: usize,
}

impl Load {
    fn new(skus: usize, requests: usize) -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let skus: Vec<String> = (0..skus.max(1)).map(|i| format!("B-{run}-{i}")).collect();
        let stock_per_sku = ((requests / skus.len()) / 2).max(1) as i64;
        Self {
            run,
            skus,
            stock_per_sku,
            requests,
        }
    }

    fn prefix(&self) -> String {
        format!("B-{}", self.run)
    }

    /// The i-th request: order `B-<run>-o<i>`, one unit of SKU i mod N.
    fn request(&self, i: usize) -> (String, Envelope<CheckoutPayload>) {
        let sku = self.skus[i % self.skus.len()].clone();
        let order_id = format!("{}-o{i}", self.prefix());
        let payload = CheckoutPayload::Reserve(Reserve {
            order_id: order_id.clone(),
            line_index: 0,
            line_count: 1,
            sku: sku.clone(),
            quantity: 1,
            customer_id: "cus_bench".into(),
            currency: "EUR".into(),
            unit_price_minor: 1000,
            payment_method_id: "pm_card_visa".into(),
            hold_seconds: 900,
            flash_sale: false,
            flash_sale_generation: None,
            fulfilment: None,
            storefront: None,
        });
        (sku, Envelope::new(order_id, None, payload))
    }
}

/// `kassa bench inventory`: kassa's inventory processor, then the naive baseline on the same
/// kind of load (`naive_requests` of them: one transaction a request, its rate does not depend on
/// how many).
pub async fn inventory(
    settings: &Settings,
    skus: usize,
    requests: usize,
    naive_requests: usize,
) -> Result<(), BenchError> {
    let pool = kassa_ops::migrate::connect(settings)
        .await
        .map_err(|e| match e {
            kassa_ops::migrate::MigrateError::Connect(
                kassa_ops::databases::DatabasesError::Connect { source, .. },
            ) => BenchError::Database(source),
            other => BenchError::Database(sqlx::Error::Configuration(other.into())),
        })?;
    let codec = Codec::new(&settings.schema_registry_url)?;
    let producer = kassa_ops::kafka::producer(settings)?;
    println!(
        "inventory bench: {requests} requests (naive: {naive_requests}) over {skus} SKU(s), stock for about half of them; everything on this machine"
    );

    let load = Load::new(skus, requests);
    let kassa = run_kassa(settings, &pool, &codec, &producer, &load).await?;
    let load = Load::new(skus, naive_requests);
    let naive = naive::run(settings, &pool, &codec, &producer, &load).await?;

    println!();
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "decisions/s", "elapsed", "batches", "avg batch", "largest", "pg tx/s"
    );
    for (name, m) in [("kassa (batched)", &kassa), ("naive (row lock)", &naive)] {
        println!(
            "{:<22} {:>12.0} {:>9.2}s {:>10} {:>10.0} {:>10} {:>10.0}",
            name,
            m.per_second(),
            m.elapsed.as_secs_f64(),
            m.batches,
            m.decisions as f64 / m.batches.max(1) as f64,
            m.largest_batch,
            m.pg_commits as f64 / m.elapsed.as_secs_f64(),
        );
    }
    println!(
        "kassa decides {:.1}x faster than the naive design",
        kassa.per_second() / naive.per_second()
    );
    println!();
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>13}",
        "CPU ms/1,000 decisions", "this process", "Kafka", "Postgres", "all", "machine busy"
    );
    for (name, m) in [("kassa (batched)", &kassa), ("naive (row lock)", &naive)] {
        println!(
            "{:<22} {:>12.1} {:>10.1} {:>10.1} {:>10.1} {:>12.0}%",
            name,
            m.cpu_per_thousand("kassa"),
            m.cpu_per_thousand("Kafka"),
            m.cpu_per_thousand("Postgres"),
            m.usage.cpu_per_order_ms(m.decisions) * 1000.0,
            m.usage.machine_busy * 100.0,
        );
    }
    println!(
        "(this process: the processor or the naive handlers, and the bench's producer and outcome counter)"
    );
    println!(
        "note: the {requests} answers are on {}: this environment's processors will make orders of them and charge \
         the reserved ones (`kassa bench saga` works them off before it measures)",
        Topic::InventoryEvents.name()
    );
    Ok(())
}

/// kassa's side: the SKUs are stocked through a running processor, which then stops; every
/// request is written to `checkout.requests` (the sending is timed apart, it is the bench's
/// producer, not the processor); a new processor then decides the backlog. Measured from its
/// first decision to its last: the rate the processor decides at, not the rate one producer sends.
async fn run_kassa(
    settings: &Settings,
    pool: &PgPool,
    codec: &Codec,
    producer: &FutureProducer,
    load: &Load,
) -> Result<Measured, BenchError> {
    let outcomes = Outcomes::start(settings, Topic::InventoryEvents.name(), load.prefix());
    let processor = start_inventory(settings)?;
    // Stock the SKUs and wait until the processor has answered for them: it is consuming.
    for sku in &load.skus {
        let command = InventoryCommand::SetStock(SetStock {
            sku: sku.clone(),
            on_hand: load.stock_per_sku,
            reason: "bench".into(),
        });
        send(producer, codec, sku, &Envelope::new(sku, None, command)).await?;
    }
    outcomes
        .wait(load.skus.len(), Duration::from_secs(120))
        .await?;
    processor.stop();
    processor.wait().await?;

    let encoded = encode_all(codec, load).await?;
    let sending = Instant::now();
    send_all_to(producer, &encoded, Topic::CheckoutRequests.name()).await?;
    println!(
        "kassa: {} requests written to {} in {:.2}s (the bench's producer); deciding them",
        load.requests,
        Topic::CheckoutRequests.name(),
        sending.elapsed().as_secs_f64()
    );

    let before = (BATCHES.snapshot(), pg_commits(pool).await?);
    let sample = usage::Sample::take(settings, pool).await;
    let processor = start_inventory(settings)?;
    let restarted = Instant::now();
    let first = outcomes
        .wait(load.skus.len() + 1, Duration::from_secs(120))
        .await?;
    println!(
        "kassa: first decision {:.2}s after the processor started (joining the group, finding its offsets)",
        first.duration_since(restarted).as_secs_f64()
    );
    let last = outcomes
        .wait(load.skus.len() + load.requests, Duration::from_secs(600))
        .await?;
    let after = (BATCHES.snapshot(), pg_commits(pool).await?);
    let usage = sample.until(&usage::Sample::take(settings, pool).await);
    processor.stop();
    processor.wait().await?;
    Ok(Measured {
        decisions: load.requests.saturating_sub(1).max(1),
        elapsed: last.duration_since(first),
        pg_commits: after.1 - before.1,
        batches: after.0.batches - before.0.batches,
        largest_batch: after.0.largest,
        usage,
    })
}

/// The inventory processor, in this process.
fn start_inventory(settings: &Settings) -> Result<Running, SupervisorError> {
    start_here(
        settings,
        &[Component::Processor(
            kassa_processors::ConsumerGroup::Inventory,
        )],
    )
}

/// `components`, in this process, their /metrics, /health and /ready on any free port (a
/// development kassa may hold the configured one).
fn start_here(settings: &Settings, components: &[Component]) -> Result<Running, SupervisorError> {
    let mut on_any_port = settings.clone();
    on_any_port.process.ops_addr.set_port(0);
    kassa_ops::supervisor::start(&on_any_port, components)
}

/// Every request of the load, encoded (before the clock starts): (key, value).
async fn encode_all(codec: &Codec, load: &Load) -> Result<Vec<(String, Vec<u8>)>, BenchError> {
    let mut encoded = Vec::with_capacity(load.requests);
    for i in 0..load.requests {
        let (sku, event) = load.request(i);
        encoded.push((sku, codec.encode(&event).await?));
    }
    Ok(encoded)
}

/// Sends encoded requests as fast as Kafka takes them (acks=all), in parallel chunks.
async fn send_all_to(
    producer: &FutureProducer,
    encoded: &[(String, Vec<u8>)],
    topic: &str,
) -> Result<(), BenchError> {
    for chunk in encoded.chunks(5_000) {
        let sends = chunk.iter().map(|(sku, bytes)| {
            producer.send(
                FutureRecord::to(topic).key(sku).payload(bytes),
                Duration::from_secs(60),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
    }
    Ok(())
}

async fn send<P: Payload>(
    producer: &FutureProducer,
    codec: &Codec,
    key: &str,
    event: &Envelope<P>,
) -> Result<(), BenchError> {
    let bytes = codec.encode(event).await?;
    producer
        .send(
            FutureRecord::to(P::TOPIC.name()).key(key).payload(&bytes),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

/// Transactions committed in the database so far (after flushing this session's statistics;
/// other sessions flush theirs at least once a second, so readings lag by up to a second).
async fn pg_commits(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut *conn)
    .await
}

/// Counts the messages on a topic whose key starts with a prefix, from now on, in the background.
struct Outcomes {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outcomes {
    fn start(settings: &Settings, topic: &str, prefix: String) -> Self {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let consumer: BaseConsumer =
            kassa_schemas::kafka_link::client_config(&settings.kafka_brokers)
                .set("group.id", format!("kassa-bench-{}", uuid::Uuid::new_v4()))
                .set("isolation.level", "read_committed")
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "latest")
                .create()
                .expect("bench consumer");
        // Assign every partition at its current end, so only outcomes from now on are counted.
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            assignment
                .add_partition_offset(topic, p.id(), rdkafka::Offset::Offset(high))
                .expect("offset");
        }
        consumer.assign(&assignment).expect("assign");
        let (count_in, stop_in) = (count.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop_in.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50))
                    && m.key().is_some_and(|k| k.starts_with(prefix.as_bytes()))
                {
                    count_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        Self { count, stop }
    }

    /// Waits until `n` outcomes were seen; returns when (to within a millisecond).
    async fn wait(&self, n: usize, within: Duration) -> Result<Instant, BenchError> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut last_report = Instant::now();
        loop {
            let seen = self.count.load(std::sync::atomic::Ordering::Relaxed);
            if seen >= n {
                return Ok(Instant::now());
            }
            if started.elapsed() > within {
                return Err(BenchError::Timeout {
                    seen,
                    wanted: n,
                    within,
                });
            }
            if last_report.elapsed() > Duration::from_secs(2) {
                eprintln!("  … {seen} / {n} outcomes");
                last_report = Instant::now();
            }
            tick.tick().await;
        }
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
