//! The consume loop: batches form from what has arrived (up to a count and a time; the next
//! batch is received while one is in the database), each
//! partition is sought to the offset stored in Postgres when first seen after an assignment,
//! rebalances drop what a revoked partition had in flight, failures retry with backoff.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use kassa_schemas::Topic;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, MessageStream, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

use super::backoff::Backoff;
use super::batch::{self, BatchError, Outcome};
use super::position::Positions;
use super::store::{TopicPartition, is_from};
use super::{Handler, RuntimeConfig, relay};

/// Why a processor stopped with an error (it never stops for a transient failure).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Kafka client could not be created or subscribed.
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Partition ownership changes, passed from librdkafka's callback to the loop.
enum RebalanceEvent {
    Revoked(Vec<TopicPartition>),
}

struct Context {
    events: tokio::sync::mpsc::UnboundedSender<RebalanceEvent>,
    group: &'static str,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            super::liveness::set_assigned(self.group, false);
            let _ = self
                .events
                .send(RebalanceEvent::Revoked(partitions_of(list)));
        }
    }

    /// Assigned partitions start from the beginning, never from the offsets committed to Kafka
    /// (those are for lag tools): the first message read finds no cursor, and the partition is
    /// sought to the offset stored in Postgres, or read from the beginning when none is stored.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            super::liveness::set_assigned(self.group, true);
            let mut from_start = TopicPartitionList::new();
            for element in list.elements() {
                let _ = from_start.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Beginning,
                );
            }
            if let Err(e) = consumer.assign(&from_start) {
                tracing::error!(error = %e, "could not position the assigned partitions");
            }
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Runs `handler` until `shutdown` turns true: finishes the batch in flight, lets the relay drain,
/// returns. Database or broker outages are waited out with backoff.
///
/// `writers` are the processor's background tasks that append to its outbox (the payments
/// worker, the expiry ticker): on shutdown they are waited for (they finish what they have in
/// flight) before the relay drains, so nothing they record stays unpublished.
pub async fn run<H: Handler>(
    config: &RuntimeConfig,
    mut handler: H,
    mut shutdown: watch::Receiver<bool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), RuntimeError> {
    let group = handler.group();
    let pool = connect(config, 6, &mut shutdown).await;
    let Some(pool) = pool else {
        for writer in writers {
            let _ = writer.await;
        }
        return Ok(());
    };
    super::stats::watch_pool(pool.clone(), group.name());

    let mut producer_config = kassa_schemas::kafka_link::client_config(&config.brokers);
    kassa_schemas::kafka_link::default_unless_set(&mut producer_config, &[("linger.ms", "2")]);
    for (key, value) in kassa_schemas::kafka::PRODUCER_SETTINGS {
        producer_config.set(*key, *value);
    }
    let producer: FutureProducer = producer_config.create()?;
    // The relay stops only after the loop has committed its last batch, so it drains that too.
    let (relay_stop, relay_shutdown) = watch::channel(false);
    let relay = Relay {
        writers,
        stop: relay_stop,
        task: tokio::spawn(relay::run(
            pool.clone(),
            group.name(),
            producer,
            relay_shutdown,
        )),
    };

    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut consumer_config = kassa_schemas::kafka_link::client_config(&config.brokers);
    consumer_config
        .set("group.id", group.group_id())
        .set("partition.assignment.strategy", group.assignment());
    // Settings kassa chooses, unless the operator set them (KASSA_KAFKA__…):
    // - a killed instance's partitions move after 6 s (the broker's minimum), not librdkafka's
    //   45 s (with static membership, a longer one lets an instance restart without a rebalance);
    // - how long the broker holds a fetch that finds nothing: a record that arrives answers it
    //   at once, so this costs no latency under load; it only sets how often an idle consumer
    //   asks. 20 ms kept the broker at 11% of a core with one idle `kassa run all`; 500 ms, 3%.
    // - how long librdkafka waits to look again at a partition whose local queue was full
    //   (`queued.min.messages`, 100,000 records): 1 s by default, which left a processor
    //   catching up on a backlog idle for 0.3-0.7 s after every few batches (the inventory
    //   bench: 15,000-28,000 decisions/s in five runs of six; 32,000-41,000 with 10 ms).
    kassa_schemas::kafka_link::default_unless_set(
        &mut consumer_config,
        &[
            ("max.poll.interval.ms", "600000"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
            ("fetch.wait.max.ms", "500"),
            ("fetch.queue.backoff.ms", "10"),
        ],
    );
    for (key, value) in kassa_schemas::kafka::CONSUMER_SETTINGS {
        consumer_config.set(*key, *value);
    }
    if let Some(id) = &config.instance_id {
        consumer_config.set("group.instance.id", format!("{}-{id}", group.group_id()));
    }
    let consumer: StreamConsumer<Context> = consumer_config.create_with_context(Context {
        events: events_tx,
        group: group.name(),
    })?;
    let topics: Vec<&str> = group.inputs().iter().map(|t| t.name()).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(group = group.name(), ?topics, "processor consuming");

    let mut positions = Positions::default();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let progress = super::liveness::register(format!("{} consumer", group.name()));
    let mut prefetched = Prefetched::default();
    // One stream for the consumer's life: a `recv` a message registered and dropped a waker.
    let mut stream = consumer.stream();
    while !*shutdown.borrow() {
        progress.idle();
        let mut messages = assemble(
            &mut stream,
            &mut events,
            config,
            &mut positions,
            &mut handler,
            &mut shutdown,
            &mut prefetched,
        )
        .await;
        if messages.is_empty() {
            continue;
        }
        // Sync each partition to Postgres; retry until the database answers.
        loop {
            progress.busy();
            match positions
                .sync(&pool, group.name(), &consumer, &mut messages)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    if !wait_out(&mut backoff, &mut shutdown, &e).await {
                        finish(relay).await;
                        return Ok(());
                    }
                }
            }
        }
        // How much of `messages` the next attempt takes: all, or a prefix while the message
        // behind a failure that retrying does not fix is being isolated (halving).
        let mut take = messages.len();
        let mut poison_attempts = 0;
        while !messages.is_empty() {
            progress.busy();
            let stored = positions.expected();
            let started = Instant::now();
            let taken = take.clamp(1, messages.len());
            let slice = &messages[..taken];
            let span = tracing::info_span!("batch", group = group.name(), size = slice.len());
            let work = AssertUnwindSafe(batch::process(&pool, &mut handler, slice, &stored))
                .catch_unwind()
                .instrument(span);
            let result = prefetched
                .receive_during(&mut stream, &mut events, config.batch_max, &positions, work)
                .await
                .unwrap_or_else(|panic| Err(BatchError::Panicked(panic_text(panic.as_ref()))));
            match result {
                Ok(Outcome::Committed(advanced)) => {
                    backoff.reset();
                    metrics_batch(group.name(), taken, started.elapsed());
                    committed(&consumer, &mut positions, advanced);
                    handler.after_commit().await;
                    messages.drain(..taken);
                    take = messages.len();
                    poison_attempts = 0;
                }
                Ok(Outcome::Fenced(lost)) => {
                    tracing::warn!(group = group.name(), partitions = ?lost, "the stored offsets of these partitions moved under this instance (another instance, or an operator): taking them up again from there");
                    forget_all(&mut handler, &messages);
                    let_go(&lost, &mut positions, &mut messages);
                    take = messages.len();
                }
                Err(e) if e.is_transient() => {
                    // Memory may hold what the rolled-back transaction did: forget and redo.
                    forget_all(&mut handler, &messages);
                    if !wait_out(&mut backoff, &mut shutdown, &e).await {
                        finish(relay).await;
                        return Ok(());
                    }
                }
                Err(e) if taken > 1 => {
                    forget_all(&mut handler, &messages);
                    tracing::warn!(group = group.name(), size = taken, error = %e, "a batch failed in a way retrying does not fix: isolating the message behind it");
                    take = taken / 2;
                }
                Err(e) => {
                    forget_all(&mut handler, &messages);
                    poison_attempts += 1;
                    if poison_attempts < POISON_ATTEMPTS {
                        if !wait_out(&mut backoff, &mut shutdown, &e).await {
                            finish(relay).await;
                            return Ok(());
                        }
                        continue;
                    }
                    let reason = format!("failed {POISON_ATTEMPTS} times: {e}");
                    tracing::error!(group = group.name(), topic = messages[0].topic(), partition = messages[0].partition(), offset = messages[0].offset(), %reason, "dead-lettering a message that fails every time");
                    match batch::dead_letter_one(&pool, group, &messages[0], &reason, &stored).await
                    {
                        Ok(Outcome::Committed(advanced)) => {
                            committed(&consumer, &mut positions, advanced);
                            messages.remove(0);
                            take = messages.len();
                            poison_attempts = 0;
                        }
                        Ok(Outcome::Fenced(lost)) => {
                            let_go(&lost, &mut positions, &mut messages);
                            take = messages.len();
                        }
                        Err(e) => {
                            if !wait_out(&mut backoff, &mut shutdown, &e).await {
                                finish(relay).await;
                                return Ok(());
                            }
                        }
                    }
                }
            }
            prefetched.apply_revoked(&mut positions, &mut handler, &mut messages);
        }
    }
    finish(relay).await;
    Ok(())
}

/// Messages received while a batch was in the database (so Postgres works while this process
/// takes the next batch off librdkafka's queue), and the partitions revoked meanwhile.
#[derive(Default)]
struct Prefetched {
    /// Received, for the next batch.
    messages: Vec<OwnedMessage>,
    /// When the first of them arrived: the next batch's time bound counts from then.
    since: Option<tokio::time::Instant>,
    /// Partitions revoked while the batch was in flight, applied once it is done.
    revoked: Vec<TopicPartition>,
    /// A message came from a partition without a cursor (newly assigned, read from its
    /// beginning): nothing more is taken before it is sought to its stored offset.
    untracked: bool,
}

impl Prefetched {
    /// Runs `work`, receiving messages (up to `limit`, and none after one from a partition
    /// `positions` does not track) until it is done.
    async fn receive_during<F: Future>(
        &mut self,
        stream: &mut MessageStream<'_, Context>,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
        limit: usize,
        positions: &Positions,
        work: F,
    ) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            let room = self.messages.len() < limit && !self.untracked;
            tokio::select! {
                biased;
                done = &mut work => return done,
                received = stream.next(), if room => {
                    self.take(received, events, positions);
                    // Whatever else is ready, without polling `work` between messages.
                    while self.messages.len() < limit && !self.untracked {
                        match stream.next().now_or_never() {
                            Some(received) => self.take(received, events, positions),
                            None => break,
                        }
                    }
                }
            }
        }
    }

    /// Keeps one received message, after applying the revocations that came before it.
    fn take(
        &mut self,
        received: Option<KafkaResult<BorrowedMessage<'_>>>,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
        positions: &Positions,
    ) {
        while let Ok(RebalanceEvent::Revoked(lost)) = events.try_recv() {
            self.messages
                .retain(|m| !lost.iter().any(|tp| is_from(tp, m)));
            self.revoked.extend(lost);
        }
        match received {
            Some(Ok(message)) => {
                self.untracked |= !positions.tracks(&message);
                self.messages.push(message.detach());
                self.since.get_or_insert_with(tokio::time::Instant::now);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
            None => {}
        }
    }

    /// Lets go of the partitions revoked while a batch was in flight: their cursors, what the
    /// handler holds for them, and their messages still waiting in `messages`.
    fn apply_revoked<H: Handler>(
        &mut self,
        positions: &mut Positions,
        handler: &mut H,
        messages: &mut Vec<OwnedMessage>,
    ) {
        if self.revoked.is_empty() {
            return;
        }
        let lost = std::mem::take(&mut self.revoked);
        revoke(&lost, positions, handler, messages);
    }
}

/// Lets go of revoked partitions: stops tracking them, tells the handler to forget what it
/// holds for them, and drops their messages from `messages`.
fn revoke<H: Handler>(
    lost: &[TopicPartition],
    positions: &mut Positions,
    handler: &mut H,
    messages: &mut Vec<OwnedMessage>,
) {
    tracing::info!(partitions = ?lost, "partitions revoked");
    let revoked: Vec<(Topic, i32)> = lost
        .iter()
        .filter_map(|(t, p)| Topic::from_name(t).map(|t| (t, *p)))
        .collect();
    handler.forget(&revoked);
    let_go(lost, positions, messages);
}

/// Stops tracking `lost` partitions (revoked, or fenced) and drops their messages from
/// `messages`.
fn let_go(lost: &[TopicPartition], positions: &mut Positions, messages: &mut Vec<OwnedMessage>) {
    for tp in lost {
        positions.let_go(tp);
    }
    messages.retain(|m| !lost.iter().any(|tp| is_from(tp, m)));
}

/// Attempts a message that fails in a way retrying does not fix gets before it is dead-lettered.
const POISON_ATTEMPTS: u32 = 3;

/// Records committed offsets: the cursors, and the offsets librdkafka commits to Kafka once a
/// second and when partitions are revoked or the consumer closes (for lag tools only:
/// correctness rests on the offsets in Postgres). A commit to Kafka after every batch cost the
/// broker an offset commit per batch: at 150 orders/s, 2.8-3.4 ms of broker CPU an order
/// against 2.3-2.5 ms without.
fn committed(
    consumer: &StreamConsumer<Context>,
    positions: &mut Positions,
    advanced: Vec<(TopicPartition, i64)>,
) {
    let mut lag_commit = TopicPartitionList::new();
    for (tp, next) in advanced {
        positions.committed(&tp, next);
        let _ = lag_commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(next));
    }
    // Fails only for a partition revoked meanwhile, whose new owner stores its own.
    let _ = consumer.store_offsets(&lag_commit);
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A pool of up to `size` connections to the processor's database, waiting out an outage
/// (None: shut down while waiting).
pub async fn connect(
    config: &RuntimeConfig,
    size: u32,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<PgPool> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let attempt = kassa_schemas::postgres_link::pool_options()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect(config.database_url.expose())
            .await;
        match attempt {
            Ok(pool) => return Some(pool),
            Err(e) => {
                if !wait_out(&mut backoff, shutdown, &e).await {
                    return None;
                }
            }
        }
    }
}

/// Logs a transient failure and waits the backoff delay. False when shutdown came instead.
async fn wait_out(
    backoff: &mut Backoff,
    shutdown: &mut watch::Receiver<bool>,
    error: &(dyn std::fmt::Display + Sync),
) -> bool {
    let delay = backoff.next_delay();
    tracing::warn!(error = %error, ?delay, failures = backoff.failures(), "transient failure; retrying");
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.changed() => !*shutdown.borrow(),
    }
}

/// The running outbox relay, the switch that stops it, and the other writers of the outbox.
struct Relay {
    writers: Vec<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Waits for the other writers of the outbox to finish, then tells the relay nothing more will
/// be written and waits for it to drain.
async fn finish(relay: Relay) {
    for writer in relay.writers {
        let _ = writer.await;
    }
    let _ = relay.stop.send(true);
    let _ = relay.task.await;
}

fn forget_all<H: Handler>(handler: &mut H, messages: &[OwnedMessage]) {
    let mut partitions: Vec<(Topic, i32)> = messages
        .iter()
        .filter_map(|m| Topic::from_name(m.topic()).map(|t| (t, m.partition())))
        .collect();
    partitions.sort_by_key(|(t, p)| (t.name(), *p));
    partitions.dedup();
    handler.forget(&partitions);
}

/// Collects what has arrived: starts from what was received while the last batch was in
/// flight, or waits for a first message, then takes more until the count or the time bound
/// (counted from the first message's arrival), or until a message from a partition without a
/// cursor. Applies revocations in arrival order, dropping what a revoked partition had in the
/// batch.
async fn assemble<H: Handler>(
    stream: &mut MessageStream<'_, Context>,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<RebalanceEvent>,
    config: &RuntimeConfig,
    positions: &mut Positions,
    handler: &mut H,
    shutdown: &mut watch::Receiver<bool>,
    prefetched: &mut Prefetched,
) -> Vec<OwnedMessage> {
    let mut batch: Vec<OwnedMessage> = std::mem::take(&mut prefetched.messages);
    let mut deadline = prefetched
        .since
        .take()
        .map(|since| since + config.batch_wait);
    if batch.len() >= config.batch_max || std::mem::take(&mut prefetched.untracked) {
        return batch;
    }
    loop {
        // A message already queued is taken without arming a timer.
        let received = match stream.next().now_or_never() {
            Some(ready) => Some(ready),
            None => match deadline {
                None => tokio::select! {
                    m = stream.next() => Some(m),
                    _ = shutdown.changed() => None,
                },
                Some(at) => tokio::time::timeout_at(at, stream.next()).await.ok(),
            },
        };
        while let Ok(RebalanceEvent::Revoked(lost)) = events.try_recv() {
            revoke(&lost, positions, handler, &mut batch);
        }
        match received.map(|r| r.expect("a Kafka message stream never ends")) {
            None => return batch,
            Some(Ok(message)) => {
                // A partition without a cursor was just assigned and is read from its
                // beginning: the batch goes now, so it is sought to its stored offset before
                // its history is read.
                let untracked = !positions.tracks(&message);
                batch.push(message.detach());
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + config.batch_wait);
                if batch.len() >= config.batch_max || untracked {
                    return batch;
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error"),
        }
    }
}

/// Reports a committed batch.
fn metrics_batch(group: &str, size: usize, took: Duration) {
    super::stats::BATCHES.record(size);
    metrics::counter!("kassa_batch_messages_total", "group" => group.to_owned())
        .increment(size as u64);
    metrics::histogram!("kassa_batch_duration_seconds", "group" => group.to_owned())
        .record(took.as_secs_f64());
    metrics::histogram!("kassa_batch_size", "group" => group.to_owned()).record(size as f64);
    tracing::debug!(group, size, took_ms = took.as_millis() as u64, "batch");
}
