//! The AsyncAPI 3.0 document of kassa's topics, for downstream teams: generated from the code
//! (each topic's `.avsc`, key, producers, and the processors that consume it), served at
//! `GET /asyncapi.json` and committed as `docs/asyncapi.json` (`kassa docs asyncapi` writes it;
//! a test fails when the two differ). Every channel says its key and partitioning, who writes and
//! who reads it, its retention and its schema's compatibility policy; every event type is a
//! message. Addresses are base names: `KASSA_NAMESPACE` prefixes them in a deployment.

use kassa_processors::ConsumerGroup;
use kassa_schemas::kafka::{DEAD_LETTER_RETENTION_MS, EVENT_RETENTION_MS};
use kassa_schemas::{KeyKind, Topic};
use serde_json::{Map, Value, json};

/// The media type of Avro schemas in AsyncAPI.
const AVRO: &str = "application/vnd.apache.avro+json;version=1.9.0";

/// The Kafka bindings' version.
const KAFKA_BINDING: &str = "0.5.0";

/// What every consumer must know, said once in the document's description.
const DELIVERY: &str = "Delivery is at least once, in order per key: a record may arrive more \
than once (a producer's retry, a relay re-sending after a crash, a replay), always with the same \
`event_id`, so deduplicate on `event_id`. Read with `isolation.level=read_committed`. Values are \
Avro in the Confluent wire format (magic byte 0, 4-byte schema id, Avro body), registered under \
`<topic>-value` with BACKWARD_TRANSITIVE compatibility: a new schema version only adds fields \
with defaults or new union branches at the end, so a consumer on an older version keeps reading. \
Keys are UTF-8 strings, partitioned with murmur2 like Java clients. Every record carries a W3C \
`traceparent` header: all records about one order share its trace id. Topic names are prefixed \
with the deployment's `KASSA_NAMESPACE` (empty by default).";

/// The event types of `topic`: the records of its envelope's `payload` union, with their docs.
pub fn event_types(topic: Topic) -> Vec<(String, String)> {
    let schema: Value = serde_json::from_str(topic.schema_json()).unwrap_or(Value::Null);
    let payload = schema["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|f| f["name"] == "payload"))
        .map(|f| f["type"].clone())
        .unwrap_or(Value::Null);
    payload
        .as_array()
        .map(|branches| {
            branches
                .iter()
                .filter_map(|b| {
                    let name = b["name"].as_str()?.to_owned();
                    Some((name, b["doc"].as_str().unwrap_or_default().to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A channel's id in the document: `orders.events` → `ordersEvents`.
fn channel_id(base: &str) -> String {
    let mut id = String::new();
    let mut upper = false;
    for c in base.chars() {
        if c == '.' {
            upper = true;
        } else if upper {
            id.extend(c.to_uppercase());
            upper = false;
        } else {
            id.push(c);
        }
    }
    id
}

/// The processors that consume `topic`.
fn consumers(topic: Topic) -> Vec<&'static str> {
    ConsumerGroup::ALL
        .iter()
        .filter(|g| g.inputs().contains(&topic))
        .map(|g| g.name())
        .collect()
}

/// The whole document.
pub fn document() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for topic in Topic::ALL {
        let base = topic.base_name();
        let id = channel_id(base);
        let key = match topic.key() {
            KeyKind::Sku => "the SKU: every request about one SKU is on one partition, in order",
            KeyKind::OrderId => {
                "the order id: every event of one order is on one partition, in order"
            }
        };
        let schema: Value = serde_json::from_str(topic.schema_json()).unwrap_or(Value::Null);
        let schema_name = schema["name"].as_str().unwrap_or(base).to_owned();
        schemas.insert(
            schema_name.clone(),
            json!({ "schemaFormat": AVRO, "schema": schema }),
        );
        let readers = consumers(topic);
        let mut refs = Map::new();
        for (event, doc) in event_types(topic) {
            refs.insert(
                event.clone(),
                json!({ "$ref": format!("#/components/messages/{event}") }),
            );
            messages.insert(
                event.clone(),
                json!({
                    "name": event,
                    "title": event,
                    "summary": doc,
                    "description": format!("A `{schema_name}` envelope whose `payload` is the `{event}` branch (`event_type` is `{event}`)."),
                    "contentType": AVRO,
                    "payload": { "$ref": format!("#/components/schemas/{schema_name}") },
                    "headers": {
                        "type": "object",
                        "properties": {
                            "traceparent": { "type": "string", "description": "W3C trace context: the order's trace" }
                        }
                    },
                    "bindings": { "kafka": {
                        "key": { "type": "string", "description": key },
                        "schemaIdLocation": "payload",
                        "schemaIdPayloadEncoding": "confluent",
                        "bindingVersion": KAFKA_BINDING,
                    }},
                }),
            );
        }
        let mut description = format!(
            "{} Key: {key}. Written by {}; read by {}.",
            schema["doc"].as_str().unwrap_or_default(),
            topic.producers().join(", "),
            if readers.is_empty() {
                "downstream teams".to_owned()
            } else {
                readers.join(", ")
            },
        );
        if topic == Topic::OrdersEvents {
            description.push_str(" The topic for downstream teams: fulfilment, mail, analytics.");
        }
        channels.insert(
            id.clone(),
            json!({
                "address": base,
                "title": base,
                "description": description,
                "messages": refs,
                "bindings": { "kafka": {
                    "topic": base,
                    "topicConfiguration": {
                        "cleanup.policy": ["delete"],
                        "retention.ms": EVENT_RETENTION_MS,
                    },
                    "bindingVersion": KAFKA_BINDING,
                }},
            }),
        );
        let all: Vec<Value> = refs
            .keys()
            .map(|event| json!({ "$ref": format!("#/channels/{id}/messages/{event}") }))
            .collect();
        operations.insert(
            format!("receive{}", capitalised(&id)),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{id}") },
                "summary": format!("Read {base}: deduplicate on event_id."),
                "messages": all,
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "kassa events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "The Kafka topics of kassa, a checkout back end. {DELIVERY} Dead letters: each processor's `<group>.dlq` keeps what it could not process for {} days (operators' business, not a contract).",
                DEAD_LETTER_RETENTION_MS / (24 * 3600 * 1000)
            ),
            "license": { "name": "Apache-2.0" },
        },
        "defaultContentType": AVRO,
        "servers": {
            "kafka": {
                "host": "127.0.0.1:19092",
                "protocol": "kafka",
                "description": "The broker `scripts/dev` starts; a deployment names its own (KASSA_KAFKA_BROKERS).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": { "schemas": schemas, "messages": messages },
    })
}

/// `word` with its first letter in upper case.
fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The document as committed: pretty JSON with a final newline.
pub fn pretty() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_a_channel_and_every_event_type_a_message() {
        let document = document();
        for topic in Topic::ALL {
            let channel = &document["channels"][channel_id(topic.base_name())];
            assert_eq!(channel["address"], topic.base_name());
            let events = event_types(topic);
            assert!(!events.is_empty(), "{topic:?} has event types");
            for (event, _) in events {
                assert!(
                    channel["messages"][&event].is_object(),
                    "{event} on {topic:?}"
                );
                assert!(document["components"]["messages"][&event].is_object());
            }
        }
        assert_eq!(channel_id("orders.events"), "ordersEvents");
    }

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let committed = include_str!("../../docs/asyncapi.json");
        assert!(
            committed == pretty(),
            "docs/asyncapi.json is stale: run `kassa docs asyncapi > docs/asyncapi.json`"
        );
    }
}
