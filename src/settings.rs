//! Every `KASSA_…` setting, read from the environment (or flags) in one place.

use clap::Args;

/// Where kassa finds its infrastructure; `scripts/dev env` prints values for the local services.
/// (Not `Debug`: it holds the database URL's password and the webhook secret.)
#[derive(Clone, Args)]
pub struct Settings {
    /// Kafka bootstrap servers, comma separated.
    #[arg(
        long,
        env = "KASSA_KAFKA_BROKERS",
        default_value = "127.0.0.1:19092",
        global = true
    )]
    pub kafka_brokers: String,

    /// Confluent-compatible Schema Registry base URL (Apicurio: …/apis/ccompat/v7).
    #[arg(
        long,
        env = "KASSA_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:18081/apis/ccompat/v7",
        global = true
    )]
    pub schema_registry_url: String,

    /// PostgreSQL connection URL; every processor uses its own schema in this database.
    #[arg(
        long,
        env = "KASSA_DATABASE_URL",
        default_value = "postgres://kassa:kassa@127.0.0.1:15432/kassa",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Redis URL (carts and the flash-sale gate).
    #[arg(
        long,
        env = "KASSA_REDIS_URL",
        default_value = "redis://127.0.0.1:16379",
        global = true
    )]
    pub redis_url: String,

    /// Partitions per topic when `kassa topics create` creates one.
    #[arg(
        long,
        env = "KASSA_TOPIC_PARTITIONS",
        default_value_t = 12,
        global = true
    )]
    pub topic_partitions: i32,

    /// Replication factor per topic when `kassa topics create` creates one.
    #[arg(
        long,
        env = "KASSA_TOPIC_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    pub topic_replication: i32,

    /// Most messages a processor takes into one batch (one Postgres transaction).
    #[arg(long, env = "KASSA_BATCH_MAX", default_value_t = 5000, global = true)]
    pub batch_max: usize,

    /// Longest a processor waits for a batch to fill once its first message arrived, in ms.
    #[arg(long, env = "KASSA_BATCH_WAIT_MS", default_value_t = 20, global = true)]
    pub batch_wait_ms: u64,

    /// Static Kafka group membership id of this instance (optional; unique per running instance).
    #[arg(long, env = "KASSA_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,

    /// Reservation hold when a checkout request names none, in seconds.
    #[arg(
        long,
        env = "KASSA_DEFAULT_HOLD_SECONDS",
        default_value_t = 900,
        global = true
    )]
    pub default_hold_seconds: u64,

    /// How long an order may wait in `authorized` or `confirmed` (on stock being committed, on
    /// its payment being captured) before the processor it waits on is asked again, in seconds.
    #[arg(
        long,
        env = "KASSA_PROGRESS_DEADLINE_SECONDS",
        default_value_t = 120,
        global = true
    )]
    pub progress_deadline_seconds: u64,

    /// How long a customer has to complete 3-D Secure before the order is cancelled, in seconds.
    #[arg(
        long,
        env = "KASSA_PAYMENT_ACTION_SECONDS",
        default_value_t = 600,
        global = true
    )]
    pub payment_action_seconds: u64,

    /// The longest reservation hold a customer's renewal may ask for, in seconds.
    #[arg(
        long,
        env = "KASSA_MAX_HOLD_SECONDS",
        default_value_t = 3600,
        global = true
    )]
    pub max_hold_seconds: u64,

    /// Where this kassa runs: `production` (the default) or `development` (`scripts/dev env`).
    #[arg(long, env = "KASSA_ENVIRONMENT", value_enum, default_value_t = Environment::Production, global = true)]
    pub environment: Environment,

    /// The payment gateway: `stripe`, or `simulated` (built in; charges nobody). Unset: the
    /// simulated one in development, and a refusal to start in production.
    #[arg(long, env = "KASSA_PAYMENT_GATEWAY", value_parser = ["simulated", "stripe"], global = true)]
    pub payment_gateway: Option<String>,

    /// Stripe secret API key (`sk_…`), for the `stripe` gateway.
    #[arg(
        long,
        env = "KASSA_STRIPE_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub stripe_secret_key: Option<String>,

    /// Stripe API base (e.g. localstripe's), for the `stripe` gateway; unset: Stripe itself.
    #[arg(long, env = "KASSA_STRIPE_API_BASE", global = true)]
    pub stripe_api_base: Option<String>,

    /// Faults the simulated gateway injects, e.g. `transient=0.1,timeout=0.05,lost=0.05`.
    #[arg(long, env = "KASSA_SIM_FAULTS", default_value = "", global = true)]
    pub sim_faults: String,

    /// Latency the simulated gateway adds to every call, in ms.
    #[arg(long, env = "KASSA_SIM_LATENCY_MS", default_value_t = 0, global = true)]
    pub sim_latency_ms: u64,

    /// Payment provider calls in flight at once per payments instance.
    #[arg(
        long,
        env = "KASSA_PAYMENT_CONCURRENCY",
        default_value_t = 64,
        global = true
    )]
    pub payment_concurrency: usize,

    /// How long a payments worker holds a payment it works on before another may take it, in
    /// seconds (renewed every third of it while the provider calls last).
    #[arg(
        long,
        env = "KASSA_PAYMENT_LEASE_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub payment_lease_seconds: u64,

    /// How often a payment waiting for 3-D Secure is looked up at the provider, in seconds.
    #[arg(
        long,
        env = "KASSA_PAYMENT_RECHECK_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub payment_recheck_seconds: u64,

    /// How long a guest cart lives after its last use, in seconds.
    #[arg(long, env = "KASSA_CART_TTL_GUEST_SECONDS", default_value_t = 7 * 24 * 3600, global = true)]
    pub cart_ttl_guest_seconds: u64,

    /// How long a customer's cart lives after its last use, in seconds.
    #[arg(long, env = "KASSA_CART_TTL_CUSTOMER_SECONDS", default_value_t = 30 * 24 * 3600, global = true)]
    pub cart_ttl_customer_seconds: u64,

    /// The Stripe webhook endpoint's signing secret (`whsec_…`); unset: webhooks are refused.
    #[arg(
        long,
        env = "KASSA_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub stripe_webhook_secret: Option<String>,

    /// Requests per second per storefront key (bursts of 5 s' worth absorbed).
    #[arg(
        long,
        env = "KASSA_RATE_STOREFRONT_PER_SECOND",
        default_value_t = 5000,
        global = true
    )]
    pub rate_storefront_per_second: u32,

    /// New orders and order requests per second per customer (bursts of 5 s' worth absorbed).
    #[arg(
        long,
        env = "KASSA_RATE_CUSTOMER_PER_SECOND",
        default_value_t = 20,
        global = true
    )]
    pub rate_customer_per_second: u32,

    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "KASSA_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: std::net::SocketAddr,
}

/// Where kassa runs, for the defaults that must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Environment {
    /// A developer's machine or a test run: the simulated gateway may be the default.
    Development,
    /// Anything else: nothing that charges nobody is ever a default.
    Production,
}

impl Settings {
    /// The settings from the environment alone (for tests and tools that have no command line).
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        <Only as clap::Parser>::parse_from(["kassa"]).settings
    }

    /// What a processor needs, from these settings (an error names a bad payment setting).
    pub fn processor_config(&self) -> Result<kassa_processors::ProcessorConfig, String> {
        use kassa_processors::payments::{GatewayConfig, gateway};
        let chosen = match (self.payment_gateway.as_deref(), self.environment) {
            (Some(gateway), _) => gateway,
            (None, Environment::Development) => "simulated",
            (None, Environment::Production) => {
                return Err("KASSA_PAYMENT_GATEWAY is not set: outside development (KASSA_ENVIRONMENT=production, \
                            the default) kassa never falls back to the simulated gateway, which charges nobody; \
                            set it to stripe (or to simulated, explicitly)"
                    .into());
            }
        };
        let gateway = if chosen == "stripe" {
            let secret_key = self
                .stripe_secret_key
                .clone()
                .ok_or("KASSA_STRIPE_SECRET_KEY is needed for the stripe gateway")?;
            GatewayConfig::Stripe(gateway::stripe::StripeConfig {
                secret_key,
                api_base: self.stripe_api_base.clone(),
                timeout: std::time::Duration::from_secs(10),
            })
        } else {
            let latency = std::time::Duration::from_millis(self.sim_latency_ms);
            GatewayConfig::Simulated(
                gateway::simulated::SimConfig::parse_faults(&self.sim_faults, latency)
                    .map_err(|e| format!("KASSA_SIM_FAULTS: {e}"))?,
            )
        };
        use kassa_processors::{expiry, inventory, orders, payments};
        Ok(kassa_processors::ProcessorConfig {
            shared: kassa_processors::Shared {
                runtime: kassa_processors::RuntimeConfig {
                    brokers: self.kafka_brokers.clone(),
                    database_url: self.database_url.clone(),
                    batch_max: self.batch_max.max(1),
                    batch_wait: std::time::Duration::from_millis(self.batch_wait_ms),
                    instance_id: self.instance_id.clone(),
                },
                registry_url: self.schema_registry_url.clone(),
                redis_url: self.redis_url.clone(),
            },
            inventory: inventory::Config {
                default_hold: std::time::Duration::from_secs(self.default_hold_seconds),
            },
            orders: orders::Config {
                policy: orders::machine::Policy {
                    action_window: seconds(self.payment_action_seconds),
                    max_hold: seconds(self.max_hold_seconds),
                },
            },
            payments: payments::Config {
                gateway,
                worker: payments::worker::WorkerConfig {
                    concurrency: self.payment_concurrency.max(1),
                    recheck: std::time::Duration::from_secs(self.payment_recheck_seconds.max(1)),
                    lease: std::time::Duration::from_secs(self.payment_lease_seconds.max(1)),
                    owner: self.instance_id.as_ref().map(|id| format!("payments-{id}")),
                },
            },
            expiry: expiry::Config {
                progress_after: std::time::Duration::from_secs(
                    self.progress_deadline_seconds.max(1),
                ),
            },
        })
    }

    /// What the API needs, from these settings.
    pub fn api_config(&self) -> kassa_api::ApiConfig {
        kassa_api::ApiConfig {
            addr: self.http_addr,
            database_url: self.database_url.clone(),
            brokers: self.kafka_brokers.clone(),
            registry_url: self.schema_registry_url.clone(),
            redis_url: self.redis_url.clone(),
            hold_seconds: i32::try_from(self.default_hold_seconds).unwrap_or(i32::MAX),
            stripe_webhook_secret: self
                .stripe_webhook_secret
                .clone()
                .map(kassa_api::webhooks::Secret),
            rate_limits: kassa_api::limits::RateLimits {
                storefront_per_second: self.rate_storefront_per_second,
                customer_per_second: self.rate_customer_per_second,
            },
            cart_ttl: kassa_api::carts::CartTtl {
                guest: self.cart_ttl_guest_seconds.max(1),
                customer: self.cart_ttl_customer_seconds.max(1),
            },
        }
    }

    /// The database URL with any password replaced, fit for logs and errors.
    pub fn database_url_redacted(&self) -> String {
        redact_url_password(&self.database_url)
    }
}

/// `secs` as a chrono duration (saturating).
fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000).max(1))
}

/// Replaces the password of a `scheme://user:password@host/…` URL with `***`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url_password;

    #[test]
    fn passwords_never_reach_a_log_line() {
        assert_eq!(
            redact_url_password("postgres://kassa:s3cret@db:5432/kassa"),
            "postgres://kassa:***@db:5432/kassa"
        );
        assert_eq!(
            redact_url_password("postgres://db/kassa"),
            "postgres://db/kassa"
        );
        assert_eq!(
            redact_url_password("redis://user@host"),
            "redis://user@host"
        );
    }
}
