//! Requests about an existing order, sent to the orders processor on `orders.requests`:
//! `DELETE /api/orders/{id}` (cancel) and `POST /api/orders/{id}/hold` (renew the hold).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kassa_schemas::Envelope;
use kassa_schemas::events::orders::{CancelRequested, HoldRenewalRequested, OrderRequest};
use serde::Deserialize;

use crate::AppState;
use crate::accepted::{Accepted, owned_order};
use crate::auth::Storefront;
use crate::domain::XCustomerId;
use crate::error::ApiError;
use crate::problem::{CommonErrors, Problem};

/// The shortest hold a renewal may ask for, in seconds.
pub const MIN_HOLD_SECONDS: i32 = 30;

/// `DELETE /api/orders/{id}`: asks for cancellation; 202 once on Kafka (orders decides).
#[utoipa::path(delete, path = "/api/orders/{id}", operation_id = "cancelOrder", tag = "orders", params(("id" = String, Path, description = "order id"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for")), security(("storefront" = [])), responses(CommonErrors, (status = 202, description = "cancellation requested", body = OrderRequested)))]
pub async fn cancel(
    State(state): State<AppState>,
    storefront: Storefront,
    customer: XCustomerId,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let owned = owned_order(&state, &storefront, &customer, &id).await?;
    let order = owned.order_id.to_string();
    let request = OrderRequest::CancelRequested(CancelRequested {
        order_id: order.clone(),
        customer_id: owned.customer_id.clone(),
        reason: "customer requested".into(),
    });
    send(&state, &owned, request).await?;
    let answer = OrderRequested {
        order_id: order,
        status: "cancel_requested".into(),
        hold_seconds: None,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The optional body of `POST /api/orders/{id}/hold`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct HoldBody {
    /// New hold length from now, in seconds (default: the configured hold; at most
    /// `KASSA_MAX_HOLD_SECONDS`, which the served document states).
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    #[schema(minimum = 30)]
    pub hold_seconds: Option<i32>,
}

/// The answer to a request about an order: on Kafka, for the orders processor to decide.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct OrderRequested {
    /// The order.
    pub order_id: String,
    /// `cancel_requested` or `hold_renewal_requested`.
    pub status: String,
    /// The hold asked for, in seconds (hold renewals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<i32>,
}

/// `POST /api/orders/{id}/hold`: asks to keep the reservation longer; 202 once on Kafka.
#[utoipa::path(post, path = "/api/orders/{id}/hold", operation_id = "renewHold", tag = "orders", request_body(content = Option<HoldBody>), params(("id" = String, Path, description = "order id"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for")), security(("storefront" = [])), responses(CommonErrors, (status = 202, description = "hold renewal requested", body = OrderRequested)))]
pub async fn renew_hold(
    State(state): State<AppState>,
    storefront: Storefront,
    customer: XCustomerId,
    Path(id): Path<String>,
    crate::body::MaybeJson(body): crate::body::MaybeJson<HoldBody>,
) -> Result<Response, ApiError> {
    let owned = owned_order(&state, &storefront, &customer, &id).await?;
    let hold_seconds = body
        .and_then(|b| b.hold_seconds)
        .unwrap_or(state.hold_seconds);
    let longest = state.max_hold_seconds.max(MIN_HOLD_SECONDS);
    if !(MIN_HOLD_SECONDS..=longest).contains(&hold_seconds) {
        return Err(Problem::invalid(
            "hold_seconds",
            format!("{MIN_HOLD_SECONDS} to {longest} (KASSA_MAX_HOLD_SECONDS)"),
        )
        .into());
    }
    let order = owned.order_id.to_string();
    let request = OrderRequest::HoldRenewalRequested(HoldRenewalRequested {
        order_id: order.clone(),
        customer_id: owned.customer_id.clone(),
        hold_seconds,
    });
    send(&state, &owned, request).await?;
    let answer = OrderRequested {
        order_id: order,
        status: "hold_renewal_requested".into(),
        hold_seconds: Some(hold_seconds),
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Sends `request` about `owned` to `orders.requests`, keyed by the order id, in its trace.
async fn send(state: &AppState, owned: &Accepted, request: OrderRequest) -> Result<(), ApiError> {
    let order = owned.order_id.to_string();
    let trace = owned.traceparent.as_deref();
    let envelope = Envelope::new(order.clone(), None, request);
    crate::produce::send(state, &order, trace, &envelope).await
}
