//! The operator's views over HTTP, for ops UIs (admin keys): an order's story (`kassa order`),
//! order search, dead letters (`kassa dlq`: list, show, redrive, discard), lag (`kassa lag`) and
//! the books (`kassa reconcile`). The same code as the commands answers; the routes are mounted on
//! the API's server through [`kassa_api::Extension`], and are in its OpenAPI document.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use kassa_api::auth::Admin;
use kassa_api::body::JsonBody;
use kassa_api::error::ApiError;
use kassa_api::problem::{CommonErrors, Problem};
use kassa_api::query::QueryParams;
use kassa_processors::ConsumerGroup;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::databases::Databases;
use crate::dlq::{DeadLetter, DeadLetterId, DlqError};
use crate::lag::{GroupLag, PartitionLag, Report, Thresholds};
use crate::offsets::OffsetsError;
use crate::reconcile::{Class, Discrepancy};
use crate::search::{OrderSummary, Page};
use crate::settings::Settings;
use crate::story::{Entry, Story};
use crate::tail::{Record, TailError};
use crate::webhooks_admin;

/// What the views need besides the API's state: every setting (topics, the registry, the
/// gateway) and the databases (a processor's schema may be in one of its own).
#[derive(Clone)]
pub(crate) struct Views {
    settings: Arc<Settings>,
    databases: Result<Databases, Arc<str>>,
}

impl Views {
    /// The databases, or 503 when their URLs could not be read.
    pub(crate) fn databases(&self) -> Result<&Databases, ApiError> {
        self.databases.as_ref().map_err(|e| {
            tracing::error!(error = %e, "the operator's views have no database");
            Problem::unavailable("the database is unavailable", 5).into()
        })
    }

    /// The one database that holds every schema, for `view`; 422 when processors keep their
    /// schemas in databases of their own.
    fn joined(&self, view: &'static str) -> Result<&sqlx::PgPool, ApiError> {
        self.databases()?
            .joined(view)
            .map_err(|e| Problem::unprocessable("databases_split", e.to_string()).into())
    }
}

/// The views' routes and their part of the OpenAPI document, for the API's server.
pub fn extension(settings: &Settings) -> kassa_api::Extension {
    let views = Views {
        settings: Arc::new(settings.clone()),
        databases: Databases::lazy(settings, 4, Duration::from_secs(3))
            .map_err(|e| Arc::from(e.to_string())),
    };
    let routes = Router::new()
        .route("/admin/orders", get(search_orders))
        .route("/admin/orders/{id}", get(order_story))
        .route("/admin/dlq", get(list_dead_letters))
        .route(
            "/admin/dlq/{group}/{partition}/{offset}",
            get(show_dead_letter),
        )
        .route(
            "/admin/dlq/{group}/{partition}/{offset}/redrive",
            post(redrive),
        )
        .route(
            "/admin/dlq/{group}/{partition}/{offset}/discard",
            post(discard),
        )
        .route("/admin/lag", get(lag))
        .route("/admin/reconcile", get(reconcile))
        .route("/asyncapi.json", get(asyncapi))
        .route(
            "/admin/webhooks",
            post(webhooks_admin::register).get(webhooks_admin::list),
        )
        .route(
            "/admin/webhooks/{id}/disable",
            post(webhooks_admin::disable),
        )
        .route(
            "/admin/webhooks/{id}/deliveries",
            get(webhooks_admin::endpoint_deliveries),
        )
        .route(
            "/admin/webhooks/{id}/deliveries/{delivery}/resend",
            post(webhooks_admin::resend),
        )
        .route(
            "/admin/orders/{id}/notifications",
            get(webhooks_admin::order_notifications),
        )
        .route(
            "/admin/storefronts/{storefront}/notifications",
            put(webhooks_admin::set_storefront),
        )
        .layer(Extension(views));
    kassa_api::Extension {
        routes,
        openapi: ViewsDoc::openapi(),
    }
}

/// The views' part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    paths(asyncapi, search_orders, order_story, list_dead_letters, show_dead_letter, redrive, discard, lag, reconcile,
          webhooks_admin::register, webhooks_admin::list, webhooks_admin::disable,
          webhooks_admin::endpoint_deliveries, webhooks_admin::resend,
          webhooks_admin::order_notifications, webhooks_admin::set_storefront),
    components(schemas(
        Page, OrderSummary, Story, Entry, DeadLetters, DeadLetter, Record, Action, Acted,
        Report, GroupLag, PartitionLag, Books, Discrepancy, Class,
        webhooks_admin::NewEndpoint, webhooks_admin::Endpoint, webhooks_admin::Endpoints,
        webhooks_admin::Delivery, webhooks_admin::Deliveries, webhooks_admin::Attempt,
        webhooks_admin::StorefrontNotifications,
    )),
    tags((name = "notifications-admin", description = "what customers and storefronts are told: webhook endpoints, their deliveries and attempts, re-sending, an order's notifications, a storefront's payment-action link (admin keys)"),
         (name = "operations-admin", description = "the operator's views: an order's story, order search, dead letters, lag, the books (admin keys); the same as `kassa order|dlq|lag|reconcile`"))
)]
struct ViewsDoc;

/// `GET /asyncapi.json`: the AsyncAPI 3.0 document of kassa's topics, for downstream teams.
#[utoipa::path(get, path = "/asyncapi.json", operation_id = "asyncapi", tag = "operations", responses((status = 200, description = "the AsyncAPI 3.0 document: every topic, its key, producers, consumers, retention, and every event type with its Avro schema")))]
async fn asyncapi() -> Json<serde_json::Value> {
    Json(crate::asyncapi::document())
}

/// An RFC 3339 time from parameter `field`.
fn time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, Problem> {
    value
        .map(|v| crate::offsets::parse_time(v).map_err(|e| Problem::invalid(field, e)))
        .transpose()
}

/// A duration given in seconds as parameter `field`: 0 to a year.
fn seconds(field: &str, value: Option<i64>) -> Result<Option<Duration>, Problem> {
    const YEAR: i64 = 31_536_000;
    match value {
        Some(n) if !(0..=YEAR).contains(&n) => {
            Err(Problem::invalid(field, "0 to 31,536,000 seconds"))
        }
        other => Ok(other.map(|n| Duration::from_secs(n.unsigned_abs()))),
    }
}

/// The processor named by parameter `field` (None: every one).
fn groups(field: &str, name: Option<&str>) -> Result<Vec<ConsumerGroup>, Problem> {
    match name {
        None => Ok(ConsumerGroup::ALL.to_vec()),
        Some(name) => ConsumerGroup::from_name(name)
            .map(|g| vec![g])
            .ok_or_else(|| {
                let names: Vec<_> = ConsumerGroup::ALL.iter().map(|g| g.name()).collect();
                Problem::invalid(field, format!("one of {}", names.join(", ")))
            }),
    }
}

/// Kafka or the registry failed while reading a topic.
fn tail_failed(error: TailError) -> ApiError {
    match error {
        TailError::Kafka(e) => ApiError::Kafka(e),
        TailError::Codec(e) => ApiError::Codec(e),
        TailError::Topic(detail) => Problem::not_found(&detail).into(),
    }
}

/// Kafka or the database failed while reading offsets.
fn offsets_failed(error: OffsetsError) -> ApiError {
    match error {
        OffsetsError::Kafka(e) => ApiError::Kafka(e),
        OffsetsError::Database(e) => ApiError::Database(e),
    }
}

/// A dead-letter command's failure as an answer: what the operator asked for does not exist
/// (404) or was done already (409); the rest is a dependency's.
fn dlq_failed(error: DlqError) -> ApiError {
    match error {
        DlqError::BadId(_) | DlqError::NotFound(_) => Problem::not_found("dead letter").into(),
        e @ (DlqError::AlreadyRedriven(..) | DlqError::NoOrigin(_)) => {
            Problem::conflict(e.to_string()).into()
        }
        DlqError::Tail(e) => tail_failed(e),
        DlqError::Kafka(e) => ApiError::Kafka(e),
        DlqError::Database(e) => ApiError::Database(e),
    }
}

/// Query parameters of `GET /admin/orders`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Only orders in this state: `accepted` (not yet seen by the orders processor) or one of
    /// the orders processor's.
    #[param(schema_with = state_schema)]
    state: Option<String>,
    /// Only orders with a line of this SKU.
    #[param(schema_with = kassa_api::domain::Sku::schema)]
    sku: Option<String>,
    /// Only this customer's orders.
    #[param(schema_with = kassa_api::domain::CustomerId::schema)]
    customer: Option<String>,
    /// Only orders created at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only orders created before this RFC 3339 time.
    #[param(format = DateTime)]
    until: Option<String>,
    /// Orders a page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,18}_[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// The states an order can be looked up by, as a schema.
fn state_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(crate::search::states()))
        .build()
}

/// Where a dead letter is: `/admin/dlq/{group}/{partition}/{offset}`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only declares the path's parameters
struct DeadLetterPath {
    /// The processor.
    #[param(schema_with = group_schema)]
    group: String,
    /// Partition of `<group>.dlq`.
    #[param(minimum = 0)]
    partition: i32,
    /// Offset there.
    #[param(minimum = 0)]
    offset: i64,
}

/// The processors, as a schema.
fn group_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(ConsumerGroup::ALL.iter().map(|g| g.name())))
        .build()
}

/// `GET /admin/orders`: orders newest first, filtered, a page at a time.
#[utoipa::path(get, path = "/admin/orders", operation_id = "searchOrders", tag = "operations-admin", params(SearchQuery), security(("admin" = [])), responses(CommonErrors, (status = 422, description = "the processors' schemas are in separate databases (KASSA_<PROCESSOR>_DATABASE_URL), which this view joins", body = Problem, content_type = "application/problem+json"), (status = 200, description = "a page of orders, newest first, and the cursor of the next", body = Page)))]
async fn search_orders(
    _admin: Admin,
    Extension(views): Extension<Views>,
    QueryParams(query): QueryParams<SearchQuery>,
) -> Result<Json<Page>, ApiError> {
    if let Some(s) = &query.state
        && !crate::search::states().any(|known| known == s)
    {
        return Err(Problem::invalid(
            "state",
            format!(
                "one of {}",
                crate::search::states().collect::<Vec<_>>().join(", ")
            ),
        )
        .into());
    }
    if let Some(sku) = &query.sku {
        kassa_api::domain::Sku::parse(sku).map_err(|rule| Problem::invalid("sku", rule))?;
    }
    if let Some(customer) = &query.customer {
        kassa_api::domain::CustomerId::parse(customer)
            .map_err(|rule| Problem::invalid("customer", rule))?;
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=crate::search::MAX_LIMIT).contains(&limit) {
        return Err(Problem::invalid("limit", "1 to 500").into());
    }
    let after = query
        .cursor
        .as_deref()
        .map(|c| c.parse().map_err(|e: &str| Problem::invalid("cursor", e)))
        .transpose()?;
    let filter = crate::search::Filter {
        state: query.state,
        sku: query.sku,
        customer: query.customer,
        since: time("since", query.since.as_deref())?,
        until: time("until", query.until.as_deref())?,
        limit,
        after,
    };
    Ok(Json(
        crate::search::search(views.joined("GET /admin/orders")?, &filter).await?,
    ))
}

/// `GET /admin/orders/{id}`: the order's story (`kassa order`).
#[utoipa::path(get, path = "/admin/orders/{id}", operation_id = "getOrderStory", tag = "operations-admin", params(("id" = String, Path, description = "order id")), security(("admin" = [])), responses(CommonErrors, (status = 422, description = "the processors' schemas are in separate databases (KASSA_<PROCESSOR>_DATABASE_URL), which this view joins", body = Problem, content_type = "application/problem+json"), (status = 200, description = "the order's story in time order (every component's records and every event about it on every topic) and a one-line diagnosis", body = Story)))]
async fn order_story(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path(id): Path<String>,
) -> Result<Json<Story>, ApiError> {
    let mut story = crate::story::story(views.joined("GET /admin/orders/{id}")?, &id)
        .await?
        .ok_or_else(|| Problem::not_found("order"))?;
    crate::story::add_events(&views.settings, &mut story)
        .await
        .map_err(tail_failed)?;
    Ok(Json(story))
}

/// Query parameters of `GET /admin/dlq`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DlqQuery {
    /// Only this processor's: `inventory`, `orders`, `payments` or `expiry`.
    #[param(schema_with = group_schema)]
    group: Option<String>,
    /// Only those dead-lettered since this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Discarded ones too (default false).
    all: Option<bool>,
}

/// The dead letters listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct DeadLetters {
    /// Oldest first, each with its id (`<group>/<partition>/<offset>`) and last action.
    dead_letters: Vec<DeadLetter>,
}

/// `GET /admin/dlq`: the dead letters (`kassa dlq list`).
#[utoipa::path(get, path = "/admin/dlq", operation_id = "listDeadLetters", tag = "operations-admin", params(DlqQuery), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the dead letters with their origin, reason and status", body = DeadLetters)))]
async fn list_dead_letters(
    _admin: Admin,
    Extension(views): Extension<Views>,
    QueryParams(query): QueryParams<DlqQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    let since = time("since", query.since.as_deref())?;
    let mut dead_letters = Vec::new();
    for group in groups("group", query.group.as_deref())? {
        let listed = crate::dlq::list(&views.settings, views.databases()?, group, since).await;
        dead_letters.extend(listed.map_err(dlq_failed)?);
    }
    dead_letters.retain(|d| query.all.unwrap_or(false) || !d.discarded());
    Ok(Json(DeadLetters { dead_letters }))
}

/// A dead letter's id from its path (`<group>/<partition>/<offset>`).
fn dead_letter_id(
    (group, partition, offset): &(String, String, String),
) -> Result<DeadLetterId, Problem> {
    format!("{group}/{partition}/{offset}")
        .parse()
        .map_err(|_| Problem::not_found("dead letter"))
}

/// `GET /admin/dlq/{group}/{partition}/{offset}`: one dead letter (`kassa dlq show`).
#[utoipa::path(get, path = "/admin/dlq/{group}/{partition}/{offset}", operation_id = "getDeadLetter", tag = "operations-admin", params(DeadLetterPath), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "the dead letter: headers (reason, origin), the decoded message or its raw bytes, its last action", body = DeadLetter)))]
async fn show_dead_letter(
    _admin: Admin,
    Extension(views): Extension<Views>,
    Path(path): Path<(String, String, String)>,
) -> Result<Json<DeadLetter>, ApiError> {
    let id = dead_letter_id(&path)?;
    let letter = crate::dlq::show(&views.settings, views.databases()?, id).await;
    Ok(Json(letter.map_err(dlq_failed)?))
}

/// The body of a redrive or a discard.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct Action {
    /// Why (recorded with the action): 1 to 500 characters, not only spaces.
    #[schema(min_length = 1, max_length = 500, pattern = "\\S")]
    reason: String,
}

/// What was done to a dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Acted {
    /// The dead letter's id.
    id: String,
    /// `redriven` or `discarded`.
    outcome: String,
    /// Where a redrive published the message again.
    topic: Option<String>,
}

/// The reason of an action, checked.
fn reason(action: &Action) -> Result<&str, Problem> {
    let reason = action.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(Problem::invalid("reason", "1 to 500 characters"));
    }
    Ok(reason)
}

/// `POST /admin/dlq/{group}/{partition}/{offset}/redrive`: publishes the original message again
/// (`kassa dlq redrive`): once at most; a second redrive is 409 and changes nothing.
#[utoipa::path(post, path = "/admin/dlq/{group}/{partition}/{offset}/redrive", operation_id = "redriveDeadLetter", tag = "operations-admin", request_body = Action, params(DeadLetterPath), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "published again to the topic it came from", body = Acted), (status = 409, description = "already redriven (recorded as refused)", body = Problem, content_type = "application/problem+json")))]
async fn redrive(
    admin: Admin,
    Extension(views): Extension<Views>,
    Path(path): Path<(String, String, String)>,
    JsonBody { value }: JsonBody<Action>,
) -> Result<Json<Acted>, ApiError> {
    let id = dead_letter_id(&path)?;
    let actor = format!("admin key {}", admin.name);
    let reason = reason(&value)?;
    let topic = crate::dlq::redrive(&views.settings, views.databases()?, id, &actor, reason)
        .await
        .map_err(dlq_failed)?;
    Ok(Json(Acted {
        id: id.to_string(),
        outcome: "redriven".into(),
        topic: Some(topic),
    }))
}

/// `POST /admin/dlq/{group}/{partition}/{offset}/discard`: marks the dead letter dealt with
/// (`kassa dlq discard`); the list no longer shows it.
#[utoipa::path(post, path = "/admin/dlq/{group}/{partition}/{offset}/discard", operation_id = "discardDeadLetter", tag = "operations-admin", request_body = Action, params(DeadLetterPath), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "discarded (recorded)", body = Acted)))]
async fn discard(
    admin: Admin,
    Extension(views): Extension<Views>,
    Path(path): Path<(String, String, String)>,
    JsonBody { value }: JsonBody<Action>,
) -> Result<Json<Acted>, ApiError> {
    let id = dead_letter_id(&path)?;
    let actor = format!("admin key {}", admin.name);
    let reason = reason(&value)?;
    crate::dlq::discard(&views.settings, views.databases()?, id, &actor, reason)
        .await
        .map_err(dlq_failed)?;
    Ok(Json(Acted {
        id: id.to_string(),
        outcome: "discarded".into(),
        topic: None,
    }))
}

/// Query parameters of `GET /admin/lag`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LagQuery {
    /// Only this processor.
    #[param(schema_with = group_schema)]
    group: Option<String>,
    /// A breach when a processor is more records behind than this.
    #[param(minimum = 0)]
    max_lag: Option<i64>,
    /// A breach when an outbox row has waited longer than this to be published, in seconds.
    #[param(minimum = 0, maximum = 31_536_000)]
    max_outbox_age: Option<i64>,
}

/// `GET /admin/lag`: how far each processor is behind (`kassa lag`).
#[utoipa::path(get, path = "/admin/lag", operation_id = "getLag", tag = "operations-admin", params(LagQuery), security(("admin" = [])), responses(CommonErrors, (status = 200, description = "per processor and input partition: Kafka's end, the offset stored in Postgres, the lag; the outbox backlog; the breaches of the thresholds given", body = Report)))]
async fn lag(
    _admin: Admin,
    Extension(views): Extension<Views>,
    QueryParams(query): QueryParams<LagQuery>,
) -> Result<Json<Report>, ApiError> {
    let groups = groups("group", query.group.as_deref())?;
    let measured = crate::lag::measure(&views.settings, views.databases()?, &groups).await;
    let groups = measured.map_err(offsets_failed)?;
    if query.max_lag.is_some_and(|n| n < 0) {
        return Err(Problem::invalid("max_lag", "0 or more").into());
    }
    let max_outbox_age = seconds("max_outbox_age", query.max_outbox_age)?;
    let limits = Thresholds {
        max_lag: query.max_lag,
        max_outbox_age,
    };
    let breaches = limits.breaches(&groups);
    Ok(Json(Report { groups, breaches }))
}

/// Query parameters of `GET /admin/reconcile`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReconcileQuery {
    /// Only orders created since this RFC 3339 time (and the SKUs they reserved).
    #[param(format = DateTime)]
    since: Option<String>,
    /// How long compensation may trail an order's decision, and how far past its deadline an
    /// undecided order counts as stuck, in seconds (default 300; at most a year).
    #[param(minimum = 0, maximum = 31_536_000)]
    margin_seconds: Option<i64>,
    /// Also read every recorded intent back from the payment provider (default false).
    provider: Option<bool>,
}

/// The books, checked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Books {
    /// Whether they square (no discrepancy).
    square: bool,
    /// Every discrepancy, by class, with the ids involved.
    discrepancies: Vec<Discrepancy>,
}

/// `GET /admin/reconcile`: whether the books square (`kassa reconcile`).
#[utoipa::path(get, path = "/admin/reconcile", operation_id = "reconcile", tag = "operations-admin", params(ReconcileQuery), security(("admin" = [])), responses(CommonErrors, (status = 422, description = "the processors' schemas are in separate databases (KASSA_<PROCESSOR>_DATABASE_URL), which this view joins", body = Problem, content_type = "application/problem+json"), (status = 200, description = "every discrepancy by class with its ids; `square` when there is none", body = Books)))]
async fn reconcile(
    _admin: Admin,
    Extension(views): Extension<Views>,
    QueryParams(query): QueryParams<ReconcileQuery>,
) -> Result<Json<Books>, ApiError> {
    let options = crate::reconcile::Options {
        since: time("since", query.since.as_deref())?,
        margin: seconds("margin_seconds", query.margin_seconds)?
            .unwrap_or(Duration::from_secs(300)),
    };
    let pool = views.joined("GET /admin/reconcile")?;
    let mut discrepancies = crate::reconcile::reconcile(pool, &options).await?;
    if query.provider.unwrap_or(false) {
        let checked = crate::provider::check(&views.settings, pool, &options).await;
        discrepancies.extend(checked.map_err(|e| match e {
            crate::provider::ProviderCheckError::Database(e) => ApiError::Database(e),
            crate::provider::ProviderCheckError::Gateway(detail) => {
                tracing::error!(%detail, "the payment gateway cannot be read");
                ApiError::from(Problem::unavailable(
                    "the payment provider cannot be read",
                    5,
                ))
            }
        })?);
    }
    Ok(Json(Books {
        square: discrepancies.is_empty(),
        discrepancies,
    }))
}
