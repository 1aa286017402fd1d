//! The envelope every event travels in, and the trait that ties a payload union to its topic.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::topics::Topic;

/// A topic's payload union: a Rust enum whose variants are, in order, the `.avsc` union branches.
pub trait Payload:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The topic whose value schema holds this union.
    const TOPIC: Topic;

    /// The short Avro record name of this variant (the envelope's `event_type`).
    fn event_type(&self) -> &'static str;

    /// Builds the variant for the Avro record `name` (short name) from its resolved value.
    fn from_branch(
        name: &str,
        value: &apache_avro::types::Value,
    ) -> Result<Self, apache_avro::Error>;

    /// The short names of every branch, in union order.
    fn branch_names() -> &'static [&'static str];
}

/// One event: who, when, why, and the payload. Serialises as the topic's Avro value record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<P> {
    /// Unique id of this event; consumers deduplicate on it.
    #[serde(with = "uuid::serde::hyphenated")]
    pub event_id: Uuid,
    /// The payload's record name, e.g. `Reserved`.
    pub event_type: String,
    /// When the fact happened, at millisecond precision.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    /// The order id the event belongs to (the SKU for stock-only events).
    pub correlation_id: String,
    /// The event that caused this one, if it came from one.
    #[serde(with = "optional_uuid")]
    pub causation_id: Option<Uuid>,
    /// The event itself.
    pub payload: P,
}

impl<P: Payload> Envelope<P> {
    /// A new event now, with a fresh time-ordered id.
    pub fn new(correlation_id: impl Into<String>, causation_id: Option<Uuid>, payload: P) -> Self {
        let now = Utc::now();
        Self {
            event_id: Uuid::now_v7(),
            event_type: payload.event_type().to_owned(),
            // Avro carries milliseconds: truncate so a decoded event equals the one encoded.
            occurred_at: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now),
            correlation_id: correlation_id.into(),
            causation_id,
            payload,
        }
    }
}

/// The envelope's fields without the payload, decoded on their own.
#[derive(Debug, Deserialize)]
pub(crate) struct Header {
    #[serde(with = "uuid::serde::hyphenated")]
    pub event_id: Uuid,
    pub event_type: String,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    #[serde(with = "optional_uuid")]
    pub causation_id: Option<Uuid>,
}

/// serde for `Option<Uuid>` as an Avro `["null", {"type":"string","logicalType":"uuid"}]`.
mod optional_uuid {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(value: &Option<Uuid>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(id) => s.serialize_some(&id.hyphenated().to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| Uuid::parse_str(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Declares a topic's payload union: the enum, its `Payload` impl, and its branch names.
/// Variants must be listed in the order of the `.avsc` union.
macro_rules! payload_union {
    ($(#[$meta:meta])* $name:ident for $topic:expr => { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[doc = concat!("A `", stringify!($variant), "` event.")] $variant($variant),)+
        }

        impl $crate::envelope::Payload for $name {
            const TOPIC: $crate::topics::Topic = $topic;

            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }

            fn from_branch(
                name: &str,
                value: &apache_avro::types::Value,
            ) -> Result<Self, apache_avro::Error> {
                match name {
                    $(stringify!($variant) => Ok(Self::$variant(apache_avro::from_value(value)?)),)+
                    other => Err(apache_avro::Error::new(apache_avro::error::Details::DeserializeValue(
                        format!("unknown event type {other}"),
                    ))),
                }
            }

            fn branch_names() -> &'static [&'static str] {
                &[$(stringify!($variant)),+]
            }
        }

        $(
            impl From<$variant> for $name {
                fn from(value: $variant) -> Self {
                    Self::$variant(value)
                }
            }
        )+
    };
}
pub(crate) use payload_union;
