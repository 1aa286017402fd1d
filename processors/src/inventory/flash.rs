//! Gives flash-sale tokens back in Redis when held stock is released, after the batch committed.
//!
//! Key layout: `kassa_schemas::flash_keys` (shared with the API's gate, which takes tokens).
//!
//! A token comes back only while the sale is on (the key exists). Redis is a shield, not the
//! authority: if it is down the give-back is logged and skipped (fewer tokens, never oversold).

use kassa_schemas::flash_keys::{bought_key, tokens_key};
use redis::aio::ConnectionManager;

/// One release to give back.
#[derive(Debug, Clone)]
pub struct GiveBack {
    /// The SKU.
    pub sku: String,
    /// The customer whose hold it was.
    pub customer_id: Option<String>,
    /// Units.
    pub units: i32,
}

/// Gives the units back; failures are logged, never retried (at most once, by design).
pub async fn give_back(redis: &mut Option<ConnectionManager>, releases: Vec<GiveBack>) {
    let Some(conn) = redis.as_mut() else { return };
    let script = redis::Script::new(kassa_schemas::flash_keys::GIVE_BACK_SCRIPT);
    for r in releases {
        let bought = r
            .customer_id
            .as_deref()
            .map(|c| bought_key(&r.sku, c))
            .unwrap_or_default();
        let result: redis::RedisResult<i64> = script
            .key(tokens_key(&r.sku))
            .key(bought)
            .arg(r.units)
            .invoke_async(conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(sku = %r.sku, units = r.units, error = %e, "flash-sale tokens not given back");
        }
    }
}
