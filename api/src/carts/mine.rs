//! The signed-in customer's cart: `/api/carts/me` and below, for the customer in `X-Customer-Id`
//! (the same cart on every device), and the merge of a guest cart into it on sign-in.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use std::collections::BTreeMap;

use super::store::{Owner, read, write};
use super::view::answer;
use super::{AddItemBody, CartBody, CheckoutBody, MergeBody, SetItemBody, conn, edit};
use crate::AppState;
use crate::accepted::OrderView;
use crate::auth::Storefront;
use crate::body::JsonBody;
use crate::carts::CartView;
use crate::domain::GuestCartId;
use crate::error::ApiError;
use crate::orders::MAX_QUANTITY;
use crate::problem::{CommonErrors, Problem};

/// `GET /api/carts/me`: the customer's cart (empty until they put something in it).
#[utoipa::path(get, path = "/api/carts/me", operation_id = "getMyCart", tag = "carts",
    params(("X-Customer-Id" = String, Header)),
    security(("storefront" = [])),
    responses(CommonErrors, (status = 200, description = "the cart, priced; `ETag` is its version", body = CartView, headers(("ETag" = String, description = "the cart's version")))))]
pub async fn get_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::show(&state, &storefront, Owner::customer(&headers)?).await
}

/// `PUT /api/carts/me`: replaces the items (`If-Match` required when the cart holds items).
#[utoipa::path(put, path = "/api/carts/me", operation_id = "replaceMyCart", tag = "carts", request_body = CartBody,
    params(("X-Customer-Id" = String, Header), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "`If-Match` required: the cart holds items", body = Problem, content_type = "application/problem+json")))]
pub async fn put_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value }: JsonBody<CartBody>,
) -> Result<Response, ApiError> {
    super::replace(
        &state,
        &storefront,
        Owner::customer(&headers)?,
        &headers,
        value,
    )
    .await
}

/// `DELETE /api/carts/me`: empties the customer's cart (honours `If-Match` when sent).
#[utoipa::path(delete, path = "/api/carts/me", operation_id = "deleteMyCart", tag = "carts",
    params(("X-Customer-Id" = String, Header), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 204, description = "emptied"),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json")))]
pub async fn delete_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::discard(&state, &storefront, Owner::customer(&headers)?, &headers).await
}

/// `POST /api/carts/me/items`: adds units of a SKU.
#[utoipa::path(post, path = "/api/carts/me/items", operation_id = "addMyCartItem", tag = "carts", request_body = AddItemBody,
    params(("X-Customer-Id" = String, Header), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cart_limit`: the cart would hold over 50 SKUs or 1,000 units of one", body = Problem, content_type = "application/problem+json")))]
pub async fn add_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value }: JsonBody<AddItemBody>,
) -> Result<Response, ApiError> {
    super::add(
        &state,
        &storefront,
        Owner::customer(&headers)?,
        &headers,
        value,
    )
    .await
}

/// `PUT /api/carts/me/items/{sku}`: sets a SKU's units.
#[utoipa::path(put, path = "/api/carts/me/items/{sku}", operation_id = "setMyCartItem", tag = "carts", request_body = SetItemBody,
    params(("sku" = String, Path), ("X-Customer-Id" = String, Header), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cart_limit`: the cart would hold over 50 SKUs", body = Problem, content_type = "application/problem+json")))]
pub async fn set_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(sku): Path<String>,
    JsonBody { value }: JsonBody<SetItemBody>,
) -> Result<Response, ApiError> {
    super::set(
        &state,
        &storefront,
        Owner::customer(&headers)?,
        &headers,
        sku,
        value,
    )
    .await
}

/// `DELETE /api/carts/me/items/{sku}`: removes a SKU.
#[utoipa::path(delete, path = "/api/carts/me/items/{sku}", operation_id = "removeMyCartItem", tag = "carts",
    params(("sku" = String, Path), ("X-Customer-Id" = String, Header), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json")))]
pub async fn remove_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    super::unset(
        &state,
        &storefront,
        Owner::customer(&headers)?,
        &headers,
        sku,
    )
    .await
}

/// `POST /api/carts/me/checkout` (with `Idempotency-Key`): places the customer's cart as an
/// order for them, exactly like `POST /api/orders`; the cart is emptied once it is accepted.
#[utoipa::path(post, path = "/api/carts/me/checkout", operation_id = "checkoutMyCart", tag = "carts", request_body = CheckoutBody,
    params(("X-Customer-Id" = String, Header), ("Idempotency-Key" = String, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 202, description = "accepted, as `POST /api/orders`", body = OrderView, headers(("Location" = String, description = "the order: `/api/orders/{order_id}`"))),
        (status = 409, description = "`sold_out` or `purchase_limit` (flash sale)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`empty_cart`, `unknown_sku`, `mixed_currencies`, `total_too_large` or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json")))]
pub async fn checkout_mine(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value }: JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    super::check_out(
        &state,
        &storefront,
        Owner::customer(&headers)?,
        &headers,
        value,
    )
    .await
}

/// `POST /api/carts/me/merge`: on sign-in, moves a guest cart's items into the customer's cart
/// (units of a SKU in both are added, capped at the line limit); the guest cart is left empty, so
/// a retried merge adds nothing twice.
#[utoipa::path(post, path = "/api/carts/me/merge", operation_id = "mergeCart", tag = "carts", request_body = MergeBody,
    params(("X-Customer-Id" = String, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the customer's cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 422, description = "`cart_limit`: together they would hold over 50 SKUs", body = Problem, content_type = "application/problem+json")))]
pub async fn merge(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value }: JsonBody<MergeBody>,
) -> Result<Response, ApiError> {
    let customer = Owner::customer(&headers)?;
    let guest = GuestCartId::parse(&value.guest_cart_id)
        .map(Owner::Guest)
        .ok_or_else(|| Problem::invalid("guest_cart_id", "a cart id from POST /api/carts"))?;
    let mut redis = conn(&state)?;
    let guest_key = guest.key(&storefront.name);
    let Some(guest_cart) = read(&mut redis, &guest_key, guest.ttl(state.cart_ttl)).await? else {
        return Err(Problem::not_found("cart").into());
    };
    let merged = edit(&state, &customer, &storefront, &HeaderMap::new(), |items| {
        for (sku, quantity) in &guest_cart.items {
            let q = items.entry(sku.clone()).or_default();
            *q = q.saturating_add(*quantity).min(MAX_QUANTITY);
        }
    })
    .await?;
    // Emptied at the version read: items added to it meanwhile stay for a later merge.
    let ttl = guest.ttl(state.cart_ttl);
    write(
        &mut redis,
        &guest_key,
        ttl,
        guest_cart.version,
        BTreeMap::new(),
    )
    .await?;
    answer(&state, StatusCode::OK, "me", &merged).await
}
