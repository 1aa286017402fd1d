//! The naive checkout the saga bench runs beside kassa: what a tutorial does. One HTTP handler
//! per order, all in one transaction: the lines' stock rows locked (`SELECT … FOR UPDATE`, in SKU
//! order), the gateway called synchronously while the locks are held (create, confirm, capture,
//! on the same simulated provider kassa's payments use), the stock taken, the order written,
//! commit. It answers 201 (completed), 409 (out of stock) or 402 (declined). Same services, same
//! orders; its own tables in the `bench` schema.

use std::sync::Arc;

use axum::extract::{Json, State};
use axum::http::StatusCode;
use kassa_processors::payments::gateway::simulated::{SimConfig, Simulated};
use kassa_processors::payments::gateway::{Gateway, GatewayError, IntentRequest, IntentStatus};
use serde_json::{Value, json};
use sqlx::PgPool;

use kassa_ops::settings::Settings;

/// Connections of the handlers' pool: as many as kassa's API has.
const HANDLER_CONNECTIONS: u32 = 32;
/// Connections the simulated provider keeps its books with.
const GATEWAY_CONNECTIONS: u32 = 16;
/// What every SKU costs, in cents (as the bench's catalog prices it).
const PRICE_MINOR: i64 = 1999;

/// How one checkout ended.
enum Outcome {
    /// Paid and written.
    Completed(String),
    /// A line's stock was short.
    OutOfStock,
    /// The card declined.
    Declined,
}

/// Why a checkout failed (500).
#[derive(Debug, thiserror::Error)]
enum CheckoutError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("gateway: {0}")]
    Gateway(#[from] GatewayError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

/// The shop: its database and its provider.
struct Shop {
    pool: PgPool,
    gateway: Simulated,
}

/// Creates the tables, stocks `skus` (SKU, units) and serves `POST /api/orders` on a free
/// loopback port; returns its base URL.
pub(crate) async fn serve(
    settings: &Settings,
    admin: &PgPool,
    skus: &[(String, i64)],
) -> anyhow::Result<String> {
    for statement in [
        "CREATE SCHEMA IF NOT EXISTS bench",
        "CREATE TABLE IF NOT EXISTS bench.naive_checkout_stock (
             sku         text   PRIMARY KEY,
             on_hand     bigint NOT NULL CHECK (on_hand >= 0),
             price_minor bigint NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bench.naive_checkout_orders (
             order_id       uuid        PRIMARY KEY,
             customer_id    text        NOT NULL,
             total_minor    bigint      NOT NULL,
             currency       text        NOT NULL,
             payment_intent text        NOT NULL,
             lines          jsonb       NOT NULL,
             created_at     timestamptz NOT NULL DEFAULT now())",
    ] {
        sqlx::query(statement).execute(admin).await?;
    }
    let (names, units): (Vec<&str>, Vec<i64>) = skus.iter().map(|(s, u)| (s.as_str(), *u)).unzip();
    sqlx::query(
        "INSERT INTO bench.naive_checkout_stock (sku, on_hand, price_minor)
         SELECT s, u, $3 FROM unnest($1::text[], $2::bigint[]) AS t(s, u)",
    )
    .bind(&names)
    .bind(&units)
    .bind(PRICE_MINOR)
    .execute(admin)
    .await?;
    let connect = |size| {
        kassa_schemas::postgres_link::pool_options()
            .max_connections(size)
            .connect(settings.database_url.expose())
    };
    let sim = match settings
        .processors
        .payments
        .gateway_config(settings.environment)
    {
        Ok(kassa_processors::payments::GatewayConfig::Simulated(sim)) => sim,
        _ => SimConfig::default(),
    };
    let shop = Arc::new(Shop {
        pool: connect(HANDLER_CONNECTIONS).await?,
        gateway: Simulated::new(connect(GATEWAY_CONNECTIONS).await?, sim),
    });
    let app = axum::Router::new()
        .route("/api/orders", axum::routing::post(checkout))
        .with_state(shop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// `POST /api/orders`: the whole checkout before the answer.
async fn checkout(
    State(shop): State<Arc<Shop>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    match shop.checkout(&body).await {
        Ok(Outcome::Completed(id)) => (
            StatusCode::CREATED,
            Json(json!({"order_id": id, "status": "completed"})),
        ),
        Ok(Outcome::OutOfStock) => (
            StatusCode::CONFLICT,
            Json(json!({"status": "out_of_stock"})),
        ),
        Ok(Outcome::Declined) => (
            StatusCode::PAYMENT_REQUIRED,
            Json(json!({"status": "declined"})),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"detail": e.to_string()})),
        ),
    }
}

impl Shop {
    async fn checkout(&self, body: &Value) -> Result<Outcome, CheckoutError> {
        let customer = body["customer_id"]
            .as_str()
            .ok_or(CheckoutError::BadRequest("customer_id"))?;
        let method = body["payment_method_id"]
            .as_str()
            .ok_or(CheckoutError::BadRequest("payment_method_id"))?;
        let mut lines: Vec<(String, i64)> = body["lines"]
            .as_array()
            .ok_or(CheckoutError::BadRequest("lines"))?
            .iter()
            .map(|l| Some((l["sku"].as_str()?.to_owned(), l["quantity"].as_i64()?)))
            .collect::<Option<_>>()
            .ok_or(CheckoutError::BadRequest("a line"))?;
        lines.sort();
        let (skus, quantities): (Vec<String>, Vec<i64>) = lines.iter().cloned().unzip();

        let mut tx = self.pool.begin().await?;
        let stock: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT sku, on_hand, price_minor FROM bench.naive_checkout_stock
             WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        )
        .bind(&skus)
        .fetch_all(&mut *tx)
        .await?;
        let short = stock.len() != lines.len()
            || stock
                .iter()
                .zip(&lines)
                .any(|((sku, on_hand, _), (want, quantity))| sku != want || on_hand < quantity);
        if short {
            return Ok(Outcome::OutOfStock);
        }
        let total: i64 = stock.iter().zip(&quantities).map(|(s, q)| s.2 * q).sum();
        let order_id = uuid::Uuid::new_v4();
        let id = order_id.to_string();
        let request = IntentRequest {
            order_id: &id,
            amount_minor: total,
            currency: "EUR",
            payment_method_id: method,
        };
        let intent = self
            .gateway
            .create(&request, &format!("{id}-create"))
            .await?;
        let confirmed = match self
            .gateway
            .confirm(&intent.id, &format!("{id}-confirm"))
            .await
        {
            Err(GatewayError::Declined(..)) => return Ok(Outcome::Declined),
            other => other?,
        };
        if confirmed.status != IntentStatus::RequiresCapture {
            return Ok(Outcome::Declined);
        }
        self.gateway
            .capture(&intent.id, &format!("{id}-capture"))
            .await?;
        sqlx::query(
            "UPDATE bench.naive_checkout_stock s SET on_hand = s.on_hand - t.q
             FROM unnest($1::text[], $2::bigint[]) AS t(sku, q) WHERE s.sku = t.sku",
        )
        .bind(&skus)
        .bind(&quantities)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO bench.naive_checkout_orders
             (order_id, customer_id, total_minor, currency, payment_intent, lines)
             VALUES ($1, $2, $3, 'EUR', $4, $5::jsonb)",
        )
        .bind(order_id)
        .bind(customer)
        .bind(total)
        .bind(&intent.id)
        .bind(body["lines"].to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Outcome::Completed(id))
    }
}
