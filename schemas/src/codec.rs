//! The Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro body) for kassa's
//! events, through schema_registry_converter and apache-avro.
//!
//! Encoding writes with this build's schema (registered under `<topic>-value` on first use, or the
//! existing id when already there). Decoding reads with the writer's schema from the registry, picks
//! the payload branch by its record *name* (never by structural matching, which can pick the wrong
//! branch), then resolves that record against this build's schema so fields added later with
//! defaults read fine both ways.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_schema_by_id};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use tokio::sync::OnceCell;

use crate::envelope::{Envelope, Header, Payload};
use crate::topics::Topic;

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry could not be reached or refused the schema.
    #[error("schema registry: {0}")]
    Registry(#[from] SRCError),
    /// The bytes are not a kassa event in the Confluent wire format.
    #[error("not a valid event: {0}")]
    Malformed(String),
    /// The value does not fit the schema.
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    /// The payload is a record this build does not know (a newer writer's event type).
    #[error("unknown event type {0} on {1}")]
    UnknownEventType(String, &'static str),
    /// The message came from a topic the decoding processor does not read.
    #[error("{0} is not one of this processor's input topics")]
    UnexpectedTopic(&'static str),
    /// The registry says the value's writer schema id does not exist, while it answers other
    /// requests normally: the value can never be read.
    #[error("the registry has no schema with id {0}")]
    UnknownSchema(u32),
}

impl CodecError {
    /// Whether the failure may pass by itself (retry), rather than being a property of the
    /// bytes (dead-letter). Every registry failure is transient, whatever its status (5xx, 401,
    /// an unreadable 200: a registry restarting over a restarting Postgres answers all of these),
    /// unless it positively says the schema id does not exist ([`CodecError::UnknownSchema`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, CodecError::Registry(_))
    }
}

/// Encodes and decodes kassa events against a Schema Registry; cheap to share (`Arc`) across tasks.
///
/// Fast path: this build's schema of each topic is parsed once, with a writer and a reader built
/// once; its registry id is asked once. Encoding always writes with it; decoding a value written
/// with it skips schema resolution. Values written with another version take the general path.
pub struct Codec {
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    strategies: HashMap<Topic, SubjectNameStrategy>,
    ids: HashMap<Topic, OnceCell<u32>>,
}

impl Codec {
    /// A codec talking to the registry at `registry_url` (e.g. `http://…/apis/ccompat/v7`).
    pub fn new(registry_url: &str) -> Result<Self, CodecError> {
        let settings = sr_settings(registry_url)?;
        let strategies = Topic::ALL
            .into_iter()
            .map(|topic| {
                let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
                    topic.name().to_owned(),
                    false,
                    supplied(topic),
                );
                (topic, strategy)
            })
            .collect();
        let ids = Topic::ALL
            .into_iter()
            .map(|t| (t, OnceCell::new()))
            .collect();
        Ok(Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
            strategies,
            ids,
        })
    }

    /// The registry id of this build's schema for `topic` (registered on first use if missing).
    pub async fn schema_id_of(&self, topic: Topic) -> Result<u32, CodecError> {
        let id = self.ids[&topic]
            .get_or_try_init(|| async {
                let strategy = self.strategies[&topic].clone();
                match self
                    .encoder
                    .get_schema_and_id(&topic.subject(), strategy)
                    .await
                {
                    Ok(schema) => Ok(schema.id),
                    Err(e) => {
                        // The converter caches non-transport errors for good; let the next call ask again.
                        self.encoder.remove_errors_from_cache();
                        Err(CodecError::Registry(e))
                    }
                }
            })
            .await?;
        Ok(*id)
    }

    /// Encodes an event for its topic in the Confluent wire format.
    pub async fn encode<P: Payload>(&self, event: &Envelope<P>) -> Result<Vec<u8>, CodecError> {
        let id = self.schema_id_of(P::TOPIC).await?;
        let body = local_schema(P::TOPIC).writer.write_ser_to_vec(event)?;
        let mut bytes = Vec::with_capacity(5 + body.len());
        bytes.push(0);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// Decodes a value read from `P::TOPIC`.
    pub async fn decode<P: Payload>(&self, bytes: &[u8]) -> Result<Envelope<P>, CodecError> {
        let Some(id) = schema_id(bytes) else {
            return Err(CodecError::Malformed(
                "missing magic byte 0 and schema id".into(),
            ));
        };
        if id == self.schema_id_of(P::TOPIC).await? {
            // Written with this build's schema: read it with the prepared reader, no resolution.
            let local = local_schema(P::TOPIC);
            let value = local.reader.read_value(&mut &bytes[5..])?;
            return decode_value_with(local.schema, &value, false);
        }
        let decoded = match self.decoder.decode_with_schema(Some(bytes)).await {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return Err(CodecError::Malformed("empty value".into())),
            Err(e) => {
                self.decoder.remove_errors_from_cache();
                return Err(self.classify_lookup_failure(id, e).await);
            }
        };
        decode_value(&decoded.schema.parsed, &decoded.value)
    }
}

impl Codec {
    /// What a failed look-up of writer schema `id` means: the value can never be read only when
    /// the registry answered 404 for it and, asked again at once for a schema it has (this
    /// build's), answers normally; anything else may pass.
    async fn classify_lookup_failure(&self, id: u32, error: SRCError) -> CodecError {
        if !error.error.contains("status 404") {
            return CodecError::Registry(error);
        }
        let Some(known) = self.ids.values().find_map(|cell| cell.get().copied()) else {
            return CodecError::Registry(error);
        };
        match get_schema_by_id(known, &self.settings).await {
            Ok(_) => CodecError::UnknownSchema(id),
            Err(_) => CodecError::Registry(error),
        }
    }
}

/// The schema id in a Confluent wire-format value, if it has the header.
pub fn schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Registry client settings with a bounded timeout and the deployment's access (credentials, CA).
pub(crate) fn sr_settings(registry_url: &str) -> Result<SrSettings, SRCError> {
    let timeout = Duration::from_secs(10);
    SrSettings::new_builder(registry_url.trim_end_matches('/').to_owned())
        .set_timeout(timeout)
        .build_with(crate::registry_link::client_builder(timeout))
}

/// This build's schema for `topic`, as the registry client wants it.
pub(crate) fn supplied(topic: Topic) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, topic.schema_json().to_owned())
}

/// This build's parsed schema of one topic, with its named types resolved and a writer and a
/// reader built for it.
struct LocalSchema {
    schema: &'static Schema,
    resolved: ResolvedSchema<'static>,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

impl LocalSchema {
    fn get_root_schema(&self) -> &'static Schema {
        self.schema
    }

    fn get_names(&self) -> &apache_avro::schema::NamesRef<'static> {
        self.resolved.get_names()
    }
}

/// This build's parsed schema for `topic`, parsed once per process.
fn local_schema(topic: Topic) -> &'static LocalSchema {
    static SCHEMAS: OnceLock<HashMap<Topic, Schema>> = OnceLock::new();
    static READERS: OnceLock<HashMap<Topic, LocalSchema>> = OnceLock::new();
    let readers = READERS.get_or_init(|| {
        let schemas = SCHEMAS.get_or_init(|| {
            Topic::ALL
                .into_iter()
                .map(|t| {
                    (
                        t,
                        Schema::parse_str(t.schema_json())
                            .expect("schemas/avro files are valid Avro"),
                    )
                })
                .collect()
        });
        schemas
            .iter()
            .map(|(t, schema)| {
                let resolved = ResolvedSchema::new(schema).expect("schemas/avro files resolve");
                let writer = GenericDatumWriter::builder(schema)
                    .build()
                    .expect("a writer for our own schema");
                let reader = GenericDatumReader::builder(schema)
                    .build()
                    .expect("a reader for our own schema");
                (
                    *t,
                    LocalSchema {
                        schema,
                        resolved,
                        writer,
                        reader,
                    },
                )
            })
            .collect()
    });
    &readers[&topic]
}

/// Decodes an Avro value written with `writer` into this build's envelope type.
pub fn decode_value<P: Payload>(writer: &Schema, value: &Value) -> Result<Envelope<P>, CodecError> {
    decode_value_with(writer, value, true)
}

/// As [`decode_value`]; `resolve` false skips resolution when `writer` is this build's schema.
fn decode_value_with<P: Payload>(
    writer: &Schema,
    value: &Value,
    resolve: bool,
) -> Result<Envelope<P>, CodecError> {
    let header: Header = apache_avro::from_value(value)?;
    let (name, inner) = union_branch(writer, value, "payload")?;
    let payload = if resolve {
        let reader = local_schema(P::TOPIC);
        let branch = payload_branches(reader.get_root_schema())?
            .iter()
            .find(|s| s.name().is_some_and(|n| n.name() == name))
            .ok_or_else(|| CodecError::UnknownEventType(name.clone(), P::TOPIC.name()))?;
        let resolved = inner
            .clone()
            .resolve_with_names(branch, reader.get_names())?;
        P::from_branch(&name, &resolved)?
    } else {
        P::from_branch(&name, inner)?
    };
    Ok(Envelope {
        event_id: header.event_id,
        event_type: header.event_type,
        occurred_at: header.occurred_at,
        correlation_id: header.correlation_id,
        causation_id: header.causation_id,
        payload,
    })
}

/// The branches of the envelope's `payload` union.
fn payload_branches(schema: &Schema) -> Result<&[Schema], CodecError> {
    let Schema::Record(record) = schema else {
        return Err(CodecError::Malformed("value schema is not a record".into()));
    };
    match record
        .fields
        .iter()
        .find(|f| f.name == "payload")
        .map(|f| &f.schema)
    {
        Some(Schema::Union(union)) => Ok(union.variants()),
        _ => Err(CodecError::Malformed(
            "value schema has no payload union".into(),
        )),
    }
}

/// The short record name of the union branch a decoded record holds in `field`, and its value.
fn union_branch<'v>(
    writer: &Schema,
    record: &'v Value,
    field: &str,
) -> Result<(String, &'v Value), CodecError> {
    let branches = payload_branches(writer)?;
    let Value::Record(fields) = record else {
        return Err(CodecError::Malformed("value is not a record".into()));
    };
    let Some((_, Value::Union(index, inner))) = fields.iter().find(|(n, _)| n == field) else {
        return Err(CodecError::Malformed(format!("value has no {field} union")));
    };
    let name = branches
        .get(*index as usize)
        .and_then(|s| s.name())
        .ok_or_else(|| {
            CodecError::Malformed(format!("{field} branch {index} is not a named record"))
        })?;
    Ok((name.name().to_owned(), inner.as_ref()))
}

#[cfg(test)]
mod tests {
    //! Round-trips every event type through the Avro body, without a registry: the integration
    //! tests do the same through Kafka and the real registry.
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;

    use super::*;
    use crate::events::samples::{self, Sample};

    fn round_trip<P: Payload + PartialEq>(event: Envelope<P>) {
        let reader = local_schema(P::TOPIC);
        let schema = reader.get_root_schema();
        let bytes = GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_ser_to_vec(&event)
            .unwrap();
        let value = GenericDatumReader::builder(schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        let back: Envelope<P> = decode_value(schema, &value).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn every_event_type_round_trips_through_its_schema() {
        let all = samples::all();
        let sampled: Vec<_> = all.iter().map(Sample::event_type).collect();
        let distinct: std::collections::BTreeSet<_> = sampled.iter().cloned().collect();
        assert_eq!(sampled.len(), distinct.len(), "one sample per event type");
        assert_eq!(
            distinct,
            samples::event_types(),
            "a sample for every event type the schemas define"
        );
        for sample in all {
            match sample {
                Sample::Checkout(e) => round_trip(e),
                Sample::InventoryCommand(e) => round_trip(e),
                Sample::InventoryEvent(e) => round_trip(e),
                Sample::OrderRequest(e) => round_trip(e),
                Sample::OrderEvent(e) => round_trip(e),
                Sample::PaymentEvent(e) => round_trip(e),
                Sample::PaymentWebhook(e) => round_trip(e),
                Sample::ExpiryEvent(e) => round_trip(e),
            }
        }
    }

    #[test]
    fn the_rust_variants_follow_the_avsc_union_order() {
        fn check<P: Payload>() {
            let names: Vec<String> = payload_branches(local_schema(P::TOPIC).get_root_schema())
                .unwrap()
                .iter()
                .map(|s| s.name().unwrap().name().to_owned())
                .collect();
            assert_eq!(names, P::branch_names(), "{}", P::TOPIC.name());
        }
        use crate::events::*;
        check::<checkout::CheckoutPayload>();
        check::<inventory::InventoryCommand>();
        check::<inventory::InventoryEvent>();
        check::<orders::OrderRequest>();
        check::<orders::OrderEvent>();
        check::<payments::PaymentEvent>();
        check::<payments::PaymentWebhook>();
        check::<expiry::ExpiryEvent>();
    }

    #[test]
    fn wire_header_carries_the_schema_id() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(schema_id(&[1, 0, 0, 1, 2, 9]), None);
        assert_eq!(schema_id(&[0, 0]), None);
    }
}
