//! Where carts live: one JSON document a cart in Redis, written with compare-and-set on its
//! version, its expiry sliding on every read and write.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::domain::{CustomerId, GuestCartId};
use crate::error::ApiError;

/// How long carts live after their last use, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartTtl {
    /// A guest cart.
    pub guest: u64,
    /// A customer's cart.
    pub customer: u64,
}

/// What is stored for a cart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    /// Units per SKU, in SKU order.
    pub items: BTreeMap<String, i32>,
    /// Bumped by every write; the `ETag`.
    pub version: u64,
}

/// Whose cart a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A guest cart, by the id the server issued.
    Guest(GuestCartId),
    /// A signed-in customer's cart (`/api/carts/me`).
    Customer(CustomerId),
}

impl Owner {
    /// The Redis key of this cart of `storefront`.
    pub(crate) fn key(&self, storefront: &str) -> String {
        match self {
            Owner::Guest(id) => format!("kassa:cart:{storefront}:guest:{}", id.as_str()),
            Owner::Customer(id) => format!("kassa:cart:{storefront}:customer:{id}"),
        }
    }

    /// How long this cart lives after its last use.
    pub(crate) fn ttl(&self, ttl: CartTtl) -> u64 {
        match self {
            Owner::Guest(_) => ttl.guest,
            Owner::Customer(_) => ttl.customer,
        }
    }
}

/// Writes ARGV[2] if the stored version is still ARGV[1] (0: the cart must not exist); an empty
/// ARGV[2] deletes the cart. Also slides the expiry. Returns 0 if another write came first.
const CAS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = cjson.decode(current)['version'] end
if tonumber(ARGV[1]) ~= version then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return 1";

/// The compare-and-set script, hashed once (its SHA-1 names it to `EVALSHA`).
static CAS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CAS_SCRIPT));

/// Reads a cart (sliding its expiry); None if there is none.
pub(crate) async fn read(
    conn: &mut ConnectionManager,
    key: &str,
    ttl: u64,
) -> Result<Option<Cart>, ApiError> {
    let (raw, _): (Option<String>, bool) = redis::pipe()
        .get(key)
        .expire(key, ttl as i64)
        .query_async(conn)
        .await?;
    Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
}

/// Replaces the cart at `expected_version` (0: absent) with `items` (an empty cart is kept: it
/// still exists). None if another write came first.
pub(crate) async fn write(
    conn: &mut ConnectionManager,
    key: &str,
    ttl: u64,
    expected_version: u64,
    items: BTreeMap<String, i32>,
) -> Result<Option<Cart>, ApiError> {
    let cart = Cart {
        items,
        version: expected_version + 1,
    };
    let written = cas(
        conn,
        key,
        ttl,
        expected_version,
        &serde_json::to_string(&cart)?,
    )
    .await?;
    Ok(written.then_some(cart))
}

/// Deletes the cart if it is still at `expected_version`; false if another write came first.
pub(crate) async fn remove(
    conn: &mut ConnectionManager,
    key: &str,
    expected_version: u64,
) -> Result<bool, ApiError> {
    cas(conn, key, 0, expected_version, "").await
}

async fn cas(
    conn: &mut ConnectionManager,
    key: &str,
    ttl: u64,
    expected_version: u64,
    stored: &str,
) -> Result<bool, ApiError> {
    let written: i64 = CAS
        .key(key)
        .arg(expected_version)
        .arg(stored)
        .arg(ttl)
        .invoke_async(conn)
        .await?;
    Ok(written == 1)
}
