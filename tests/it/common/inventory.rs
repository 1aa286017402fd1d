//! Helpers for the inventory tests: the processor as a real child process (so it can be killed),
//! producing checkout requests and commands, and reading outcomes back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kassa::settings::Settings;
use kassa_schemas::events::checkout::{CheckoutPayload, Reserve};
use kassa_schemas::events::inventory::{InventoryCommand, InventoryEvent, SetStock};
use kassa_schemas::{Codec, Envelope, Payload, Topic};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The inventory tests' hold on the processors: no set runs (they start their own inventory),
/// and one inventory test runs at a time (they share the consumer group).
pub struct Exclusive {
    _turn: super::turns::Turn,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Takes the processors for an inventory test (see [`Exclusive`]).
pub async fn exclusive() -> Exclusive {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let serial = SERIAL.lock().await;
    Exclusive {
        _turn: super::turns::take(&[], false).await,
        _serial: serial,
    }
}

/// A `kassa run inventory` process, killed (SIGKILL) when dropped.
pub type Processor = super::processes::Component;

impl Processor {
    /// Starts one inventory processor with the default settings.
    pub fn start_inventory() -> Self {
        Self::start("inventory", &[])
    }

    /// Starts one inventory processor with a static group membership id.
    pub fn start_inventory_as(instance_id: Option<&str>) -> Self {
        match instance_id {
            Some(id) => Self::start("inventory", &[("KASSA_INSTANCE_ID", id)]),
            None => Self::start("inventory", &[]),
        }
    }
}

/// Produces kassa events; remembers the codec and producer.
pub struct Feed {
    pub codec: Codec,
    pub producer: FutureProducer,
}

impl Feed {
    /// A producer with kassa's settings.
    pub fn new(settings: &Settings) -> Self {
        Self {
            codec: Codec::new(&settings.schema_registry_url).expect("codec"),
            producer: kassa::kafka::producer(settings).expect("producer"),
        }
    }

    /// Encodes and sends one event keyed by `key`, waiting for the acknowledgement.
    pub async fn send<P: Payload>(&self, key: &str, event: &Envelope<P>) {
        let bytes = self.codec.encode(event).await.expect("encode");
        self.send_raw(P::TOPIC.name(), key, &bytes).await;
    }

    /// Encodes and sends one event with a W3C `traceparent` header.
    pub async fn send_traced<P: Payload>(&self, key: &str, event: &Envelope<P>, traceparent: &str) {
        let bytes = self.codec.encode(event).await.expect("encode");
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "traceparent",
            value: Some(traceparent),
        });
        self.producer
            .send(
                FutureRecord::to(P::TOPIC.name())
                    .key(key)
                    .payload(&bytes)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("Kafka acknowledged");
    }

    /// Sends raw bytes.
    pub async fn send_raw(&self, topic: &str, key: &str, bytes: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(topic).key(key).payload(bytes),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("Kafka acknowledged");
    }

    /// Sets SKUs' stock through `inventory.commands` and waits until inventory confirmed each
    /// (`Restocked`): requests sent afterwards on `checkout.requests` find the stock, since Kafka
    /// orders nothing across topics.
    pub async fn set_stock(&self, settings: &Settings, stock: &[(&str, i64)]) {
        let from = end_offsets(settings, Topic::InventoryEvents.name());
        for (sku, on_hand) in stock {
            let command = InventoryCommand::SetStock(SetStock {
                sku: (*sku).into(),
                on_hand: *on_hand,
                reason: "test".into(),
            });
            self.send(sku, &Envelope::new(*sku, None, command)).await;
        }
        let skus: Vec<&[u8]> = stock.iter().map(|(s, _)| s.as_bytes()).collect();
        read_until(
            settings,
            Topic::InventoryEvents.name(),
            &from,
            Duration::from_secs(60),
            |m| skus.contains(&m.key().unwrap_or_default()),
            |n| n >= stock.len(),
        );
    }
}

/// A reserve request for one order line.
pub fn reserve(
    order_id: &str,
    line_index: i32,
    sku: &str,
    quantity: i32,
) -> Envelope<CheckoutPayload> {
    Envelope::new(
        order_id,
        None,
        CheckoutPayload::Reserve(Reserve {
            order_id: order_id.into(),
            line_index,
            line_count: 1,
            sku: sku.into(),
            quantity,
            customer_id: "cus_test".into(),
            currency: "EUR".into(),
            unit_price_minor: 1000,
            payment_method_id: "pm_card_visa".into(),
            hold_seconds: 900,
            flash_sale: false,
            flash_sale_generation: None,
            fulfilment: None,
            storefront: None,
        }),
    )
}

/// Current end offsets of every partition of `topic` (a topic created a moment ago may not have
/// its partition leaders yet: asked again for up to 30 s).
pub fn end_offsets(settings: &Settings, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .expect("consumer");
    let started = Instant::now();
    loop {
        let ends = || -> rdkafka::error::KafkaResult<HashMap<i32, i64>> {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            metadata.topics()[0]
                .partitions()
                .iter()
                .map(|p| {
                    Ok((
                        p.id(),
                        consumer
                            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))?
                            .1,
                    ))
                })
                .collect()
        };
        match ends() {
            Ok(ends) if !ends.is_empty() => return ends,
            Ok(_) => {}
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "end offsets of {topic}: {e}"
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{topic} has no partitions"
        );
        std::thread::sleep(Duration::from_millis(200)); // poll the broker until the deadline
    }
}

/// Reads `topic` from `from`, read_committed, keeping what `keep` accepts, until `done` holds for
/// the number kept (see [`super::read_kept`]).
pub fn read_until(
    settings: &Settings,
    topic: &str,
    from: &HashMap<i32, i64>,
    deadline: Duration,
    keep: impl FnMut(&rdkafka::message::OwnedMessage) -> bool,
    done: impl Fn(usize) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    super::read_kept(
        settings,
        topic,
        from,
        super::Isolation::Committed,
        deadline,
        keep,
        |kept| done(kept.len()),
    )
}

/// Decodes inventory events.
pub async fn decode_events(
    codec: &Codec,
    messages: &[rdkafka::message::OwnedMessage],
) -> Vec<Envelope<InventoryEvent>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        out.push(
            codec
                .decode(m.payload().expect("value"))
                .await
                .expect("decode inventory event"),
        );
    }
    out
}

/// The stock row of a SKU: (on_hand, reserved, committed).
pub async fn stock_of(pool: &sqlx::PgPool, sku: &str) -> Option<(i64, i64, i64)> {
    sqlx::query_as("SELECT on_hand, reserved, committed FROM inventory.stock WHERE sku = $1")
        .bind(sku)
        .fetch_optional(pool)
        .await
        .expect("query stock")
}

/// Outcome events of one test run, collected in the background as they arrive.
pub struct Outcomes {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Envelope<InventoryEvent>>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Outcomes {
    /// Starts reading `inventory.events` from `from`, keeping events whose key starts with `prefix`.
    pub fn collect(settings: &Settings, from: HashMap<i32, i64>, prefix: String) -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (settings, registry) = (settings.clone(), settings.schema_registry_url.clone());
        let (seen_in, stop_in) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let codec = Codec::new(&registry).unwrap();
            let consumer = super::assigned_consumer(
                &settings,
                Topic::InventoryEvents.name(),
                &from,
                super::Isolation::Committed,
            );
            while !stop_in.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let message = message.expect("consume");
                if !message
                    .key()
                    .is_some_and(|k| k.starts_with(prefix.as_bytes()))
                {
                    continue;
                }
                let event = runtime
                    .block_on(codec.decode(message.payload().unwrap()))
                    .expect("decode");
                seen_in.lock().unwrap().push(event);
            }
        });
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Events seen so far (physical messages, duplicates included).
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits (polling every 20 ms) until `n` distinct order lines have an outcome, or panics.
    pub async fn wait_for_lines(&self, n: usize, deadline: Duration) {
        let started = Instant::now();
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        loop {
            let lines = self.lines().len();
            if lines >= n {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "only {lines} of {n} order lines answered within {deadline:?}"
            );
            poll.tick().await;
        }
    }

    /// Every event per order line, in arrival order.
    pub fn lines(&self) -> HashMap<(String, i32), Vec<Envelope<InventoryEvent>>> {
        let mut lines: HashMap<(String, i32), Vec<Envelope<InventoryEvent>>> = HashMap::new();
        for e in self.seen.lock().unwrap().iter() {
            let key = match &e.payload {
                InventoryEvent::Reserved(r) => (r.order_id.clone(), r.line_index),
                InventoryEvent::Rejected(r) => (r.order_id.clone(), r.line_index),
                InventoryEvent::Released(r) => (r.order_id.clone(), r.line_index),
                InventoryEvent::Committed(r) => (r.order_id.clone(), r.line_index),
                InventoryEvent::Restocked(_) => continue,
            };
            lines.entry(key).or_default().push(e.clone());
        }
        lines
    }
}

impl Drop for Outcomes {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
