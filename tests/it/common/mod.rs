//! Shared setup for the integration tests: settings from `scripts/dev env`, the database migrated,
//! topics created and schemas registered (idempotently, once per test binary), and Kafka helpers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kassa::settings::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::OnceCell;

/// Runs `kassa <args>` with `env` added to the test settings; whether it succeeded, and what it
/// wrote (stdout, then stderr).
pub fn run_kassa(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("kassa runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Settings for the local services (`eval "$(scripts/dev env)"`, or the defaults, which match).
pub fn settings() -> Settings {
    Settings::from_env()
}

/// Migrates, creates topics and registers schemas, once per test binary.
pub async fn setup() -> Settings {
    static READY: OnceCell<()> = OnceCell::const_new();
    let settings = settings();
    READY
        .get_or_init(|| async {
            let pool = kassa::migrate::connect(&settings)
                .await
                .expect("PostgreSQL is up (scripts/dev up)");
            kassa::migrate::run(&pool).await.expect("migrations apply");
            kassa::topics::create_all(&settings)
                .await
                .expect("Kafka is up and topics can be created");
            kassa_schemas::registry::Registry::new(&settings.schema_registry_url)
                .register_all()
                .await
                .expect("the registry is up and accepts the schemas");
        })
        .await;
    settings
}

/// Whether a consumer sees only committed transactions or everything written.
#[derive(Clone, Copy)]
pub enum Isolation {
    /// `read_committed`, as every kassa consumer.
    Committed,
    /// `read_uncommitted`, to see what a transaction wrote before it was aborted.
    Uncommitted,
}

/// A test consumer (its own throw-away group) with `isolation`, assigned to `topic` at the given
/// per-partition offsets.
pub fn assigned_consumer(
    settings: &Settings,
    topic: &str,
    from: &HashMap<i32, i64>,
    isolation: Isolation,
) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("group.id", format!("kassa-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            match isolation {
                Isolation::Committed => "read_committed",
                Isolation::Uncommitted => "read_uncommitted",
            },
        )
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in from {
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .expect("offset");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// Reads `topic` from `from`, keeping the messages `keep` accepts, until `done` says the kept ones
/// suffice, or the deadline passes (then panics, saying how many were kept).
pub fn read_kept(
    settings: &Settings,
    topic: &str,
    from: &HashMap<i32, i64>,
    isolation: Isolation,
    deadline: Duration,
    mut keep: impl FnMut(&OwnedMessage) -> bool,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer = assigned_consumer(settings, topic, from, isolation);
    let started = Instant::now();
    let mut kept = Vec::new();
    while !done(&kept) {
        assert!(
            started.elapsed() < deadline,
            "{topic} from {from:?}: condition not met within {deadline:?}; kept {} messages",
            kept.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("consume").detach();
            if keep(&message) {
                kept.push(message);
            }
        }
    }
    kept
}

/// Reads `topic`/`partition` from `offset` until `done` says the messages suffice (see [`read_kept`]).
pub fn read_from(
    settings: &Settings,
    topic: &str,
    partition: i32,
    offset: i64,
    isolation: Isolation,
    deadline: Duration,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    read_kept(
        settings,
        topic,
        &HashMap::from([(partition, offset)]),
        isolation,
        deadline,
        |_| true,
        done,
    )
}

/// The message key as text.
pub fn key_of(message: &OwnedMessage) -> String {
    String::from_utf8(message.key().unwrap_or_default().to_vec()).expect("UTF-8 key")
}

/// Creates a test-only topic (not one of kassa's) if it is missing; returns its name.
pub async fn ensure_scratch_topic(settings: &Settings, name: &str, partitions: i32) -> String {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create topic");
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("cannot create {topic}: {code}"),
        }
    }
    name.to_owned()
}
pub mod api;
pub mod foreign;
pub mod http;
pub mod inventory;
pub mod processes;
pub mod proxy;
pub mod redis_server;
pub mod saga;
pub mod secured_registry;
pub mod stripe_like;
pub mod turns;

/// Makes a namespace of kassa topics beside the suite's own (`kassa topics create` and
/// `kassa schemas register` run with `KASSA_NAMESPACE=namespace`), its topics with `partitions`
/// partitions; returns the topic name maker. For tests that need topics of their own: replays
/// from the beginning, another partition count.
pub fn prepare_namespace(namespace: &str, partitions: i32) -> impl Fn(&str) -> String {
    for args in [["topics", "create"], ["schemas", "register"]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
            .args(args)
            .env("KASSA_NAMESPACE", namespace)
            .env("KASSA_TOPIC_PARTITIONS", partitions.to_string())
            .output()
            .expect("kassa runs");
        assert!(
            output.status.success(),
            "kassa {args:?} in {namespace}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let namespace = namespace.to_owned();
    move |base: &str| format!("{namespace}{base}")
}
