//! The flash-sale gate: while a sale is on for a SKU, an order takes tokens for its units
//! atomically (one Lua script over all its SKUs) or is refused at once, without touching Kafka.
//! The gate is a shield, not the authority: if Redis is down it fails open, and inventory (which
//! cannot oversell) decides.

use std::collections::BTreeMap;

use kassa_schemas::flash_keys::{
    GIVE_BACK_SCRIPT, admitted_key, bought_key, config_key, tokens_key,
};
use redis::aio::ConnectionManager;

/// Per-customer counters are kept this long after the last purchase.
const BOUGHT_TTL_SECONDS: u32 = 7 * 24 * 3600;

/// Checks every SKU first, then takes tokens for all, so an order takes all or nothing.
/// KEYS: per SKU (tokens, config, bought, admitted). ARGV: per SKU the units, then the TTL.
/// `admitted` marks this Idempotency-Key as let in, so a replay is never turned away early.
/// Returns {'ok', hold_1, …} (hold '' for a SKU without a sale) or {'sold_out'|'purchase_limit', i}.
const GATE_SCRIPT: &str = r"
local n = (#ARGV - 1)
local ttl = ARGV[#ARGV]
for i = 1, n do
  local tokens = redis.call('GET', KEYS[4*i-3])
  if tokens then
    local q = tonumber(ARGV[i])
    if tonumber(tokens) < q then return {'sold_out', tostring(i)} end
    local limit = tonumber(redis.call('HGET', KEYS[4*i-2], 'per_customer_limit') or '0')
    local bought = tonumber(redis.call('GET', KEYS[4*i-1]) or '0')
    if limit > 0 and bought + q > limit then return {'purchase_limit', tostring(i)} end
  end
end
local out = {'ok'}
for i = 1, n do
  if redis.call('EXISTS', KEYS[4*i-3]) == 1 then
    local q = tonumber(ARGV[i])
    redis.call('DECRBY', KEYS[4*i-3], q)
    redis.call('INCRBY', KEYS[4*i-1], q)
    redis.call('EXPIRE', KEYS[4*i-1], ttl)
    redis.call('SET', KEYS[4*i], '1', 'EX', 86400)
    table.insert(out, redis.call('HGET', KEYS[4*i-2], 'hold_seconds') or '0')
  else
    table.insert(out, '')
  end
end
return out";

/// The early answer: 'sold_out' with the SKU index if a sale on one of the SKUs has fewer tokens
/// than asked and this Idempotency-Key was not let in before; else 'go'. Takes nothing.
/// KEYS: per SKU (tokens, admitted). ARGV: per SKU the units.
const PRECHECK_SCRIPT: &str = r"
for i = 1, #ARGV do
  local tokens = redis.call('GET', KEYS[2*i-1])
  if tokens and tonumber(tokens) < tonumber(ARGV[i]) and redis.call('EXISTS', KEYS[2*i]) == 0 then
    return {'sold_out', tostring(i)}
  end
end
return {'go'}";

/// The sold-out fast path, before any database work: Some(SKU) when the order cannot get in.
/// A key that was let in before always goes on (its replay is answered as usual). Fails open.
pub async fn sold_out_early(
    redis: &Option<ConnectionManager>,
    storefront: &str,
    idempotency_key: &str,
    units: &BTreeMap<String, i32>,
) -> Option<String> {
    let conn = redis.as_ref()?;
    let mut conn = conn.clone();
    let skus: Vec<&String> = units.keys().collect();
    let script = redis::Script::new(PRECHECK_SCRIPT);
    let mut invocation = script.prepare_invoke();
    for sku in &skus {
        invocation
            .key(tokens_key(sku))
            .key(admitted_key(sku, storefront, idempotency_key));
    }
    for sku in &skus {
        invocation.arg(units[*sku]);
    }
    let reply: Vec<String> = invocation.invoke_async(&mut conn).await.ok()?;
    if reply.first().map(String::as_str) != Some("sold_out") {
        return None;
    }
    let index: usize = reply.get(1).and_then(|i| i.parse().ok()).unwrap_or(1);
    skus.get(index.saturating_sub(1)).map(|s| (*s).clone())
}

/// What the gate said about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Admitted; the SKUs on sale (tokens taken) with their sale's hold, in seconds.
    Admitted(BTreeMap<String, i32>),
    /// A SKU's sale has fewer tokens left than the order asks.
    SoldOut(String),
    /// The customer would go over a SKU's per-customer limit.
    PurchaseLimit(String),
}

/// Runs the gate for `units` per SKU. Fails open (admitted, nothing on sale) if Redis fails.
pub async fn admit(
    redis: &Option<ConnectionManager>,
    storefront: &str,
    idempotency_key: &str,
    customer: &str,
    units: &BTreeMap<String, i32>,
) -> Gate {
    let Some(conn) = redis else {
        return Gate::Admitted(BTreeMap::new());
    };
    let mut conn = conn.clone();
    let skus: Vec<&String> = units.keys().collect();
    let script = redis::Script::new(GATE_SCRIPT);
    let mut invocation = script.prepare_invoke();
    for sku in &skus {
        invocation
            .key(tokens_key(sku))
            .key(config_key(sku))
            .key(bought_key(sku, customer))
            .key(admitted_key(sku, storefront, idempotency_key));
    }
    for sku in &skus {
        invocation.arg(units[*sku]);
    }
    invocation.arg(BOUGHT_TTL_SECONDS);
    let answer: redis::RedisResult<Vec<String>> = invocation.invoke_async(&mut conn).await;
    match answer {
        Ok(reply) => match reply.first().map(String::as_str) {
            Some("ok") => Gate::Admitted(
                skus.iter()
                    .zip(&reply[1..])
                    .filter(|(_, hold)| !hold.is_empty())
                    .map(|(sku, hold)| ((*sku).clone(), hold.parse().unwrap_or(0)))
                    .collect(),
            ),
            Some(verdict) => {
                let index: usize = reply.get(1).and_then(|i| i.parse().ok()).unwrap_or(1);
                let sku = skus
                    .get(index.saturating_sub(1))
                    .map(|s| (*s).clone())
                    .unwrap_or_default();
                if verdict == "sold_out" {
                    Gate::SoldOut(sku)
                } else {
                    Gate::PurchaseLimit(sku)
                }
            }
            None => Gate::Admitted(BTreeMap::new()),
        },
        Err(e) => {
            tracing::warn!(error = %e, "flash-sale gate unavailable: failing open to inventory");
            Gate::Admitted(BTreeMap::new())
        }
    }
}

/// Gives tokens back (an admitted order that then did not go ahead).
pub async fn give_back(
    redis: &Option<ConnectionManager>,
    customer: &str,
    taken: &BTreeMap<String, i32>,
    units: &BTreeMap<String, i32>,
) {
    let Some(conn) = redis else { return };
    let mut conn = conn.clone();
    let script = redis::Script::new(GIVE_BACK_SCRIPT);
    for sku in taken.keys() {
        let result: redis::RedisResult<i64> = script
            .key(tokens_key(sku))
            .key(bought_key(sku, customer))
            .arg(units[sku])
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            tracing::warn!(sku, error = %e, "flash-sale tokens not given back");
        }
    }
}

/// A sale's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Sale {
    /// Tokens (units) left.
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 0)]
    pub tokens: i64,
    /// Reservation hold for orders in the sale, in seconds.
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 30, maximum = 3600)]
    pub hold_seconds: i32,
    /// Most units one customer may buy (0: no limit).
    #[serde(deserialize_with = "crate::body::whole::number")]
    #[schema(minimum = 0)]
    pub per_customer_limit: i32,
}

/// Starts (or resets) a sale for `sku`.
pub async fn start(conn: &mut ConnectionManager, sku: &str, sale: &Sale) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .hset_multiple(
            config_key(sku),
            &[
                ("hold_seconds", sale.hold_seconds),
                ("per_customer_limit", sale.per_customer_limit),
            ],
        )
        .set(tokens_key(sku), sale.tokens)
        .query_async(conn)
        .await
}

/// Stops a sale: orders for the SKU are no longer gated (customer counters expire on their own).
pub async fn stop(conn: &mut ConnectionManager, sku: &str) -> redis::RedisResult<bool> {
    let removed: i64 = redis::cmd("DEL")
        .arg(tokens_key(sku))
        .arg(config_key(sku))
        .query_async(conn)
        .await?;
    Ok(removed > 0)
}

/// The sale running for `sku`, if any.
pub async fn current(conn: &mut ConnectionManager, sku: &str) -> redis::RedisResult<Option<Sale>> {
    let (tokens, hold, limit): (Option<i64>, Option<i32>, Option<i32>) = redis::pipe()
        .get(tokens_key(sku))
        .hget(config_key(sku), "hold_seconds")
        .hget(config_key(sku), "per_customer_limit")
        .query_async(conn)
        .await?;
    Ok(tokens.map(|tokens| Sale {
        tokens,
        hold_seconds: hold.unwrap_or(0),
        per_customer_limit: limit.unwrap_or(0),
    }))
}
