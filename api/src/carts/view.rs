//! A cart as the API answers it: items priced from the catalog, the subtotal per currency, and
//! its version as the `ETag`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::store::Cart;
use crate::AppState;
use crate::error::ApiError;
use crate::problem::Problem;

/// A cart, priced.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CartView {
    /// The cart's id: a guest cart's (`gc_…`) or `me`.
    pub cart_id: String,
    /// Its version (also the `ETag`): send it as `If-Match` to change what you saw.
    pub version: u64,
    /// The items, in SKU order.
    pub items: Vec<CartItem>,
    /// Sum of the available items' totals per ISO 4217 currency, in minor units.
    pub subtotal_minor: BTreeMap<String, i64>,
}

/// One SKU in a cart.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CartItem {
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Whether the catalog sells it now (false: unknown or inactive; unpriced).
    pub available: bool,
    /// Catalog unit price, minor units (when available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price_minor: Option<i64>,
    /// quantity × unit price, minor units (when available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_total_minor: Option<i64>,
    /// ISO 4217 currency of the price (when available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// The cart as answered with `status`: priced from the catalog, `ETag` its version.
pub(crate) async fn answer(
    state: &AppState,
    status: StatusCode,
    cart_id: &str,
    cart: &Cart,
) -> Result<Response, ApiError> {
    let skus: Vec<&str> = cart.items.keys().map(String::as_str).collect();
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT sku, price_minor, currency FROM api.products WHERE sku = ANY($1) AND active",
    )
    .bind(&skus)
    .fetch_all(&state.pool)
    .await?;
    let catalog: HashMap<String, (i64, String)> =
        rows.into_iter().map(|(s, p, c)| (s, (p, c))).collect();
    let view = price(cart_id, cart, &catalog)?;
    let mut response = (status, Json(view)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", cart.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&format!("/api/carts/{cart_id}"))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Prices `cart` from `catalog` (SKU → unit price and currency of the products on sale).
fn price(
    cart_id: &str,
    cart: &Cart,
    catalog: &HashMap<String, (i64, String)>,
) -> Result<CartView, Problem> {
    let too_large = || Problem::unprocessable("total_too_large", "the cart total is too large");
    let mut subtotal: BTreeMap<String, i64> = BTreeMap::new();
    let mut items = Vec::with_capacity(cart.items.len());
    for (sku, quantity) in &cart.items {
        let mut item = CartItem {
            sku: sku.clone(),
            quantity: *quantity,
            available: false,
            unit_price_minor: None,
            line_total_minor: None,
            currency: None,
        };
        if let Some((price, currency)) = catalog.get(sku) {
            let total = price
                .checked_mul(i64::from(*quantity))
                .ok_or_else(too_large)?;
            let sum = subtotal.entry(currency.clone()).or_default();
            *sum = sum.checked_add(total).ok_or_else(too_large)?;
            item.available = true;
            item.unit_price_minor = Some(*price);
            item.line_total_minor = Some(total);
            item.currency = Some(currency.clone());
        }
        items.push(item);
    }
    Ok(CartView {
        cart_id: cart_id.to_owned(),
        version: cart.version,
        items,
        subtotal_minor: subtotal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_is_priced_per_currency_and_unknown_skus_are_unpriced() {
        let cart = Cart {
            items: [("A".into(), 2), ("B".into(), 1), ("GONE".into(), 3)].into(),
            version: 4,
        };
        let catalog: HashMap<String, (i64, String)> = [
            ("A".to_owned(), (250, "EUR".to_owned())),
            ("B".to_owned(), (1000, "USD".to_owned())),
        ]
        .into();
        let view = price("gc_x", &cart, &catalog).unwrap();
        assert_eq!(
            view.subtotal_minor,
            [("EUR".into(), 500), ("USD".into(), 1000)].into()
        );
        let gone = &view.items[2];
        assert_eq!((gone.available, gone.unit_price_minor), (false, None));
        let huge = Cart {
            items: [("A".into(), 1000)].into(),
            version: 1,
        };
        let dear = [("A".to_owned(), (i64::MAX / 10, "EUR".to_owned()))].into();
        assert_eq!(
            price("me", &huge, &dear).unwrap_err().code,
            "total_too_large"
        );
    }
}
