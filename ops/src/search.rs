//! Order search for operators (`GET /admin/orders`): every order the API accepted, with the
//! orders processor's state (`accepted` until it has seen the order), filtered by state, SKU,
//! customer and creation time, newest first, a page at a time. A page ends with an opaque cursor
//! for the next: keyset pagination on (created_at, order_id), so pages never skip or repeat an
//! order while new ones arrive.

use chrono::{DateTime, Utc};
use kassa_processors::orders::machine::State;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

pub use kassa_api::cursor::Cursor;

/// Most orders a page holds.
pub const MAX_LIMIT: u32 = 500;

/// The states an order can be searched by: `accepted` (not yet seen by the orders processor)
/// and the orders processor's.
pub fn states() -> impl Iterator<Item = &'static str> {
    std::iter::once("accepted").chain(State::ALL.into_iter().map(State::as_str))
}

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only orders in this state (one of [`states`]).
    pub state: Option<String>,
    /// Only orders with a line of this SKU.
    pub sku: Option<String>,
    /// Only this customer's orders.
    pub customer: Option<String>,
    /// Only orders created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only orders created before this time.
    pub until: Option<DateTime<Utc>>,
    /// Orders a page (1 to [`MAX_LIMIT`]).
    pub limit: u32,
    /// Continue after this order (from the previous page).
    pub after: Option<Cursor>,
}

/// One order as a search lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderSummary {
    /// The order id.
    pub order_id: String,
    /// `accepted` until the orders processor has seen it, then its state there.
    pub state: String,
    /// The customer.
    pub customer_id: String,
    /// The storefront (API key name) that placed it.
    pub storefront: String,
    /// The total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// The SKUs of its lines.
    pub skus: Vec<String>,
    /// When the API accepted it.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Its last change at the orders processor (None: not seen there yet).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub updated_at: Option<DateTime<Utc>>,
}

/// A page of orders.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    /// The orders, newest first.
    pub orders: Vec<OrderSummary>,
    /// Pass as `cursor` for the next page (None: this is the last).
    pub next_cursor: Option<String>,
}

/// A row of the search.
type Row = (
    Uuid,
    String,
    String,
    String,
    i64,
    String,
    Vec<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// One page of the orders `filter` matches.
pub async fn search(pool: &PgPool, filter: &Filter) -> Result<Page, sqlx::Error> {
    let limit = filter.limit.clamp(1, MAX_LIMIT);
    let mut rows: Vec<Row> = sqlx::query_as(
        "SELECT a.order_id, coalesce(o.state, 'accepted'), a.customer_id, a.storefront,
                a.total_minor, a.currency::text,
                ARRAY(SELECT DISTINCT l->>'sku' FROM jsonb_array_elements(a.lines) l ORDER BY 1),
                a.created_at, o.updated_at
         FROM api.orders a LEFT JOIN orders.orders o ON o.order_id = a.order_id::text
         WHERE ($1::text IS NULL OR coalesce(o.state, 'accepted') = $1)
           AND ($2::text IS NULL OR a.lines @> jsonb_build_array(jsonb_build_object('sku', $2::text)))
           AND ($3::text IS NULL OR a.customer_id = $3)
           AND ($4::timestamptz IS NULL OR a.created_at >= $4)
           AND ($5::timestamptz IS NULL OR a.created_at < $5)
           AND ($6::timestamptz IS NULL OR (a.created_at, a.order_id) < ($6, $7::uuid))
         ORDER BY a.created_at DESC, a.order_id DESC
         LIMIT $8",
    )
    .bind(&filter.state)
    .bind(&filter.sku)
    .bind(&filter.customer)
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.after.map(|c| c.created_at))
    .bind(filter.after.map(|c| c.order_id))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more.then(|| rows.last()).flatten().map(|r| {
        Cursor {
            created_at: r.7,
            order_id: r.0,
        }
        .to_string()
    });
    let orders = rows
        .into_iter()
        .map(|r| OrderSummary {
            order_id: r.0.to_string(),
            state: r.1,
            customer_id: r.2,
            storefront: r.3,
            total_minor: r.4,
            currency: r.5,
            skus: r.6,
            created_at: r.7,
            updated_at: r.8,
        })
        .collect();
    Ok(Page {
        orders,
        next_cursor,
    })
}
