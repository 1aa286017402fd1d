//! `POST /api/orders` (priced on the server, one `checkout.requests` message per line keyed by
//! SKU, 202 once Kafka acknowledged every line) and `GET /api/orders/{id}`.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kassa_schemas::events::checkout::{CheckoutPayload, Reserve};
use kassa_schemas::{Envelope, Payload};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::accepted::OrderView;
use crate::accepted::{Accepted, accepted_response, claim_and_store, load, order_json};
use crate::auth::Storefront;
use crate::body::JsonBody;
use crate::domain::{CustomerId, IdempotencyKey, PaymentMethodId, Sku};
use crate::error::ApiError;
use crate::flash::{self, Gate};
use crate::fulfilment::FulfilmentBody;
use crate::idempotency::{self, Existing};
use crate::pricing::{self, PricingError, Product};
use crate::problem::{CommonErrors, FieldError, Problem};
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
    #[schema(schema_with = CustomerId::schema)]
    pub customer_id: String,
    /// What to buy.
    #[schema(min_items = 1, max_items = 50)]
    pub lines: Vec<LineRequest>,
    /// Payment method to authorize (e.g. `pm_card_visa`).
    #[schema(schema_with = PaymentMethodId::schema)]
    pub payment_method_id: String,
    /// Where to ship and whom to tell (optional: an order without it ships nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<FulfilmentBody>,
}

/// One line of an order request.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct LineRequest {
    /// The SKU.
    #[schema(schema_with = Sku::schema)]
    pub sku: String,
    /// Units.
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

/// An order request parsed at the edge: every id well-formed, every quantity in range.
struct Valid {
    key: IdempotencyKey,
    customer: CustomerId,
    payment_method: PaymentMethodId,
    lines: Vec<(Sku, i32)>,
}

/// Parses `request` and its Idempotency-Key; every rule broken, by field, otherwise.
fn parse(request: &OrderRequest, key: Option<&str>) -> Result<Valid, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut bad = |field: String, message: &str| {
        errors.push(FieldError {
            field,
            message: message.to_owned(),
        })
    };
    let key = match key {
        None => Err("the header is required"),
        Some(k) => IdempotencyKey::parse(k),
    };
    let key = key.map_err(|rule| bad("Idempotency-Key".into(), rule)).ok();
    let customer = CustomerId::parse(&request.customer_id)
        .map_err(|rule| bad("customer_id".into(), rule))
        .ok();
    let payment_method = PaymentMethodId::parse(&request.payment_method_id)
        .map_err(|rule| bad("payment_method_id".into(), rule))
        .ok();
    if request.lines.is_empty() || request.lines.len() > MAX_LINES {
        bad("lines".into(), &format!("1 to {MAX_LINES} lines"));
    }
    let mut lines = Vec::with_capacity(request.lines.len());
    for (i, line) in request.lines.iter().enumerate().take(MAX_LINES) {
        match Sku::parse(&line.sku) {
            Ok(sku) => lines.push((sku, line.quantity)),
            Err(rule) => bad(format!("lines[{i}].sku"), rule),
        }
        if line.quantity < 1 || line.quantity > MAX_QUANTITY {
            bad(
                format!("lines[{i}].quantity"),
                &format!("1 to {MAX_QUANTITY}"),
            );
        }
    }
    if let Some(fulfilment) = &request.fulfilment {
        crate::fulfilment::parse(fulfilment, "fulfilment", &mut errors);
    }
    match (key, customer, payment_method) {
        (Some(key), Some(customer), Some(payment_method)) if errors.is_empty() => Ok(Valid {
            key,
            customer,
            payment_method,
            lines,
        }),
        _ => Err(errors),
    }
}

/// The event id of an order line's reserve request: derived, so a re-sent line is the same event.
fn reserve_event_id(order_id: Uuid, line_index: i32) -> Uuid {
    Uuid::new_v5(&order_id, format!("reserve/{line_index}").as_bytes())
}

/// `POST /api/orders`.
#[utoipa::path(post, path = "/api/orders", operation_id = "placeOrder", tag = "orders", request_body = OrderRequest,
    params(("Idempotency-Key" = String, Header, description = "required; the same key and body get the same answer for 24 h")),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 202, description = "accepted: every line is on Kafka; `Location` names the order", body = OrderView,
            headers(("Location" = String, description = "the order: `/api/orders/{order_id}`")),
            links(
                ("getOrder" = (operation_id = "getOrder", parameters(("id" = "$response.body#/order_id"), ("header.X-Customer-Id" = "$response.body#/customer_id")), description = "the order's status")),
                ("cancelOrder" = (operation_id = "cancelOrder", parameters(("id" = "$response.body#/order_id"), ("header.X-Customer-Id" = "$response.body#/customer_id")), description = "cancel it")),
                ("renewHold" = (operation_id = "renewHold", parameters(("id" = "$response.body#/order_id"), ("header.X-Customer-Id" = "$response.body#/customer_id")), description = "keep its reservation longer")),
            )),
        (status = 409, description = "`sold_out` or `purchase_limit` (flash sale)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`unknown_sku`, `mixed_currencies`, `total_too_large` or `idempotency_key_reused`: well-formed, but the catalog or an earlier request refuses it", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value: request }: JsonBody<OrderRequest>,
) -> Result<Response, ApiError> {
    place(&state, &storefront, &headers, &request, "POST /api/orders").await
}

/// Places `request` under the request's Idempotency-Key (`route` is part of its fingerprint).
pub(crate) async fn place(
    state: &AppState,
    storefront: &Storefront,
    headers: &HeaderMap,
    request: &OrderRequest,
    route: &str,
) -> Result<Response, ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let valid = parse(request, key).map_err(Problem::validation)?;
    let key = valid.key.as_str();
    let canonical = serde_json::to_vec(request)?;
    let fingerprint = idempotency::fingerprint(&storefront.name, route, &canonical);

    // Flash-sale fast path: a buyer who cannot get in is answered before any database work.
    let mut units: BTreeMap<String, i32> = BTreeMap::new();
    for (sku, quantity) in &valid.lines {
        *units.entry(sku.to_string()).or_default() += quantity;
    }
    if let Some(sku) =
        flash::sold_out_early(&state.redis.get(), &storefront.name, key, &units).await
    {
        metrics::counter!("kassa_flash_gate_total", "outcome" => "sold_out").increment(1);
        return Err(Problem::sold_out(&sku).into());
    }

    // At most three rounds: a lost race for the key, or a store whose outcome is unknown, is
    // followed by a look at what the key holds now.
    let mut failed = None;
    for _ in 0..3 {
        // The key is looked up while the lines are priced: a new key (the usual case) needs the
        // price next, and a replay ignores it.
        let (found, priced) = futures::join!(
            idempotency::existing(&state.pool, &storefront.name, key, &fingerprint),
            price(state, &valid.lines)
        );
        let accepted = match found? {
            Existing::Reused => return Err(Problem::idempotency_key_reused().into()),
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
                    .customer(&storefront.name, valid.customer.as_str())?;
                let priced = priced?;
                // Tokens taken here are never given back by the API: they belong to the key (a
                // retry of this request reuses them) and, once stored, to the order, whose lines
                // inventory gives back if they are rejected, released or restocked.
                let flash = match flash::admit(
                    &state.redis.get(),
                    &storefront.name,
                    key,
                    &fingerprint,
                    valid.customer.as_str(),
                    &units,
                )
                .await
                {
                    Gate::Admitted(flash) => {
                        if !flash.is_empty() {
                            metrics::counter!("kassa_flash_gate_total", "outcome" => "admitted")
                                .increment(1);
                        }
                        flash
                    }
                    Gate::SoldOut(sku) => {
                        metrics::counter!("kassa_flash_gate_total", "outcome" => "sold_out")
                            .increment(1);
                        return Err(Problem::sold_out(&sku).into());
                    }
                    Gate::PurchaseLimit(sku) => {
                        metrics::counter!("kassa_flash_gate_total", "outcome" => "purchase_limit")
                            .increment(1);
                        return Err(Problem::purchase_limit(&sku).into());
                    }
                    Gate::KeyReused(_) => return Err(Problem::idempotency_key_reused().into()),
                };
                let accepted = Accepted {
                    order_id: Uuid::now_v7(),
                    storefront: storefront.name.clone(),
                    customer_id: valid.customer.to_string(),
                    currency: priced.currency,
                    total_minor: priced.total_minor,
                    lines: priced.lines,
                    payment_method_id: valid.payment_method.to_string(),
                    flash,
                    traceparent: Some(produce::order_trace(headers)),
                    fulfilment: request.fulfilment.clone(),
                };
                match claim_and_store(state, storefront, key, route, &fingerprint, &accepted).await
                {
                    Ok(true) => accepted,
                    // Another request holds the key: its record says what to answer.
                    Ok(false) => continue,
                    // Stored or not, nobody can tell from here (an error may come after the
                    // commit): the key's record says which.
                    Err(e) => {
                        failed = Some(e);
                        continue;
                    }
                }
            }
        };
        let span = tracing::Span::current();
        span.record("order_id", tracing::field::display(accepted.order_id));
        if let Some(trace_id) = accepted
            .traceparent
            .as_deref()
            .and_then(kassa_schemas::trace::trace_id)
        {
            span.record("trace_id", trace_id);
        }
        // Published, the order is promised: the client need not wait for its answer's record.
        let body = publish_for_answer(state, &accepted).await?;
        state
            .answers
            .store_behind(&storefront.name, key, 202, &body);
        return Ok(accepted_response(accepted.order_id, 202, body));
    }
    if let Some(error) = failed {
        return Err(error);
    }
    // Lost races only: the other request is mid-flight; the client may retry.
    Err(Problem::same_request_in_flight().into())
}

async fn price(state: &AppState, lines: &[(Sku, i32)]) -> Result<pricing::Priced, ApiError> {
    let skus: Vec<&str> = lines.iter().map(|(sku, _)| sku.as_str()).collect();
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT sku, price_minor, currency FROM api.products WHERE sku = ANY($1) AND active",
    )
    .bind(&skus)
    .fetch_all(&state.pool)
    .await?;
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
    let lines: Vec<(String, i32)> = lines
        .iter()
        .map(|(sku, quantity)| (sku.to_string(), *quantity))
        .collect();
    let priced = pricing::price(&lines, &catalog).map_err(|e| match e {
        PricingError::UnknownSkus(skus) => Problem::unknown_sku(&skus),
        PricingError::MixedCurrencies(c) => Problem::unprocessable(
            "mixed_currencies",
            format!(
                "all lines must be in one currency; these are in {}",
                c.join(", ")
            ),
        ),
        PricingError::Overflow => {
            Problem::unprocessable("total_too_large", "the order total is too large")
        }
    })?;
    Ok(priced)
}

/// Publishes `order` and records the 202 answer under its storefront's Idempotency-Key, for
/// replays; returns the answer's body. (A request does this, or the sweep of orders left
/// unanswered.)
pub(crate) async fn publish_and_answer(
    state: &AppState,
    storefront: &str,
    key: &str,
    order: &Accepted,
) -> Result<serde_json::Value, ApiError> {
    let body = publish_for_answer(state, order).await?;
    state.answers.store(storefront, key, 202, &body).await?;
    Ok(body)
}

/// Publishes `order`; returns the body of its 202 answer.
async fn publish_for_answer(
    state: &AppState,
    order: &Accepted,
) -> Result<serde_json::Value, ApiError> {
    publish(state, order).await?;
    metrics::counter!("kassa_order_lines_published_total").increment(order.lines.len() as u64);
    Ok(order_json(order, "accepted"))
}

/// Sends one `checkout.requests` message per line, keyed by SKU, and waits for every ack.
async fn publish(state: &AppState, order: &Accepted) -> Result<(), ApiError> {
    let order_id = order.order_id.to_string();
    let mut records = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        let sale = order.flash.get(&line.sku);
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
            hold_seconds: sale
                .map(|s| s.hold_seconds)
                .filter(|h| *h > 0)
                .unwrap_or(state.hold_seconds),
            flash_sale: sale.is_some(),
            flash_sale_generation: sale.and_then(|s| s.generation.clone()),
            fulfilment: order.fulfilment.as_ref().map(|f| Box::new(f.to_event())),
            storefront: Some(order.storefront.clone()),
        };
        let mut event = Envelope::new(order_id.clone(), None, CheckoutPayload::Reserve(reserve));
        event.event_id = reserve_event_id(order.order_id, line.line_index);
        records.push((line.sku.clone(), produce::encode(state, &event).await?));
    }
    let trace = order.traceparent.as_deref();
    produce::send_all(state, CheckoutPayload::TOPIC.name(), trace, &records).await
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
            fulfilment: None,
        }
    }

    #[test]
    fn validation_names_every_bad_field() {
        let errors = parse(&request(vec![("TEE", 0), ("bad sku!", 1)]), None)
            .err()
            .unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["Idempotency-Key", "lines[0].quantity", "lines[1].sku"]
        );
        let valid = parse(&request(vec![("TEE", 1)]), Some("k-1")).ok().unwrap();
        assert_eq!(
            (
                valid.key.as_str(),
                valid.customer.as_str(),
                valid.lines.len()
            ),
            ("k-1", "cus_1", 1)
        );
        assert_eq!(parse(&request(vec![]), Some("k")).err().unwrap().len(), 1);
        let many = request((0..=MAX_LINES).map(|_| ("TEE", 1)).collect());
        assert_eq!(parse(&many, Some("k")).err().unwrap()[0].field, "lines");
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
