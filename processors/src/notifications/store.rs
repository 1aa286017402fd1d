//! The notifications schema as the processor uses it: whom to tell of each order, the deliveries
//! a batch of order events makes (in the batch's transaction), and the dispatcher's claims and
//! records.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::notice::{Contact, Notice};

/// Remembers whom to tell of each order (a later event fills in what an earlier one lacked).
pub async fn remember(
    conn: &mut PgConnection,
    contacts: &[(&str, Contact)],
) -> Result<(), sqlx::Error> {
    if contacts.is_empty() {
        return Ok(());
    }
    let rows: Vec<Value> = contacts
        .iter()
        .map(|(order, c)| {
            json!({"order_id": order, "storefront": c.storefront, "customer_id": c.customer_id, "email": c.email})
        })
        .collect();
    sqlx::query(
        "INSERT INTO notifications.orders AS o (order_id, storefront, customer_id, email)
         SELECT order_id, storefront, customer_id, email
         FROM jsonb_to_recordset($1) AS x(order_id text, storefront text, customer_id text, email text)
         ON CONFLICT (order_id) DO UPDATE SET
              storefront = coalesce(excluded.storefront, o.storefront),
              email = coalesce(excluded.email, o.email)",
    )
    .bind(Value::Array(rows))
    .execute(conn)
    .await?;
    Ok(())
}

/// One notice to enqueue: the order, the stable notification id, when its event occurred.
pub struct Enqueue<'a> {
    /// The order.
    pub order_id: &'a str,
    /// The stable id receivers deduplicate on.
    pub notification_id: Uuid,
    /// When the order event occurred.
    pub occurred_at: DateTime<Utc>,
    /// What it says.
    pub notice: Notice,
}

/// Writes a delivery of each notice to every enabled endpoint of the order's storefront that
/// subscribes to its kind, and (with `email`) to the order's contact address; each is tried
/// until `retry_for` after now. A notice already enqueued is not enqueued again. Returns how
/// many deliveries were written.
pub async fn enqueue(
    conn: &mut PgConnection,
    notices: &[Enqueue<'_>],
    email: bool,
    retry_for: chrono::Duration,
) -> Result<u64, sqlx::Error> {
    if notices.is_empty() {
        return Ok(0);
    }
    let rows: Vec<Value> = notices
        .iter()
        .map(|n| {
            json!({
                "order_id": n.order_id, "notification_id": n.notification_id,
                "kind": n.notice.kind.name(), "created": n.occurred_at.timestamp(),
                "data": n.notice.data,
            })
        })
        .collect();
    let written = sqlx::query(
        "WITH n AS (
             SELECT x.*, o.storefront, o.customer_id, o.email,
                    jsonb_build_object('id', x.notification_id, 'type', x.kind, 'created', x.created,
                        'order_id', x.order_id, 'customer_id', o.customer_id,
                        'data', x.data || CASE WHEN x.kind = 'order.payment_action_required'
                                                    AND s.payment_action_url IS NOT NULL
                            THEN jsonb_build_object('payment_action_url',
                                 replace(s.payment_action_url, '{order_id}', x.order_id))
                            ELSE '{}'::jsonb END) AS body
             FROM jsonb_to_recordset($1) AS x(order_id text, notification_id uuid, kind text,
                                               created bigint, data jsonb)
             JOIN notifications.orders o USING (order_id)
             LEFT JOIN notifications.storefronts s ON s.storefront = o.storefront
         )
         INSERT INTO notifications.deliveries
             (id, notification_id, channel, endpoint_id, recipient, order_id, event_type, payload, expires_at)
         SELECT gen_random_uuid(), n.notification_id, 'webhook', e.id, e.url, n.order_id, n.kind, n.body,
                now() + $3
         FROM n JOIN notifications.endpoints e
              ON e.storefront = n.storefront AND e.enabled AND n.kind = ANY (e.events)
         UNION ALL
         SELECT gen_random_uuid(), n.notification_id, 'email', NULL, n.email, n.order_id, n.kind, n.body,
                now() + $3
         FROM n WHERE $2 AND n.email IS NOT NULL
         ON CONFLICT (notification_id, channel, recipient) DO NOTHING",
    )
    .bind(Value::Array(rows))
    .bind(email)
    .bind(retry_for)
    .execute(conn)
    .await?;
    Ok(written.rows_affected())
}

/// A delivery the dispatcher claimed.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery.
    pub id: Uuid,
    /// `webhook` or `email`.
    pub channel: String,
    /// The endpoint URL or the email address.
    pub recipient: String,
    /// The endpoint's signing secret (webhooks).
    pub secret: Option<String>,
    /// The body.
    pub payload: Value,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    /// When its window of retries ends.
    pub expires_at: DateTime<Utc>,
}

/// Claims up to `limit` due deliveries for `lease` (`FOR UPDATE SKIP LOCKED`: instances share
/// the work; a claim whose instance died is due again when its lease ends).
pub async fn claim(
    pool: &PgPool,
    limit: i64,
    lease: chrono::Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT id FROM notifications.deliveries
             WHERE state = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE notifications.deliveries d
         SET attempts = d.attempts + 1, next_attempt_at = now() + $2
         FROM due WHERE d.id = due.id
         RETURNING d.id, d.channel, d.recipient, d.payload, d.attempts, d.expires_at, d.endpoint_id",
    )
    .bind(limit)
    .bind(lease)
    .fetch_all(pool)
    .await?;
    let mut claimed: Vec<Claimed> = rows
        .iter()
        .map(|r| Claimed {
            id: r.get("id"),
            channel: r.get("channel"),
            recipient: r.get("recipient"),
            secret: None,
            payload: r.get("payload"),
            attempt: r.get("attempts"),
            expires_at: r.get("expires_at"),
        })
        .collect();
    let endpoints: Vec<(Uuid, Option<Uuid>)> = rows
        .iter()
        .map(|r| (r.get("id"), r.get("endpoint_id")))
        .collect();
    let ids: Vec<Uuid> = endpoints.iter().filter_map(|(_, e)| *e).collect();
    if !ids.is_empty() {
        let secrets: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, secret FROM notifications.endpoints WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(pool)
                .await?;
        for (c, (_, endpoint)) in claimed.iter_mut().zip(&endpoints) {
            c.secret = endpoint.and_then(|e| {
                secrets
                    .iter()
                    .find(|(id, _)| *id == e)
                    .map(|(_, s)| s.clone())
            });
        }
    }
    Ok(claimed)
}

/// How one attempt ended, to record.
pub struct Outcome {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration: std::time::Duration,
    /// The receiver's status or code, if it answered.
    pub status: Option<u16>,
    /// Why it failed (None: delivered).
    pub error: Option<String>,
    /// When to try again, if it failed (None: the window is over, the delivery failed).
    pub retry_at: Option<DateTime<Utc>>,
}

/// Records an attempt and what follows from it: delivered, due again at `retry_at`, or failed.
pub async fn record(pool: &PgPool, claimed: &Claimed, outcome: &Outcome) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO notifications.attempts (delivery_id, attempt, started_at, duration_ms, status_code, error)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(claimed.id)
    .bind(claimed.attempt)
    .bind(outcome.started_at)
    .bind(i32::try_from(outcome.duration.as_millis()).unwrap_or(i32::MAX))
    .bind(outcome.status.map(i32::from))
    .bind(&outcome.error)
    .execute(&mut *tx)
    .await?;
    let (state, next) = match (&outcome.error, outcome.retry_at) {
        (None, _) => ("delivered", None),
        (Some(_), Some(at)) => ("pending", Some(at)),
        (Some(_), None) => ("failed", None),
    };
    sqlx::query(
        "UPDATE notifications.deliveries
         SET state = $2, next_attempt_at = coalesce($3, next_attempt_at), last_error = $4,
             delivered_at = CASE WHEN $2 = 'delivered' THEN now() END
         WHERE id = $1 AND attempts = $5",
    )
    .bind(claimed.id)
    .bind(state)
    .bind(next)
    .bind(&outcome.error)
    .bind(claimed.attempt)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// How long delivered and failed deliveries (with their attempts) and whom-to-tell records are
/// kept, for the record.
pub const KEEP_DAYS: i32 = 30;

/// Sets `kassa_notifications_pending{channel}`: deliveries still to be made.
pub async fn sample_pending(pool: &PgPool) {
    let counted: Result<Vec<(String, i64)>, _> = sqlx::query_as(
        "SELECT channel, count(*) FROM notifications.deliveries WHERE state = 'pending' GROUP BY channel",
    )
    .fetch_all(pool)
    .await;
    match counted {
        Ok(rows) => {
            for channel in ["webhook", "email"] {
                let n = rows.iter().find(|(c, _)| c == channel).map_or(0, |(_, n)| *n);
                metrics::gauge!("kassa_notifications_pending", "channel" => channel).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "counting pending deliveries failed"),
    }
}

/// Forgets deliveries done (delivered or failed) and orders first seen more than
/// [`KEEP_DAYS`] ago; pending deliveries stay until they are done.
pub async fn prune(pool: &PgPool) {
    let pruned = async {
        let deliveries = sqlx::query(
            "DELETE FROM notifications.deliveries
             WHERE state <> 'pending' AND created_at < now() - make_interval(days => $1)",
        )
        .bind(KEEP_DAYS)
        .execute(pool)
        .await?
        .rows_affected();
        let orders = sqlx::query(
            "DELETE FROM notifications.orders o WHERE created_at < now() - make_interval(days => $1)
               AND NOT EXISTS (SELECT 1 FROM notifications.deliveries d
                               WHERE d.order_id = o.order_id AND d.state = 'pending')",
        )
        .bind(KEEP_DAYS)
        .execute(pool)
        .await?
        .rows_affected();
        Ok::<_, sqlx::Error>((deliveries, orders))
    };
    match pruned.await {
        Ok((0, 0)) => {}
        Ok((deliveries, orders)) => {
            tracing::info!(deliveries, orders, days = KEEP_DAYS, "pruned notifications done long ago")
        }
        Err(e) => tracing::warn!(error = %e, "pruning notifications failed"),
    }
}
