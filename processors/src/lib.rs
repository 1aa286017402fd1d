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

/// Everything one processor needs to run: what every processor shares, and its own settings.
/// (Not `Debug`: it holds secrets.)
#[derive(Clone)]
pub struct ProcessorConfig {
    /// What every processor shares.
    pub shared: Shared,
    /// The processor's own settings (which also says which processor it is).
    pub own: Own,
}

/// One processor's own settings.
#[derive(Clone)]
pub enum Own {
    /// The inventory processor's.
    Inventory(inventory::Config),
    /// The orders processor's.
    Orders(orders::Config),
    /// The payments processor's.
    Payments(payments::Config),
    /// The expiry processor's.
    Expiry(expiry::Config),
}

impl Own {
    /// The processor these settings are for.
    pub const fn group(&self) -> ConsumerGroup {
        match self {
            Own::Inventory(_) => ConsumerGroup::Inventory,
            Own::Orders(_) => ConsumerGroup::Orders,
            Own::Payments(_) => ConsumerGroup::Payments,
            Own::Expiry(_) => ConsumerGroup::Expiry,
        }
    }
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

/// Runs the processor `config` is for until `shutdown` turns true. Each processor's module holds
/// its handler, its background tasks and its settings; this is the one place that names each.
pub async fn run(
    config: ProcessorConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let shared = &config.shared;
    let codec = Arc::new(Codec::new(&shared.registry_url)?);
    match &config.own {
        Own::Inventory(own) => inventory::run(shared, codec, own, shutdown).await,
        Own::Orders(own) => orders::run(shared, codec, own, shutdown).await,
        Own::Payments(own) => payments::run(shared, codec, own, shutdown).await,
        Own::Expiry(own) => expiry::run(shared, codec, own, shutdown).await,
    }
}
