//! `POST /api/orders` (priced on the server, one `checkout.requests` message per line keyed by
//! SKU, 202 once Kafka acknowledged every line) and `GET /api/orders/{id}`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kassa_schemas::events::checkout::{CheckoutPayload, Reserve};
use kassa_schemas::{Envelope, Payload};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Storefront;
use crate::body::JsonBody;
use crate::flash::{self, Gate};
use crate::idempotency::{self, Existing};
use crate::pricing::{self, PricedLine, PricingError, Product};
use crate::problem::{FieldError, Problem};
use crate::produce;

/// Most lines in one order.
pub const MAX_LINES: usize = 50;
/// Most units on one line.
pub const MAX_QUANTITY: i32 = 1_000;

/// The body of `POST /api/orders`. Prices are never taken from the client: fields other than
/// these are ignored.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct OrderRequest {
    /// The customer placing the order (as the storefront knows them).
    pub customer_id: String,
    /// What to buy.
    pub lines: Vec<LineRequest>,
    /// Payment method to authorize (e.g. `pm_card_visa`).
    pub payment_method_id: String,
}

/// One line of an order request.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct LineRequest {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
}

fn validate(request: &OrderRequest, key: Option<&str>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut bad = |field: String, message: &str| {
        errors.push(FieldError {
            field,
            message: message.to_owned(),
        })
    };
    match key {
        None => bad("Idempotency-Key".into(), "the header is required"),
        Some(k) if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| b.is_ascii_graphic()) => {
            bad(
                "Idempotency-Key".into(),
                "1 to 255 visible ASCII characters",
            )
        }
        Some(_) => {}
    }
    if !valid_id(&request.customer_id, 128) {
        bad(
            "customer_id".into(),
            "1 to 128 characters: letters, digits, '-', '_', '.', '@'",
        );
    }
    if !valid_id(&request.payment_method_id, 255) {
        bad(
            "payment_method_id".into(),
            "1 to 255 characters: letters, digits, '-', '_', '.'",
        );
    }
    if request.lines.is_empty() || request.lines.len() > MAX_LINES {
        bad("lines".into(), &format!("1 to {MAX_LINES} lines"));
    }
    for (i, line) in request.lines.iter().enumerate().take(MAX_LINES) {
        if !valid_sku(&line.sku) {
            bad(
                format!("lines[{i}].sku"),
                "1 to 64 characters: letters, digits, '.', '_', '-'",
            );
        }
        if line.quantity < 1 || line.quantity > MAX_QUANTITY {
            bad(
                format!("lines[{i}].quantity"),
                &format!("1 to {MAX_QUANTITY}"),
            );
        }
    }
    errors
}

fn valid_id(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Whether `value` is a well-formed SKU: 1 to 64 characters, letters, digits, '.', '_', '-',
/// starting with a letter or digit (the catalog's own CHECK says the same).
pub(crate) fn valid_sku(value: &str) -> bool {
    let mut chars = value.chars();
    value.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The event id of an order line's reserve request: derived, so a re-sent line is the same event.
fn reserve_event_id(order_id: Uuid, line_index: i32) -> Uuid {
    Uuid::new_v5(&order_id, format!("reserve/{line_index}").as_bytes())
}

/// An accepted order, as stored by the API.
pub(crate) struct Accepted {
    pub(crate) order_id: Uuid,
    storefront: String,
    pub(crate) customer_id: String,
    currency: String,
    total_minor: i64,
    lines: Vec<PricedLine>,
    payment_method_id: String,
    /// SKUs admitted by a flash-sale gate, with the sale's hold in seconds.
    flash: BTreeMap<String, i32>,
}

/// `POST /api/orders`.
#[utoipa::path(post, path = "/api/orders", tag = "orders", request_body = OrderRequest, params(("Idempotency-Key" = String, Header, description = "required; the same key and body get the same answer for 24 h")), security(("storefront" = [])), responses((status = 400, description = "invalid request", body = Problem, content_type = "application/problem+json"), (status = 401, description = "no or wrong key", body = Problem, content_type = "application/problem+json"), (status = 404, description = "not found (also another customer's)", body = Problem, content_type = "application/problem+json"), (status = 429, description = "rate limited", body = Problem, content_type = "application/problem+json"), (status = 503, description = "a dependency is unavailable", body = Problem, content_type = "application/problem+json"), (status = 202, description = "accepted: every line is on Kafka; `Location` names the order"), (status = 409, description = "`sold_out` or `purchase_limit` (flash sale)", body = Problem, content_type = "application/problem+json"), (status = 422, description = "`unknown_sku` or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value: request }: JsonBody<OrderRequest>,
) -> Result<Response, Problem> {
    place(&state, &storefront, &headers, &request, "POST /api/orders").await
}

/// Places `request` under the request's Idempotency-Key (`route` is part of its fingerprint).
pub(crate) async fn place(
    state: &AppState,
    storefront: &Storefront,
    headers: &HeaderMap,
    request: &OrderRequest,
    route: &str,
) -> Result<Response, Problem> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let errors = validate(request, key);
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let key = key.unwrap_or_default();
    let canonical = serde_json::to_vec(request).map_err(|_| Problem::internal())?;
    let fingerprint = idempotency::fingerprint(&storefront.name, route, &canonical);

    // Flash-sale fast path: a buyer who cannot get in is answered before any database work.
    let mut units: BTreeMap<String, i32> = BTreeMap::new();
    for line in &request.lines {
        *units.entry(line.sku.clone()).or_default() += line.quantity;
    }
    if let Some(sku) =
        flash::sold_out_early(&state.redis.get(), &storefront.name, key, &units).await
    {
        metrics::counter!("kassa_flash_gate_total", "outcome" => "sold_out").increment(1);
        return Err(Problem::sold_out(&sku));
    }

    // At most two rounds: a lost race for the key is followed by the winner's record.
    for _ in 0..2 {
        let accepted = match idempotency::existing(&state.pool, &storefront.name, key, &fingerprint)
            .await
            .map_err(db)?
        {
            Existing::Reused => return Err(Problem::idempotency_key_reused()),
            Existing::Answered {
                order_id,
                status,
                body,
            } => return Ok(accepted_response(order_id, status, body)),
            Existing::Pending { order_id } => match load(state, order_id).await? {
                Some(accepted) => accepted,
                None => continue, // the winner has not committed its order yet: look again
            },
            Existing::None => {
                state
                    .limits
                    .customer(&storefront.name, &request.customer_id)?;
                // The gate before pricing and storing: a refused order costs no more work.
                let taken = match flash::admit(
                    &state.redis.get(),
                    &storefront.name,
                    key,
                    &request.customer_id,
                    &units,
                )
                .await
                {
                    Gate::Admitted(taken) => {
                        if !taken.is_empty() {
                            metrics::counter!("kassa_flash_gate_total", "outcome" => "admitted")
                                .increment(1);
                        }
                        taken
                    }
                    Gate::SoldOut(sku) => {
                        metrics::counter!("kassa_flash_gate_total", "outcome" => "sold_out")
                            .increment(1);
                        return Err(Problem::sold_out(&sku));
                    }
                    Gate::PurchaseLimit(sku) => {
                        metrics::counter!("kassa_flash_gate_total", "outcome" => "purchase_limit")
                            .increment(1);
                        return Err(Problem::purchase_limit(&sku));
                    }
                };
                let priced = match price(state, request).await {
                    Ok(priced) => priced,
                    Err(problem) => {
                        flash::give_back(&state.redis.get(), &request.customer_id, &taken, &units)
                            .await;
                        return Err(problem);
                    }
                };
                let accepted = Accepted {
                    order_id: Uuid::now_v7(),
                    storefront: storefront.name.clone(),
                    customer_id: request.customer_id.clone(),
                    currency: priced.currency,
                    total_minor: priced.total_minor,
                    lines: priced.lines,
                    payment_method_id: request.payment_method_id.clone(),
                    flash: taken,
                };
                let stored =
                    claim_and_store(state, storefront, key, route, &fingerprint, &accepted).await;
                if !matches!(stored, Ok(true)) {
                    // Lost the race for the key (or could not store): this order does not go ahead.
                    flash::give_back(
                        &state.redis.get(),
                        &accepted.customer_id,
                        &accepted.flash,
                        &units,
                    )
                    .await;
                    stored?;
                    continue;
                }
                accepted
            }
        };
        publish(state, &accepted).await?;
        metrics::counter!("kassa_order_lines_published_total")
            .increment(accepted.lines.len() as u64);
        let body = order_json(&accepted, "accepted");
        idempotency::answer(&state.pool, &storefront.name, key, 202, &body)
            .await
            .map_err(db)?;
        return Ok(accepted_response(accepted.order_id, 202, body));
    }
    // Two lost races in a row: the other request is mid-flight; the client may retry.
    Err(Problem::unavailable(
        "the same request is being processed; retry with the same Idempotency-Key",
        1,
    ))
}

async fn price(state: &AppState, request: &OrderRequest) -> Result<pricing::Priced, Problem> {
    let skus: Vec<&str> = request.lines.iter().map(|l| l.sku.as_str()).collect();
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT sku, price_minor, currency FROM api.products WHERE sku = ANY($1) AND active",
    )
    .bind(&skus)
    .fetch_all(&state.pool)
    .await
    .map_err(db)?;
    let catalog: HashMap<String, Product> = rows
        .into_iter()
        .map(|(sku, price_minor, currency)| {
            (
                sku,
                Product {
                    price_minor,
                    currency,
                },
            )
        })
        .collect();
    let lines: Vec<(String, i32)> = request
        .lines
        .iter()
        .map(|l| (l.sku.clone(), l.quantity))
        .collect();
    pricing::price(&lines, &catalog).map_err(|e| match e {
        PricingError::UnknownSkus(skus) => Problem::unknown_sku(&skus),
        PricingError::MixedCurrencies(c) => Problem::validation(vec![FieldError {
            field: "lines".into(),
            message: format!(
                "all lines must be in one currency; these are in {}",
                c.join(", ")
            ),
        }]),
        PricingError::Overflow => Problem::validation(vec![FieldError {
            field: "lines".into(),
            message: "the order total is too large".into(),
        }]),
    })
}

/// Claims the key and stores the order in one statement (atomic: both or neither); false if
/// another request holds the key.
async fn claim_and_store(
    state: &AppState,
    storefront: &Storefront,
    key: &str,
    route: &str,
    fingerprint: &[u8],
    order: &Accepted,
) -> Result<bool, Problem> {
    let stored: Option<(Uuid,)> = sqlx::query_as(
        "WITH claimed AS (
           INSERT INTO api.idempotency_keys (storefront, key, route, request_hash, order_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (storefront, key) DO UPDATE
             SET route = excluded.route, request_hash = excluded.request_hash, order_id = excluded.order_id,
                 response_status = NULL, response_body = NULL, created_at = now()
             WHERE api.idempotency_keys.created_at <= now() - interval '24 hours'
           RETURNING order_id)
         INSERT INTO api.orders (order_id, storefront, customer_id, currency, total_minor, lines, payment_method_id, flash)
         SELECT order_id, $1, $6, $7, $8, $9, $10, $11 FROM claimed
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
    .bind(serde_json::to_value(&order.lines).map_err(|_| Problem::internal())?)
    .bind(&order.payment_method_id)
    .bind(serde_json::to_value(&order.flash).map_err(|_| Problem::internal())?)
    .fetch_optional(&state.pool)
    .await
    .map_err(db)?;
    Ok(stored.is_some())
}

async fn load(state: &AppState, order_id: Uuid) -> Result<Option<Accepted>, Problem> {
    let row: Option<(
        String,
        String,
        String,
        i64,
        serde_json::Value,
        String,
        serde_json::Value,
    )> = sqlx::query_as(
        "SELECT storefront, customer_id, currency, total_minor, lines, payment_method_id, flash
         FROM api.orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(db)?;
    let Some((storefront, customer_id, currency, total_minor, lines, payment_method_id, flash)) =
        row
    else {
        return Ok(None);
    };
    let lines = serde_json::from_value(lines).map_err(|_| Problem::internal())?;
    let flash = serde_json::from_value(flash).map_err(|_| Problem::internal())?;
    Ok(Some(Accepted {
        order_id,
        storefront,
        customer_id,
        currency,
        total_minor,
        lines,
        payment_method_id,
        flash,
    }))
}

/// Sends one `checkout.requests` message per line, keyed by SKU, and waits for every ack.
async fn publish(state: &AppState, order: &Accepted) -> Result<(), Problem> {
    let order_id = order.order_id.to_string();
    let mut records = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        let sale_hold = order.flash.get(&line.sku).copied();
        let reserve = Reserve {
            order_id: order_id.clone(),
            line_index: line.line_index,
            line_count: order.lines.len() as i32,
            sku: line.sku.clone(),
            quantity: line.quantity,
            customer_id: order.customer_id.clone(),
            currency: order.currency.clone(),
            unit_price_minor: line.unit_price_minor,
            payment_method_id: order.payment_method_id.clone(),
            hold_seconds: sale_hold.filter(|h| *h > 0).unwrap_or(state.hold_seconds),
            flash_sale: sale_hold.is_some(),
        };
        let mut event = Envelope::new(order_id.clone(), None, CheckoutPayload::Reserve(reserve));
        event.event_id = reserve_event_id(order.order_id, line.line_index);
        records.push((line.sku.clone(), produce::encode(state, &event).await?));
    }
    produce::send_all(state, CheckoutPayload::TOPIC.name(), &records).await
}

pub(crate) fn order_json(order: &Accepted, status: &str) -> serde_json::Value {
    json!({
        "order_id": order.order_id,
        "status": status,
        "customer_id": order.customer_id,
        "currency": order.currency,
        "total_minor": order.total_minor,
        "lines": order.lines,
    })
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

/// The order `id` if it belongs to this storefront and to the customer in `X-Customer-Id`;
/// otherwise 404 (unknown, another storefront's or another customer's alike). One read.
pub(crate) async fn owned_order(
    state: &AppState,
    storefront: &Storefront,
    headers: &HeaderMap,
    id: &str,
) -> Result<Accepted, Problem> {
    let customer = headers
        .get("x-customer-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Ok(order_id) = Uuid::parse_str(id) else {
        return Err(Problem::not_found("order"));
    };
    let order = load(state, order_id).await?.filter(|o| {
        !customer.is_empty() && o.storefront == storefront.name && o.customer_id == customer
    });
    let order = order.ok_or_else(|| Problem::not_found("order"))?;
    state.limits.customer(&storefront.name, customer)?;
    Ok(order)
}

/// A database failure as an answer: 503 when the database cannot be reached (retrying helps),
/// 500 otherwise (logged; a bug to fix, never shown to the client).
pub(crate) fn db(e: sqlx::Error) -> Problem {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => {
            tracing::warn!(error = %e, "database unreachable");
            Problem::unavailable("the database is unavailable", 1)
        }
        other => {
            tracing::error!(error = %other, "database error");
            Problem::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: Vec<(&str, i32)>) -> OrderRequest {
        OrderRequest {
            customer_id: "cus_1".into(),
            lines: lines
                .into_iter()
                .map(|(s, q)| LineRequest {
                    sku: s.into(),
                    quantity: q,
                })
                .collect(),
            payment_method_id: "pm_card_visa".into(),
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        let errors = validate(&request(vec![("TEE", 0), ("bad sku!", 1)]), None);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["Idempotency-Key", "lines[0].quantity", "lines[1].sku"]
        );
        assert!(validate(&request(vec![("TEE", 1)]), Some("k-1")).is_empty());
        assert_eq!(validate(&request(vec![]), Some("k")).len(), 1);
        let many = request((0..=MAX_LINES).map(|_| ("TEE", 1)).collect());
        assert_eq!(validate(&many, Some("k"))[0].field, "lines");
    }

    #[test]
    fn a_line_keeps_its_event_id_across_retries() {
        let order = Uuid::now_v7();
        assert_eq!(reserve_event_id(order, 0), reserve_event_id(order, 0));
        assert_ne!(reserve_event_id(order, 0), reserve_event_id(order, 1));
        assert_ne!(
            reserve_event_id(order, 0),
            reserve_event_id(Uuid::now_v7(), 0)
        );
    }
}
