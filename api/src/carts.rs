//! Carts in Redis: the same cart on every device, with a sliding expiry and optimistic
//! concurrency (`ETag` / `If-Match`) so two devices never silently overwrite each other.
//!
//! - `/api/carts/me` (with `X-Customer-Id`) is the customer's cart, keyed by customer; any other
//!   `/api/carts/{cart_id}` is a guest cart, keyed by its id. Both are per storefront.
//! - Every read or write extends the cart's life (guest 7 days, customer 30 days).
//! - The version is the `ETag`; a write with `If-Match` that is not the current version is 412.
//!   Replacing a whole existing cart (`PUT`) needs `If-Match` (428 without it); item edits take
//!   it optionally (without it, they apply to whatever the cart holds then).

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::AppState;
use crate::auth::Storefront;
use crate::body::JsonBody;
use crate::domain::{CustomerId, Sku};
use crate::error::ApiError;
use crate::orders::{LineRequest, MAX_LINES, MAX_QUANTITY, OrderRequest, place};
use crate::problem::{CommonErrors, FieldError, Problem};

/// How long carts live after their last use, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartTtl {
    /// A guest cart.
    pub guest: u64,
    /// A customer's cart.
    pub customer: u64,
}

/// What is stored for a cart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Units per SKU, in SKU order.
    pub items: BTreeMap<String, i32>,
    /// Bumped by every write; the `ETag`.
    pub version: u64,
}

/// Whose cart a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Guest(String),
    Customer(String),
}

impl Owner {
    fn of(cart_id: &str, headers: &HeaderMap) -> Result<Self, Problem> {
        if cart_id == "me" {
            let header = headers
                .get("x-customer-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let customer =
                CustomerId::parse(header).map_err(|rule| field("X-Customer-Id", rule))?;
            return Ok(Owner::Customer(customer.to_string()));
        }
        let valid = !cart_id.is_empty()
            && cart_id.len() <= 64
            && cart_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if !valid {
            return Err(Problem::not_found("cart"));
        }
        Ok(Owner::Guest(cart_id.to_owned()))
    }

    fn key(&self, storefront: &str) -> String {
        match self {
            Owner::Guest(id) => format!("kassa:cart:{storefront}:guest:{id}"),
            Owner::Customer(id) => format!("kassa:cart:{storefront}:customer:{id}"),
        }
    }

    fn ttl(&self, ttl: CartTtl) -> u64 {
        match self {
            Owner::Guest(_) => ttl.guest,
            Owner::Customer(_) => ttl.customer,
        }
    }
}

fn field(name: &str, message: &str) -> Problem {
    Problem::validation(vec![FieldError {
        field: name.into(),
        message: message.into(),
    }])
}

/// Writes `new` if the stored version is still `expected` (None: the cart must not exist);
/// also slides the expiry. Returns false if another write came first.
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = cjson.decode(current)['version'] end
if tonumber(ARGV[1]) ~= version then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1";

fn conn(state: &AppState) -> Result<ConnectionManager, Problem> {
    state
        .redis
        .get()
        .ok_or_else(|| Problem::unavailable("carts are unavailable (Redis)", 2))
}

/// Reads a cart (sliding its expiry); None if there is none.
async fn read(conn: &mut ConnectionManager, key: &str, ttl: u64) -> Result<Option<Cart>, ApiError> {
    let (raw, _): (Option<String>, bool) = redis::pipe()
        .get(key)
        .expire(key, ttl as i64)
        .query_async(conn)
        .await?;
    Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
}

/// Replaces the cart at `expected_version` (0: absent) with `items` (empty: delete).
async fn write(
    conn: &mut ConnectionManager,
    key: &str,
    ttl: u64,
    expected_version: u64,
    items: BTreeMap<String, i32>,
) -> Result<Option<Cart>, ApiError> {
    let cart = Cart {
        items,
        version: expected_version + 1,
    };
    let stored = if cart.items.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&cart)?
    };
    let written: i64 = redis::Script::new(CAS_SCRIPT)
        .key(key)
        .arg(expected_version)
        .arg(stored)
        .arg(ttl)
        .invoke_async(conn)
        .await?;
    Ok((written == 1).then_some(cart))
}

/// The version an `If-Match` names (`"3"` or `W/"3"`), if the header is there.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    text.parse()
        .map(Some)
        .map_err(|_| field("If-Match", "an ETag from this cart, e.g. \"3\""))
}

fn check_items(items: &BTreeMap<String, i32>) -> Result<(), Problem> {
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
                message: "not a valid SKU".into(),
            });
        }
        if *quantity < 1 || *quantity > MAX_QUANTITY {
            errors.push(FieldError {
                field: format!("items.{sku}"),
                message: format!("quantity 1 to {MAX_QUANTITY}"),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(errors))
    }
}

/// The cart as answered: items priced from the catalog, subtotal, `ETag`.
async fn answer(
    state: &AppState,
    status: StatusCode,
    cart_id: &str,
    cart: &Cart,
) -> Result<Response, ApiError> {
    let skus: Vec<&str> = cart.items.keys().map(String::as_str).collect();
    let rows: Vec<(String, i64, String, bool)> = sqlx::query_as(
        "SELECT sku, price_minor, currency, active FROM api.products WHERE sku = ANY($1)",
    )
    .bind(&skus)
    .fetch_all(&state.pool)
    .await?;
    let catalog: HashMap<String, (i64, String, bool)> = rows
        .into_iter()
        .map(|(s, p, c, a)| (s, (p, c, a)))
        .collect();
    let mut subtotal: BTreeMap<String, i64> = BTreeMap::new();
    let too_large = || {
        Problem::validation(vec![FieldError {
            field: "items".into(),
            message: "the cart total is too large".into(),
        }])
    };
    let mut items: Vec<serde_json::Value> = Vec::with_capacity(cart.items.len());
    for (sku, quantity) in &cart.items {
        match catalog.get(sku) {
            Some((price, currency, true)) => {
                let total = price
                    .checked_mul(i64::from(*quantity))
                    .ok_or_else(too_large)?;
                let sum = subtotal.entry(currency.clone()).or_default();
                *sum = sum.checked_add(total).ok_or_else(too_large)?;
                items.push(json!({ "sku": sku, "quantity": quantity, "unit_price_minor": price, "line_total_minor": total, "currency": currency, "available": true }));
            }
            _ => items.push(json!({ "sku": sku, "quantity": quantity, "available": false })),
        }
    }
    let body = json!({ "cart_id": cart_id, "version": cart.version, "items": items, "subtotal_minor": subtotal });
    let mut response = (status, Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", cart.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// `GET /api/carts/{cart_id}`: the cart (a customer's cart that does not exist yet is empty).
#[utoipa::path(get, path = "/api/carts/{cart_id}", tag = "carts", params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the cart, priced; `ETag` is its version")))]
pub async fn get(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    let cart = read(
        &mut conn(&state)?,
        &owner.key(&storefront.name),
        owner.ttl(state.cart_ttl),
    )
    .await?;
    match (cart, &owner) {
        (Some(cart), _) => answer(&state, StatusCode::OK, &cart_id, &cart).await,
        (None, Owner::Customer(_)) => {
            answer(&state, StatusCode::OK, &cart_id, &Cart::default()).await
        }
        (None, Owner::Guest(_)) => Err(Problem::not_found("cart").into()),
    }
}

/// The body of `PUT /api/carts/{cart_id}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CartBody {
    /// Units per SKU.
    pub items: BTreeMap<String, i32>,
}

/// `PUT /api/carts/{cart_id}`: replaces the items (`If-Match` required when the cart exists).
#[utoipa::path(put, path = "/api/carts/{cart_id}", tag = "carts", request_body = CartBody, params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the cart"), (status = 412, description = "stale `If-Match`", body = Problem, content_type = "application/problem+json"), (status = 428, description = "`If-Match` required", body = Problem, content_type = "application/problem+json")))]
pub async fn put(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
    JsonBody { value }: JsonBody<CartBody>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    check_items(&value.items)?;
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    let mut redis = conn(&state)?;
    let current = read(&mut redis, &key, ttl).await?.map_or(0, |c| c.version);
    let expected = match if_match(&headers)? {
        Some(v) => v,
        None if current == 0 => 0,
        None => return Err(Problem::precondition_required().into()),
    };
    if expected != current {
        return Err(Problem::stale(current).into());
    }
    match write(&mut redis, &key, ttl, expected, value.items).await? {
        Some(cart) => answer(&state, StatusCode::OK, &cart_id, &cart).await,
        None => Err(Problem::stale(expected).into()),
    }
}

/// `DELETE /api/carts/{cart_id}`: empties the cart (honours `If-Match` when sent).
#[utoipa::path(delete, path = "/api/carts/{cart_id}", tag = "carts", params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen")), security(("storefront" = [])), responses(CommonErrors, (status = 204, description = "emptied")))]
pub async fn delete(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    edit(&state, &owner, &storefront, &headers, |items| items.clear()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `PUT /api/carts/{cart_id}/items/{sku}` and `POST /api/carts/{cart_id}/items`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ItemBody {
    /// The SKU (for `POST …/items`).
    pub sku: Option<String>,
    /// Units: added by `POST`, set by `PUT`.
    pub quantity: i32,
}

/// `POST /api/carts/{cart_id}/items`: adds units of a SKU.
#[utoipa::path(post, path = "/api/carts/{cart_id}/items", tag = "carts", request_body = ItemBody, params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the cart")))]
pub async fn add_item(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
    JsonBody { value }: JsonBody<ItemBody>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    let sku = value.sku.clone().ok_or_else(|| field("sku", "required"))?;
    let cart = edit(&state, &owner, &storefront, &headers, |items| {
        let q = items.entry(sku.clone()).or_default();
        *q = q.saturating_add(value.quantity);
    })
    .await?;
    answer(&state, StatusCode::OK, &cart_id, &cart).await
}

/// `PUT /api/carts/{cart_id}/items/{sku}`: sets a SKU's units.
#[utoipa::path(put, path = "/api/carts/{cart_id}/items/{sku}", tag = "carts", request_body = ItemBody, params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("sku" = String, Path, description = "SKU"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the cart")))]
pub async fn set_item(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path((cart_id, sku)): Path<(String, String)>,
    JsonBody { value }: JsonBody<ItemBody>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    let cart = edit(&state, &owner, &storefront, &headers, |items| {
        items.insert(sku.clone(), value.quantity);
    })
    .await?;
    answer(&state, StatusCode::OK, &cart_id, &cart).await
}

/// `DELETE /api/carts/{cart_id}/items/{sku}`: removes a SKU.
#[utoipa::path(delete, path = "/api/carts/{cart_id}/items/{sku}", tag = "carts", params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("sku" = String, Path, description = "SKU"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the cart")))]
pub async fn remove_item(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path((cart_id, sku)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    let cart = edit(&state, &owner, &storefront, &headers, |items| {
        items.remove(&sku);
    })
    .await?;
    answer(&state, StatusCode::OK, &cart_id, &cart).await
}

/// The body of `POST /api/carts/me/merge`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct MergeBody {
    /// The guest cart to fold into the customer's cart.
    pub guest_cart_id: String,
}

/// `POST /api/carts/me/merge`: on sign-in, adds a guest cart's items to the customer's cart
/// (units of a SKU in both are added, capped at the line limit) and deletes the guest cart.
#[utoipa::path(post, path = "/api/carts/me/merge", tag = "carts", request_body = MergeBody, params(("X-Customer-Id" = String, Header, description = "the customer the request is made for")), security(("storefront" = [])), responses(CommonErrors, (status = 200, description = "the customer's cart")))]
pub async fn merge(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    JsonBody { value }: JsonBody<MergeBody>,
) -> Result<Response, ApiError> {
    let customer = Owner::of("me", &headers)?;
    let guest = Owner::of(&value.guest_cart_id, &HeaderMap::new())?;
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
    let _: () = redis::cmd("DEL")
        .arg(&guest_key)
        .query_async(&mut redis)
        .await?;
    answer(&state, StatusCode::OK, "me", &merged).await
}

/// Read-modify-write with compare-and-set: at the client's `If-Match` version when sent (412 if
/// stale), else retried on concurrent writes.
async fn edit(
    state: &AppState,
    owner: &Owner,
    storefront: &Storefront,
    headers: &HeaderMap,
    change: impl Fn(&mut BTreeMap<String, i32>),
) -> Result<Cart, ApiError> {
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    let wanted = if_match(headers)?;
    let mut redis = conn(state)?;
    for _ in 0..10 {
        let current = read(&mut redis, &key, ttl).await?.unwrap_or_default();
        if let Some(v) = wanted
            && v != current.version
        {
            return Err(Problem::stale(current.version).into());
        }
        let mut items = current.items.clone();
        change(&mut items);
        check_items(&items)?;
        if let Some(cart) = write(&mut redis, &key, ttl, current.version, items).await? {
            return Ok(cart);
        }
        if wanted.is_some() {
            return Err(Problem::stale(current.version + 1).into());
        }
    }
    Err(Problem::unavailable("the cart is changing too fast; retry", 1).into())
}

/// The body of `POST /api/carts/{cart_id}/checkout`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CheckoutBody {
    /// The customer placing the order (for `me`: must be the cart's customer).
    pub customer_id: String,
    /// Payment method to authorize.
    pub payment_method_id: String,
}

/// `POST /api/carts/{cart_id}/checkout` (with `Idempotency-Key`): places the cart's items as an
/// order, exactly like `POST /api/orders`; the cart is emptied once the order is accepted.
#[utoipa::path(post, path = "/api/carts/{cart_id}/checkout", tag = "carts", request_body = CheckoutBody, params(("cart_id" = String, Path, description = "a guest cart id, or `me` for the customer's cart"), ("X-Customer-Id" = String, Header, description = "the customer the request is made for"), ("If-Match" = Option<String>, Header, description = "the cart ETag last seen"), ("Idempotency-Key" = String, Header, description = "required; the same key and body get the same answer for 24 h")), security(("storefront" = [])), responses(CommonErrors, (status = 202, description = "accepted, as `POST /api/orders`")))]
pub async fn checkout(
    State(state): State<AppState>,
    storefront: Storefront,
    headers: HeaderMap,
    Path(cart_id): Path<String>,
    JsonBody { value }: JsonBody<CheckoutBody>,
) -> Result<Response, ApiError> {
    let owner = Owner::of(&cart_id, &headers)?;
    if let Owner::Customer(customer) = &owner
        && *customer != value.customer_id
    {
        return Err(Problem::not_found("cart").into());
    }
    let (key, ttl) = (owner.key(&storefront.name), owner.ttl(state.cart_ttl));
    let mut redis = conn(&state)?;
    let cart = read(&mut redis, &key, ttl).await?.unwrap_or_default();
    if cart.items.is_empty() {
        // Maybe a retry after the order emptied the cart: the Idempotency-Key record answers it.
        return match replay_only(&state, &storefront, &headers, &cart_id).await {
            Some(response) => Ok(response),
            None => Err(field("items", "the cart is empty").into()),
        };
    }
    let request = OrderRequest {
        customer_id: value.customer_id,
        lines: cart
            .items
            .iter()
            .map(|(sku, quantity)| LineRequest {
                sku: sku.clone(),
                quantity: *quantity,
            })
            .collect(),
        payment_method_id: value.payment_method_id,
    };
    let route = format!("POST /api/carts/{cart_id}/checkout");
    let response = place(&state, &storefront, &headers, &request, &route).await?;
    if response.status() == StatusCode::ACCEPTED {
        // Empty the cart unless it changed meanwhile (then the new items stay).
        let _ = write(&mut redis, &key, ttl, cart.version, BTreeMap::new()).await;
    }
    Ok(response)
}

/// The stored answer for this request's Idempotency-Key on this cart's checkout, if any.
async fn replay_only(
    state: &AppState,
    storefront: &Storefront,
    headers: &HeaderMap,
    cart_id: &str,
) -> Option<Response> {
    let key = headers.get("idempotency-key")?.to_str().ok()?;
    crate::idempotency::answered(
        &state.pool,
        &storefront.name,
        key,
        &format!("POST /api/carts/{cart_id}/checkout"),
    )
    .await
}
