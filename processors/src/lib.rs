//! kassa's stream processors and the exactly-once runtime they share. One module a processor:
//! inventory, orders, payments and expiry.

pub mod expiry;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod runtime;

use std::sync::Arc;
use std::time::Duration;

use kassa_schemas::redis_link::RedisLink;
use kassa_schemas::{Codec, ConsumerGroup};
use tokio::sync::watch;

pub use runtime::RuntimeConfig;

/// Everything a processor needs to run.
/// (Not `Debug`: it holds the database URL, password included.)
#[derive(Clone)]
pub struct ProcessorConfig {
    /// Kafka, Postgres and batching.
    pub runtime: RuntimeConfig,
    /// Schema Registry URL.
    pub registry_url: String,
    /// Redis URL (flash-sale tokens).
    pub redis_url: String,
    /// Reservation hold when a request names none.
    pub default_hold: Duration,
    /// How long an order may wait on stock being committed or its payment captured before it
    /// is found stalled and the processor it waits on is asked again.
    pub progress_after: Duration,
    /// How the orders processor decides (3-D Secure window, longest renewed hold).
    pub order_policy: orders::machine::Policy,
    /// The payment gateway.
    pub gateway: payments::GatewayConfig,
    /// How the payments worker runs.
    pub payment_worker: payments::worker::WorkerConfig,
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

/// Runs the processor for `group` until `shutdown` turns true.
pub async fn run(
    group: ConsumerGroup,
    config: ProcessorConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let codec = Arc::new(Codec::new(&config.registry_url)?);
    match group {
        ConsumerGroup::Inventory => {
            let Some(pool) = runtime::connect(&config.runtime, 2, &mut shutdown.clone()).await
            else {
                return Ok(());
            };
            let redis = RedisLink::start(&config.redis_url, Duration::from_secs(5));
            let retry = tokio::spawn(inventory::flash::retry(
                pool.clone(),
                redis.clone(),
                shutdown.clone(),
            ));
            let handler = inventory::Inventory::new(codec, config.default_hold, redis, pool);
            Ok(runtime::run(&config.runtime, handler, shutdown, vec![retry]).await?)
        }
        ConsumerGroup::Orders => {
            runtime::run(
                &config.runtime,
                orders::Orders::new(codec, config.order_policy),
                shutdown,
                Vec::new(),
            )
            .await?;
            Ok(())
        }
        ConsumerGroup::Expiry => {
            let Some(pool) = runtime::connect(&config.runtime, 2, &mut shutdown.clone()).await
            else {
                return Ok(());
            };
            let ticker = tokio::spawn(expiry::ticker::run(pool, codec.clone(), shutdown.clone()));
            let result = runtime::run(
                &config.runtime,
                expiry::Expiry::new(
                    codec,
                    chrono::Duration::from_std(config.progress_after)
                        .unwrap_or(chrono::Duration::minutes(2)),
                ),
                shutdown,
                vec![ticker],
            )
            .await;
            Ok(result?)
        }
        ConsumerGroup::Payments => {
            // The worker's own pool: a connection per call in flight, one for its listener, one to claim.
            let size = u32::try_from(config.payment_worker.concurrency)
                .unwrap_or(u32::MAX)
                .saturating_add(2);
            let Some(pool) = runtime::connect(&config.runtime, size, &mut shutdown.clone()).await
            else {
                return Ok(());
            };
            match &config.gateway {
                payments::GatewayConfig::Simulated(sim) => {
                    let gateway = payments::gateway::simulated::Simulated::new(pool.clone(), *sim);
                    run_payments(&config, codec, pool, gateway, shutdown).await
                }
                payments::GatewayConfig::Stripe(stripe) => {
                    let gateway = payments::gateway::stripe::StripeGateway::new(stripe)
                        .map_err(ProcessorError::Gateway)?;
                    run_payments(&config, codec, pool, gateway, shutdown).await
                }
            }
        }
    }
}

/// Runs the payments handler and its worker (charging through `gateway`) until shutdown.
async fn run_payments<G: payments::gateway::Gateway>(
    config: &ProcessorConfig,
    codec: Arc<Codec>,
    pool: sqlx::PgPool,
    gateway: G,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ProcessorError> {
    let name = gateway.name();
    tracing::info!(gateway = name, "payments charging through");
    let worker = tokio::spawn(payments::worker::run(
        pool,
        codec.clone(),
        Arc::new(gateway),
        config.payment_worker.clone(),
        shutdown.clone(),
    ));
    let result = runtime::run(
        &config.runtime,
        payments::Payments::new(codec, name),
        shutdown,
        vec![worker],
    )
    .await;
    Ok(result?)
}
