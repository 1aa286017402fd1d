//! `kassa topics create` against the real broker: it refuses topics whose partition counts differ
//! between the inputs of one processor, naming the processor and the counts; it creates each topic
//! with the configured properties, and refuses settings that would let an event topic outlive
//! what the inboxes remember, before creating anything.

use crate::common;

use std::time::Duration;

use kassa_processors::ConsumerGroup;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

/// Runs `kassa topics create` in `namespace` with `partitions`; its success and what it wrote.
fn topics_create(namespace: &str, partitions: &str) -> (bool, String) {
    topics_create_with(namespace, partitions, &[])
}

/// `topics_create` with more settings.
fn topics_create_with(namespace: &str, partitions: &str, more: &[(&str, &str)]) -> (bool, String) {
    let mut env = vec![
        ("KASSA_NAMESPACE", namespace),
        ("KASSA_TOPIC_PARTITIONS", partitions),
    ];
    env.extend_from_slice(more);
    common::run_kassa(&["topics", "create"], &env)
}

/// A namespace no other test uses.
fn fresh_namespace(what: &str) -> String {
    format!(
        "kassa-{what}-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The topics `kassa topics create` said it created, in `namespace`.
fn created_in(output: &str, namespace: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("created"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|n| n.starts_with(namespace))
        .map(str::to_owned)
        .collect()
}

fn admin(settings: &kassa::settings::Settings) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_with_the_configured_retention_and_replicas() {
    let settings = common::setup().await;
    let namespace = fresh_namespace("config");
    let (ok, created) = topics_create_with(
        &namespace,
        "1",
        &[
            ("KASSA_TOPIC_MIN_INSYNC_REPLICAS", "1"),
            ("KASSA_TOPIC_DLQ_RETENTION_MS", "-1"),
            (
                "KASSA_TOPIC_CONFIG",
                "orders.events:retention.ms=86400000;payments.webhooks:retention.bytes=1073741824",
            ),
        ],
    );
    assert!(ok, "{created}");
    let names = created_in(&created, &namespace);
    let expected = kassa_schemas::Topic::ALL.len() + kassa_processors::ConsumerGroup::ALL.len();
    assert_eq!(
        names.len(),
        expected,
        "every topic and dead-letter topic: {created}"
    );

    let admin = admin(&settings);
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let resources: Vec<ResourceSpecifier<'_>> =
        ["orders.events", "payments.webhooks", "orders.dlq"]
            .iter()
            .map(|base| {
                ResourceSpecifier::Topic(Box::leak(format!("{namespace}{base}").into_boxed_str()))
            })
            .collect();
    let described = admin.describe_configs(&resources, &options).await.unwrap();
    let value = |i: usize, key: &str| -> String {
        let resource = described[i].as_ref().unwrap();
        resource
            .get(key)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(value(0, "retention.ms"), "86400000");
    assert_eq!(value(0, "cleanup.policy"), "delete");
    assert_eq!(value(0, "min.insync.replicas"), "1");
    assert_eq!(value(1, "retention.ms"), "604800000");
    assert_eq!(value(1, "retention.bytes"), "1073741824");
    assert_eq!(value(2, "retention.ms"), "-1");

    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &AdminOptions::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_topic_set_to_outlive_the_inboxes_is_refused_before_anything_is_created() {
    let settings = common::setup().await;
    let namespace = fresh_namespace("unsafe");
    let (ok, text) = topics_create_with(
        &namespace,
        "1",
        &[("KASSA_TOPIC_CONFIG", "orders.events:cleanup.policy=compact")],
    );
    assert!(!ok, "compaction of an event topic is refused: {text}");
    assert!(
        text.contains("orders.events: cleanup.policy=compact is refused"),
        "{text}"
    );
    let (ok, text) = topics_create_with(
        &namespace,
        "1",
        &[("KASSA_TOPIC_RETENTION_MS", "2592000000")],
    );
    assert!(!ok, "a month's retention of events is refused: {text}");
    assert!(
        text.contains("retention.ms=2592000000 is refused"),
        "{text}"
    );

    let topics = tokio::task::spawn_blocking(move || {
        kassa_schemas::kafka_link::partition_counts(
            &settings.kafka_brokers,
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let ours: Vec<&String> = topics
        .keys()
        .filter(|t| t.starts_with(&namespace))
        .collect();
    assert!(ours.is_empty(), "nothing was created: {ours:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_whose_partitions_disagree_for_one_processor_are_refused_by_name() {
    let settings = common::setup().await;
    let namespace = fresh_namespace("parts");
    let (ok, created) = topics_create(&namespace, "2");
    assert!(ok, "{created}");

    // One input of a processor that reads several gets a partition more.
    let (group, topic) = ConsumerGroup::ALL
        .into_iter()
        .find_map(|g| (g.inputs().len() > 1).then(|| (g, g.inputs()[1])))
        .expect("a processor with more than one input");
    let grown = format!("{namespace}{}", topic.base_name());
    let admin = admin(&settings);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let added = admin
        .create_partitions(&[NewPartitions::new(&grown, 3)], &options)
        .await
        .unwrap();
    assert!(added.iter().all(Result::is_ok), "{added:?}");

    let (ok, text) = topics_create(&namespace, "2");
    assert!(!ok, "topics that disagree are refused: {text}");
    assert!(
        text.contains(&format!(
            "the {} processor consumes topics with different partition counts",
            group.name()
        )) && text.contains(&format!("{grown}: 3")),
        "{text}"
    );

    // The run's topics, as the first create listed them, go again.
    let names = created_in(&created, &namespace);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &options).await;
}
