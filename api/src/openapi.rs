//! The OpenAPI document, generated from the handlers' annotations (never written by hand), at
//! `GET /openapi.json`, and a reader for it at `GET /docs`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::path::ParameterIn;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, KnownFormat, Object, ObjectBuilder, Ref, ResponseBuilder, SchemaFormat, Type,
};

use crate::domain::{CustomerId, GuestCartId, IdempotencyKey, Sku};

use crate::{
    AppState, admin, carts, fulfilment, order_events, order_history, order_requests, order_status,
    orders, pricing, problem, telemetry, webhooks,
};

/// The API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kassa storefront API",
        description = "Orders, carts, flash sales and admin for the kassa checkout back end. Every error is `application/problem+json` (RFC 9457) with a stable `code`."
    ),
    paths(
        orders::create, order_history::list, order_status::get, order_events::stream, order_requests::cancel, order_requests::renew_hold,
        carts::create, carts::get, carts::put, carts::delete, carts::add_item, carts::set_item, carts::remove_item, carts::checkout,
        carts::get_mine, carts::put_mine, carts::delete_mine, carts::add_mine, carts::set_mine, carts::remove_mine, carts::checkout_mine, carts::merge,
        admin::put_product, admin::get_product, admin::post_stock, admin::put_sale, admin::get_sale, admin::delete_sale,
        crate::refunds::create, crate::refunds::list,
        webhooks::stripe, crate::health, crate::ready, telemetry::render,
    ),
    components(schemas(
        orders::OrderRequest, orders::LineRequest, order_requests::HoldBody,
        fulfilment::FulfilmentBody, fulfilment::AddressBody,
        carts::CartBody, carts::AddItemBody, carts::SetItemBody, carts::MergeBody, carts::CheckoutBody,
        admin::ProductBody, admin::StockBody, crate::flash::Sale, pricing::PricedLine,
        crate::refunds::RefundBody, crate::refunds::RestockLine, crate::refunds::Refund, crate::refunds::Refunds,
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

/// Adds the authentication schemes: storefront keys, admin keys, Stripe's webhook signature.
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
        let signature = ApiKey::Header(ApiKeyValue::with_description(
            "Stripe-Signature",
            "`t=<unix time>,v1=<HMAC-SHA256 hex>` over the body with the endpoint's signing secret",
        ));
        components.add_security_scheme("stripe_signature", SecurityScheme::ApiKey(signature));
    }
}

/// The rules the server enforces on parameters and bodies that every operation shares, declared
/// once here from the parsers' own rules: each parameter's schema by name, 408 and 413 on every
/// operation (every body is read, up to a size and a time), 415 on every one that takes a JSON
/// body.
struct Rules;

/// The schema and description of a parameter the API takes in several operations.
fn parameter_rule(location: &ParameterIn, name: &str) -> Option<(Object, &'static str)> {
    let rule = match (location, name) {
        (ParameterIn::Header, "X-Customer-Id") => (
            CustomerId::schema(),
            "the customer the request is made for (required for `me` and orders)",
        ),
        (ParameterIn::Query, "customer_id") => {
            (CustomerId::schema(), "the customer whose orders to list")
        }
        (ParameterIn::Header, "Idempotency-Key") => (
            IdempotencyKey::schema(),
            "the same key and body get the same answer for 24 h",
        ),
        (ParameterIn::Header, "If-Match") => (
            ObjectBuilder::new().schema_type(Type::String).build(),
            "`*` or entity tags (RFC 9110): the change applies only if one of them is the cart's `ETag` (else 412; a value that is not entity tags matches none)",
        ),
        (ParameterIn::Path, "cart_id") => (
            GuestCartId::schema(),
            "a guest cart id from `POST /api/carts`",
        ),
        (ParameterIn::Path, "sku") => (Sku::schema(), "the SKU"),
        (ParameterIn::Path, "id") => (
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                .build(),
            "the order's id",
        ),
        _ => return None,
    };
    Some(rule)
}

impl utoipa::Modify for Rules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in == ParameterIn::Path {
                        // OpenAPI: path parameters are always required (utoipa leaves those
                        // declared with `schema_with` optional).
                        parameter.required = utoipa::openapi::Required::True;
                    }
                    if let Some((schema, description)) =
                        parameter_rule(&parameter.parameter_in, &parameter.name)
                    {
                        parameter.schema = Some(schema.into());
                        parameter
                            .description
                            .get_or_insert_with(|| description.to_owned());
                    }
                }
                let responses = &mut operation.responses.responses;
                responses.entry("413".into()).or_insert_with(|| {
                    problem("`payload_too_large`: the body is over 64 KiB").into()
                });
                responses.entry("408".into()).or_insert_with(|| {
                    problem("`request_timeout`: the body did not arrive in time").into()
                });
                let json_body = operation
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                if json_body && operation.security.is_some() {
                    responses.entry("415".into()).or_insert_with(|| {
                        problem("`unsupported_media_type`: the body is not `application/json`")
                            .into()
                    });
                }
            }
        }
    }
}

/// The whole document, serialised: the API's paths and `extension`'s, with the hold a renewal
/// may ask for as this server is configured (`max_hold_seconds`).
pub fn document_of(extension: &crate::Extension, max_hold_seconds: i32) -> String {
    let mut document = ApiDoc::openapi();
    document.merge(extension.openapi.clone());
    utoipa::Modify::modify(&Rules, &mut document);
    declare_longest_hold(&mut document, max_hold_seconds);
    let mut document = serde_json::to_value(&document).unwrap_or_default();
    spell_links(&mut document);
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

/// Spells the fields of every response's links as OpenAPI does (`operationId`, `requestBody`,
/// `operationRef`): utoipa 5.5 writes them in snake case.
fn spell_links(document: &mut serde_json::Value) {
    let Some(paths) = document.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    let responses = operations
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    let links = responses
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_owned(), value);
            }
        }
    }
}

/// Sets `HoldBody.hold_seconds`'s maximum to the longest hold this server grants.
fn declare_longest_hold(document: &mut utoipa::openapi::OpenApi, max_hold_seconds: i32) {
    use utoipa::openapi::{RefOr, Schema};
    let Some(components) = document.components.as_mut() else {
        return;
    };
    if let Some(RefOr::T(Schema::Object(hold))) = components.schemas.get_mut("HoldBody")
        && let Some(RefOr::T(Schema::Object(seconds))) = hold.properties.get_mut("hold_seconds")
    {
        let longest = max_hold_seconds.max(crate::order_requests::MIN_HOLD_SECONDS);
        seconds.maximum = Some(longest.into());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(&super::document_of(&crate::Extension::default(), 900)).unwrap()
    }

    #[test]
    fn every_operation_is_named_once_and_every_success_is_typed() {
        let document = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                assert!(ids.insert(id.clone()), "{id} twice");
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('2') && status != "204" {
                        let content = response["content"].as_object();
                        let typed =
                            content.is_some_and(|c| c.values().all(|m| m.get("schema").is_some()));
                        assert!(typed, "{method} {path} {status} has no schema");
                    }
                }
                assert!(
                    operation["responses"].get("408").is_some(),
                    "{method} {path}: 408"
                );
                assert!(
                    operation["responses"].get("413").is_some(),
                    "{method} {path}: 413"
                );
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let name = parameter["name"].as_str().unwrap();
                    let in_path = path.contains(&format!("{{{name}}}"));
                    assert_eq!(
                        parameter["in"] == "path",
                        in_path,
                        "{method} {path}: {name}'s place"
                    );
                    if in_path {
                        assert_eq!(parameter["required"], true, "{method} {path}: {name}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_document_declares_the_limits_the_server_enforces() {
        let document = document();
        let schemas = &document["components"]["schemas"];
        let lines = &schemas["OrderRequest"]["properties"]["lines"];
        assert_eq!(lines["maxItems"], crate::orders::MAX_LINES);
        assert_eq!(lines["minItems"], 1);
        let quantity = &schemas["LineRequest"]["properties"]["quantity"];
        assert_eq!(quantity["maximum"], crate::orders::MAX_QUANTITY);
        assert_eq!(
            schemas["AddItemBody"]["properties"]["quantity"]["maximum"],
            crate::orders::MAX_QUANTITY
        );
        assert_eq!(
            schemas["SetItemBody"]["properties"]["quantity"]["maximum"],
            crate::orders::MAX_QUANTITY
        );
        let items = &schemas["CartBody"]["properties"]["items"];
        assert_eq!(items["maxProperties"], crate::orders::MAX_LINES);
        assert_eq!(
            items["additionalProperties"]["maximum"],
            crate::orders::MAX_QUANTITY
        );
        assert_eq!(
            schemas["HoldBody"]["properties"]["hold_seconds"]["maximum"],
            900
        );
        assert_eq!(
            schemas["MergeBody"]["properties"]["guest_cart_id"]["pattern"],
            crate::domain::GuestCartId::PATTERN
        );
        let link =
            &document["paths"]["/api/orders"]["post"]["responses"]["202"]["links"]["getOrder"];
        assert_eq!(link["operationId"], "getOrder");
        let checkout = &document["paths"]["/api/carts/{cart_id}/checkout"]["post"];
        let statuses: Vec<&String> = checkout["responses"].as_object().unwrap().keys().collect();
        for status in [
            "202", "400", "401", "404", "409", "413", "415", "422", "429", "503",
        ] {
            assert!(statuses.iter().any(|s| *s == status), "checkout: {status}");
        }
    }
}
