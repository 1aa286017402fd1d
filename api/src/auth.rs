//! API keys: storefront keys for `/api`, admin keys for `/admin`, stored as SHA-256 hashes.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::AppState;
use crate::error::ApiError;
use crate::problem::Problem;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// A storefront: orders and carts for its customers.
    Storefront,
    /// An operator: catalog, stock, flash sales.
    Admin,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::Storefront => "storefront",
            KeyKind::Admin => "admin",
        }
    }
}

/// The storefront a request was made by (a valid storefront key was sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storefront {
    /// The key's name.
    pub name: String,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a key of `kind` named `name`; returns the secret (shown once, stored only hashed).
pub async fn create_key(pool: &PgPool, kind: KeyKind, name: &str) -> Result<String, sqlx::Error> {
    let prefix = match kind {
        KeyKind::Storefront => "ks_sf",
        KeyKind::Admin => "ks_admin",
    };
    let secret = format!(
        "{prefix}_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    sqlx::query("INSERT INTO api.api_keys (key_hash, kind, name) VALUES ($1, $2, $3)")
        .bind(hash(&secret))
        .bind(kind.as_str())
        .bind(name)
        .execute(pool)
        .await?;
    Ok(secret)
}

/// How long a key lookup is trusted before the table is asked again (a revocation takes effect
/// within this time).
const CACHE_FOR: Duration = Duration::from_secs(30);

/// Most key lookups remembered; past it the least useful are evicted, not all of them.
const CACHED_KEYS: u64 = 100_000;

/// Recent key lookups: (hash, kind) → the key's name, or None for a key that does not exist (a
/// made-up key costs one query, not one a request). Requests that arrive together with a key not
/// cached share one query, so a flash-sale burst never queues a thousand identical queries for
/// the database pool; a flood of random keys evicts the least used entries (TinyLFU), never the
/// keys in use.
pub struct KeyCache {
    entries: moka::future::Cache<(Vec<u8>, KeyKind), Option<String>>,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(CACHED_KEYS)
                .time_to_live(CACHE_FOR)
                .build(),
        }
    }
}

/// The name of the live key `key` names (None: no such key), from the cache or else the table.
async fn lookup(
    pool: &PgPool,
    cache: &KeyCache,
    key: (Vec<u8>, KeyKind),
) -> Result<Option<String>, std::sync::Arc<sqlx::Error>> {
    let kind = key.1;
    let query = sqlx::query_scalar(
        "SELECT name FROM api.api_keys WHERE key_hash = $1 AND kind = $2 AND revoked_at IS NULL",
    )
    .bind(key.0.clone())
    .bind(kind.as_str())
    .fetch_optional(pool);
    // A failed query is not cached: the next request asks again.
    cache.entries.try_get_with(key, query).await
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty() && token.len() <= 200).then_some(token)
}

/// An operator (a valid admin key was sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// The key's name.
    pub name: String,
}

/// The name of the key of `kind` the request carries, or the problem to answer. A request
/// without a key the API knows counts against its peer's allowance (429 past it), before its key
/// costs a query: a flood of made-up keys is turned away without reaching the key store, and
/// requests with known keys are never counted.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    kind: KeyKind,
    missing: fn() -> Problem,
) -> Result<String, ApiError> {
    let count_peer = || match crate::server::peer(&parts.extensions) {
        Some(peer) => state.limits.unauthenticated(peer.ip()),
        None => Ok(()),
    };
    let Some(secret) = bearer(parts) else {
        count_peer()?;
        return Err(missing().into());
    };
    let key = (hash(secret), kind);
    let cached = state.keys.entries.get(&key).await;
    match cached {
        Some(Some(name)) => return Ok(name),
        Some(None) => {
            count_peer()?;
            return Err(missing().into());
        }
        None => count_peer()?, // a key not seen lately costs a query
    }
    match lookup(&state.pool, &state.keys, key).await {
        Ok(Some(name)) => Ok(name),
        Ok(None) => Err(missing().into()),
        Err(e) => {
            tracing::error!(error = %e, "API key lookup failed");
            Err(Problem::unavailable("the key store is unavailable", 1).into())
        }
    }
}

impl FromRequestParts<AppState> for Storefront {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let name = authenticate(parts, state, KeyKind::Storefront, Problem::unauthorized).await?;
        state.limits.storefront(&name)?;
        Ok(Storefront { name })
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, KeyKind::Admin, Problem::admin_only)
            .await
            .map(|name| Admin { name })
    }
}
