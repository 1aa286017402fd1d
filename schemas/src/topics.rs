//! The topic catalogue: every topic kassa writes, its key and its schema (the consumer groups
//! reading them are the processors', in `kassa_processors::ConsumerGroup`).
//!
//! Names live in a namespace: `KASSA_NAMESPACE` (e.g. `staging.`, empty by default) prefixes
//! every topic, dead-letter topic, Kafka consumer group id and, through the topic name, every
//! registry subject, so several kassa deployments (or a test run beside a development kassa)
//! can share one Kafka cluster and one registry without seeing each other's events.

use std::sync::OnceLock;

/// The environment variable holding the namespace.
pub const NAMESPACE_ENV: &str = "KASSA_NAMESPACE";

/// The namespace of this process (`KASSA_NAMESPACE`, read once), prefixed to every Kafka name.
/// Characters Kafka does not allow in a topic name are refused with a panic at first use, as a
/// misconfiguration that must not start.
pub fn namespace() -> &'static str {
    static NAMESPACE: OnceLock<String> = OnceLock::new();
    NAMESPACE.get_or_init(|| {
        let ns = std::env::var(NAMESPACE_ENV).unwrap_or_default();
        assert!(
            ns.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
            "{NAMESPACE_ENV}={ns:?}: only ASCII letters, digits, '.', '_' and '-' are allowed"
        );
        ns
    })
}

/// One of kassa's event topics; its value schema is `schemas/avro/<name>.avsc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Checkout requests, one per order line, keyed by SKU (API → inventory).
    CheckoutRequests,
    /// Release / commit / restock / set-stock commands, keyed by SKU (orders, API → inventory).
    InventoryCommands,
    /// Reservation outcomes, keyed by order id (inventory → orders).
    InventoryEvents,
    /// Cancellation and hold-renewal requests, keyed by order id (API → orders).
    OrdersRequests,
    /// Order facts, keyed by order id (orders → payments, expiry, downstream teams).
    OrdersEvents,
    /// Payment outcomes, keyed by order id (payments → orders).
    PaymentsEvents,
    /// Verified provider webhooks, keyed by order id (API → payments).
    PaymentsWebhooks,
    /// Deadlines that passed, keyed by order id (expiry → orders).
    ExpiryEvents,
}

impl Topic {
    /// Every event topic, in pipeline order.
    pub const ALL: [Topic; 8] = [
        Topic::CheckoutRequests,
        Topic::InventoryCommands,
        Topic::InventoryEvents,
        Topic::OrdersRequests,
        Topic::OrdersEvents,
        Topic::PaymentsEvents,
        Topic::PaymentsWebhooks,
        Topic::ExpiryEvents,
    ];

    /// The Kafka topic name: the namespace, then the base name.
    pub fn name(self) -> &'static str {
        static NAMES: OnceLock<Vec<String>> = OnceLock::new();
        let names = NAMES.get_or_init(|| {
            Topic::ALL
                .iter()
                .map(|t| format!("{}{}", namespace(), t.base_name()))
                .collect()
        });
        let index = Topic::ALL
            .iter()
            .position(|t| *t == self)
            .expect("every topic is in ALL");
        &names[index]
    }

    /// The topic's name without the namespace (its schema file is `schemas/avro/<base name>.avsc`).
    pub const fn base_name(self) -> &'static str {
        match self {
            Topic::CheckoutRequests => "checkout.requests",
            Topic::InventoryCommands => "inventory.commands",
            Topic::InventoryEvents => "inventory.events",
            Topic::OrdersRequests => "orders.requests",
            Topic::OrdersEvents => "orders.events",
            Topic::PaymentsEvents => "payments.events",
            Topic::PaymentsWebhooks => "payments.webhooks",
            Topic::ExpiryEvents => "expiry.events",
        }
    }

    /// The registry subject of the topic's values (TopicNameStrategy).
    pub fn subject(self) -> String {
        format!("{}-value", self.name())
    }

    /// The value schema (Avro JSON) compiled into the binary from `schemas/avro/`.
    pub const fn schema_json(self) -> &'static str {
        match self {
            Topic::CheckoutRequests => include_str!("../avro/checkout.requests.avsc"),
            Topic::InventoryCommands => include_str!("../avro/inventory.commands.avsc"),
            Topic::InventoryEvents => include_str!("../avro/inventory.events.avsc"),
            Topic::OrdersRequests => include_str!("../avro/orders.requests.avsc"),
            Topic::OrdersEvents => include_str!("../avro/orders.events.avsc"),
            Topic::PaymentsEvents => include_str!("../avro/payments.events.avsc"),
            Topic::PaymentsWebhooks => include_str!("../avro/payments.webhooks.avsc"),
            Topic::ExpiryEvents => include_str!("../avro/expiry.events.avsc"),
        }
    }

    /// What the message key holds.
    pub const fn key(self) -> KeyKind {
        match self {
            Topic::CheckoutRequests | Topic::InventoryCommands => KeyKind::Sku,
            _ => KeyKind::OrderId,
        }
    }

    /// The components that write the topic (`api` or a processor's name).
    pub const fn producers(self) -> &'static [&'static str] {
        match self {
            Topic::CheckoutRequests | Topic::OrdersRequests | Topic::PaymentsWebhooks => &["api"],
            Topic::InventoryCommands => &["orders", "api"],
            Topic::InventoryEvents => &["inventory"],
            Topic::OrdersEvents => &["orders"],
            Topic::PaymentsEvents => &["payments"],
            Topic::ExpiryEvents => &["expiry"],
        }
    }

    /// Looks a topic up by its Kafka name.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// What a topic's UTF-8 string key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The SKU: all contention for one SKU lands on one partition.
    Sku,
    /// The order id: every event of one order stays in order.
    OrderId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_has_a_schema_whose_file_is_named_after_it() {
        for topic in Topic::ALL {
            let schema: serde_json::Value = serde_json::from_str(topic.schema_json()).unwrap();
            assert_eq!(schema["type"], "record", "{}", topic.name());
            assert_eq!(Topic::from_name(topic.name()), Some(topic));
        }
    }

    #[test]
    fn every_topic_is_named_in_the_namespace() {
        assert_eq!(
            Topic::CheckoutRequests.name(),
            format!("{}checkout.requests", namespace())
        );
    }
}
