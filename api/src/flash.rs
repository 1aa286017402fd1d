//! The flash-sale gate: while a sale is on for a SKU, an order takes tokens for its units
//! atomically (one Lua script over all its SKUs) or is refused at once, without touching Kafka.
//! The gate is a shield, not the authority: if Redis is down it fails open, and inventory (which
//! cannot oversell) decides.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use kassa_schemas::flash_keys::{admitted_key, bought_key, config_key, tokens_key};
use redis::aio::ConnectionManager;

/// Per-customer counters are kept this long after the last purchase.
const BOUGHT_TTL_SECONDS: u32 = 7 * 24 * 3600;

/// How long an Idempotency-Key's admission is remembered: as long as the key itself.
const ADMITTED_TTL_SECONDS: u32 = 24 * 3600;

/// Checks every SKU first, then takes tokens for all, so an order takes all or nothing. A SKU
/// this request (same key, same fingerprint) was let into before is not taken from again: the
/// units it took then are the ones its order carries, in the generation they left.
/// KEYS: per SKU (tokens, config, bought, admitted). ARGV: per SKU the units, then the counters'
/// TTL, the admission's TTL and the request's fingerprint.
/// Returns {'ok', hold_1, generation_1, …} (both '' for a SKU without a sale) or
/// {'sold_out'|'purchase_limit'|'key_reused', i}.
const GATE_SCRIPT: &str = r"
local n = (#ARGV - 3)
local ttl, admitted_ttl, fingerprint = ARGV[n+1], ARGV[n+2], ARGV[n+3]
local before = {}
for i = 1, n do
  local tokens = redis.call('GET', KEYS[4*i-3])
  if tokens then
    local marker = redis.call('GET', KEYS[4*i])
    if marker then
      local bar = string.find(marker, '|', 1, true)
      if not bar or string.sub(marker, 1, bar - 1) ~= fingerprint then
        return {'key_reused', tostring(i)}
      end
      before[i] = string.sub(marker, bar + 1)
    else
      local q = tonumber(ARGV[i])
      if tonumber(tokens) < q then return {'sold_out', tostring(i)} end
      local limit = tonumber(redis.call('HGET', KEYS[4*i-2], 'per_customer_limit') or '0')
      local bought = tonumber(redis.call('GET', KEYS[4*i-1]) or '0')
      if limit > 0 and bought + q > limit then return {'purchase_limit', tostring(i)} end
    end
  end
end
local out = {'ok'}
for i = 1, n do
  if redis.call('EXISTS', KEYS[4*i-3]) == 1 then
    local generation = before[i]
    if not generation then
      local q = tonumber(ARGV[i])
      generation = redis.call('HGET', KEYS[4*i-2], 'generation') or ''
      redis.call('DECRBY', KEYS[4*i-3], q)
      redis.call('INCRBY', KEYS[4*i-1], q)
      redis.call('EXPIRE', KEYS[4*i-1], ttl)
      redis.call('SET', KEYS[4*i], fingerprint .. '|' .. generation, 'EX', admitted_ttl)
    end
    table.insert(out, redis.call('HGET', KEYS[4*i-2], 'hold_seconds') or '0')
    table.insert(out, generation)
  else
    table.insert(out, '')
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

/// The gate's script, hashed once (its SHA-1 names it to `EVALSHA`; hashing it per request
/// showed in a profile).
static GATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GATE_SCRIPT));
/// The precheck's script, hashed once.
static PRECHECK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PRECHECK_SCRIPT));

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
    let mut invocation = PRECHECK.prepare_invoke();
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
    /// Admitted; the SKUs on sale (tokens taken, now or by an earlier try of the same request).
    Admitted(BTreeMap<String, Admission>),
    /// A SKU's sale has fewer tokens left than the order asks.
    SoldOut(String),
    /// The customer would go over a SKU's per-customer limit.
    PurchaseLimit(String),
    /// The Idempotency-Key was let into a SKU's sale with another request.
    KeyReused(String),
}

/// One SKU's admission to a sale: what the order's lines of that SKU carry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Admission {
    /// The sale's reservation hold, in seconds (0: the API's default).
    pub hold_seconds: i32,
    /// The sale generation the units left (None: a sale started before generations existed).
    pub generation: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Admission {
    /// Reads an admission as stored with an order: an object, or (orders stored before sale
    /// generations) the hold alone.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Full {
                hold_seconds: i32,
                generation: Option<String>,
            },
            HoldOnly(i32),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Full {
                hold_seconds,
                generation,
            } => Admission {
                hold_seconds,
                generation,
            },
            Stored::HoldOnly(hold_seconds) => Admission {
                hold_seconds,
                generation: None,
            },
        })
    }
}

/// Runs the gate for `units` per SKU, for the request with `fingerprint` under `idempotency_key`.
/// Fails open (admitted, nothing on sale) if Redis fails. The tokens taken are never given back
/// here: they belong to the Idempotency-Key (its retries reuse them) and, once its order is
/// stored, to the order, whose rejected, released or restocked lines inventory gives back.
pub async fn admit(
    redis: &Option<ConnectionManager>,
    storefront: &str,
    idempotency_key: &str,
    fingerprint: &[u8],
    customer: &str,
    units: &BTreeMap<String, i32>,
) -> Gate {
    let Some(conn) = redis else {
        return Gate::Admitted(BTreeMap::new());
    };
    let mut conn = conn.clone();
    let skus: Vec<&String> = units.keys().collect();
    let mut invocation = GATE.prepare_invoke();
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
    invocation
        .arg(BOUGHT_TTL_SECONDS)
        .arg(ADMITTED_TTL_SECONDS)
        .arg(hex::encode(fingerprint));
    let answer: redis::RedisResult<Vec<String>> = invocation.invoke_async(&mut conn).await;
    match answer {
        Ok(reply) => verdict(&skus, &reply),
        Err(e) => {
            tracing::warn!(error = %e, "flash-sale gate unavailable: failing open to inventory");
            Gate::Admitted(BTreeMap::new())
        }
    }
}

/// Reads the gate script's reply for `skus`.
fn verdict(skus: &[&String], reply: &[String]) -> Gate {
    match reply.first().map(String::as_str) {
        Some("ok") => Gate::Admitted(
            skus.iter()
                .zip(reply[1..].chunks(2))
                .filter(|(_, answer)| answer.first().is_some_and(|hold| !hold.is_empty()))
                .map(|(sku, answer)| {
                    let generation = answer.get(1).filter(|g| !g.is_empty()).cloned();
                    let admission = Admission {
                        hold_seconds: answer[0].parse().unwrap_or(0),
                        generation,
                    };
                    ((*sku).clone(), admission)
                })
                .collect(),
        ),
        Some(refusal) => {
            let index: usize = reply.get(1).and_then(|i| i.parse().ok()).unwrap_or(1);
            let sku = skus
                .get(index.saturating_sub(1))
                .map(|s| (*s).clone())
                .unwrap_or_default();
            match refusal {
                "sold_out" => Gate::SoldOut(sku),
                "key_reused" => Gate::KeyReused(sku),
                _ => Gate::PurchaseLimit(sku),
            }
        }
        None => Gate::Admitted(BTreeMap::new()),
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

/// Starts (or resets) a sale for `sku`: a new generation, so units admitted before it (to an
/// earlier sale) never come back to this one.
pub async fn start(conn: &mut ConnectionManager, sku: &str, sale: &Sale) -> redis::RedisResult<()> {
    let generation = uuid::Uuid::new_v4().simple().to_string();
    redis::pipe()
        .atomic()
        .hset_multiple(
            config_key(sku),
            &[
                ("hold_seconds", sale.hold_seconds.to_string()),
                ("per_customer_limit", sale.per_customer_limit.to_string()),
                ("generation", generation),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_reply_names_each_sale_and_its_generation() {
        let (a, b, c) = ("A".to_owned(), "B".to_owned(), "C".to_owned());
        let skus = [&a, &b, &c];
        let reply: Vec<String> = ["ok", "120", "g1", "", "", "0", ""]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let Gate::Admitted(admitted) = verdict(&skus, &reply) else {
            panic!("admitted")
        };
        assert_eq!(
            admitted,
            BTreeMap::from([
                (
                    a.clone(),
                    Admission {
                        hold_seconds: 120,
                        generation: Some("g1".into())
                    }
                ),
                (
                    c.clone(),
                    Admission {
                        hold_seconds: 0,
                        generation: None
                    }
                ),
            ]),
            "B is not on sale; C's sale predates generations"
        );
        let refused = |r: &str| verdict(&skus, &[r.to_owned(), "2".to_owned()]);
        assert_eq!(refused("sold_out"), Gate::SoldOut(b.clone()));
        assert_eq!(refused("purchase_limit"), Gate::PurchaseLimit(b.clone()));
        assert_eq!(refused("key_reused"), Gate::KeyReused(b));
    }

    #[test]
    fn admissions_stored_before_generations_still_read() {
        let stored: BTreeMap<String, Admission> = serde_json::from_str(
            r#"{"OLD": 120, "NEW": {"hold_seconds": 60, "generation": "g2"}}"#,
        )
        .unwrap();
        assert_eq!(
            stored["OLD"],
            Admission {
                hold_seconds: 120,
                generation: None
            }
        );
        assert_eq!(stored["NEW"].generation.as_deref(), Some("g2"));
        let again: BTreeMap<String, Admission> =
            serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
        assert_eq!(again, stored, "written as read");
    }
}
