//! Carts in Redis: the same cart on every device, with a sliding expiry and optimistic
//! concurrency (`ETag` / `If-Match`) so two devices never silently overwrite each other.
//!
//! - `POST /api/carts` issues a guest cart (a 128-bit random id): guest ids are never chosen by
//!   clients, so a cart cannot be guessed. `/api/carts/me` (with `X-Customer-Id`) is the
//!   customer's cart, keyed by customer. Both are per storefront.
//! - Every read or write extends the cart's life (guest 7 days, customer 30 days).
//! - The version is the `ETag`; a write with `If-Match` that is not the current version is 412.
//!   Replacing a whole existing cart (`PUT`) needs `If-Match` (428 without it); item edits and
//!   deletes take it optionally (without it, they apply to whatever the cart holds then).

mod guest;
mod mine;
mod store;
mod view;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use redis::aio::ConnectionManager;
use serde::Deserialize;

pub use guest::*;
pub use mine::*;
pub use store::{Cart, CartTtl};
pub use view::{CartItem, CartView};

use crate::AppState;
use crate::accepted::{accepted_response, load};
use crate::auth::Storefront;
use crate::domain::{GuestCartId, Sku, XCustomerId};
use crate::error::ApiError;
use crate::orders::{
    LineRequest, MAX_LINES, MAX_QUANTITY, OrderRequest, place, publish_and_answer,
};
use crate::problem::{FieldError, Problem};
use store::{Owner, read, remove, write};
use view::answer;

impl Owner {
    /// The guest cart `cart_id` names, if the server could have issued it (else 404).
    fn guest(cart_id: &str) -> Result<Self, Problem> {
        GuestCartId::parse(cart_id)
            .map(Owner::Guest)
            .ok_or_else(|| Problem::not_found("cart"))
    }

    /// The cart of the customer in `X-Customer-Id` (400 without one).
    fn customer(headers: &HeaderMap) -> Result<Self, Problem> {
        Ok(Owner::Customer(XCustomerId::of(headers)?.required()?))
    }

    /// How the cart is named in answers: its guest id, or `me`.
    fn cart_id(&self) -> &str {
        match self {
            Owner::Guest(id) => id.as_str(),
            Owner::Customer(_) => "me",
        }
    }
}

fn conn(state: &AppState) -> Result<ConnectionManager, Problem> {
    state
        .redis
        .get()
        .ok_or_else(|| Problem::unavailable("carts are unavailable (Redis)", 2))
}

/// An `If-Match` precondition (RFC 9110 §13.1.1): `*` (the cart exists) or entity tags, one of
/// which must be the cart's version (`"3"`, weak `W/"3"` alike). A value that is not entity tags
/// matches nothing: the change is refused (412), never applied unconditionally.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IfMatch {
    /// `*`.
    Any,
    /// The versions the tags name (tags that are no version of ours name none).
    Versions(Vec<u64>),
}

impl IfMatch {
    /// The request's precondition, if it has one.
    fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::IF_MATCH)?;
        let text = value.to_str().unwrap_or_default().trim();
        if text == "*" {
            return Some(IfMatch::Any);
        }
        let versions = text
            .split(',')
            .filter_map(|tag| {
                let tag = tag.trim();
                let opaque = tag.strip_prefix("W/").unwrap_or(tag);
                opaque.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
            })
            .collect();
        Some(IfMatch::Versions(versions))
    }

    /// Whether a cart at `version` (0: none) meets it.
    fn admits(&self, version: u64) -> bool {
        match self {
            IfMatch::Any => version > 0,
            IfMatch::Versions(versions) => version > 0 && versions.contains(&version),
        }
    }
}

/// The rules a cart's items keep. Breaking them is 400 for a body that breaks them itself, and
/// 422 `cart_limit` when `edited`: an edit that makes an otherwise valid cart break them.
fn check_items(items: &BTreeMap<String, i32>, edited: bool) -> Result<(), Problem> {
    let mut errors = Vec::new();
    if items.len() > MAX_LINES {
        errors.push(FieldError {
            field: "items".into(),
            message: format!("at most {MAX_LINES} SKUs"),
        });
    }
    for (sku, quantity) in items {
        if Sku::parse(sku).is_err() {
            errors.push(FieldError {
                field: format!("items.{sku}"),
                message: Sku::RULE.into(),
            });
        }
        if *quantity < 1 || *quantity > MAX_QUANTITY {
            errors.push(FieldError {
                field: format!("items.{sku}"),
                message: format!("quantity 1 to {MAX_QUANTITY}"),
            });
        }
    }
    match errors.as_slice() {
        [] => Ok(()),
        [first, ..] if edited => Err(Problem::unprocessable(
            "cart_limit",
            format!(
                "the cart would break a limit: {}: {}",
                first.field, first.message
            ),
        )),
        _ => Err(Problem::validation(errors)),
    }
}

/// The body of `PUT /api/carts/{cart_id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CartBody {
    /// Units (1 to 1,000) per SKU, at most 50 SKUs.
    #[schema(schema_with = items_schema)]
    #[serde(deserialize_with = "whole_items")]
    pub items: BTreeMap<String, i32>,
}

/// A map of SKU to units, each a whole number.
fn whole_items<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, i32>, D::Error> {
    #[derive(Deserialize)]
    struct Units(#[serde(deserialize_with = "crate::body::whole::number")] i32);
    let raw = BTreeMap::<String, Units>::deserialize(d)?;
    Ok(raw.into_iter().map(|(sku, Units(n))| (sku, n)).collect())
}

/// The schema of a cart's items: SKU → units.
fn items_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let units = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_QUANTITY));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(Sku::schema()))
        .additional_properties(Some(units))
        .max_properties(Some(MAX_LINES))
        .description(Some("units per SKU"))
        .build()
}

/// The body of `POST /api/carts/{cart_id}/items`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct AddItemBody {
    /// The SKU.
    #[schema(schema_with = Sku::schema)]
    pub sku: String,
    /// Units to add.
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

/// The body of `PUT /api/carts/{cart_id}/items/{sku}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct SetItemBody {
    /// Units the cart holds of the SKU from now on.
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i32,
}

/// The body of `POST /api/carts/me/merge`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct MergeBody {
    /// The guest cart to fold into the customer's cart.
    #[schema(schema_with = GuestCartId::schema)]
    pub guest_cart_id: String,
}

/// The body of `POST /api/carts/{cart_id}/checkout`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CheckoutBody {
    /// The customer placing the order (for `me`: must be the cart's customer).
    #[schema(schema_with = crate::domain::CustomerId::schema)]
    pub customer_id: String,
    /// Payment method to authorize.
    #[schema(schema_with = crate::domain::PaymentMethodId::schema)]
    pub payment_method_id: String,
    /// Where to ship and whom to tell (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfilment: Option<crate::fulfilment::FulfilmentBody>,
}

/// The cart `owner` has, as stored (a customer's cart that does not exist yet is empty; a guest
/// cart that does not exist is 404).
async fn current(
    redis: &mut ConnectionManager,
    state: &AppState,
    storefront: &Storefront,
    owner: &Owner,
) -> Result<Option<Cart>, ApiError> {
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    match (read(redis, &key, ttl).await?, owner) {
        (Some(cart), _) => Ok(Some(cart)),
        (None, Owner::Customer(_)) => Ok(None),
        (None, Owner::Guest(_)) => Err(Problem::not_found("cart").into()),
    }
}

/// Reads `owner`'s cart.
async fn show(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
) -> Result<Response, ApiError> {
    let cart = current(&mut conn(state)?, state, storefront, &owner).await?;
    answer(
        state,
        StatusCode::OK,
        owner.cart_id(),
        &cart.unwrap_or_default(),
    )
    .await
}

/// Replaces `owner`'s items (`If-Match` required when the cart holds items).
async fn replace(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
    headers: &HeaderMap,
    body: CartBody,
) -> Result<Response, ApiError> {
    check_items(&body.items, false)?;
    let wanted = IfMatch::of(headers);
    let mut redis = conn(state)?;
    let current = current(&mut redis, state, storefront, &owner)
        .await?
        .unwrap_or_default();
    match &wanted {
        Some(precondition) if !precondition.admits(current.version) => {
            return Err(Problem::stale(current.version).into());
        }
        None if !current.items.is_empty() => {
            return Err(Problem::precondition_required().into());
        }
        _ => {}
    }
    let expected = current.version;
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    match write(&mut redis, &key, ttl, expected, body.items).await? {
        Some(cart) => answer(state, StatusCode::OK, owner.cart_id(), &cart).await,
        None => Err(Problem::stale(expected).into()),
    }
}

/// Deletes `owner`'s cart (honours `If-Match` when sent).
async fn discard(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let wanted = IfMatch::of(headers);
    let mut redis = conn(state)?;
    let Some(current) = current(&mut redis, state, storefront, &owner).await? else {
        return match wanted {
            Some(_) => Err(Problem::stale(0).into()),
            None => Ok(StatusCode::NO_CONTENT.into_response()),
        };
    };
    if wanted.is_some_and(|p| !p.admits(current.version)) {
        return Err(Problem::stale(current.version).into());
    }
    if !remove(&mut redis, &owner.key(&storefront.name), current.version).await? {
        return Err(Problem::stale(current.version + 1).into());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Adds units of a SKU to `owner`'s cart.
async fn add(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
    headers: &HeaderMap,
    body: AddItemBody,
) -> Result<Response, ApiError> {
    check_items(&BTreeMap::from([(body.sku.clone(), body.quantity)]), false)?;
    let cart = edit(state, &owner, storefront, headers, |items| {
        let q = items.entry(body.sku.clone()).or_default();
        *q = q.saturating_add(body.quantity);
    })
    .await?;
    answer(state, StatusCode::OK, owner.cart_id(), &cart).await
}

/// Sets a SKU's units in `owner`'s cart.
async fn set(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
    headers: &HeaderMap,
    sku: String,
    body: SetItemBody,
) -> Result<Response, ApiError> {
    check_items(&BTreeMap::from([(sku.clone(), body.quantity)]), false)?;
    let cart = edit(state, &owner, storefront, headers, |items| {
        items.insert(sku.clone(), body.quantity);
    })
    .await?;
    answer(state, StatusCode::OK, owner.cart_id(), &cart).await
}

/// Removes a SKU from `owner`'s cart.
async fn unset(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
    headers: &HeaderMap,
    sku: String,
) -> Result<Response, ApiError> {
    Sku::parse(&sku).map_err(|rule| Problem::invalid("sku", rule))?;
    let cart = edit(state, &owner, storefront, headers, |items| {
        items.remove(&sku);
    })
    .await?;
    answer(state, StatusCode::OK, owner.cart_id(), &cart).await
}

/// Places `owner`'s items as an order, exactly like `POST /api/orders`; empties the cart once
/// the order is accepted.
async fn check_out(
    state: &AppState,
    storefront: &Storefront,
    owner: Owner,
    headers: &HeaderMap,
    body: CheckoutBody,
) -> Result<Response, ApiError> {
    if let Owner::Customer(customer) = &owner
        && customer.as_str() != body.customer_id
    {
        return Err(Problem::not_found("cart").into());
    }
    let mut redis = conn(state)?;
    let cart = current(&mut redis, state, storefront, &owner)
        .await?
        .unwrap_or_default();
    let route = format!("POST /api/carts/{}/checkout", owner.cart_id());
    if cart.items.is_empty() {
        // Maybe a retry after the order emptied the cart: the Idempotency-Key record answers it.
        return match replay_only(state, storefront, headers, &route).await? {
            Some(response) => Ok(response),
            None => Err(Problem::unprocessable("empty_cart", "the cart is empty").into()),
        };
    }
    let request = OrderRequest {
        customer_id: body.customer_id,
        lines: cart
            .items
            .iter()
            .map(|(sku, quantity)| LineRequest {
                sku: sku.clone(),
                quantity: *quantity,
            })
            .collect(),
        payment_method_id: body.payment_method_id,
        fulfilment: body.fulfilment,
    };
    let response = place(state, storefront, headers, &request, &route).await?;
    if response.status() == StatusCode::ACCEPTED {
        // Empty the cart unless it changed meanwhile (then the new items stay).
        let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
        let _ = write(&mut redis, &key, ttl, cart.version, BTreeMap::new()).await;
    }
    Ok(response)
}

/// Read-modify-write with compare-and-set: at the client's `If-Match` version when sent (412 if
/// stale), else retried on concurrent writes. A guest cart must exist (404).
async fn edit(
    state: &AppState,
    owner: &Owner,
    storefront: &Storefront,
    headers: &HeaderMap,
    change: impl Fn(&mut BTreeMap<String, i32>),
) -> Result<Cart, ApiError> {
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    let wanted = IfMatch::of(headers);
    let mut redis = conn(state)?;
    for _ in 0..10 {
        let current = current(&mut redis, state, storefront, owner)
            .await?
            .unwrap_or_default();
        if let Some(precondition) = &wanted
            && !precondition.admits(current.version)
        {
            return Err(Problem::stale(current.version).into());
        }
        let mut items = current.items.clone();
        change(&mut items);
        check_items(&items, true)?;
        if let Some(cart) = write(&mut redis, &key, ttl, current.version, items).await? {
            return Ok(cart);
        }
        if wanted.is_some() {
            return Err(Problem::stale(current.version + 1).into());
        }
    }
    Err(Problem::unavailable("the cart is changing too fast; retry", 1).into())
}

/// The answer for this request's Idempotency-Key on this cart's checkout, if the key was used
/// there. Its order may be accepted with the answer not stored yet (it is written behind the
/// 202, after the cart is emptied): that order is published again and answered, as
/// `POST /api/orders` finishes a pending key.
async fn replay_only(
    state: &AppState,
    storefront: &Storefront,
    headers: &HeaderMap,
    route: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
    else {
        return Ok(None);
    };
    let Some((order_id, answer)) =
        crate::idempotency::on_route(&state.pool, &storefront.name, key, route).await?
    else {
        return Ok(None);
    };
    if let Some((status, body)) = answer {
        return Ok(Some(accepted_response(order_id, status, body)));
    }
    // The key's record and its order are stored in one statement: the order is there.
    let order = load(state, order_id)
        .await?
        .ok_or_else(Problem::same_request_in_flight)?;
    let body = publish_and_answer(state, &storefront.name, key, &order).await?;
    Ok(Some(accepted_response(order_id, 202, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn precondition(value: &str) -> Option<IfMatch> {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, value.parse().unwrap());
        IfMatch::of(&headers)
    }

    #[test]
    fn if_match_admits_only_the_versions_it_names() {
        assert_eq!(IfMatch::of(&HeaderMap::new()), None);
        let three = precondition("\"3\"").unwrap();
        assert!(three.admits(3) && !three.admits(4) && !three.admits(0));
        assert!(precondition("W/\"3\"").unwrap().admits(3));
        let list = precondition("\"abc\", W/\"7\" , \"3\"").unwrap();
        assert!(list.admits(7) && list.admits(3) && !list.admits(1));
        let any = precondition("*").unwrap();
        assert!(any.admits(1) && !any.admits(0));
        for nothing in ["aaaa", "3", "\"x\"", "\"\"", "W/3"] {
            let p = precondition(nothing).unwrap();
            assert!(!(1..10).any(|v| p.admits(v)), "{nothing}");
        }
    }
}
