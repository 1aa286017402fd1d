//! Every `KASSA_…` setting, read from the environment (or flags), typed: durations are
//! `Duration`s, secrets are [`Secret`]s (they never print), choices are enums. Settings are
//! grouped by what they tune (`kassa --help` shows a heading a group), and each default is written
//! once: here for what the whole of kassa or the API reads, in each processor's folder for its
//! own (flattened in as [`kassa_processors::Settings`]). The components take what they need
//! through [`Settings::processor_config`] and [`Settings::api_config`].

use std::time::Duration;

use clap::Args;
use kassa_processors::ConsumerGroup;
pub use kassa_processors::payments::settings::Gateway;
pub use kassa_processors::settings::Environment;
use kassa_processors::settings::{Common, millis, seconds};
pub use kassa_schemas::secret::Secret;

/// Every setting of every component. `scripts/dev env` prints values for the local services.
#[derive(Debug, Clone, Args)]
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

    /// PostgreSQL connection URL: the API's and the operator's schemas, and every processor's
    /// (each in a schema of its own) unless `KASSA_<PROCESSOR>_DATABASE_URL` puts it elsewhere.
    #[arg(
        long,
        env = "KASSA_DATABASE_URL",
        default_value = "postgres://kassa:kassa@127.0.0.1:15432/kassa",
        hide_env_values = true,
        hide_default_value = true,
        global = true
    )]
    pub database_url: Secret,

    /// Redis URL (carts and the flash-sale gate): `rediss://` for TLS, an ACL user and password in the URL.
    #[arg(
        long,
        env = "KASSA_REDIS_URL",
        default_value = "redis://127.0.0.1:16379",
        hide_env_values = true,
        global = true
    )]
    pub redis_url: Secret,

    /// Where this kassa runs: `production` (the default) or `development` (`scripts/dev env`).
    #[arg(long, env = "KASSA_ENVIRONMENT", value_enum, default_value_t = Environment::Production, global = true)]
    pub environment: Environment,

    /// Topics as `kassa topics create` creates them.
    #[command(flatten, next_help_heading = "Topics")]
    pub topics: TopicSettings,

    /// How every processor consumes.
    #[command(flatten, next_help_heading = "Processing")]
    pub processing: ProcessingSettings,

    /// Reservation holds (the API and the processors read them).
    #[command(flatten, next_help_heading = "Holds")]
    pub holds: HoldSettings,

    /// Each processor's own settings (a heading each).
    #[command(flatten)]
    pub processors: kassa_processors::Settings,

    /// The HTTP API.
    #[command(flatten, next_help_heading = "API")]
    pub api: ApiSettings,

    /// Logging and process control.
    #[command(flatten, next_help_heading = "Process")]
    pub process: ProcessSettings,
}

/// Topics as `kassa topics create` creates them.
#[derive(Debug, Clone, Args)]
pub struct TopicSettings {
    /// Partitions per topic when `kassa topics create` creates one.
    #[arg(
        long = "topic-partitions",
        env = "KASSA_TOPIC_PARTITIONS",
        default_value_t = 12,
        global = true
    )]
    pub partitions: i32,

    /// Replication factor per topic when `kassa topics create` creates one.
    #[arg(
        long = "topic-replication",
        env = "KASSA_TOPIC_REPLICATION",
        default_value_t = 1,
        global = true
    )]
    pub replication: i32,

    /// `min.insync.replicas` of every topic (unset: the broker's default); at most the replication.
    #[arg(
        long = "topic-min-insync-replicas",
        env = "KASSA_TOPIC_MIN_INSYNC_REPLICAS",
        global = true
    )]
    pub min_insync_replicas: Option<i32>,

    /// `retention.ms` of the event topics (7 days, the most the inboxes allow).
    #[arg(
        long = "topic-retention-ms",
        env = "KASSA_TOPIC_RETENTION_MS",
        default_value_t = crate::topic_config::DEFAULT_EVENT_RETENTION_MS,
        allow_negative_numbers = true,
        global = true
    )]
    pub retention_ms: i64,

    /// `retention.ms` of the dead-letter topics (30 days; -1 keeps letters forever).
    #[arg(
        long = "topic-dlq-retention-ms",
        env = "KASSA_TOPIC_DLQ_RETENTION_MS",
        default_value_t = crate::topic_config::DEFAULT_DEAD_LETTER_RETENTION_MS,
        allow_negative_numbers = true,
        global = true
    )]
    pub dead_letter_retention_ms: i64,

    /// Any topic property for one topic, `<topic>:<property>=<value>` (base name, e.g.
    /// `payments.dlq:retention.ms=-1`); repeat the flag, or separate them with `;` in the variable.
    #[arg(
        long = "topic-config",
        env = "KASSA_TOPIC_CONFIG",
        value_delimiter = ';',
        global = true
    )]
    pub overrides: Vec<crate::topic_config::TopicOverride>,
}

/// How every processor consumes.
#[derive(Debug, Clone, Args)]
pub struct ProcessingSettings {
    /// Most messages a processor takes into one batch (one Postgres transaction).
    #[arg(long, env = "KASSA_BATCH_MAX", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub batch_max: u32,

    /// Longest a processor waits for a batch to fill once its first message arrived, in ms.
    #[arg(long = "batch-wait-ms", env = "KASSA_BATCH_WAIT_MS", default_value = "20", value_parser = millis, global = true)]
    pub batch_wait: Duration,

    /// Static Kafka group membership id of this instance (optional; unique per running instance).
    #[arg(long, env = "KASSA_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,
}

/// Reservation holds: the API and the processors read them.
#[derive(Debug, Clone, Args)]
pub struct HoldSettings {
    /// Reservation hold when a checkout request names none, in seconds.
    #[arg(long = "default-hold-seconds", env = "KASSA_DEFAULT_HOLD_SECONDS", default_value = "900", value_parser = seconds, global = true)]
    pub default_hold: Duration,

    /// The longest reservation hold a customer's renewal may ask for, in seconds (30 at least).
    #[arg(long = "max-hold-seconds", env = "KASSA_MAX_HOLD_SECONDS", default_value = "3600", value_parser = seconds, global = true)]
    pub max_hold: Duration,
}

/// The HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ApiSettings {
    /// Address the HTTP API listens on.
    #[arg(
        long = "http-addr",
        env = "KASSA_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub addr: std::net::SocketAddr,

    /// How long a guest cart lives after its last use, in seconds (7 days).
    #[arg(long = "cart-ttl-guest-seconds", env = "KASSA_CART_TTL_GUEST_SECONDS", default_value = "604800", value_parser = seconds, global = true)]
    pub cart_ttl_guest: Duration,

    /// How long a customer's cart lives after its last use, in seconds (30 days).
    #[arg(long = "cart-ttl-customer-seconds", env = "KASSA_CART_TTL_CUSTOMER_SECONDS", default_value = "2592000", value_parser = seconds, global = true)]
    pub cart_ttl_customer: Duration,

    /// The Stripe webhook endpoint's signing secret (`whsec_…`); unset: webhooks are refused.
    #[arg(
        long = "stripe-webhook-secret",
        env = "KASSA_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub stripe_webhook_secret: Option<Secret>,

    /// Requests per second per storefront key (bursts of 5 s' worth absorbed).
    #[arg(
        long = "rate-storefront-per-second",
        env = "KASSA_RATE_STOREFRONT_PER_SECOND",
        default_value_t = 5000,
        global = true
    )]
    pub rate_storefront_per_second: u32,

    /// New orders and order requests per second per customer (bursts of 5 s' worth absorbed).
    #[arg(
        long = "rate-customer-per-second",
        env = "KASSA_RATE_CUSTOMER_PER_SECOND",
        default_value_t = 20,
        global = true
    )]
    pub rate_customer_per_second: u32,

    /// Requests per second per peer address that carry no key the API knows (a missing, unknown
    /// or revoked key); bursts of 5 s' worth absorbed. Keys the API knows are never counted.
    #[arg(
        long = "rate-unauthenticated-per-second",
        env = "KASSA_RATE_UNAUTHENTICATED_PER_SECOND",
        default_value_t = 20,
        global = true
    )]
    pub rate_unauthenticated_per_second: u32,

    /// The longest a request's head may take to arrive, and a kept-alive connection may idle.
    #[arg(long = "http-header-timeout-seconds", env = "KASSA_HTTP_HEADER_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds, global = true)]
    pub header_timeout: Duration,

    /// The longest a request's body may take to arrive (then 408).
    #[arg(long = "http-body-timeout-seconds", env = "KASSA_HTTP_BODY_TIMEOUT_SECONDS", default_value = "10", value_parser = seconds, global = true)]
    pub body_timeout: Duration,

    /// Most HTTP connections open at once (the next waits until one closes); keep it under the
    /// process's file descriptor limit.
    #[arg(
        long = "http-max-connections",
        env = "KASSA_HTTP_MAX_CONNECTIONS",
        default_value_t = 10_000,
        global = true
    )]
    pub max_connections: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object a line, for log pipelines.
    Json,
}

/// Logging and process control.
#[derive(Debug, Clone, Args)]
pub struct ProcessSettings {
    /// What to log: a tracing filter, e.g. `kassa=debug,rdkafka=warn`.
    #[arg(
        long = "log",
        env = "KASSA_LOG",
        default_value = "info,apache_avro::schema::parser=error,stripe::hyper::client=error,sqlx::postgres::notice=warn",
        global = true
    )]
    pub log: String,

    /// How log lines are written: `text` for people, or `json` (one object a line: time, level,
    /// target, message and fields, with the fields of the spans it happened in: `trace_id` and
    /// `order_id` where known).
    #[arg(long = "log-format", env = "KASSA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// `kassa run` also stops when its stdin closes (for supervisors and tests that hold it).
    #[arg(
        long = "stop-on-stdin-eof",
        env = "KASSA_STOP_ON_STDIN_EOF",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true
    )]
    pub stop_on_stdin_eof: bool,

    /// Address a running processor serves `/metrics`, `/health` and `/ready` on (`kassa run all`
    /// serves one set; the API serves its own on its address). Port 0: any free port (logged).
    #[arg(
        long = "ops-addr",
        env = "KASSA_OPS_ADDR",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub ops_addr: std::net::SocketAddr,

    /// How long one step of a processor's loop (a batch, a relay round, a worker's claim, a
    /// ticker round) may take before `/health` says the loop is stuck, in seconds.
    #[arg(long = "stall-seconds", env = "KASSA_STALL_SECONDS", default_value = "120", value_parser = seconds, global = true)]
    pub stall: Duration,
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

    /// What the processor of `group` needs, from these settings (an error names a bad setting).
    pub fn processor_config(
        &self,
        group: ConsumerGroup,
    ) -> Result<kassa_processors::ProcessorConfig, String> {
        let common = Common {
            environment: self.environment,
            instance_id: self.processing.instance_id.clone(),
            default_hold: self.holds.default_hold,
            max_hold: self.holds.max_hold,
        };
        Ok(kassa_processors::ProcessorConfig {
            shared: kassa_processors::Shared {
                runtime: kassa_processors::RuntimeConfig {
                    brokers: self.kafka_brokers.clone(),
                    database_url: self.database_url_of(group).clone(),
                    batch_max: self.processing.batch_max as usize,
                    batch_wait: self.processing.batch_wait,
                    instance_id: self.processing.instance_id.clone(),
                },
                registry_url: self.schema_registry_url.clone(),
                redis_url: self.redis_url.expose().to_owned(),
            },
            own: kassa_processors::Own::of(group, &self.processors, &common)?,
        })
    }

    /// What the API needs, from these settings.
    pub fn api_config(&self) -> kassa_api::ApiConfig {
        let seconds_i32 = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
        kassa_api::ApiConfig {
            addr: self.api.addr,
            database_url: self.database_url.clone(),
            orders_database_url: self.database_url_of(ConsumerGroup::Orders).clone(),
            brokers: self.kafka_brokers.clone(),
            registry_url: self.schema_registry_url.clone(),
            redis_url: self.redis_url.expose().to_owned(),
            hold_seconds: seconds_i32(self.holds.default_hold),
            max_hold_seconds: seconds_i32(self.holds.max_hold),
            stripe_webhook_secret: self.api.stripe_webhook_secret.clone(),
            rate_limits: kassa_api::limits::RateLimits {
                storefront_per_second: self.api.rate_storefront_per_second,
                customer_per_second: self.api.rate_customer_per_second,
                unauthenticated_per_second: self.api.rate_unauthenticated_per_second,
            },
            server: kassa_api::server::ServerLimits {
                header_timeout: self.api.header_timeout,
                body_timeout: self.api.body_timeout,
                max_connections: self.api.max_connections,
            },
            cart_ttl: kassa_api::carts::CartTtl {
                guest: self.api.cart_ttl_guest.as_secs(),
                customer: self.api.cart_ttl_customer.as_secs(),
            },
            extension: crate::admin_api::extension(self),
        }
    }

    /// The database URL with any password replaced, fit for logs and errors.
    pub fn database_url_redacted(&self) -> String {
        redact_url_password(self.database_url.expose())
    }

    /// The database `group`'s processor keeps its schema in: its own URL, or `KASSA_DATABASE_URL`.
    pub fn database_url_of(&self, group: ConsumerGroup) -> &Secret {
        self.processors
            .databases
            .of(group)
            .unwrap_or(&self.database_url)
    }
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
    use super::*;

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

    #[test]
    fn settings_print_without_their_secrets() {
        let mut settings = Settings::from_env();
        settings.database_url = Secret::new("postgres://kassa:s3cret@db/kassa");
        settings.processors.payments.stripe_secret_key = Some(Secret::new("sk_live_s3cret"));
        settings.redis_url = Secret::new("rediss://kassa:s3cret@cache:6380/0");
        let printed = format!("{settings:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[test]
    fn every_setting_has_a_flag_and_a_variable_of_its_own() {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        <Only as clap::CommandFactory>::command().debug_assert();
    }
}
