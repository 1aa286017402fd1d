//! The API's record of accepted orders (`api.orders`): stored together with the Idempotency-Key
//! that placed them, read back for replays, the status route and the order requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Storefront;
use crate::domain::{OrderId, XCustomerId};
use crate::error::ApiError;
use crate::fulfilment::FulfilmentBody;
use crate::pricing::PricedLine;
use crate::problem::Problem;

/// An accepted order, as stored by the API.
pub(crate) struct Accepted {
    pub(crate) order_id: Uuid,
    pub(crate) storefront: String,
    pub(crate) customer_id: String,
    pub(crate) currency: String,
    pub(crate) total_minor: i64,
    pub(crate) lines: Vec<PricedLine>,
    pub(crate) payment_method_id: String,
    /// SKUs admitted by a flash-sale gate, with the sale's hold and generation.
    pub(crate) flash: BTreeMap<String, crate::flash::Admission>,
    /// The order's trace (W3C `traceparent`): every record about it continues it.
    pub(crate) traceparent: Option<String>,
    /// Where it ships and whom to tell (validated), if the storefront said.
    pub(crate) fulfilment: Option<FulfilmentBody>,
}

/// Claims the key and stores the order in one statement (atomic: both or neither); false if
/// another request holds the key.
pub(crate) async fn claim_and_store(
    state: &AppState,
    storefront: &Storefront,
    key: &str,
    route: &str,
    fingerprint: &[u8],
    order: &Accepted,
) -> Result<bool, ApiError> {
    let stored: Option<(Uuid,)> = sqlx::query_as(
        "WITH claimed AS (
           INSERT INTO api.idempotency_keys (storefront, key, route, request_hash, order_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (storefront, key) DO UPDATE
             SET route = excluded.route, request_hash = excluded.request_hash, order_id = excluded.order_id,
                 response_status = NULL, response_body = NULL, created_at = now()
             WHERE api.idempotency_keys.created_at <= now() - interval '24 hours'
           RETURNING order_id)
         INSERT INTO api.orders (order_id, storefront, customer_id, currency, total_minor, lines, payment_method_id, flash, traceparent, fulfilment)
         SELECT order_id, $1, $6, $7, $8, $9, $10, $11, $12, $13 FROM claimed
         RETURNING order_id",
    )
    .bind(&storefront.name)
    .bind(key)
    .bind(route)
    .bind(fingerprint)
    .bind(order.order_id)
    .bind(&order.customer_id)
    .bind(&order.currency)
    .bind(order.total_minor)
    .bind(serde_json::to_value(&order.lines)?)
    .bind(&order.payment_method_id)
    .bind(serde_json::to_value(&order.flash)?)
    .bind(&order.traceparent)
    .bind(order.fulfilment.as_ref().map(sqlx::types::Json))
    .fetch_optional(&state.pool)
    .await
    ?;
    Ok(stored.is_some())
}

/// A stored order: storefront, customer, currency, total, lines, payment method, flash-sale
/// holds, trace, fulfilment.
type Row = (
    String,
    String,
    String,
    i64,
    serde_json::Value,
    String,
    serde_json::Value,
    Option<String>,
    Option<sqlx::types::Json<FulfilmentBody>>,
);

/// The accepted order `order_id` (None: there is none).
pub(crate) async fn load(state: &AppState, order_id: Uuid) -> Result<Option<Accepted>, ApiError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT storefront, customer_id, currency, total_minor, lines, payment_method_id, flash,
                traceparent, fulfilment
         FROM api.orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some((
        storefront,
        customer_id,
        currency,
        total_minor,
        lines,
        payment_method_id,
        flash,
        traceparent,
        fulfilment,
    )) = row
    else {
        return Ok(None);
    };
    let lines = serde_json::from_value(lines)?;
    let flash = serde_json::from_value(flash)?;
    Ok(Some(Accepted {
        order_id,
        storefront,
        customer_id,
        currency,
        total_minor,
        lines,
        payment_method_id,
        flash,
        traceparent,
        fulfilment: fulfilment.map(|f| f.0),
    }))
}

/// An order as the API answers it when accepting it (and inside its status).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order's id (also in `Location`).
    pub order_id: Uuid,
    /// `accepted` until the orders processor has seen the order; then its state.
    pub status: String,
    /// The customer it was placed for.
    pub customer_id: String,
    /// ISO 4217 currency of every amount.
    pub currency: String,
    /// Sum of the line totals, in minor units.
    pub total_minor: i64,
    /// The lines, priced by the server.
    pub lines: Vec<PricedLine>,
    /// Where it ships and whom to tell, as the storefront gave them (absent: not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<FulfilmentBody>,
}

impl OrderView {
    /// The view of `order` in `status`.
    pub(crate) fn of(order: &Accepted, status: &str) -> Self {
        Self {
            order_id: order.order_id,
            status: status.to_owned(),
            customer_id: order.customer_id.clone(),
            currency: order.currency.clone(),
            total_minor: order.total_minor,
            lines: order.lines.clone(),
            fulfilment: order.fulfilment.clone(),
        }
    }
}

/// The body answered (and kept for replays) when `order` is accepted.
pub(crate) fn order_json(order: &Accepted, status: &str) -> serde_json::Value {
    serde_json::to_value(OrderView::of(order, status)).unwrap_or_default()
}

/// The answer to an accepted order: its status and body, with `Location`.
pub(crate) fn accepted_response(order_id: Uuid, status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (status, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/orders/{order_id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Orders read lately, by id: a stored order never changes, so the routes that read one over
/// and over (a status long-polled by its customer) read it from the database once.
#[derive(Clone)]
pub struct Recent(moka::future::Cache<Uuid, Arc<Accepted>>);

impl Default for Recent {
    fn default() -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(std::time::Duration::from_secs(300))
                .build(),
        )
    }
}

/// The accepted order `order_id`, from [`Recent`] or (through a status-read permit, so a crowd of
/// requests queues there and not for the pool) the database. Unknown ids are not kept.
async fn load_recent(state: &AppState, order_id: Uuid) -> Result<Option<Arc<Accepted>>, ApiError> {
    if let Some(kept) = state.recent_orders.0.get(&order_id).await {
        return Ok(Some(kept));
    }
    let _reading = state.status_feed.reading().await;
    let Some(order) = load(state, order_id).await? else {
        return Ok(None);
    };
    let order = Arc::new(order);
    state.recent_orders.0.insert(order_id, order.clone()).await;
    Ok(Some(order))
}

/// The order `id` if it belongs to this storefront and to the customer in `X-Customer-Id`;
/// otherwise 404 (unknown, another storefront's or another customer's alike). At most one read.
pub(crate) async fn owned_order(
    state: &AppState,
    storefront: &Storefront,
    customer: &XCustomerId,
    id: &str,
) -> Result<Arc<Accepted>, ApiError> {
    let customer = customer.clone().required()?;
    let Some(OrderId(order_id)) = OrderId::parse(id) else {
        return Err(Problem::not_found("order").into());
    };
    let order = load_recent(state, order_id)
        .await?
        .filter(|o| o.storefront == storefront.name && o.customer_id == customer.as_str());
    let order = order.ok_or_else(|| Problem::not_found("order"))?;
    state.limits.customer(&storefront.name, customer.as_str())?;
    Ok(order)
}
