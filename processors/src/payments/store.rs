//! The payments schema's reads and writes: payments (locked while changed), the provider calls
//! made, webhooks (once each; kept until their payment exists), and the work queue the worker
//! claims from.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::ledger::{OrderStage, Payment, Status, Work, next_work};

/// The channel that wakes the worker when work is due now.
pub const WORK_CHANNEL: &str = "kassa_payments_work";

/// A payment as stored; an unknown status or stage is an error, never a default (a default of
/// `new` would schedule an authorization again).
fn from_row(row: &sqlx::postgres::PgRow) -> Result<Payment, sqlx::Error> {
    let unknown = |what: &str, value: &str| {
        sqlx::Error::Decode(format!("unknown payment {what} {value:?}").into())
    };
    let (status, stage): (&str, &str) = (row.get("status"), row.get("stage"));
    Ok(Payment {
        order_id: row.get("order_id"),
        payment_id: row.get("payment_id"),
        provider: row.get("provider"),
        amount_minor: row.get("amount_minor"),
        currency: row.get("currency"),
        payment_method_id: row.get("payment_method_id"),
        provider_ref: row.get("provider_ref"),
        status: Status::parse(status).ok_or_else(|| unknown("status", status))?,
        stage: OrderStage::parse(stage).ok_or_else(|| unknown("stage", stage))?,
        client_secret: row.get("client_secret"),
        captured_minor: row.get("captured_minor"),
        refunded_minor: row.get("refunded_minor"),
        needs_lookup: row.get("needs_lookup"),
        attempts: row.get("attempts"),
        key_generation: row.get("key_generation"),
        unsure: row
            .get::<Option<&str>, _>("unsure_work")
            .and_then(Work::parse),
        traceparent: row.get("traceparent"),
    })
}

const COLUMNS: &str = "order_id, payment_id, provider, amount_minor, currency, payment_method_id, provider_ref, status,
                       stage, client_secret, captured_minor, refunded_minor, needs_lookup, attempts, key_generation,
                       unsure_work, traceparent";

/// Loads the payments of `orders`, locked for this transaction.
pub async fn load(
    conn: &mut PgConnection,
    orders: &[&str],
) -> Result<HashMap<String, Payment>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM payments.payments WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
    )))
    .bind(orders)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.get::<String, _>("order_id"), from_row(r)?)))
        .collect()
}

/// A call made to the provider, as recorded in `payments.attempts`.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The work done (`authorize`, `capture`, …).
    pub step: &'a str,
    /// The idempotency key the call used (a look-up has none).
    pub key: Option<&'a str>,
    /// What came of it.
    pub outcome: &'a str,
    /// The error, if any.
    pub detail: Option<&'a str>,
}

/// A payment to write, with what goes with it.
#[derive(Debug, Clone, Copy)]
pub struct Saved<'a> {
    /// The payment as it is now.
    pub payment: &'a Payment,
    /// The event its next events are caused by (None: keep the stored one).
    pub cause: Option<Uuid>,
    /// When its next work is due (None: now).
    pub due_at: Option<DateTime<Utc>>,
    /// The last error of its work, if any.
    pub last_error: Option<&'a str>,
    /// The provider call this write records, if any.
    pub attempt: Option<Attempt<'a>>,
}

impl<'a> Saved<'a> {
    /// `payment`, caused by `cause`, with its work due now and nothing else to record.
    pub fn plain(payment: &'a Payment, cause: Option<Uuid>) -> Self {
        Self {
            payment,
            cause,
            due_at: None,
            last_error: None,
            attempt: None,
        }
    }
}

/// Writes `payments` (inserted or updated) with their next work due, records their attempts, and
/// wakes the worker if any work is due now, in one statement. `release` ends the lease of the
/// worker of that name, if it still holds it (a lease another worker took meanwhile is left
/// alone; only the worker that holds it may); otherwise a call in flight keeps it.
pub async fn save(
    conn: &mut PgConnection,
    payments: &[Saved<'_>],
    release: Option<&str>,
) -> Result<(), sqlx::Error> {
    if payments.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = payments
        .iter()
        .map(|s| {
            let (p, cause) = (s.payment, s.cause);
            json!({
                "order_id": p.order_id, "payment_id": p.payment_id, "provider": p.provider,
                "amount_minor": p.amount_minor, "currency": p.currency, "payment_method_id": p.payment_method_id,
                "provider_ref": p.provider_ref, "status": p.status.as_str(), "stage": p.stage.as_str(),
                "client_secret": p.client_secret, "captured_minor": p.captured_minor,
                "refunded_minor": p.refunded_minor, "needs_lookup": p.needs_lookup, "attempts": p.attempts,
                "work": next_work(p).map(|w| w.as_str()), "cause_event_id": cause,
                "key_generation": p.key_generation, "unsure_work": p.unsure.map(|w| w.as_str()),
                "traceparent": p.traceparent, "due_at": s.due_at, "last_error": s.last_error,
            })
        })
        .collect();
    let attempts: Vec<serde_json::Value> = payments
        .iter()
        .filter_map(|s| {
            s.attempt.map(|a| {
                json!({"order_id": s.payment.order_id, "step": a.step, "idempotency_key": a.key,
                       "outcome": a.outcome, "detail": a.detail})
            })
        })
        .collect();
    // The worker's wake-up is sent when the transaction commits.
    let wake = payments
        .iter()
        .any(|s| s.due_at.is_none() && next_work(s.payment).is_some());
    sqlx::query(
        "WITH attempt AS (
             INSERT INTO payments.attempts (order_id, step, idempotency_key, outcome, detail)
             SELECT * FROM jsonb_to_recordset($2) AS a(order_id text, step text, idempotency_key text,
                                                      outcome text, detail text)),
         saved AS (INSERT INTO payments.payments AS p (order_id, payment_id, provider, amount_minor, currency, payment_method_id,
              provider_ref, status, stage, client_secret, captured_minor, refunded_minor, needs_lookup, attempts, work,
              cause_event_id, key_generation, unsure_work, traceparent, due_at, last_error)
         SELECT x.order_id, x.payment_id, x.provider, x.amount_minor, x.currency, x.payment_method_id, x.provider_ref,
                x.status, x.stage, x.client_secret, x.captured_minor, x.refunded_minor, x.needs_lookup, x.attempts,
                x.work, x.cause_event_id, x.key_generation, x.unsure_work, x.traceparent, coalesce(x.due_at, now()),
                x.last_error
         FROM jsonb_to_recordset($1) AS x(order_id text, payment_id uuid, provider text,
              amount_minor bigint, currency text, payment_method_id text, provider_ref text, status text, stage text,
              client_secret text, captured_minor bigint, refunded_minor bigint, needs_lookup boolean, attempts int,
              work text, cause_event_id uuid, key_generation int, unsure_work text, traceparent text,
              due_at timestamptz, last_error text)
         ON CONFLICT (order_id) DO UPDATE SET provider_ref = excluded.provider_ref, status = excluded.status,
              stage = excluded.stage, client_secret = excluded.client_secret, captured_minor = excluded.captured_minor,
              refunded_minor = excluded.refunded_minor, needs_lookup = excluded.needs_lookup,
              attempts = excluded.attempts, work = excluded.work,
              cause_event_id = coalesce(excluded.cause_event_id, p.cause_event_id),
              key_generation = excluded.key_generation, unsure_work = excluded.unsure_work,
              traceparent = coalesce(excluded.traceparent, p.traceparent),
              due_at = excluded.due_at, last_error = excluded.last_error,
              leased_until = CASE WHEN p.leased_by = $3 THEN NULL ELSE p.leased_until END, updated_at = now())
         SELECT pg_notify($4, '') WHERE $5",
    )
    .bind(serde_json::Value::Array(rows))
    .bind(serde_json::Value::Array(attempts))
    .bind(release)
    .bind(WORK_CHANNEL)
    .bind(wake)
    .execute(conn)
    .await?;
    Ok(())
}

/// The payments the worker writes results for (locked, in order id order as every writer locks
/// them), each with the event its next events are caused by and whether webhooks are kept for it.
pub async fn load_for_results(
    conn: &mut PgConnection,
    order_ids: &[&str],
) -> Result<HashMap<String, (Payment, Option<Uuid>, bool)>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS}, cause_event_id,
                EXISTS (SELECT 1 FROM payments.webhooks w WHERE w.order_id = p.order_id AND w.applied_at IS NULL) AS kept
         FROM payments.payments p WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE"
    )))
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let payment = from_row(r)?;
            Ok((
                payment.order_id.clone(),
                (payment, r.get("cause_event_id"), r.get("kept")),
            ))
        })
        .collect()
}

/// Records each intent created, (order id, intent id), unless its payment has one recorded
/// already; returns the recorded intent of each, in their order (the only intent that will ever be
/// confirmed for the order). One statement for them all, the payments locked in order id order
/// as the handler and the outcome writer lock them.
pub async fn record_intents(
    pool: &sqlx::PgPool,
    intents: &[(String, String)],
) -> Result<Vec<String>, sqlx::Error> {
    let (orders, ids): (Vec<&str>, Vec<&str>) = intents
        .iter()
        .map(|(order, intent)| (order.as_str(), intent.as_str()))
        .unzip();
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "WITH locked AS (
           SELECT order_id FROM payments.payments WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE)
         UPDATE payments.payments p SET provider_ref = coalesce(p.provider_ref, x.intent_id), updated_at = now()
         FROM unnest($1::text[], $2::text[]) AS x(order_id, intent_id), locked l
         WHERE p.order_id = x.order_id AND l.order_id = x.order_id
         RETURNING p.order_id, p.provider_ref",
    )
    .bind(&orders)
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let recorded: std::collections::HashMap<String, String> = recorded.into_iter().collect();
    orders
        .iter()
        .map(|order| recorded.get(*order).cloned().ok_or(sqlx::Error::RowNotFound))
        .collect()
}

/// Extends the lease `owner` holds on `order_id`'s payment to `lease_seconds` from now; false
/// when it no longer holds it.
pub async fn renew_lease(
    pool: &sqlx::PgPool,
    order_id: &str,
    owner: &str,
    lease_seconds: i64,
) -> Result<bool, sqlx::Error> {
    let renewed = sqlx::query(
        "UPDATE payments.payments SET leased_until = now() + make_interval(secs => $3)
         WHERE order_id = $1 AND leased_by = $2 AND leased_until IS NOT NULL",
    )
    .bind(order_id)
    .bind(owner)
    .bind(lease_seconds as f64)
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Whether a refund made with idempotency key `key` is recorded already (its amount counted).
pub async fn refund_recorded(
    conn: &mut PgConnection,
    order_id: &str,
    key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM payments.attempts
                        WHERE order_id = $1 AND idempotency_key = $2 AND outcome LIKE 'refunded %')",
    )
    .bind(order_id)
    .bind(key)
    .fetch_one(conn)
    .await
}

/// Takes up to `limit` payments at `provider` whose work is due, leasing them for
/// `lease_seconds` so another worker (or this one, after a crash) only takes them again once the
/// lease ran out; never one of `busy` (this worker is working on them). A payment stays with the
/// provider it was created at.
pub async fn claim(
    conn: &mut PgConnection,
    provider: &str,
    owner: &str,
    limit: i64,
    lease_seconds: i64,
    busy: &[String],
) -> Result<Vec<Payment>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH due AS (
             SELECT order_id FROM payments.payments
             WHERE work IS NOT NULL AND due_at <= now() AND (leased_until IS NULL OR leased_until < now())
                   AND provider = $3 AND order_id <> ALL($5)
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE payments.payments p SET leased_until = now() + make_interval(secs => $2), leased_by = $4
         FROM due WHERE p.order_id = due.order_id
         RETURNING {}",
        COLUMNS.split(',').map(|c| format!("p.{}", c.trim())).collect::<Vec<_>>().join(", ")
    )))
    .bind(limit)
    .bind(lease_seconds as f64)
    .bind(provider)
    .bind(owner)
    .bind(busy)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Ends the leases `owner` holds on work (at its start: whoever held them under that name is
/// dead). Only payments with work are looked at, through the index of work due: every payment
/// ever taken would otherwise be read at each start (50 ms at 220,000 payments, growing). A lease
/// left on a payment without work is left to run out: work given to it meanwhile waits at most
/// that long.
pub async fn release_leases(pool: &sqlx::PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE payments.payments SET leased_until = NULL
         WHERE work IS NOT NULL AND leased_by = $1 AND leased_until > now()",
    )
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}

/// A webhook as kept.
#[derive(Debug, Clone)]
pub struct KeptWebhook {
    /// Provider's event id.
    pub provider_event_id: String,
    /// e.g. `payment_intent.succeeded`.
    pub event_type: String,
    /// The intent it is about.
    pub payment_intent_id: Option<String>,
}

/// Records a webhook; false if its provider event id was seen before.
pub async fn insert_webhook(
    conn: &mut PgConnection,
    webhook: &kassa_schemas::events::payments::WebhookReceived,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO payments.webhooks (provider_event_id, provider, event_type, order_id, payment_intent_id, received_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provider_event_id) DO NOTHING",
    )
    .bind(&webhook.provider_event_id)
    .bind(&webhook.provider)
    .bind(&webhook.provider_event_type)
    .bind(&webhook.order_id)
    .bind(&webhook.payment_intent_id)
    .bind(webhook.received_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Webhooks kept for `order_id` (not applied yet), oldest first.
pub async fn kept_webhooks(
    conn: &mut PgConnection,
    order_id: &str,
) -> Result<Vec<KeptWebhook>, sqlx::Error> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT provider_event_id, event_type, payment_intent_id FROM payments.webhooks
         WHERE order_id = $1 AND applied_at IS NULL ORDER BY received_at",
    )
    .bind(order_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(provider_event_id, event_type, payment_intent_id)| KeptWebhook {
                provider_event_id,
                event_type,
                payment_intent_id,
            },
        )
        .collect())
}

/// Marks a webhook applied, with what came of it.
pub async fn mark_webhook(
    conn: &mut PgConnection,
    provider_event_id: &str,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments.webhooks SET applied_at = now(), outcome = $2 WHERE provider_event_id = $1")
        .bind(provider_event_id)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}
