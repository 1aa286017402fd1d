//! Refunds of completed orders (admin keys): `POST /admin/orders/{id}/refunds` checks the amount
//! against what was captured and not yet refunded (and the restocked units against what was
//! ordered), records the refund under its Idempotency-Key and sends it to the orders processor
//! on `orders.requests`; `GET /admin/orders/{id}/refunds` shows each refund and where it stands.
//! The orders processor checks again (it alone decides), payments refunds at the provider,
//! inventory restocks the named units.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use kassa_schemas::Envelope;
use kassa_schemas::events::orders::{OrderRequest, RefundRequested, RefundRestock};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Admin;
use crate::body::JsonBody;
use crate::domain::{IdempotencyKey, OrderId, Sku};
use crate::error::ApiError;
use crate::problem::{CommonErrors, Problem};

/// Units of one SKU that come back to stock with a refund.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestockLine {
    /// The SKU (one of the order's).
    #[schema(schema_with = Sku::schema)]
    pub sku: String,
    /// Units that come back (at most what the order holds of the SKU, less what other refunds
    /// restock).
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

/// The body of `POST /admin/orders/{id}/refunds`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundBody {
    /// Amount to refund, in minor units of the order's currency: more than 0, at most what was
    /// captured less what other refunds take (more is 422 `refund_exceeds_remaining`).
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 1)]
    pub amount_minor: i64,
    /// Why (recorded in the audit trail, told to the orders processor): 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    pub reason: String,
    /// Units that come back to stock once the refund is made.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub restock: Vec<RestockLine>,
}

/// A refund and where it stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Refund {
    /// Its id.
    pub refund_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// Amount, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Why.
    pub reason: String,
    /// Units that come back to stock.
    pub restock: Vec<RestockLine>,
    /// `accepted` (on its way to the orders processor), `requested` (at the provider),
    /// `refunded`, or `failed` (with `detail`).
    pub state: String,
    /// What the orders processor said of it.
    pub detail: Option<String>,
    /// Who asked.
    pub requested_by: String,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
}

/// An order's refunds.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Refunds {
    /// The order.
    pub order_id: Uuid,
    /// What was captured.
    pub captured_minor: i64,
    /// Refunded at the provider so far.
    pub refunded_minor: i64,
    /// What remains to refund: captured, less every refund not failed.
    pub refundable_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Oldest first.
    pub refunds: Vec<Refund>,
}

/// The order as the orders processor has it: state, total, currency, refunded so far.
async fn decided(
    state: &AppState,
    order: Uuid,
) -> Result<Option<(String, i64, String, i64)>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT state, total_minor, currency, refunded_minor FROM orders.orders WHERE order_id = $1",
    )
    .bind(order.to_string())
    .fetch_optional(&state.orders_pool)
    .await?)
}

/// The order's refunds: the API's records, with the orders processor's state of each.
async fn listed(state: &AppState, order: Uuid, currency: &str) -> Result<Vec<Refund>, ApiError> {
    let ours = sqlx::query(
        "SELECT refund_id, amount_minor, reason, restock, requested_by, created_at
         FROM api.refunds WHERE order_id = $1 ORDER BY created_at, refund_id",
    )
    .bind(order)
    .fetch_all(&state.pool)
    .await?;
    let theirs: BTreeMap<String, (String, Option<String>)> =
        sqlx::query_as::<_, (String, String, Option<String>)>(
            "SELECT refund_id, state, detail FROM orders.refunds WHERE order_id = $1",
        )
        .bind(order.to_string())
        .fetch_all(&state.orders_pool)
        .await?
        .into_iter()
        .map(|(id, s, d)| (id, (s, d)))
        .collect();
    Ok(ours
        .iter()
        .map(|r| {
            let id: Uuid = r.get("refund_id");
            let (state, detail) = theirs
                .get(&id.to_string())
                .cloned()
                .unwrap_or_else(|| ("accepted".into(), None));
            Refund {
                refund_id: id,
                order_id: order,
                amount_minor: r.get("amount_minor"),
                currency: currency.to_owned(),
                reason: r.get("reason"),
                restock: serde_json::from_value(r.get("restock")).unwrap_or_default(),
                state,
                detail,
                requested_by: r.get("requested_by"),
                created_at: r.get("created_at"),
            }
        })
        .collect())
}

/// Checks the body by the rules its schema states.
fn check(body: &RefundBody) -> Result<(), Problem> {
    if body.amount_minor < 1 {
        return Err(Problem::invalid("amount_minor", "more than 0"));
    }
    let reason = body.reason.trim();
    if reason.is_empty() || body.reason.chars().count() > 500 {
        return Err(Problem::invalid(
            "reason",
            "1 to 500 characters, not only spaces",
        ));
    }
    if body.restock.len() > 50 {
        return Err(Problem::invalid("restock", "at most 50 lines"));
    }
    for (i, line) in body.restock.iter().enumerate() {
        Sku::parse(&line.sku)
            .map_err(|rule| Problem::invalid(&format!("restock[{i}].sku"), rule))?;
        if !(1..=1000).contains(&line.quantity) {
            return Err(Problem::invalid(
                &format!("restock[{i}].quantity"),
                "1 to 1,000",
            ));
        }
    }
    Ok(())
}

/// `POST /admin/orders/{id}/refunds`: refunds part or all of a completed order.
#[utoipa::path(post, path = "/admin/orders/{id}/refunds", operation_id = "refundOrder", tag = "admin",
    request_body = RefundBody,
    params(("id" = String, Path, description = "order id"), ("Idempotency-Key" = String, Header, description = "the same key and body refund once: a retry gets the same refund")),
    security(("admin" = [])),
    responses(CommonErrors,
        (status = 202, description = "recorded and sent to the orders processor; `GET …/refunds` shows it become `refunded` (or `failed`)", body = Refund),
        (status = 409, description = "`conflict`: the order is not completed (only a captured payment is refunded)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`refund_exceeds_remaining`: more than was captured less other refunds; `restock_exceeds_order`: more units than the order holds less other refunds' restocks; `idempotency_key_reused`: the key came with another body", body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody { value }: JsonBody<RefundBody>,
) -> Result<(StatusCode, Json<Refund>), ApiError> {
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .ok_or_else(|| Problem::invalid("Idempotency-Key", "required"))?;
    let key =
        IdempotencyKey::parse(key).map_err(|rule| Problem::invalid("Idempotency-Key", rule))?;
    check(&value)?;
    let order = OrderId::parse(&id)
        .ok_or_else(|| Problem::not_found("order"))?
        .0;
    let accepted = crate::accepted::load(&state, order)
        .await?
        .ok_or_else(|| Problem::not_found("order"))?;
    let (order_state, total, currency, _) = decided(&state, order).await?.ok_or_else(|| {
        Problem::conflict("the order is not decided yet: only a completed order is refunded")
    })?;
    let fingerprint = hex::encode(crate::idempotency::fingerprint(
        &admin.name,
        "POST /admin/orders/{id}/refunds",
        &serde_json::to_vec(&(&id, &value))?,
    ));

    // The API's check, under a lock on the order: refunds asked for at once cannot together
    // take more than was captured. Refunds the orders processor failed give their amount back.
    let failed: Vec<String> = sqlx::query_scalar(
        "SELECT refund_id FROM orders.refunds WHERE order_id = $1 AND state = 'failed'",
    )
    .bind(order.to_string())
    .fetch_all(&state.orders_pool)
    .await?;
    let mut tx = state.pool.begin().await?;
    sqlx::query("SELECT 1 FROM api.orders WHERE order_id = $1 FOR UPDATE")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    let earlier = sqlx::query(
        "SELECT refund_id, idempotency_key, fingerprint, amount_minor, restock FROM api.refunds WHERE order_id = $1",
    )
    .bind(order)
    .fetch_all(&mut *tx)
    .await?;
    let same_key = earlier
        .iter()
        .find(|r| r.get::<String, _>("idempotency_key") == key.as_str());
    let refund_id = match same_key {
        Some(r) if r.get::<String, _>("fingerprint") != fingerprint => {
            return Err(Problem::idempotency_key_reused().into());
        }
        Some(r) => r.get::<Uuid, _>("refund_id"),
        None => {
            if order_state != "completed" {
                return Err(Problem::conflict(format!(
                    "the order is {order_state}: only a completed order is refunded"
                ))
                .into());
            }
            let live = earlier
                .iter()
                .filter(|r| !failed.contains(&r.get::<Uuid, _>("refund_id").to_string()));
            let taken: i64 = live.clone().map(|r| r.get::<i64, _>("amount_minor")).sum();
            let remains = total - taken;
            if value.amount_minor > remains {
                return Err(Problem::unprocessable(
                    "refund_exceeds_remaining",
                    format!(
                        "{} is more than the {remains} {currency} that remains to refund",
                        value.amount_minor
                    ),
                )
                .into());
            }
            for line in &value.restock {
                let ordered: i64 = accepted
                    .lines
                    .iter()
                    .filter(|l| l.sku == line.sku)
                    .map(|l| i64::from(l.quantity))
                    .sum();
                let restocked: i64 = live
                    .clone()
                    .flat_map(|r| {
                        serde_json::from_value::<Vec<RestockLine>>(r.get("restock"))
                            .unwrap_or_default()
                    })
                    .filter(|l| l.sku == line.sku)
                    .map(|l| i64::from(l.quantity))
                    .sum();
                if i64::from(line.quantity) > ordered - restocked {
                    return Err(Problem::unprocessable(
                        "restock_exceeds_order",
                        format!(
                            "{} of {} cannot come back: the order holds {ordered}, other refunds restock {restocked}",
                            line.quantity, line.sku
                        ),
                    )
                    .into());
                }
            }
            let refund_id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO api.refunds (refund_id, order_id, idempotency_key, fingerprint, amount_minor, reason, restock, requested_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(refund_id)
            .bind(order)
            .bind(key.as_str())
            .bind(&fingerprint)
            .bind(value.amount_minor)
            .bind(value.reason.trim())
            .bind(serde_json::to_value(&value.restock)?)
            .bind(&admin.name)
            .execute(&mut *tx)
            .await?;
            refund_id
        }
    };
    tx.commit().await?;

    // Sent (again, for a retry): the event's id is the refund's, so the orders processor's inbox
    // takes it once however often it is sent.
    let request = OrderRequest::RefundRequested(RefundRequested {
        order_id: order.to_string(),
        refund_id: refund_id.to_string(),
        amount_minor: value.amount_minor,
        reason: value.reason.trim().to_owned(),
        restock: value
            .restock
            .iter()
            .map(|l| RefundRestock {
                sku: l.sku.clone(),
                quantity: l.quantity,
            })
            .collect(),
        requested_by: admin.name.clone(),
    });
    let mut envelope = Envelope::new(order.to_string(), None, request);
    envelope.event_id = Uuid::new_v5(&refund_id, b"refund-requested");
    crate::produce::send(
        &state,
        &order.to_string(),
        accepted.traceparent.as_deref(),
        &envelope,
    )
    .await?;
    let shown = listed(&state, order, &currency)
        .await?
        .into_iter()
        .find(|r| r.refund_id == refund_id)
        .ok_or_else(|| Problem::not_found("refund"))?;
    Ok((StatusCode::ACCEPTED, Json(shown)))
}

/// `GET /admin/orders/{id}/refunds`: the order's refunds and what remains to refund.
#[utoipa::path(get, path = "/admin/orders/{id}/refunds", operation_id = "listRefunds", tag = "admin",
    params(("id" = String, Path, description = "order id")),
    security(("admin" = [])),
    responses(CommonErrors, (status = 200, description = "the refunds, oldest first, each with its state; the order's captured, refunded and refundable amounts", body = Refunds)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<Refunds>, ApiError> {
    let order = OrderId::parse(&id)
        .ok_or_else(|| Problem::not_found("order"))?
        .0;
    let (order_state, total, currency, refunded) = decided(&state, order)
        .await?
        .ok_or_else(|| Problem::not_found("order"))?;
    let refunds = listed(&state, order, &currency).await?;
    let captured = if order_state == "completed" { total } else { 0 };
    let taken: i64 = refunds
        .iter()
        .filter(|r| r.state != "failed")
        .map(|r| r.amount_minor)
        .sum();
    Ok(Json(Refunds {
        order_id: order,
        captured_minor: captured,
        refunded_minor: refunded,
        refundable_minor: (captured - taken).max(0),
        currency,
        refunds,
    }))
}
