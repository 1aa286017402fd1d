//! kassa's event contract: the topic catalogue, the Avro schemas in `schemas/avro/`, Rust types for
//! every event, the Confluent wire-format codec and the Schema Registry administration; and what
//! the API and the processors share besides (the Kafka, Redis and registry links, gathered writes).

pub mod codec;
pub mod envelope;
pub mod events;
pub mod flash_keys;
pub mod gather;
pub mod kafka;
pub mod kafka_link;
pub mod postgres_link;
pub mod read_model;
pub mod redis_link;
pub mod registry;
pub mod registry_link;
pub mod secret;
pub mod signature;
pub mod topics;
pub mod trace;

pub use codec::{Codec, CodecError};
pub use envelope::{Envelope, Payload};
pub use topics::{KeyKind, Topic};
