//! API keys: storefront keys for `/api`, admin keys for `/admin`, stored as SHA-256 hashes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// One key's lookup: started once, shared by every request that needs it meanwhile.
type Lookup = std::sync::Arc<tokio::sync::OnceCell<Option<String>>>;

/// Recent key lookups: (hash, kind) → (the lookup, when it began). Requests that arrive together
/// with a key not cached (a burst at start-up, or when an entry expires) share one query, so a
/// flash-sale burst never queues a thousand identical queries for the database pool.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<(Vec<u8>, KeyKind), Started>>,
}

/// A key lookup and when it began.
type Started = (Lookup, Instant);

/// The name of the live key of `kind` whose secret is `secret`, if any.
async fn lookup(
    pool: &PgPool,
    cache: &KeyCache,
    kind: KeyKind,
    secret: &str,
) -> Result<Option<String>, sqlx::Error> {
    let key = (hash(secret), kind);
    let cell = {
        let mut entries = cache.entries.lock().expect("key cache");
        match entries.get(&key) {
            Some((cell, at)) if at.elapsed() < CACHE_FOR => cell.clone(),
            _ => {
                if entries.len() > 10_000 {
                    entries.clear(); // bounded: a flood of made-up keys cannot grow it without end
                }
                let cell = Lookup::default();
                entries.insert(key.clone(), (cell.clone(), Instant::now()));
                cell
            }
        }
    };
    // A failed query leaves the cell empty: the next request (or a waiting one) asks again.
    let name = cell
        .get_or_try_init(|| {
            sqlx::query_scalar("SELECT name FROM api.api_keys WHERE key_hash = $1 AND kind = $2 AND revoked_at IS NULL")
                .bind(&key.0)
                .bind(kind.as_str())
                .fetch_optional(pool)
        })
        .await?;
    Ok(name.clone())
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

/// The name of the key of `kind` the request carries, or the problem to answer.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    kind: KeyKind,
    missing: fn() -> Problem,
) -> Result<String, ApiError> {
    let secret = bearer(parts).ok_or_else(missing)?;
    match lookup(&state.pool, &state.keys, kind, secret).await {
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
