//! The OpenAPI document, generated from the handlers' annotations (never written by hand), at
//! `GET /openapi.json`, and a reader for it at `GET /docs`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{
    AppState, admin, carts, order_requests, order_status, orders, pricing, problem, telemetry,
    webhooks,
};

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kassa storefront API",
        description = "Orders, carts, flash sales and admin for the kassa checkout back end. Every error is `application/problem+json` (RFC 9457) with a stable `code`."
    ),
    paths(
        orders::create, order_status::get, order_requests::cancel, order_requests::renew_hold,
        carts::get, carts::put, carts::delete, carts::add_item, carts::set_item, carts::remove_item, carts::merge, carts::checkout,
        admin::put_product, admin::get_product, admin::post_stock, admin::put_sale, admin::get_sale, admin::delete_sale,
        webhooks::stripe, crate::health, crate::ready, telemetry::render,
    ),
    components(schemas(
        orders::OrderRequest, orders::LineRequest, order_requests::HoldBody,
        carts::CartBody, carts::ItemBody, carts::MergeBody, carts::CheckoutBody,
        admin::ProductBody, admin::StockBody, crate::flash::Sale, pricing::PricedLine,
        problem::Problem, problem::FieldError,
    )),
    modifiers(&Keys),
    tags(
        (name = "orders", description = "placing and following orders"),
        (name = "carts", description = "carts in Redis, the same on every device"),
        (name = "admin", description = "catalog, stock and flash sales (admin keys)"),
        (name = "webhooks", description = "provider webhooks"),
        (name = "operations", description = "health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// Adds the two bearer-key schemes: storefront keys and admin keys.
struct Keys;

impl utoipa::Modify for Keys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "storefront",
                "a storefront key (`kassa keys create storefront <name>`)",
            ),
            ("admin", "an admin key (`kassa keys create admin <name>`)"),
        ] {
            let scheme = HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(what))
                .build();
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// The whole document, serialised: the API's paths and `extension`'s.
pub fn document_of(extension: &crate::Extension) -> String {
    let mut document = ApiDoc::openapi();
    document.merge(extension.openapi.clone());
    serde_json::to_string(&document).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document cannot be serialised");
        "{}".to_owned()
    })
}

/// `GET /openapi.json`.
pub async fn document(State(state): State<AppState>) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
        .into_response()
}

/// `GET /docs`: a page that renders `/openapi.json` (the reader's script comes from its CDN).
pub async fn docs() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>kassa API</title></head><body>",
        "<redoc spec-url=\"/openapi.json\"></redoc>",
        "<script src=\"https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js\"></script>",
        "<noscript>The API description is at <a href=\"/openapi.json\">/openapi.json</a>.</noscript>",
        "</body></html>"
    ))
}
