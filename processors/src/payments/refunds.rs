//! Refunds an operator asked for (after an order completed): the handler records each
//! `OrderRefundRequested`, and [`run`] makes it at the provider, apart from the payments worker
//! (which only undoes payments of cancelled orders). Never sent twice: every call for one refund
//! carries the same idempotency key (`kassa-refund-<id>`), so a retry after a lost answer gets
//! the provider's first answer. Never lost: a call without a sure answer is retried with backoff
//! (each failure logged and counted) until the provider says yes or no; a refusal is published
//! as `PaymentRefundFailed`, a refund as `PaymentRefunded` (with the refund's id), through the
//! outbox in the transaction that records it.

use std::sync::Arc;
use std::time::Duration;

use kassa_schemas::events::orders::OrderRefundRequested;
use kassa_schemas::events::payments::{PaymentEvent, PaymentRefundFailed, PaymentRefunded};
use kassa_schemas::{Codec, Envelope, Topic};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::watch;
use uuid::Uuid;

use super::gateway::{Gateway, GatewayError};
use crate::ConsumerGroup;
use crate::runtime::TaskError;
use crate::runtime::backoff::Backoff;
use crate::runtime::outbox::{self, Caused};

/// How often due refunds are looked for.
const TICK: Duration = Duration::from_millis(250);
/// How long a claimed refund is left to the instance that claimed it.
const LEASE_SECONDS: f64 = 120.0;
/// The longest wait between two attempts at one refund.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Records a refund to make (a redelivered request records nothing new).
pub async fn record_request(
    conn: &mut PgConnection,
    request: &OrderRefundRequested,
    traceparent: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payments.refunds (refund_id, order_id, amount_minor, currency, traceparent)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(&request.refund_id)
    .bind(&request.order_id)
    .bind(request.amount_minor)
    .bind(&request.currency)
    .bind(traceparent)
    .execute(conn)
    .await?;
    Ok(())
}

/// A claimed refund and the payment it refunds.
struct Due {
    refund_id: String,
    order_id: String,
    amount_minor: i64,
    currency: String,
    attempts: i32,
    traceparent: Option<String>,
}

/// Makes due refunds at `gateway` until `shutdown` turns true.
pub async fn run<G: Gateway>(
    pool: PgPool,
    codec: Arc<Codec>,
    gateway: Arc<G>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut errors = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let progress = crate::runtime::liveness::register("payments refunds");
    while !*shutdown.borrow() {
        progress.busy();
        let wait = match round(&pool, &codec, gateway.as_ref()).await {
            Ok(()) => {
                errors.reset();
                TICK
            }
            Err(e) => {
                let delay = errors.next_delay();
                tracing::warn!(error = %e, ?delay, "a round of refunds failed; retrying");
                delay
            }
        };
        progress.idle();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Claims the due refunds and makes each.
async fn round<G: Gateway>(pool: &PgPool, codec: &Codec, gateway: &G) -> Result<(), TaskError> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT refund_id FROM payments.refunds
             WHERE state = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT 16 FOR UPDATE SKIP LOCKED)
         UPDATE payments.refunds r
         SET attempts = r.attempts + 1, next_attempt_at = now() + make_interval(secs => $1),
             updated_at = now()
         FROM due WHERE r.refund_id = due.refund_id
         RETURNING r.refund_id, r.order_id, r.amount_minor, r.currency, r.attempts, r.traceparent",
    )
    .bind(LEASE_SECONDS)
    .fetch_all(pool)
    .await?;
    for row in rows {
        let due = Due {
            refund_id: row.get("refund_id"),
            order_id: row.get("order_id"),
            amount_minor: row.get("amount_minor"),
            currency: row.get("currency"),
            attempts: row.get("attempts"),
            traceparent: row.get("traceparent"),
        };
        make(pool, codec, gateway, &due).await?;
    }
    Ok(())
}

/// What came of one attempt.
enum Came {
    /// Refunded at the provider.
    Refunded(i64),
    /// Refused for good: (code, message).
    Refused(String, String),
    /// No sure answer: try again.
    Retry(String),
}

/// One attempt at `due`, recorded with what it publishes.
async fn make<G: Gateway>(
    pool: &PgPool,
    codec: &Codec,
    gateway: &G,
    due: &Due,
) -> Result<(), TaskError> {
    let payment = sqlx::query(
        "SELECT payment_id, provider, provider_ref, captured_minor, refunded_minor
         FROM payments.payments WHERE order_id = $1",
    )
    .bind(&due.order_id)
    .fetch_optional(pool)
    .await?;
    let Some(payment) = payment else {
        return settle(pool, codec, due, None, Came::Refused("no_payment".into(), "the order has no payment".into())).await;
    };
    let payment_id: Uuid = payment.get("payment_id");
    let provider: String = payment.get("provider");
    let provider_ref: Option<String> = payment.get("provider_ref");
    let left = payment.get::<i64, _>("captured_minor") - payment.get::<i64, _>("refunded_minor");
    let ids = (payment_id, provider.clone(), provider_ref.clone());
    let came = match provider_ref.as_deref() {
        _ if provider != gateway.name() => Came::Refused(
            "other_gateway".into(),
            format!("the payment was made with {provider}, not {}", gateway.name()),
        ),
        None => Came::Refused("not_captured".into(), "the payment has no intent at the provider".into()),
        Some(_) if due.amount_minor > left => Came::Refused(
            "not_captured".into(),
            format!("{} is more than the {left} captured and not refunded", due.amount_minor),
        ),
        Some(intent) => {
            let key = format!("kassa-refund-{}", due.refund_id);
            match gateway.refund(intent, due.amount_minor, &key).await {
                Ok(amount) => Came::Refunded(amount),
                Err(GatewayError::Declined(code, message)) => Came::Refused(code, message),
                Err(GatewayError::Refused(message)) => Came::Refused("refused".into(), message),
                Err(e @ (GatewayError::Transient(_) | GatewayError::Ambiguous(_))) => {
                    Came::Retry(e.to_string())
                }
            }
        }
    };
    settle(pool, codec, due, Some(ids), came).await
}

/// Records what came of an attempt: the refund's state, the payment's refunded total, and the
/// event, in one transaction.
async fn settle(
    pool: &PgPool,
    codec: &Codec,
    due: &Due,
    payment: Option<(Uuid, String, Option<String>)>,
    came: Came,
) -> Result<(), TaskError> {
    let mut tx = pool.begin().await?;
    let (payment_id, provider, provider_ref) =
        payment.unwrap_or_else(|| (Uuid::nil(), "none".into(), None));
    let event: Option<(PaymentEvent, &str)> = match came {
        Came::Retry(error) => {
            let wait = Backoff::delay_for(due.attempts.unsigned_abs(), Duration::from_secs(1), MAX_RETRY);
            metrics::counter!("kassa_refund_attempts_failed_total").increment(1);
            tracing::warn!(refund = due.refund_id, order = due.order_id, attempt = due.attempts, %error, ?wait,
                "a refund got no sure answer from the provider; trying again with the same key");
            sqlx::query(
                "UPDATE payments.refunds SET next_attempt_at = now() + make_interval(secs => $2),
                     last_error = $3, updated_at = now() WHERE refund_id = $1",
            )
            .bind(&due.refund_id)
            .bind(wait.as_secs_f64())
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            None
        }
        Came::Refunded(amount) => {
            sqlx::query("UPDATE payments.refunds SET state = 'refunded', last_error = NULL, updated_at = now() WHERE refund_id = $1")
                .bind(&due.refund_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE payments.payments SET refunded_minor = refunded_minor + $2, updated_at = now() WHERE order_id = $1")
                .bind(&due.order_id)
                .bind(amount)
                .execute(&mut *tx)
                .await?;
            metrics::counter!("kassa_refunds_total", "outcome" => "refunded").increment(1);
            let event = PaymentRefunded {
                order_id: due.order_id.clone(),
                payment_id,
                provider,
                provider_ref,
                refunded_minor: amount,
                currency: due.currency.clone(),
                refund_id: Some(due.refund_id.clone()),
            };
            Some((event.into(), "refunded"))
        }
        Came::Refused(code, message) => {
            sqlx::query("UPDATE payments.refunds SET state = 'failed', last_error = $2, updated_at = now() WHERE refund_id = $1")
                .bind(&due.refund_id)
                .bind(format!("{message} ({code})"))
                .execute(&mut *tx)
                .await?;
            metrics::counter!("kassa_refunds_total", "outcome" => "failed").increment(1);
            tracing::warn!(refund = due.refund_id, order = due.order_id, code, message, "a refund was refused");
            let event = PaymentRefundFailed {
                order_id: due.order_id.clone(),
                payment_id,
                provider,
                provider_ref,
                refund_id: due.refund_id.clone(),
                amount_minor: due.amount_minor,
                code,
                message,
            };
            Some((event.into(), "failed"))
        }
    };
    if let Some((payload, outcome)) = event {
        let mut envelope = Envelope::new(&due.order_id, None, payload);
        // One event per refund and outcome, whoever records it.
        envelope.event_id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("kassa-refund-{}-{outcome}", due.refund_id).as_bytes(),
        );
        let caused = Caused {
            topic: Topic::PaymentsEvents,
            key: due.order_id.clone(),
            payload: codec.encode(&envelope).await?,
            parent: due.traceparent.as_deref(),
            writer: None,
        };
        outbox::append(&mut tx, ConsumerGroup::Payments, vec![caused]).await?;
    }
    tx.commit().await?;
    Ok(())
}
