//! Admin routes (admin keys only): the catalog, stock (through `inventory.commands`, never by
//! writing inventory's tables) and flash sales.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kassa_schemas::Envelope;
use kassa_schemas::events::inventory::{InventoryCommand, MAX_STOCK_UNITS, Restock, SetStock};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Admin;
use crate::body::JsonBody;
use crate::domain::{IdempotencyKey, Sku};
use crate::error::ApiError;
use crate::flash::{self, Sale};
use crate::problem::{CommonErrors, FieldError, Problem};

/// A catalog product as admins write it.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ProductBody {
    /// Display name (1 to 200 characters, not only spaces).
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Unit price in minor units.
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 0)]
    pub price_minor: i64,
    /// ISO 4217 currency, upper case.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// Whether it can be ordered (default true).
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// A catalog product.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Product {
    /// The SKU.
    pub sku: String,
    /// The rest of it.
    #[serde(flatten)]
    pub product: ProductBody,
}

/// A stock command on its way to inventory.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StockSent {
    /// The SKU.
    pub sku: String,
    /// `sent to inventory`.
    pub status: String,
}

/// A flash sale of a SKU.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SaleView {
    /// The SKU.
    pub sku: String,
    /// Its settings and the tokens left.
    pub sale: Sale,
}

fn check_sku(sku: &str) -> Result<(), Problem> {
    Sku::parse(sku)
        .map(drop)
        .map_err(|rule| Problem::invalid("sku", rule))
}

/// `PUT /admin/products/{sku}`: creates or updates a product.
#[utoipa::path(put, path = "/admin/products/{sku}", operation_id = "putProduct", tag = "admin", request_body = ProductBody, params(("sku" = String, Path)), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the product", body = Product)))]
pub async fn put_product(
    State(state): State<AppState>,
    _admin: Admin,
    Path(sku): Path<String>,
    JsonBody { value: p }: JsonBody<ProductBody>,
) -> Result<Response, ApiError> {
    check_sku(&sku)?;
    let mut errors = Vec::new();
    if p.name.trim().is_empty() || p.name.chars().count() > 200 {
        errors.push(FieldError {
            field: "name".into(),
            message: "1 to 200 characters".into(),
        });
    }
    if p.price_minor < 0 {
        errors.push(FieldError {
            field: "price_minor".into(),
            message: "not negative".into(),
        });
    }
    if p.currency.len() != 3 || !p.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        errors.push(FieldError {
            field: "currency".into(),
            message: "an ISO 4217 code, e.g. EUR".into(),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors).into());
    }
    sqlx::query(
        "INSERT INTO api.products (sku, name, price_minor, currency, active) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_minor = excluded.price_minor,
           currency = excluded.currency, active = excluded.active, updated_at = now()",
    )
    .bind(&sku)
    .bind(&p.name)
    .bind(p.price_minor)
    .bind(&p.currency)
    .bind(p.active)
    .execute(&state.pool)
    .await
    ?;
    Ok(Json(Product { sku, product: p }).into_response())
}

/// `GET /admin/products/{sku}`.
#[utoipa::path(get, path = "/admin/products/{sku}", operation_id = "getProduct", tag = "admin", params(("sku" = String, Path)), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the product", body = Product)))]
pub async fn get_product(
    State(state): State<AppState>,
    _admin: Admin,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    check_sku(&sku).map_err(|_| Problem::not_found("product"))?;
    let row: Option<(String, i64, String, bool)> = sqlx::query_as(
        "SELECT name, price_minor, currency, active FROM api.products WHERE sku = $1",
    )
    .bind(&sku)
    .fetch_optional(&state.pool)
    .await?;
    let (name, price_minor, currency, active) = row.ok_or_else(|| Problem::not_found("product"))?;
    let product = ProductBody {
        name,
        price_minor,
        currency,
        active,
    };
    Ok(Json(Product { sku, product }).into_response())
}

/// The body of `POST /admin/stock/{sku}`: exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
pub struct StockBody {
    /// Units delivered (added to on-hand).
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    pub restock: Option<i32>,
    /// Units counted on hand (set absolutely).
    #[serde(default, deserialize_with = "crate::body::whole::optional")]
    pub set: Option<i64>,
}

impl utoipa::PartialSchema for StockBody {
    /// Exactly one of `restock` (1 or more) and `set` (0 to 10^12).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let restock = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .description(Some("units delivered (added to on-hand)"));
        let set = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .maximum(Some(MAX_STOCK_UNITS))
            .description(Some("units counted on hand (set absolutely)"));
        // One given, the other absent or null.
        let only = |name: &str, schema: ObjectBuilder, other: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(name, schema)
                .property(other, ObjectBuilder::new().schema_type(Type::Null))
                .required(name)
        };
        OneOfBuilder::new()
            .item(only("restock", restock, "set"))
            .item(only("set", set, "restock"))
            .description(Some("exactly one of `restock` and `set`"))
            .into()
    }
}

impl utoipa::ToSchema for StockBody {}

/// `POST /admin/stock/{sku}`: a restock or a stock count, sent to inventory; 202 once on Kafka.
#[utoipa::path(post, path = "/admin/stock/{sku}", operation_id = "sendStockCommand", tag = "admin", request_body = StockBody, params(("sku" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "makes a retried request the same command: inventory applies it once")), security(("admin" = [])), responses(CommonErrors, (status = 202, description = "sent to inventory", body = StockSent)))]
pub async fn post_stock(
    State(state): State<AppState>,
    admin: Admin,
    Path(sku): Path<String>,
    headers: axum::http::HeaderMap,
    JsonBody { value }: JsonBody<StockBody>,
) -> Result<Response, ApiError> {
    check_sku(&sku)?;
    let reason = format!("admin {}", admin.name);
    let command = match (value.restock, value.set) {
        (Some(quantity), None) if quantity > 0 => InventoryCommand::Restock(Restock {
            sku: sku.clone(),
            quantity,
            order_id: None,
            line_index: None,
            reason,
        }),
        (None, Some(on_hand)) if (0..=MAX_STOCK_UNITS).contains(&on_hand) => {
            InventoryCommand::SetStock(SetStock {
                sku: sku.clone(),
                on_hand,
                reason,
            })
        }
        _ => {
            return Err(Problem::invalid(
                "restock|set",
                "exactly one of `restock` (positive) or `set` (0 to 1,000,000,000,000)",
            )
            .into());
        }
    };
    // The command's id is its identity for good (inventory never applies one twice, replays
    // included): with an Idempotency-Key, a retried request is the same command.
    let mut envelope = Envelope::new(sku.clone(), None, command);
    if let Some(value) = headers.get("idempotency-key") {
        let key = IdempotencyKey::parse(value.to_str().unwrap_or_default())
            .map_err(|rule| Problem::invalid("Idempotency-Key", rule))?;
        let name = format!("kassa-stock-command/{}/{sku}/{key}", admin.name);
        envelope.event_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes());
    }
    crate::produce::send(&state, &sku, None, &envelope).await?;
    let sent = StockSent {
        sku,
        status: "sent to inventory".into(),
    };
    Ok((StatusCode::ACCEPTED, Json(sent)).into_response())
}

fn redis(state: &AppState) -> Result<redis::aio::ConnectionManager, Problem> {
    state.redis.get().ok_or_else(|| {
        Problem::unavailable("Redis is unavailable: flash sales cannot be managed", 5)
    })
}

/// `PUT /admin/flash-sales/{sku}`: starts (or resets) a sale with tokens, hold and limit.
#[utoipa::path(put, path = "/admin/flash-sales/{sku}", operation_id = "putFlashSale", tag = "admin", request_body = Sale, params(("sku" = String, Path)), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the sale", body = SaleView)))]
pub async fn put_sale(
    State(state): State<AppState>,
    _admin: Admin,
    Path(sku): Path<String>,
    JsonBody { value: sale }: JsonBody<Sale>,
) -> Result<Response, ApiError> {
    check_sku(&sku)?;
    let mut errors = Vec::new();
    if sale.tokens < 0 {
        errors.push(FieldError {
            field: "tokens".into(),
            message: "not negative".into(),
        });
    }
    if !(30..=3600).contains(&sale.hold_seconds) {
        errors.push(FieldError {
            field: "hold_seconds".into(),
            message: "30 to 3600".into(),
        });
    }
    if sale.per_customer_limit < 0 {
        errors.push(FieldError {
            field: "per_customer_limit".into(),
            message: "not negative (0: no limit)".into(),
        });
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors).into());
    }
    flash::start(&mut redis(&state)?, &sku, &sale).await?;
    Ok(Json(SaleView { sku, sale }).into_response())
}

/// `GET /admin/flash-sales/{sku}`: the sale running, with its tokens left.
#[utoipa::path(get, path = "/admin/flash-sales/{sku}", operation_id = "getFlashSale", tag = "admin", params(("sku" = String, Path)), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the sale, tokens left", body = SaleView)))]
pub async fn get_sale(
    State(state): State<AppState>,
    _admin: Admin,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    let sale = flash::current(&mut redis(&state)?, &sku).await?;
    let sale = sale.ok_or_else(|| Problem::not_found("flash sale"))?;
    Ok(Json(SaleView { sku, sale }).into_response())
}

/// `DELETE /admin/flash-sales/{sku}`: stops the sale.
#[utoipa::path(delete, path = "/admin/flash-sales/{sku}", operation_id = "stopFlashSale", tag = "admin", params(("sku" = String, Path)), security(("admin" = [])), responses(CommonErrors, (status = 204, description = "stopped")))]
pub async fn delete_sale(
    State(state): State<AppState>,
    _admin: Admin,
    Path(sku): Path<String>,
) -> Result<Response, ApiError> {
    if flash::stop(&mut redis(&state)?, &sku).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found("flash sale").into())
    }
}
