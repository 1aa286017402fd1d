//! A proxy in front of localstripe that answers as Stripe does where localstripe does not:
//! Stripe sends an intent's `latest_charge` as a bare id unless the request expands it, while
//! localstripe always sends it whole. Clients tested through it must ask for what they read.

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use serde_json::Value;

/// Starts the proxy in front of `upstream` (localstripe's base URL); returns its base URL.
pub async fn start(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let (client, upstream) = (client.clone(), upstream.clone());
        async move { forward(&client, &upstream, request).await }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    request: Request<Body>,
) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let expanded =
        path.contains("latest_charge") || String::from_utf8_lossy(&body).contains("latest_charge");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("method");
    let mut outgoing = client
        .request(method, format!("{upstream}{path}"))
        .body(body.to_vec());
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "stripe-version",
    ] {
        if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .expect("response");
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).expect("status");
    let mut json: Value = answer.json().await.unwrap_or(Value::Null);
    if !expanded
        && json.get("object").and_then(Value::as_str) == Some("payment_intent")
        && let Some(charge) = json.get("latest_charge").and_then(|c| c.get("id")).cloned()
    {
        json["latest_charge"] = charge;
    }
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(json.to_string()))
        .expect("response")
}
