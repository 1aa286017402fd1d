//! Guest carts: `POST /api/carts` issues one; `/api/carts/{cart_id}` and below read and change it.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::store::{Owner, write};
use super::view::answer;
use super::{AddItemBody, CartBody, CheckoutBody, SetItemBody, conn};
use crate::AppState;
use crate::accepted::OrderView;
use crate::auth::Storefront;
use crate::body::JsonBody;
use crate::carts::CartView;
use crate::domain::GuestCartId;
use crate::error::ApiError;
use crate::problem::{CommonErrors, Problem};

/// `POST /api/carts`: a new, empty guest cart with an id only the server could issue.
#[utoipa::path(post, path = "/api/carts", operation_id = "createCart", tag = "carts",
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 201, description = "the new cart; `Location` names it, `ETag` is its version", body = CartView,
            headers(("Location" = String, description = "`/api/carts/{cart_id}`"), ("ETag" = String, description = "the cart's version")),
            links(
                ("getCart" = (operation_id = "getCart", parameters(("cart_id" = "$response.body#/cart_id")))),
                ("replaceCart" = (operation_id = "replaceCart", parameters(("cart_id" = "$response.body#/cart_id"), ("header.If-Match" = "$response.header.ETag")))),
                ("deleteCart" = (operation_id = "deleteCart", parameters(("cart_id" = "$response.body#/cart_id")))),
                ("addCartItem" = (operation_id = "addCartItem", parameters(("cart_id" = "$response.body#/cart_id")))),
                ("setCartItem" = (operation_id = "setCartItem", parameters(("cart_id" = "$response.body#/cart_id")))),
                ("removeCartItem" = (operation_id = "removeCartItem", parameters(("cart_id" = "$response.body#/cart_id")))),
                ("checkoutCart" = (operation_id = "checkoutCart", parameters(("cart_id" = "$response.body#/cart_id")))),
                ("mergeCart" = (operation_id = "mergeCart", request_body = json!({"guest_cart_id": "$response.body#/cart_id"}))),
            ))))]
pub async fn create(
    State(state): State<AppState>,
    storefront: Storefront,
) -> Result<Response, ApiError> {
    let owner = Owner::Guest(GuestCartId::issue());
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    let cart = write(&mut conn(&state)?, &key, ttl, 0, BTreeMap::new())
        .await?
        .ok_or_else(|| Problem::unavailable("cart id collision; retry", 1))?;
    answer(&state, StatusCode::CREATED, owner.cart_id(), &cart).await
}

/// `GET /api/carts/{cart_id}`: the cart.
#[utoipa::path(get, path = "/api/carts/{cart_id}", operation_id = "getCart", tag = "carts",
    params(("cart_id" = String, Path)),
    security(("storefront" = [])),
    responses(CommonErrors, (status = 200, description = "the cart, priced; `ETag` is its version", body = CartView, headers(("ETag" = String, description = "the cart's version")))))]
pub async fn get(
    State(state): State<AppState>,
    storefront: Storefront,
    Path(cart_id): Path<String>,
) -> Result<Response, ApiError> {
    super::show(&state, &storefront, Owner::guest(&cart_id)?).await
}

/// `PUT /api/carts/{cart_id}`: replaces the items (`If-Match` required when the cart holds items).
#[utoipa::path(put, path = "/api/carts/{cart_id}", operation_id = "replaceCart", tag = "carts", request_body = CartBody,
    params(("cart_id" = String, Path), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"),
        (status = 428, description = "`If-Match` required: the cart holds items", body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
    JsonBody { value }: JsonBody<CartBody>,
) -> Result<Response, ApiError> {
    super::replace(
        &state,
        &storefront,
        Owner::guest(&cart_id)?,
        &headers,
        value,
    )
    .await
}

/// `DELETE /api/carts/{cart_id}`: deletes the cart for good (honours `If-Match` when sent).
#[utoipa::path(delete, path = "/api/carts/{cart_id}", operation_id = "deleteCart", tag = "carts",
    params(("cart_id" = String, Path), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 204, description = "deleted"),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
) -> Result<Response, ApiError> {
    super::discard(&state, &storefront, Owner::guest(&cart_id)?, &headers).await
}

/// `POST /api/carts/{cart_id}/items`: adds units of a SKU.
#[utoipa::path(post, path = "/api/carts/{cart_id}/items", operation_id = "addCartItem", tag = "carts", request_body = AddItemBody,
    params(("cart_id" = String, Path), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cart_limit`: the cart would hold over 50 SKUs or 1,000 units of one", body = Problem, content_type = "application/problem+json")))]
pub async fn add_item(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
    JsonBody { value }: JsonBody<AddItemBody>,
) -> Result<Response, ApiError> {
    super::add(
        &state,
        &storefront,
        Owner::guest(&cart_id)?,
        &headers,
        value,
    )
    .await
}

/// `PUT /api/carts/{cart_id}/items/{sku}`: sets a SKU's units.
#[utoipa::path(put, path = "/api/carts/{cart_id}/items/{sku}", operation_id = "setCartItem", tag = "carts", request_body = SetItemBody,
    params(("cart_id" = String, Path), ("sku" = String, Path), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`cart_limit`: the cart would hold over 50 SKUs", body = Problem, content_type = "application/problem+json")))]
pub async fn set_item(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path((cart_id, sku)): Path<(String, String)>,
    JsonBody { value }: JsonBody<SetItemBody>,
) -> Result<Response, ApiError> {
    super::set(
        &state,
        &storefront,
        Owner::guest(&cart_id)?,
        &headers,
        sku,
        value,
    )
    .await
}

/// `DELETE /api/carts/{cart_id}/items/{sku}`: removes a SKU (one the cart does not hold is
/// removed already).
#[utoipa::path(delete, path = "/api/carts/{cart_id}/items/{sku}", operation_id = "removeCartItem", tag = "carts",
    params(("cart_id" = String, Path), ("sku" = String, Path), ("If-Match" = Option<String>, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 200, description = "the cart", body = CartView, headers(("ETag" = String, description = "the cart's version"))),
        (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json")))]
pub async fn remove_item(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path((cart_id, sku)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    super::unset(&state, &storefront, Owner::guest(&cart_id)?, &headers, sku).await
}

/// `POST /api/carts/{cart_id}/checkout` (with `Idempotency-Key`): places the cart's items as an
/// order, exactly like `POST /api/orders`; the cart is emptied once the order is accepted.
#[utoipa::path(post, path = "/api/carts/{cart_id}/checkout", operation_id = "checkoutCart", tag = "carts", request_body = CheckoutBody,
    params(("cart_id" = String, Path), ("Idempotency-Key" = String, Header)),
    security(("storefront" = [])),
    responses(CommonErrors,
        (status = 202, description = "accepted, as `POST /api/orders`", body = OrderView, headers(("Location" = String, description = "the order: `/api/orders/{order_id}`"))),
        (status = 409, description = "`sold_out` or `purchase_limit` (flash sale)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`empty_cart`, `unknown_sku`, `mixed_currencies`, `total_too_large` or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json")))]
pub async fn checkout(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
    JsonBody { value }: JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    super::check_out(
        &state,
        &storefront,
        Owner::guest(&cart_id)?,
        &headers,
        value,
    )
    .await
}
