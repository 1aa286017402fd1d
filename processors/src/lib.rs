//! kassa's stream processors and the exactly-once runtime they share. One module a processor:
//! inventory, orders, payments and expiry.

pub mod expiry;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod runtime;

use std::sync::Arc;

use kassa_schemas::{Codec, ConsumerGroup};
use tokio::sync::watch;

pub use runtime::RuntimeConfig;

/// What every processor shares: Kafka, Postgres and batching, the registry, Redis.
/// (Not `Debug`: it holds the database URL, password included.)
#[derive(Clone)]
pub struct Shared {
    /// Kafka, Postgres and batching.
    pub runtime: RuntimeConfig,
    /// Schema Registry URL.
    pub registry_url: String,
    /// Redis URL (flash-sale tokens).
    pub redis_url: String,
}

/// Everything the processors need to run: what they share, and each one's own settings.
/// (Not `Debug`: it holds secrets.)
#[derive(Clone)]
pub struct ProcessorConfig {
    /// What every processor shares.
    pub shared: Shared,
    /// The inventory processor's settings.
    pub inventory: inventory::Config,
    /// The orders processor's settings.
    pub orders: orders::Config,
    /// The payments processor's settings.
    pub payments: payments::Config,
    /// The expiry processor's settings.
    pub expiry: expiry::Config,
}

/// Why a processor could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// The registry client could not be set up.
    #[error("{0}")]
    Codec(#[from] kassa_schemas::CodecError),
    /// The runtime failed to start.
    #[error("{0}")]
    Runtime(#[from] runtime::RuntimeError),
    /// The payment gateway could not be set up.
    #[error("payment gateway: {0}")]
    Gateway(String),
}

/// Runs the processor of `group` until `shutdown` turns true. Each processor's module holds its
/// handler, its background tasks and its settings; this is the one line that names each.
pub async fn run(
    group: ConsumerGroup,
    config: ProcessorConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let shared = &config.shared;
    let codec = Arc::new(Codec::new(&shared.registry_url)?);
    match group {
        ConsumerGroup::Inventory => {
            inventory::run(shared, codec, &config.inventory, shutdown).await
        }
        ConsumerGroup::Orders => orders::run(shared, codec, &config.orders, shutdown).await,
        ConsumerGroup::Payments => payments::run(shared, codec, &config.payments, shutdown).await,
        ConsumerGroup::Expiry => expiry::run(shared, codec, &config.expiry, shutdown).await,
    }
}
