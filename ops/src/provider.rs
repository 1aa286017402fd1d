//! `kassa reconcile --provider`: kassa's payments against the provider's own view. Each payment
//! kassa recorded an intent for at the configured gateway is read back from it (the simulated gateway, or Stripe's
//! API): the money it holds must be what kassa holds, an authorization of a decided order must
//! not be left open there, and a payment kassa counts captured must be captured there. Intents at
//! the provider that kassa does not know are listed too: the simulated gateway's from its ledger
//! (in this database), Stripe's from its list of intents, those with an order id in their
//! metadata (kassa writes it on every intent; others are not kassa's business).

use kassa_processors::payments::GatewayConfig;
use kassa_processors::payments::gateway::simulated::{SimConfig, Simulated};
use kassa_processors::payments::gateway::stripe::StripeGateway;
use kassa_processors::payments::gateway::{Gateway, IntentStatus};
use sqlx::PgPool;

use crate::reconcile::{Class, Discrepancy, Options};
use crate::settings::Settings;

/// Why the provider could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderCheckError {
    /// The payment gateway settings are incomplete or wrong.
    #[error("payment gateway: {0}")]
    Gateway(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// One recorded payment: order, intent id, status, captured, refunded, order state, whether the
/// order was decided longer than the margin ago.
type Recorded = (String, String, String, i64, i64, Option<String>, bool);

/// Every discrepancy between kassa's payments and the provider's intents.
pub async fn check(
    settings: &Settings,
    pool: &PgPool,
    options: &Options,
) -> Result<Vec<Discrepancy>, ProviderCheckError> {
    let config = settings
        .processors
        .payments
        .gateway_config(settings.environment)
        .map_err(ProviderCheckError::Gateway)?;
    match config {
        // Read without the injected faults: the ledger as it is.
        GatewayConfig::Simulated(_) => {
            let gateway = Simulated::new(pool.clone(), SimConfig::default());
            let mut found = compare(&gateway, pool, options).await?;
            found.extend(unknown_to_kassa(pool, options).await?);
            Ok(found)
        }
        GatewayConfig::Stripe(stripe) => {
            let gateway = StripeGateway::new(&stripe).map_err(ProviderCheckError::Gateway)?;
            let mut found = compare(&gateway, pool, options).await?;
            found.extend(unknown_to_kassa_at_stripe(&gateway, pool, options).await?);
            Ok(found)
        }
    }
}

/// Reads back from `gateway` each intent recorded for a payment made through it, and compares
/// (payments made through another gateway are the business of a run configured for that one).
async fn compare<G: Gateway>(
    gateway: &G,
    pool: &PgPool,
    options: &Options,
) -> Result<Vec<Discrepancy>, ProviderCheckError> {
    let recorded: Vec<Recorded> = sqlx::query_as(
        "SELECT p.order_id, p.provider_ref, p.status, p.captured_minor, p.refunded_minor, o.state,
                coalesce(o.state IN ('completed', 'rejected', 'cancelled')
                         AND o.updated_at < now() - make_interval(secs => $2), false)
         FROM payments.payments p LEFT JOIN orders.orders o USING (order_id)
         WHERE p.provider_ref IS NOT NULL AND p.provider = $3
           AND ($1::timestamptz IS NULL OR p.created_at >= $1)
         ORDER BY p.order_id",
    )
    .bind(options.since)
    .bind(options.margin.as_secs_f64())
    .bind(gateway.name())
    .fetch_all(pool)
    .await?;
    let mut found = Vec::new();
    for (order_id, intent_id, status, captured, refunded, state, settled) in recorded {
        let mut report = |detail: String| {
            found.push(Discrepancy {
                class: Class::PaymentsProvider,
                ids: vec![order_id.clone(), intent_id.clone()],
                detail,
            })
        };
        let intent = match gateway.retrieve(&intent_id).await {
            Ok(intent) => intent,
            Err(error) => {
                report(format!(
                    "the provider does not answer for the intent: {error}"
                ));
                continue;
            }
        };
        let (ours, theirs) = (
            captured - refunded,
            intent.received_minor - intent.refunded_minor,
        );
        if ours != theirs {
            report(format!(
                "kassa holds {ours} ({status}), the provider {theirs} ({})",
                intent.status.as_str()
            ));
        }
        if intent.status == IntentStatus::RequiresCapture && settled {
            report(format!(
                "an authorization is open at the provider, but the order is {}",
                state.as_deref().unwrap_or("?")
            ));
        }
        if status == "captured" && intent.status != IntentStatus::Succeeded {
            report(format!(
                "captured for kassa, {} at the provider",
                intent.status.as_str()
            ));
        }
    }
    Ok(found)
}

/// Stripe's intents for an order (by their metadata) that kassa has no payment for, created
/// longer than the margin ago (a payment is recorded moments after its intent is created).
async fn unknown_to_kassa_at_stripe(
    gateway: &StripeGateway,
    pool: &PgPool,
    options: &Options,
) -> Result<Vec<Discrepancy>, ProviderCheckError> {
    let listed = gateway
        .list_intents(options.since.map(|t| t.timestamp()))
        .await
        .map_err(|e| ProviderCheckError::Gateway(format!("listing intents: {e}")))?;
    let settled_before = chrono::Utc::now().timestamp() - options.margin.as_secs() as i64;
    let candidates: Vec<_> = listed
        .into_iter()
        .filter(|i| i.order_id.is_some() && i.created <= settled_before)
        .collect();
    let ids: Vec<&str> = candidates.iter().map(|i| i.id.as_str()).collect();
    let known: std::collections::HashSet<String> = sqlx::query_scalar(
        "SELECT provider_ref FROM payments.payments WHERE provider_ref = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    Ok(candidates
        .into_iter()
        .filter(|i| !known.contains(&i.id))
        .map(|i| Discrepancy {
            class: Class::PaymentsProvider,
            detail: format!("intent {} at the provider, unknown to kassa", i.status),
            ids: vec![i.order_id.unwrap_or_default(), i.id],
        })
        .collect())
}

/// The simulated provider's intents kassa has no payment for.
async fn unknown_to_kassa(
    pool: &PgPool,
    options: &Options,
) -> Result<Vec<Discrepancy>, sqlx::Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT i.order_id, i.id, i.status FROM simulator.intents i
         WHERE NOT EXISTS (SELECT 1 FROM payments.payments p WHERE p.provider_ref = i.id)
           AND i.updated_at < now() - make_interval(secs => $2)
           AND ($1::timestamptz IS NULL OR i.created_at >= $1)
         ORDER BY i.order_id",
    )
    .bind(options.since)
    .bind(options.margin.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, intent_id, status)| Discrepancy {
            class: Class::PaymentsProvider,
            detail: format!("intent {status} at the provider, unknown to kassa"),
            ids: vec![order_id, intent_id],
        })
        .collect())
}
