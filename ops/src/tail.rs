//! `kassa tail`: records of kassa's topics (and dead-letter topics) decoded through the registry,
//! read_committed, filtered by key, order or event type. A record that cannot be decoded is shown
//! with its raw bytes and why, never skipped; a dead letter shows its reason and origin (its
//! headers) and is decoded as a record of the topic it came from.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kassa_processors::ConsumerGroup;
use kassa_schemas::events::{checkout, expiry, inventory, orders, payments};
use kassa_schemas::{Codec, CodecError, Envelope, Payload, Topic};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use serde_json::Value;

use crate::kafka::EofIsNoError;
use crate::settings::Settings;

/// The header of a dead letter naming the topic its record came from.
const DLQ_ORIGIN_HEADER: &str = "kassa.dlq.topic";

/// Where reading starts on every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The first record kept.
    Beginning,
    /// The end: only what comes next (with `--follow`).
    End,
    /// The first record written at or after this time.
    Time(DateTime<Utc>),
    /// This offset on every partition.
    Offset(i64),
}

impl std::str::FromStr for Start {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "beginning" => Ok(Start::Beginning),
            "end" => Ok(Start::End),
            _ => match text.parse::<i64>() {
                Ok(offset) if offset >= 0 => Ok(Start::Offset(offset)),
                _ => crate::offsets::parse_time(text)
                    .map(Start::Time)
                    .map_err(|_| {
                        format!("{text:?}: expected beginning, end, an offset or an RFC 3339 time")
                    }),
            },
        }
    }
}

/// What to read and what to keep.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kafka topic names (see [`resolve`]).
    pub topics: Vec<String>,
    /// Where to start.
    pub start: Start,
    /// Only records with this key.
    pub key: Option<String>,
    /// Only records about this order (key or correlation id).
    pub order: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Keep reading once the end is reached.
    pub follow: bool,
    /// Stop after this many records shown.
    pub limit: Option<usize>,
    /// Only this partition (None: every partition).
    pub partition: Option<i32>,
    /// Stop reading a partition at its first record written after this time (None: read to
    /// the end), so a look at one order's past does not read everything written since.
    pub until: Option<DateTime<Utc>>,
}

/// One record as shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The record's timestamp.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub timestamp: Option<DateTime<Utc>>,
    /// The key as text.
    pub key: Option<String>,
    /// The headers as text: `[name, value]` pairs.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    /// The decoded envelope (None when it could not be decoded).
    pub event: Option<Value>,
    /// Why it could not be decoded.
    pub undecodable: Option<String>,
    /// The raw value in hex, when it could not be decoded.
    pub raw: Option<String>,
    /// The value's bytes.
    #[serde(skip)]
    #[schema(ignore)]
    pub value: Vec<u8>,
}

impl Record {
    /// The envelope's field `name`, as text.
    fn field(&self, name: &str) -> Option<&str> {
        self.event.as_ref()?.get(name)?.as_str()
    }
}

/// Why tailing failed.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// A topic name that is neither kassa's nor a dead-letter topic.
    #[error("{0}")]
    Topic(String),
    /// Kafka failed.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The registry client could not be set up.
    #[error("{0}")]
    Codec(#[from] CodecError),
}

/// The Kafka names of `names`: `all` (every event topic), a topic with or without the namespace,
/// or `<group>.dlq`.
pub fn resolve(names: &[String]) -> Result<Vec<String>, TailError> {
    let ns = kassa_schemas::topics::namespace();
    let mut topics = Vec::new();
    for name in names {
        if name == "all" {
            topics.extend(Topic::ALL.iter().map(|t| t.name().to_owned()));
            continue;
        }
        let full = if name.starts_with(ns) {
            name.clone()
        } else {
            format!("{ns}{name}")
        };
        let known = Topic::from_name(&full).is_some()
            || ConsumerGroup::ALL.iter().any(|g| g.dlq_topic() == full);
        if !known {
            return Err(TailError::Topic(format!(
                "{name:?} is neither a kassa topic nor a <group>.dlq topic"
            )));
        }
        topics.push(full);
    }
    topics.dedup();
    Ok(topics)
}

/// Decodes `bytes` as a record of `topic` into JSON.
async fn decode(codec: &Codec, topic: Topic, bytes: &[u8]) -> Result<Value, CodecError> {
    async fn as_json<P: Payload + Serialize>(
        codec: &Codec,
        bytes: &[u8],
    ) -> Result<Value, CodecError> {
        let envelope: Envelope<P> = codec.decode(bytes).await?;
        serde_json::to_value(&envelope).map_err(|e| CodecError::Malformed(e.to_string()))
    }
    match topic {
        Topic::CheckoutRequests => as_json::<checkout::CheckoutPayload>(codec, bytes).await,
        Topic::InventoryCommands => as_json::<inventory::InventoryCommand>(codec, bytes).await,
        Topic::InventoryEvents => as_json::<inventory::InventoryEvent>(codec, bytes).await,
        Topic::OrdersRequests => as_json::<orders::OrderRequest>(codec, bytes).await,
        Topic::OrdersEvents => as_json::<orders::OrderEvent>(codec, bytes).await,
        Topic::PaymentsEvents => as_json::<payments::PaymentEvent>(codec, bytes).await,
        Topic::PaymentsWebhooks => as_json::<payments::PaymentWebhook>(codec, bytes).await,
        Topic::ExpiryEvents => as_json::<expiry::ExpiryEvent>(codec, bytes).await,
    }
}

/// Reads `options.topics` and hands every record kept to `show`; returns how many were shown.
/// Without `follow` it stops at the end of every partition (as it was when reading started).
pub async fn tail(
    settings: &Settings,
    options: &Options,
    mut show: impl FnMut(&Record),
) -> Result<usize, TailError> {
    let codec = Codec::new(&settings.schema_registry_url)?;
    let consumer: StreamConsumer<EofIsNoError> =
        kassa_schemas::kafka_link::client_config(&settings.kafka_brokers)
            .set("group.id", "kassa-tail")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create_with_context(EofIsNoError)?;
    let timeout = Duration::from_secs(10);
    let mut list = TopicPartitionList::new();
    let mut open = HashSet::new();
    let mut ends = std::collections::HashMap::new();
    for topic in &options.topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions = metadata.topics().iter().flat_map(|t| t.partitions());
        for p in partitions.filter(|p| options.partition.is_none_or(|only| only == p.id())) {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            let start = match options.start {
                Start::Beginning => Offset::Beginning,
                Start::End => Offset::End,
                Start::Offset(o) => Offset::Offset(o.clamp(low, high)),
                // Kafka's record times start at the epoch: an earlier time is the beginning.
                Start::Time(at) if at.timestamp_millis() <= 0 => Offset::Beginning,
                Start::Time(at) => Offset::Offset(at.timestamp_millis()),
            };
            list.add_partition_offset(topic, p.id(), start)?;
            ends.insert((topic.clone(), p.id()), high);
            // Nothing to read from a start at or past the end (an offset past it is clamped to
            // it): no end-of-partition event need be waited for (it may never come).
            let empty = high == low
                || options.start == Start::End
                || matches!(options.start, Start::Offset(o) if o >= high);
            if !empty {
                open.insert((topic.clone(), p.id()));
            }
        }
    }
    if let Start::Time(_) = options.start {
        list = consumer.offsets_for_times(list, timeout)?;
        // A partition with nothing written since then starts at its end: nothing to wait for
        // (no end-of-partition event comes for a partition nothing is fetched from).
        for e in list.elements() {
            let end = ends[&(e.topic().to_owned(), e.partition())];
            if !matches!(e.offset(), Offset::Offset(o) if o < end) {
                open.remove(&(e.topic().to_owned(), e.partition()));
            }
        }
    }
    consumer.assign(&list)?;
    let mut shown = 0;
    while options.limit.is_none_or(|limit| shown < limit) && (options.follow || !open.is_empty()) {
        let wait = if options.follow {
            Duration::from_secs(3_600)
        } else {
            timeout
        };
        let message = match tokio::time::timeout(wait, consumer.recv()).await {
            Err(_) if options.follow => continue,
            Err(_) => break,
            Ok(Err(KafkaError::PartitionEOF(_))) => {
                // The event names the partition, not the topic: close every partition whose
                // position reached the end it had when reading started.
                let positions = consumer.position()?;
                open.retain(|(topic, partition)| {
                    let at = positions.find_partition(topic, *partition).and_then(|e| {
                        match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        }
                    });
                    at.is_none_or(|at| at < ends[&(topic.clone(), *partition)])
                });
                continue;
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(message)) => message,
        };
        let topic = message.topic().to_owned();
        let partition = message.partition();
        if message.offset() + 1 >= ends.get(&(topic.clone(), partition)).copied().unwrap_or(0) {
            open.remove(&(topic.clone(), partition));
        }
        let written = message.timestamp().to_millis();
        if let Some(until) = options.until
            && written.is_some_and(|ms| ms > until.timestamp_millis())
        {
            // Past the window: this partition is done (and no longer fetched).
            open.remove(&(topic.clone(), partition));
            let mut done = TopicPartitionList::new();
            done.add_partition(&topic, partition);
            let _ = consumer.pause(&done);
            continue;
        }
        let headers: Vec<(String, String)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        // A dead letter is read as a record of the topic it came from.
        let origin = headers
            .iter()
            .find(|(k, _)| k == DLQ_ORIGIN_HEADER)
            .map_or(topic.as_str(), |(_, v)| v.as_str());
        let bytes = message.payload().unwrap_or_default();
        let decoded = match Topic::from_name(origin) {
            Some(t) => decode(&codec, t, bytes).await.map_err(|e| e.to_string()),
            None => Err(format!("{origin} is not one of kassa's topics")),
        };
        let record = Record {
            topic,
            partition,
            offset: message.offset(),
            timestamp: written.and_then(DateTime::from_timestamp_millis),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            raw: decoded.is_err().then(|| hex(bytes)),
            undecodable: decoded.as_ref().err().cloned(),
            event: decoded.ok(),
            value: bytes.to_vec(),
        };
        if keeps(options, &record) {
            show(&record);
            shown += 1;
        }
    }
    Ok(shown)
}

/// Whether `record` passes the filters of `options`.
fn keeps(options: &Options, record: &Record) -> bool {
    let key = record.key.as_deref();
    options.key.as_deref().is_none_or(|k| key == Some(k))
        && options
            .order
            .as_deref()
            .is_none_or(|o| key == Some(o) || record.field("correlation_id") == Some(o))
        && options
            .event_type
            .as_deref()
            .is_none_or(|t| record.field("event_type") == Some(t))
}

/// `bytes` in hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `record` on one line for people.
pub fn line(record: &Record) -> String {
    let at = record.timestamp.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    );
    let mut out = format!(
        "{}[{}]@{} {at} key={}",
        record.topic,
        record.partition,
        record.offset,
        record.key.as_deref().unwrap_or("-")
    );
    for (k, v) in record
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("kassa.dlq."))
    {
        out += &format!(" {}={v:?}", k.trim_start_matches("kassa.dlq."));
    }
    match (&record.event, &record.undecodable) {
        (Some(event), _) => {
            let payload = event
                .get("payload")
                .map(Value::to_string)
                .unwrap_or_default();
            out += &format!(
                " {} id={} correlation={} {payload}",
                record.field("event_type").unwrap_or("?"),
                record.field("event_id").unwrap_or("?"),
                record.field("correlation_id").unwrap_or("?"),
            );
        }
        (None, why) => {
            out += &format!(
                " UNDECODABLE ({}) raw={}",
                why.as_deref().unwrap_or("?"),
                record.raw.as_deref().unwrap_or("")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_words_offsets_or_times() {
        assert_eq!("beginning".parse(), Ok(Start::Beginning));
        assert_eq!("end".parse(), Ok(Start::End));
        assert_eq!("42".parse(), Ok(Start::Offset(42)));
        assert!(matches!("2026-12-02T10:00:00Z".parse(), Ok(Start::Time(_))));
        assert!("-3".parse::<Start>().is_err());
        assert!("soon".parse::<Start>().is_err());
    }
}
