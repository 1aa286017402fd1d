//! `kassa topics create` against the real broker: it refuses topics whose partition counts differ
//! between the inputs of one processor, naming the processor and the counts.

use crate::common;

use std::time::Duration;

use kassa_processors::ConsumerGroup;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;

/// Runs `kassa topics create` in `namespace` with `partitions`; its success and what it wrote.
fn topics_create(namespace: &str, partitions: &str) -> (bool, String) {
    common::run_kassa(
        &["topics", "create"],
        &[
            ("KASSA_NAMESPACE", namespace),
            ("KASSA_TOPIC_PARTITIONS", partitions),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_whose_partitions_disagree_for_one_processor_are_refused_by_name() {
    let settings = common::setup().await;
    let namespace = format!(
        "kassa-parts-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let (ok, created) = topics_create(&namespace, "2");
    assert!(ok, "{created}");

    // One input of a processor that reads several gets a partition more.
    let (group, topic) = ConsumerGroup::ALL
        .into_iter()
        .find_map(|g| (g.inputs().len() > 1).then(|| (g, g.inputs()[1])))
        .expect("a processor with more than one input");
    let grown = format!("{namespace}{}", topic.base_name());
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .create()
        .unwrap();
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
    let names: Vec<String> = created
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|n| n.starts_with(&namespace))
        .map(str::to_owned)
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let _ = admin.delete_topics(&names, &options).await;
}
