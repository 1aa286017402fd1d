//! The flash-sale key layout in Redis, shared by the API's gate (takes tokens) and inventory
//! (gives them back when a line is rejected, or its held or sold stock comes back). `{sku}` is a hash tag: one SKU's keys live
//! together, so the gate's script may touch them atomically.

/// Tokens left while a SKU's sale is on (absent: no sale).
pub fn tokens_key(sku: &str) -> String {
    format!("kassa:flash:{{{sku}}}:tokens")
}

/// The sale's settings: a hash with `hold_seconds`, `per_customer_limit` and `generation` (a
/// new id each time the sale is started: units go back only to the generation they left).
pub fn config_key(sku: &str) -> String {
    format!("kassa:flash:{{{sku}}}:config")
}

/// Units a customer holds or bought in a SKU's sale (for the per-customer limit).
pub fn bought_key(sku: &str, customer: &str) -> String {
    format!("kassa:flash:{{{sku}}}:bought:{customer}")
}

/// Marks one give-back (by its id) as applied, for a week: a retried give-back is applied once.
pub fn given_key(sku: &str, give_back_id: &str) -> String {
    format!("kassa:flash:{{{sku}}}:given:{give_back_id}")
}

/// Lua: gives `ARGV[1]` units back at most once per give-back (`KEYS[3]`, its marker from
/// [`given_key`], kept `ARGV[2]` seconds): tokens up (`KEYS[1]`) only while the sale they left
/// runs — its config (`KEYS[4]`) names generation `ARGV[3]` (empty: units admitted before
/// generations existed go back to any running sale) — and the customer's count down (`KEYS[2]`,
/// may be empty) if it is still kept. Returns 1 when applied now, 0 when applied before.
pub const GIVE_BACK_ONCE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) then return 0 end
local running = redis.call('EXISTS', KEYS[1]) == 1
if running and ARGV[3] ~= '' then
  running = redis.call('HGET', KEYS[4], 'generation') == ARGV[3]
end
if running then redis.call('INCRBY', KEYS[1], ARGV[1]) end
if KEYS[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], ARGV[1]) end
return 1";

/// Marks an Idempotency-Key (of a storefront) as let into a SKU's sale, for 24 hours: its value is
/// the request's fingerprint and the sale generation, so a retry of an admitted request takes no
/// tokens again (and is never turned away by the sold-out fast path), while the key with another
/// request is refused.
pub fn admitted_key(sku: &str, storefront: &str, idempotency_key: &str) -> String {
    format!("kassa:flash:{{{sku}}}:admitted:{storefront}:{idempotency_key}")
}
