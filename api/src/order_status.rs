//! `GET /api/orders/{id}`: an order's status, payment and audit trail from the orders
//! processor's read model (`orders.order_status`, `orders.order_trail`), with long polling: `?wait=<seconds>` holds the request until the
//! status differs from `since` (default: the status at the time of the request), woken by the
//! status feed (status_feed.rs) when this order changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;

use crate::AppState;
use crate::accepted::{OrderView, owned_order};
use crate::auth::Storefront;
use crate::domain::XCustomerId;
use crate::error::ApiError;
use crate::problem::{CommonErrors, Problem};

/// The longest a status request may wait.
pub const MAX_WAIT_SECONDS: u64 = 30;

/// An order's status as the orders processor last decided it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusRow {
    /// `pending` … `completed`, `rejected`, `cancelled`.
    pub state: String,
    /// Why it was rejected or cancelled.
    pub reason: Option<String>,
    /// Human-readable detail of that.
    pub detail: Option<String>,
    /// When the reservation hold runs out.
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// 3-D Secure: the secret for Stripe.js (only while `action_required`).
    pub client_secret: Option<String>,
    /// 3-D Secure: when the order is cancelled if not done (only while `action_required`).
    pub action_due_at: Option<DateTime<Utc>>,
    /// When the processor last changed the order.
    pub updated_at: DateTime<Utc>,
    /// The payment gateway, once payment was asked for.
    pub provider: Option<String>,
    /// The provider's id of the payment (e.g. the PaymentIntent), once known.
    pub provider_ref: Option<String>,
}

/// One step of an order's audit trail.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct Step {
    /// State before.
    #[sqlx(rename = "from_state")]
    pub from: Option<String>,
    /// State after.
    #[sqlx(rename = "to_state")]
    pub to: Option<String>,
    /// What moved it (e.g. `PaymentAuthorized`).
    pub trigger: Option<String>,
    /// The event type that caused it.
    pub cause_type: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An order's status and audit trail, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The status (None: the orders processor has not seen the order yet).
    pub row: Option<StatusRow>,
    /// The steps it took, oldest first.
    pub trail: Vec<Step>,
}

/// A row of [`snapshots`]: an order's status with its trail.
#[derive(sqlx::FromRow)]
struct SnapshotRow {
    order_id: String,
    #[sqlx(flatten)]
    row: StatusRow,
    trail: sqlx::types::Json<Vec<Step>>,
}

/// Reads the status and trail of each of `order_ids` in one statement (an order the orders
/// processor has not seen yet has neither).
pub async fn snapshots(
    pool: &PgPool,
    order_ids: &[String],
) -> Result<HashMap<String, Snapshot>, sqlx::Error> {
    let rows: Vec<SnapshotRow> = sqlx::query_as(
        "SELECT s.order_id, s.state, s.reason, s.detail, s.hold_expires_at, s.client_secret,
                s.action_due_at, s.updated_at, s.provider, s.provider_ref,
                (SELECT coalesce(json_agg(json_build_object('from', t.from_state, 'to', t.to_state,
                          'trigger', t.trigger, 'cause_type', t.cause_type, 'at', t.at) ORDER BY t.id),
                        '[]'::json)
                 FROM orders.order_trail t WHERE t.order_id = s.order_id) AS trail
         FROM orders.order_status s WHERE s.order_id = ANY($1)",
    )
    .bind(order_ids)
    .fetch_all(pool)
    .await?;
    let mut found: HashMap<String, Snapshot> = rows
        .into_iter()
        .map(|r| {
            let snapshot = Snapshot {
                row: Some(r.row),
                trail: r.trail.0,
            };
            (r.order_id, snapshot)
        })
        .collect();
    for id in order_ids {
        found.entry(id.clone()).or_insert(Snapshot {
            row: None,
            trail: Vec::new(),
        });
    }
    Ok(found)
}

/// The status name served for a row (`accepted` before the orders processor has seen the order).
fn status_name(row: &Option<StatusRow>) -> &str {
    row.as_ref().map_or("accepted", |r| r.state.as_str())
}

/// Query parameters of `GET /api/orders/{id}`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Wait up to this many seconds (at most 30) for the status to change.
    #[param(minimum = 0, maximum = 30)]
    pub wait: Option<u64>,
    /// The status the caller already knows; with `wait`, answer once it is something else.
    #[param(pattern = "^[a-z_]{1,32}$")]
    pub since: Option<String>,
}

/// An order with its status, payment and audit trail.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct OrderStatus {
    /// The order.
    #[serde(flatten)]
    pub order: OrderView,
    /// Why it was rejected or cancelled (e.g. `out_of_stock`, `payment_declined`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail of that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the reservation hold runs out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// When the orders processor last changed the order (absent while `accepted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// The payment, once asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment: Option<Payment>,
    /// The audit trail's steps, oldest first.
    pub transitions: Vec<Step>,
    /// What the customer must do (3-D Secure), while `action_required`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_action: Option<NextAction>,
}

/// The payment of an order.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Payment {
    /// The gateway (e.g. `stripe`).
    pub provider: Option<String>,
    /// The provider's id of the payment (e.g. the PaymentIntent).
    pub provider_ref: Option<String>,
}

/// A step the customer must take before the order can go on.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NextAction {
    /// `use_stripe_sdk`: hand `client_secret` to Stripe.js.
    #[serde(rename = "type")]
    pub kind: String,
    /// The PaymentIntent's client secret, for Stripe.js.
    pub client_secret: String,
    /// When the order is cancelled if the action is not done.
    pub due_at: Option<DateTime<Utc>>,
}

/// How long the first read of a status waits before trying again after a failure.
const FIRST_READ_RETRY: Duration = Duration::from_millis(100);

/// The first read of a request's order: a failed read (a pooled connection that was cut, the
/// database restarting) is tried again at once, then every [`FIRST_READ_RETRY`] until `deadline`
/// (the request's `wait`), so a blip costs a long poll some time rather than a 503.
async fn first_read(
    feed: &crate::status_feed::StatusFeed,
    watch: &mut crate::status_feed::Watch,
    order_id: &str,
    deadline: tokio::time::Instant,
) -> Result<Arc<Snapshot>, Arc<sqlx::Error>> {
    let mut tries = 0;
    loop {
        match feed.read(order_id, watch.version()).await {
            Ok(snapshot) => return Ok(snapshot),
            Err(e) => {
                tries += 1;
                let next = tokio::time::Instant::now() + FIRST_READ_RETRY;
                if tries > 1 && next >= deadline {
                    return Err(e);
                }
                tracing::debug!(error = %e, tries, "order status read failed; trying again");
                if tries > 1 {
                    tokio::time::sleep_until(next).await;
                }
            }
        }
    }
}

/// `GET /api/orders/{id}`: the order and its status, for the customer named in `X-Customer-Id`.
#[utoipa::path(get, path = "/api/orders/{id}", operation_id = "getOrder", tag = "orders", params(("id" = String, Path, description = "order id"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), StatusQuery), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the order; `status` is `accepted` until the orders processor has seen it, then pending, reserved, authorizing, action_required (with `next_action`), authorized, confirmed, completed, rejected or cancelled (with `reason`); `payment` (provider and its id) and `transitions` (the audit trail's steps)", body = OrderStatus)))]
pub async fn get(
    State(state): State<AppState>,
    storefront: Storefront,
    customer: XCustomerId,
    Path(id): Path<String>,
    crate::query::QueryParams(query): crate::query::QueryParams<StatusQuery>,
) -> Result<Response, ApiError> {
    let wait = query.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(Problem::invalid("wait", "0 to 30 seconds").into());
    }
    let well_formed = |s: &String| {
        (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    };
    if query.since.as_ref().is_some_and(|s| !well_formed(s)) {
        return Err(Problem::invalid("since", "a status: 1 to 32 of a-z and _").into());
    }
    let order = owned_order(&state, &storefront, &customer, &id).await?;
    let order_id = order.order_id.to_string();
    // Watch before reading, so a change between the read and the wait is not missed.
    let mut watch = state.status_feed.watch(&order_id);
    let feed = &state.status_feed;
    let unavailable = |e: Arc<sqlx::Error>| {
        tracing::warn!(error = %e, "order status unreadable");
        ApiError::from(Problem::unavailable("the database is unavailable", 1))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut snapshot = first_read(feed, &mut watch, &order_id, deadline)
        .await
        .map_err(unavailable)?;
    let since = query
        .since
        .unwrap_or_else(|| status_name(&snapshot.row).to_owned());
    if wait > 0 && status_name(&snapshot.row) == since {
        while let Ok(change) = tokio::time::timeout_at(deadline, watch.changed()).await {
            // A re-read that fails (the database restarting) keeps the request waiting: the
            // listener's reconnect wakes it to read again, and at the deadline it answers what
            // it last read, instead of a 503 to every waiter at once.
            snapshot = match feed.read(&order_id, change.version).await {
                Ok(read) => read,
                Err(e) => {
                    tracing::debug!(error = %e, "order status re-read failed; waiting on");
                    continue;
                }
            };
            if status_name(&snapshot.row) != since {
                // How long this answer took after the change was heard (its wake, its read).
                if let Some(heard_at) = change.heard_at {
                    metrics::histogram!("kassa_order_status_wake_seconds")
                        .record(heard_at.elapsed().as_secs_f64());
                }
                break;
            }
        }
    }
    drop(watch);
    let Snapshot {
        row,
        trail: transitions,
    } = Snapshot::clone(&snapshot);
    let view = OrderView::of(&order, status_name(&row));
    let body = match row {
        None => OrderStatus {
            order: view,
            reason: None,
            detail: None,
            hold_expires_at: None,
            updated_at: None,
            payment: None,
            transitions,
            next_action: None,
        },
        Some(row) => OrderStatus {
            order: view,
            payment: row.provider.is_some().then_some(Payment {
                provider: row.provider,
                provider_ref: row.provider_ref,
            }),
            next_action: row.client_secret.map(|client_secret| NextAction {
                kind: "use_stripe_sdk".into(),
                client_secret,
                due_at: row.action_due_at,
            }),
            reason: row.reason,
            detail: row.detail,
            hold_expires_at: row.hold_expires_at,
            updated_at: Some(row.updated_at),
            transitions,
        },
    };
    Ok(Json(body).into_response())
}
