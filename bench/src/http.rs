//! HTTP client behaviour shared by the benches and the integration tests: a storefront that
//! honours `503 Service Unavailable` with `Retry-After`.

use std::time::Duration;

/// Sends what `request` builds, and again after each 503's `Retry-After` (the same request, so
/// the same Idempotency-Key), as a storefront would, `tries` times at most. Returns the last
/// answer and the number of 503s met.
pub async fn send_honouring_503(
    request: impl Fn() -> reqwest::RequestBuilder,
    tries: usize,
) -> reqwest::Result<(reqwest::Response, usize)> {
    let mut unavailable = 0;
    loop {
        let response = request().send().await?;
        if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || unavailable + 1 >= tries
        {
            return Ok((response, unavailable));
        }
        unavailable += 1;
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await; // as Retry-After asks
    }
}
