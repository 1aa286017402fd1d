//! `GET /api/orders`: one customer's orders at this storefront, newest first, a page at a time,
//! optionally only those in one status. Orders come from the API's own record (`api.orders`:
//! every order it accepted), their status from the orders processor's read model (which may be in
//! a database of its own); a page ends with an opaque cursor ([`Cursor`]) for the next, stable
//! while new orders arrive.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::AppState;
use crate::accepted::OrderView;
use crate::auth::Storefront;
use crate::cursor::Cursor;
use crate::domain::CustomerId;
use crate::error::ApiError;
use crate::fulfilment::FulfilmentBody;
use crate::pricing::PricedLine;
use crate::problem::{CommonErrors, Problem};

/// Orders a page holds unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 20;
/// Most orders a page holds.
pub const MAX_LIMIT: u32 = 100;
/// Orders read a statement while a status filter skips others.
const FILTERED_BATCH: u32 = 200;
/// Most orders one request looks at under a status filter: a page may then end short, with a
/// cursor to go on from.
const MOST_EXAMINED: usize = 2_000;

/// Query parameters of `GET /api/orders`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The customer whose orders to list (its schema: the API's rule for customer ids).
    pub customer_id: String,
    /// Only orders in this status (`accepted`, `pending`, `reserved`, `authorizing`,
    /// `action_required`, `authorized`, `confirmed`, `completed`, `rejected`, `cancelled`).
    #[param(pattern = "^[a-z_]{1,32}$")]
    pub status: Option<String>,
    /// Orders a page (1 to 100; default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Where to go on from: the previous page's `next_cursor`.
    #[param(pattern = "^-?[0-9]{1,18}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
}

/// One order of a customer's history.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// The order as it was accepted, with its status now.
    #[serde(flatten)]
    pub order: OrderView,
    /// When the API accepted it.
    pub created_at: DateTime<Utc>,
    /// When the orders processor last changed it (absent while `accepted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// A page of a customer's orders.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// The orders, newest first.
    pub orders: Vec<HistoryEntry>,
    /// Pass as `cursor` for the next page (absent: this is the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A row of `api.orders` as the history reads it.
type Row = (
    Uuid,
    String,
    i64,
    serde_json::Value,
    DateTime<Utc>,
    Option<sqlx::types::Json<FulfilmentBody>>,
);

/// `GET /api/orders`: the customer's orders at this storefront, newest first.
#[utoipa::path(get, path = "/api/orders", operation_id = "listOrders", tag = "orders", params(HistoryQuery), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "a page of the customer's orders, newest first, each with its status now; `next_cursor` while more remain", body = HistoryPage)))]
pub async fn list(
    State(state): State<AppState>,
    storefront: Storefront,
    crate::query::QueryParams(query): crate::query::QueryParams<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let customer = CustomerId::parse(&query.customer_id)
        .map_err(|rule| Problem::invalid("customer_id", rule))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::invalid("limit", "1 to 100").into());
    }
    let well_formed = |s: &str| {
        (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    };
    if query.status.as_deref().is_some_and(|s| !well_formed(s)) {
        return Err(Problem::invalid("status", "a status: 1 to 32 of a-z and _").into());
    }
    let mut after: Option<Cursor> = query
        .cursor
        .as_deref()
        .map(|c| c.parse().map_err(|e: &str| Problem::invalid("cursor", e)))
        .transpose()?;
    state.limits.customer(&storefront.name, customer.as_str())?;

    let batch = if query.status.is_some() {
        FILTERED_BATCH
    } else {
        limit + 1
    };
    let mut orders = Vec::new();
    let mut examined = 0;
    let next_cursor = 'pages: loop {
        let rows = page_of(&state, &storefront.name, &customer, after, batch).await?;
        let exhausted = rows.len() < batch as usize;
        let ids: Vec<String> = rows.iter().map(|r| r.0.to_string()).collect();
        let statuses = statuses(&state, &ids).await?;
        for (order_id, currency, total_minor, lines, created_at, fulfilment) in rows {
            if orders.len() == limit as usize {
                // A page is full and this order remains: the next page starts after the last.
                break 'pages after;
            }
            after = Some(Cursor {
                created_at,
                order_id,
            });
            examined += 1;
            let (status, updated_at) = statuses
                .get(&order_id.to_string())
                .map_or(("accepted", None), |(s, at)| (s.as_str(), Some(*at)));
            if query
                .status
                .as_deref()
                .is_some_and(|wanted| wanted != status)
            {
                continue;
            }
            let lines: Vec<PricedLine> = serde_json::from_value(lines)?;
            orders.push(HistoryEntry {
                order: OrderView {
                    order_id,
                    status: status.to_owned(),
                    customer_id: customer.as_str().to_owned(),
                    currency,
                    total_minor,
                    lines,
                    fulfilment: fulfilment.map(|f| f.0),
                },
                created_at,
                updated_at,
            });
        }
        if exhausted {
            break None;
        }
        if examined >= MOST_EXAMINED {
            break after;
        }
    };
    Ok(Json(HistoryPage {
        orders,
        next_cursor: next_cursor.map(|c| c.to_string()),
    }))
}

/// Up to `batch` of the customer's orders after `after`, newest first.
async fn page_of(
    state: &AppState,
    storefront: &str,
    customer: &CustomerId,
    after: Option<Cursor>,
    batch: u32,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT order_id, currency::text, total_minor, lines, created_at, fulfilment FROM api.orders
         WHERE storefront = $1 AND customer_id = $2
           AND ($3::timestamptz IS NULL OR (created_at, order_id) < ($3, $4::uuid))
         ORDER BY created_at DESC, order_id DESC
         LIMIT $5",
    )
    .bind(storefront)
    .bind(customer.as_str())
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.order_id))
    .bind(i64::from(batch))
    .fetch_all(&state.pool)
    .await
}

/// The status and last change of each of `ids` the orders processor has seen.
async fn statuses(
    state: &AppState,
    ids: &[String],
) -> Result<HashMap<String, (String, DateTime<Utc>)>, sqlx::Error> {
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT order_id, state, updated_at FROM orders.order_status WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&state.orders_pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, status, at)| (id, (status, at)))
        .collect())
}
