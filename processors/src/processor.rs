//! What a processor is ([`Processor`]: its consumer group, its settings, how it runs), what
//! every processor is given ([`Shared`]), and what its consumer group knows of Kafka.

use std::future::Future;
use std::sync::Arc;

use kassa_schemas::{Codec, Topic, topics::namespace};
use tokio::sync::watch;

use crate::settings::Common;
use crate::{ConsumerGroup, Own};

/// One processor, as its module declares it: implement this in the processor's folder and name
/// it once in `processors!` (lib.rs), and `kassa run`, `kassa migrate`, `kassa topics create`,
/// `kassa offsets`, the settings and the tests all know it.
pub trait Processor {
    /// Its name: the consumer group, the Postgres schema, the `kassa run` component.
    const NAME: &'static str;
    /// The topics it consumes.
    const INPUTS: &'static [Topic];
    /// How its partitions are assigned (librdkafka's `partition.assignment.strategy`). `range`
    /// gives one instance the same partition of each input: as every group reads topics keyed
    /// alike and equally partitioned, one instance owns a SKU or an order at a time.
    const ASSIGNMENT: &'static str = "range";
    /// Its own settings, as flags and `KASSA_…` variables (`kassa --help` shows them under its
    /// name).
    type Settings: clap::Args + clap::FromArgMatches + std::fmt::Debug + Clone + Send + Sync;
    /// What it runs with, made from its settings by [`Processor::config`].
    type Config: Clone + Send + Sync;

    /// Its run-time config from its own settings and the shared ones (an error names the bad
    /// setting).
    fn config(settings: &Self::Settings, common: &Common) -> Result<Self::Config, String>;

    /// Runs it (handler and background tasks) until `shutdown` turns true.
    fn run(
        shared: &Shared,
        codec: Arc<Codec>,
        config: &Self::Config,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = Result<(), ProcessorError>> + Send;
}

/// What every processor shares: Kafka, Postgres and batching, the registry, Redis.
/// (Not `Debug`: it holds the database URL, password included.)
#[derive(Clone)]
pub struct Shared {
    /// Kafka, Postgres and batching.
    pub runtime: crate::RuntimeConfig,
    /// Schema Registry URL.
    pub registry_url: String,
    /// Redis URL (flash-sale tokens).
    pub redis_url: String,
}

/// Everything one processor needs to run: what every processor shares, and its own config.
/// (Not `Debug`: it holds secrets.)
#[derive(Clone)]
pub struct ProcessorConfig {
    /// What every processor shares.
    pub shared: Shared,
    /// The processor's own config (which also says which processor it is).
    pub own: Own,
}

/// Why a processor could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The registry client could not be set up.
    #[error("{0}")]
    Codec(#[from] kassa_schemas::CodecError),
    /// The runtime failed to start.
    #[error("{0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The payment gateway could not be set up.
    #[error("payment gateway: {0}")]
    Gateway(String),
    /// A processor's own settings could not be put to use (the message names the setting).
    #[error("{0}")]
    Setup(String),
}

impl ConsumerGroup {
    /// The Kafka consumer group id: the namespace, then the name.
    pub fn group_id(self) -> String {
        format!("{}{}", namespace(), self.name())
    }

    /// The consumer group of the processor named `name`.
    pub fn from_name(name: &str) -> Option<ConsumerGroup> {
        ConsumerGroup::ALL.into_iter().find(|g| g.name() == name)
    }

    /// The dead-letter topic for messages the group cannot decode or declares invalid.
    pub fn dlq_topic(self) -> String {
        format!("{}{}", namespace(), self.dlq_base_name())
    }

    /// The dead-letter topic's name without the namespace.
    pub fn dlq_base_name(self) -> String {
        format!("{}.dlq", self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_consumed_by_a_processor_and_each_group_has_a_dead_letter_topic() {
        let consumed: std::collections::HashSet<_> = ConsumerGroup::ALL
            .iter()
            .flat_map(|g| g.inputs().iter().copied())
            .collect();
        let all: std::collections::HashSet<_> = Topic::ALL.into_iter().collect();
        assert_eq!(consumed, all, "each topic has a consumer in kassa");
        for group in ConsumerGroup::ALL {
            assert_eq!(ConsumerGroup::from_name(group.name()), Some(group));
            assert_eq!(
                group.dlq_topic(),
                format!("{}{}.dlq", namespace(), group.name())
            );
        }
        assert_eq!(ConsumerGroup::Inventory.name(), "inventory");
    }
}
