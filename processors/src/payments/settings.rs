//! The payments processor's settings: the gateway it charges through and how its worker runs.

use std::time::Duration;

use clap::{Args, ValueEnum};
use kassa_schemas::secret::Secret;

use super::{GatewayConfig, gateway, worker::WorkerConfig};
use crate::settings::{Common, Environment, millis, seconds};

/// The payment gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Gateway {
    /// The built-in simulated provider: charges nobody.
    Simulated,
    /// Stripe (or localstripe, with `KASSA_STRIPE_API_BASE`).
    Stripe,
}

/// The payment gateway and the payments worker.
#[derive(Debug, Clone, Args)]
#[group(skip)]
pub struct Settings {
    /// The payment gateway. Unset: the simulated one in development, and a refusal to start in
    /// production.
    #[arg(
        long = "payment-gateway",
        env = "KASSA_PAYMENT_GATEWAY",
        value_enum,
        global = true
    )]
    pub gateway: Option<Gateway>,

    /// Stripe secret API key (`sk_…`), for the `stripe` gateway.
    #[arg(
        long = "stripe-secret-key",
        env = "KASSA_STRIPE_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub stripe_secret_key: Option<Secret>,

    /// Stripe API base (e.g. localstripe's), for the `stripe` gateway; unset: Stripe itself.
    #[arg(long = "stripe-api-base", env = "KASSA_STRIPE_API_BASE", global = true)]
    pub stripe_api_base: Option<String>,

    /// Faults the simulated gateway injects, e.g. `transient=0.1,timeout=0.05,lost=0.05`.
    #[arg(
        long = "sim-faults",
        env = "KASSA_SIM_FAULTS",
        default_value = "",
        global = true
    )]
    pub sim_faults: String,

    /// Latency the simulated gateway adds to every call, in ms.
    #[arg(long = "sim-latency-ms", env = "KASSA_SIM_LATENCY_MS", default_value = "0", value_parser = millis, global = true)]
    pub sim_latency: Duration,

    /// Payment provider calls in flight at once per payments instance.
    #[arg(long = "payment-concurrency", env = "KASSA_PAYMENT_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub concurrency: u32,

    /// How long a payments worker holds a payment it works on before another may take it, in
    /// seconds (renewed every third of it while the provider calls last).
    #[arg(long = "payment-lease-seconds", env = "KASSA_PAYMENT_LEASE_SECONDS", default_value = "30", value_parser = seconds, global = true)]
    pub lease: Duration,

    /// How often a payment waiting for 3-D Secure is looked up at the provider, in seconds.
    #[arg(long = "payment-recheck-seconds", env = "KASSA_PAYMENT_RECHECK_SECONDS", default_value = "30", value_parser = seconds, global = true)]
    pub recheck: Duration,
}

impl Settings {
    /// The gateway to charge through: the chosen one, the simulated one by default in
    /// development only.
    pub fn gateway(&self, environment: Environment) -> Result<Gateway, String> {
        match (self.gateway, environment) {
            (Some(gateway), _) => Ok(gateway),
            (None, Environment::Development) => Ok(Gateway::Simulated),
            (None, Environment::Production) => Err("KASSA_PAYMENT_GATEWAY is not set: outside development (KASSA_ENVIRONMENT=production, \
                 the default) kassa never falls back to the simulated gateway, which charges nobody; \
                 set it to stripe (or to simulated, explicitly)"
                .into()),
        }
    }

    /// The gateway's config.
    pub fn gateway_config(&self, environment: Environment) -> Result<GatewayConfig, String> {
        Ok(match self.gateway(environment)? {
            Gateway::Stripe => GatewayConfig::Stripe(gateway::stripe::StripeConfig {
                secret_key: self
                    .stripe_secret_key
                    .clone()
                    .ok_or("KASSA_STRIPE_SECRET_KEY is needed for the stripe gateway")?,
                api_base: self.stripe_api_base.clone(),
                timeout: Duration::from_secs(10),
            }),
            Gateway::Simulated => GatewayConfig::Simulated(
                gateway::simulated::SimConfig::parse_faults(&self.sim_faults, self.sim_latency)
                    .map_err(|e| format!("KASSA_SIM_FAULTS: {e}"))?,
            ),
        })
    }

    /// The payments processor's config from these settings and the shared ones.
    pub fn config(&self, common: &Common) -> Result<super::Config, String> {
        Ok(super::Config {
            gateway: self.gateway_config(common.environment)?,
            worker: WorkerConfig {
                concurrency: self.concurrency as usize,
                recheck: self.recheck,
                lease: self.lease,
                owner: common
                    .instance_id
                    .as_ref()
                    .map(|id| format!("payments-{id}")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(gateway: Option<Gateway>) -> Settings {
        Settings {
            gateway,
            stripe_secret_key: None,
            stripe_api_base: None,
            sim_faults: String::new(),
            sim_latency: Duration::ZERO,
            concurrency: 1,
            lease: Duration::from_secs(30),
            recheck: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_simulated_gateway_is_a_default_in_development_only() {
        assert_eq!(
            settings(None).gateway(Environment::Development),
            Ok(Gateway::Simulated)
        );
        assert!(settings(None).gateway(Environment::Production).is_err());
        assert_eq!(
            settings(Some(Gateway::Simulated)).gateway(Environment::Production),
            Ok(Gateway::Simulated)
        );
        let stripe_without_key = settings(Some(Gateway::Stripe)).gateway_config(Environment::Production);
        assert!(stripe_without_key.is_err_and(|e| e.contains("KASSA_STRIPE_SECRET_KEY")));
    }
}
