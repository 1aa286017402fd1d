//! The storefronts' notification settings over HTTP (admin keys): webhook endpoints (register,
//! list, disable), their deliveries with every attempt, re-sending one, an order's notifications
//! on every channel, and the link a customer follows for a payment action. All of it lives in
//! the notifications processor's schema (its own database, when it has one).

use axum::extract::Path;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use kassa_api::auth::Admin;
use kassa_api::body::JsonBody;
use kassa_api::domain::{StorefrontName, WebUrl};
use kassa_api::error::ApiError;
use kassa_api::problem::{CommonErrors, Problem};
use kassa_api::query::QueryParams;
use kassa_processors::ConsumerGroup;
use kassa_processors::notifications::notice::Kind;
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::admin_api::Views;

/// The notifications processor's database.
fn pool(views: &Views) -> Result<&PgPool, ApiError> {
    Ok(views.databases()?.of(ConsumerGroup::Notifications))
}

/// The body of `POST /admin/webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewEndpoint {
    /// The storefront whose orders it hears of (its API key's name).
    #[schema(schema_with = StorefrontName::schema)]
    pub storefront: String,
    /// Where deliveries are POSTed.
    #[schema(schema_with = WebUrl::schema)]
    pub url: String,
    /// The event types it receives.
    #[schema(schema_with = events_schema)]
    pub events: Vec<String>,
    /// The signing secret (16 to 200 visible ASCII characters); unset: one is made and
    /// returned once.
    #[schema(min_length = 16, max_length = 200, pattern = "^[!-~]{16,200}$")]
    pub secret: Option<String>,
}

/// A webhook endpoint (its secret is shown only when it is registered).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// Its id.
    pub id: Uuid,
    /// The storefront.
    pub storefront: String,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// False once disabled (no new deliveries; its history is kept).
    pub enabled: bool,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// The signing secret: only in the answer to its registration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The event types an endpoint may receive, as a schema: 1 to 5 of them.
fn events_schema() -> utoipa::openapi::Array {
    let kind = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(Kind::ALL.map(Kind::name)));
    utoipa::openapi::ArrayBuilder::new()
        .items(kind)
        .min_items(Some(1))
        .max_items(Some(Kind::ALL.len()))
        .build()
}

/// Checks a registration by the rules its schema states.
fn check(new: &NewEndpoint) -> Result<(), Problem> {
    StorefrontName::parse(&new.storefront).map_err(|rule| Problem::invalid("storefront", rule))?;
    WebUrl::parse(&new.url).map_err(|rule| Problem::invalid("url", rule))?;
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    if !(1..=Kind::ALL.len()).contains(&new.events.len())
        || new.events.iter().any(|e| Kind::parse(e).is_none())
    {
        return Err(Problem::invalid(
            "events",
            format!("1 to {} of {}", names.len(), names.join(", ")),
        ));
    }
    if let Some(secret) = &new.secret
        && !((16..=200).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Problem::invalid(
            "secret",
            "16 to 200 visible ASCII characters",
        ));
    }
    Ok(())
}

/// A new signing secret: `whsec_` and 244 random bits in hex.
fn new_secret() -> String {
    format!(
        "whsec_{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

/// `POST /admin/webhooks`: registers a storefront's webhook endpoint.
#[utoipa::path(post, path = "/admin/webhooks", operation_id = "registerWebhook", tag = "notifications-admin", request_body = NewEndpoint, security(("admin" = [])), responses(CommonErrors, (status = 201, description = "registered; `secret` signs every delivery (`Kassa-Signature: t=…,v1=…`, HMAC-SHA256 of `{t}.{body}`, as Stripe signs) and is not shown again", body = Endpoint)))]
pub(crate) async fn register(
    _admin: Admin,
    Extension(views): Extension<Views>,
    JsonBody { value }: JsonBody<NewEndpoint>,
) -> Result<(StatusCode, Json<Endpoint>), ApiError> {
    check(&value)?;
    let mut events = value.events.clone();
    events.sort();
    events.dedup();
    let secret = value.secret.clone().unwrap_or_else(new_secret);
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO notifications.endpoints (id, storefront, url, events, secret)
         VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
    )
    .bind(id)
    .bind(&value.storefront)
    .bind(&value.url)
    .bind(&events)
    .bind(&secret)
    .fetch_one(pool(&views)?)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Endpoint {
            id,
            storefront: value.storefront,
            url: value.url,
            events,
            enabled: true,
            created_at,
            secret: Some(secret),
        }),
    ))
}

/// Query parameters of `GET /admin/webhooks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EndpointQuery {
    /// Only this storefront's.
    #[param(schema_with = StorefrontName::schema)]
    pub storefront: Option<String>,
}

/// The endpoints listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Endpoints {
    /// Oldest first, without their secrets.
    pub endpoints: Vec<Endpoint>,
}

/// `GET /admin/webhooks`: the registered endpoints.
#[utoipa::path(get, path = "/admin/webhooks", operation_id = "listWebhooks", tag = "notifications-admin", params(EndpointQuery), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the endpoints, oldest first (secrets not shown)", body = Endpoints)))]
pub(crate) async fn list(
    _admin: Admin,
    Extension(views): Extension<Views>,
    QueryParams(query): QueryParams<EndpointQuery>,
) -> Result<Json<Endpoints>, ApiError> {
    if let Some(storefront) = &query.storefront {
        StorefrontName::parse(storefront).map_err(|rule| Problem::invalid("storefront", rule))?;
    }
    let rows = sqlx::query(
        "SELECT id, storefront, url, events, enabled, created_at FROM notifications.endpoints
         WHERE $1::text IS NULL OR storefront = $1 ORDER BY created_at, id LIMIT 1000",
    )
    .bind(&query.storefront)
    .fetch_all(pool(&views)?)
    .await?;
    let endpoints = rows.iter().map(endpoint).collect();
    Ok(Json(Endpoints { endpoints }))
}

/// An endpoint as stored (without its secret).
fn endpoint(row: &sqlx::postgres::PgRow) -> Endpoint {
    Endpoint {
        id: row.get("id"),
        storefront: row.get("storefront"),
        url: row.get("url"),
        events: row.get("events"),
        enabled: row.get("enabled"),
        created_at: row.get("created_at"),
        secret: None,
    }
}

/// An endpoint's id from its path (a malformed one is as unknown as a missing one).
fn endpoint_id(text: &str) -> Result<Uuid, Problem> {
    text.parse()
        .map_err(|_| Problem::not_found("webhook endpoint"))
}

/// `POST /admin/webhooks/{id}/disable`: no new deliveries to the endpoint (pending ones are
/// still tried); its history stays listable.
#[utoipa::path(post, path = "/admin/webhooks/{id}/disable", operation_id = "disableWebhook", tag = "notifications-admin", params(("id" = String, Path, description = "endpoint id")), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "disabled (`enabled` false)", body = Endpoint)))]
pub(crate) async fn disable(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let id = endpoint_id(&id)?;
    let row = sqlx::query(
        "UPDATE notifications.endpoints SET enabled = false WHERE id = $1
         RETURNING id, storefront, url, events, enabled, created_at",
    )
    .bind(id)
    .fetch_optional(pool(&views)?)
    .await?
    .ok_or_else(|| Problem::not_found("webhook endpoint"))?;
    Ok(Json(endpoint(&row)))
}

/// One attempt at a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took, in ms.
    pub duration_ms: i32,
    /// The HTTP status (or SMTP code) the receiver answered with, if it answered.
    pub status_code: Option<i32>,
    /// Why it failed (absent: delivered).
    pub error: Option<String>,
}

/// A notice to one recipient, with every attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The delivery's id (sent as `Kassa-Delivery`).
    pub id: Uuid,
    /// The notice's id, the same on every channel and retry (the body's `id`, sent as
    /// `Kassa-Event-Id`): what a receiver deduplicates on.
    pub notification_id: Uuid,
    /// `webhook` or `email`.
    pub channel: String,
    /// The endpoint, for a webhook.
    pub endpoint_id: Option<Uuid>,
    /// The endpoint URL or the email address.
    pub recipient: String,
    /// The order.
    pub order_id: String,
    /// `order.confirmed`, `order.completed`, …
    pub event_type: String,
    /// `pending` (being tried), `delivered` or `failed` (its retry window ran out).
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// When it is tried next, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When it is given up on, if still failing.
    pub expires_at: DateTime<Utc>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The body sent (`id`, `type`, `created`, `order_id`, `customer_id`, `data`).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Every attempt, in order.
    pub attempt_log: Vec<Attempt>,
}

/// Deliveries listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deliveries {
    /// Newest first.
    pub deliveries: Vec<Delivery>,
}

/// Deliveries (newest first, up to `limit`) matching `filter` (`endpoint_id = $1` or
/// `order_id = $1`), with their attempts.
async fn deliveries(
    pool: &PgPool,
    filter: &str,
    key: &str,
    limit: i64,
) -> Result<Vec<Delivery>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT d.*, coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt,
                    'started_at', a.started_at, 'duration_ms', a.duration_ms,
                    'status_code', a.status_code, 'error', a.error) ORDER BY a.attempt)
                FROM notifications.attempts a WHERE a.delivery_id = d.id), '[]') AS attempt_log
         FROM notifications.deliveries d WHERE {filter} ORDER BY d.created_at DESC, d.id LIMIT $2"
    )))
    .bind(key)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let state: String = r.get("state");
            let log: serde_json::Value = r.get("attempt_log");
            Delivery {
                id: r.get("id"),
                notification_id: r.get("notification_id"),
                channel: r.get("channel"),
                endpoint_id: r.get("endpoint_id"),
                recipient: r.get("recipient"),
                order_id: r.get("order_id"),
                event_type: r.get("event_type"),
                next_attempt_at: (state == "pending").then(|| r.get("next_attempt_at")),
                state,
                attempts: r.get("attempts"),
                delivered_at: r.get("delivered_at"),
                expires_at: r.get("expires_at"),
                last_error: r.get("last_error"),
                payload: r.get("payload"),
                created_at: r.get("created_at"),
                attempt_log: log
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| Attempt {
                        attempt: a["attempt"].as_i64().unwrap_or_default() as i32,
                        started_at: serde_json::from_value(a["started_at"].clone())
                            .unwrap_or_default(),
                        duration_ms: a["duration_ms"].as_i64().unwrap_or_default() as i32,
                        status_code: a["status_code"].as_i64().map(|s| s as i32),
                        error: a["error"].as_str().map(str::to_owned),
                    })
                    .collect(),
            }
        })
        .collect())
}

/// Query parameters of the delivery lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Deliveries a page, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// The limit asked for, checked.
fn limit(query: &DeliveryQuery) -> Result<i64, Problem> {
    match query.limit.unwrap_or(100) {
        n @ 1..=500 => Ok(i64::from(n)),
        _ => Err(Problem::invalid("limit", "1 to 500")),
    }
}

/// `GET /admin/webhooks/{id}/deliveries`: the endpoint's deliveries, newest first, each with
/// every attempt.
#[utoipa::path(get, path = "/admin/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "notifications-admin", params(("id" = String, Path, description = "endpoint id"), DeliveryQuery), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the endpoint's deliveries, newest first, with their attempts", body = Deliveries)))]
pub(crate) async fn endpoint_deliveries(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<DeliveryQuery>,
) -> Result<Json<Deliveries>, ApiError> {
    let id = endpoint_id(&id)?;
    let limit = limit(&query)?;
    let pool = pool(&views)?;
    let known: Option<bool> =
        sqlx::query_scalar("SELECT true FROM notifications.endpoints WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    if known.is_none() {
        return Err(Problem::not_found("webhook endpoint").into());
    }
    let deliveries = deliveries(pool, "d.endpoint_id = $1::uuid", &id.to_string(), limit).await?;
    Ok(Json(Deliveries { deliveries }))
}

/// `GET /admin/orders/{id}/notifications`: what the customer and the storefront were told of
/// the order, on every channel.
#[utoipa::path(get, path = "/admin/orders/{id}/notifications", operation_id = "listOrderNotifications", tag = "notifications-admin", params(("id" = String, Path, description = "order id"), DeliveryQuery), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the order's deliveries (webhooks and emails), newest first, with their attempts; 404 when the notifications processor has not heard of the order", body = Deliveries)))]
pub(crate) async fn order_notifications(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<DeliveryQuery>,
) -> Result<Json<Deliveries>, ApiError> {
    let limit = limit(&query)?;
    let pool = pool(&views)?;
    let known: Option<bool> =
        sqlx::query_scalar("SELECT true FROM notifications.orders WHERE order_id = $1")
            .bind(&id)
            .fetch_optional(pool)
            .await?;
    if known.is_none() {
        return Err(Problem::not_found("order").into());
    }
    let deliveries = deliveries(pool, "d.order_id = $1", &id, limit).await?;
    Ok(Json(Deliveries { deliveries }))
}

/// `POST /admin/webhooks/{id}/deliveries/{delivery}/resend`: sends the delivery again, now,
/// whatever became of it (the receiver deduplicates on the notice's id); tried for another
/// retry window if it fails.
#[utoipa::path(post, path = "/admin/webhooks/{id}/deliveries/{delivery}/resend", operation_id = "resendWebhookDelivery", tag = "notifications-admin", params(("id" = String, Path, description = "endpoint id"), ("delivery" = String, Path, description = "delivery id")), security(("admin" = [])), responses(CommonErrors, (status = 202, description = "due again now; `GET …/deliveries` shows the new attempt", body = Delivery)))]
pub(crate) async fn resend(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    let id = endpoint_id(&id)?;
    let delivery: Uuid = delivery
        .parse()
        .map_err(|_| Problem::not_found("delivery"))?;
    let pool = pool(&views)?;
    let done = sqlx::query(
        "UPDATE notifications.deliveries
         SET state = 'pending', next_attempt_at = now(),
             expires_at = greatest(expires_at, now() + (expires_at - created_at))
         WHERE id = $1 AND endpoint_id = $2",
    )
    .bind(delivery)
    .bind(id)
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(Problem::not_found("delivery").into());
    }
    let mut listed = deliveries(pool, "d.id = $1::uuid", &delivery.to_string(), 1).await?;
    let shown = listed.pop().ok_or_else(|| Problem::not_found("delivery"))?;
    Ok((StatusCode::ACCEPTED, Json(shown)))
}

/// A storefront's notification settings.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StorefrontNotifications {
    /// The page a customer completes a payment action on, with `{order_id}` where the order id
    /// goes (`https://shop.example/orders/{order_id}/pay`); it is put in the
    /// `order.payment_action_required` notice. Null: none.
    #[schema(schema_with = optional_url)]
    pub payment_action_url: Option<String>,
}

/// A URL or null, as a schema.
fn optional_url() -> utoipa::openapi::schema::Schema {
    let one_of = utoipa::openapi::schema::OneOfBuilder::new()
        .item(WebUrl::schema())
        .item(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::Null)
                .build(),
        )
        .build();
    utoipa::openapi::schema::Schema::OneOf(one_of)
}

/// `PUT /admin/storefronts/{storefront}/notifications`: what the storefront gives its
/// customers' notices.
#[utoipa::path(put, path = "/admin/storefronts/{storefront}/notifications", operation_id = "setStorefrontNotifications", tag = "notifications-admin", params(("storefront" = String, Path, description = "the storefront (its API key's name)")), request_body = StorefrontNotifications, security(("admin" = [])), responses(CommonErrors, (status = 200, description = "stored; used for notices written from now on", body = StorefrontNotifications)))]
pub(crate) async fn set_storefront(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path(storefront): Path<String>,
    JsonBody { value }: JsonBody<StorefrontNotifications>,
) -> Result<Json<StorefrontNotifications>, ApiError> {
    StorefrontName::parse(&storefront).map_err(|_| Problem::not_found("storefront"))?;
    if let Some(url) = &value.payment_action_url {
        WebUrl::parse(url).map_err(|rule| Problem::invalid("payment_action_url", rule))?;
    }
    sqlx::query(
        "INSERT INTO notifications.storefronts (storefront, payment_action_url) VALUES ($1, $2)
         ON CONFLICT (storefront) DO UPDATE SET payment_action_url = excluded.payment_action_url,
              updated_at = now()",
    )
    .bind(&storefront)
    .bind(&value.payment_action_url)
    .execute(pool(&views)?)
    .await?;
    Ok(Json(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str, events: &[&str], secret: Option<&str>) -> NewEndpoint {
        NewEndpoint {
            storefront: "shop".into(),
            url: url.into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            secret: secret.map(str::to_owned),
        }
    }

    #[test]
    fn a_registration_needs_an_http_url_known_events_and_a_long_secret() {
        assert!(
            check(&endpoint(
                "https://shop.example/hooks",
                &["order.completed"],
                None
            ))
            .is_ok()
        );
        for (bad, field) in [
            (
                endpoint("ftp://shop.example/", &["order.completed"], None),
                "url",
            ),
            (endpoint("/hooks", &["order.completed"], None), "url"),
            (endpoint("https://shop.example/", &[], None), "events"),
            (
                endpoint("https://shop.example/", &["order.shipped"], None),
                "events",
            ),
            (
                endpoint("https://shop.example/", &["order.completed"], Some("short")),
                "secret",
            ),
        ] {
            let problem = check(&bad).unwrap_err();
            assert!(
                format!("{problem:?}").contains(field),
                "{field}: {problem:?}"
            );
        }
        let secret = new_secret();
        assert!(secret.starts_with("whsec_") && secret.len() == 70);
        assert_ne!(secret, new_secret());
    }
}
