//! HTTP helpers for tests that run kassa's servers as processes: a free port to give one, and
//! waiting (with a deadline) until an endpoint answers as expected.

use std::time::{Duration, Instant};

use serde_json::Value;

/// A free loopback port (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET base + path`: the status and the body (JSON, or the text as a string).
pub async fn get(http: &reqwest::Client, base: &str, path: &str) -> Option<(u16, Value)> {
    let response = http.get(format!("{base}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    let text = response.text().await.ok()?;
    Some((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Waits until `GET base + path` answers `status` and `check` holds for the body; returns it.
pub async fn wait_until(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    status: u16,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let answer = get(http, base, path).await;
        if let Some((got, body)) = &answer
            && *got == status
            && check(body)
        {
            return body.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "GET {path} did not answer {status} as expected within 60 s: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // poll the endpoint until the deadline
    }
}
