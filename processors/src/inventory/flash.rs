//! Gives flash-sale tokens back in Redis when a flash-sale line's units were not sold after all:
//! the line was rejected, its hold released, or its sold units restocked (the order went unpaid).
//!
//! Key layout: `kassa_schemas::flash_keys` (shared with the API's gate, which takes tokens).
//!
//! A give-back is written to `inventory.flash_give_backs` in the batch transaction that decided
//! it, so it is never lost. After the commit it goes to Redis in one pipeline, bounded in
//! time, off the consume loop; what Redis confirmed is deleted, the rest is retried by
//! [`retry`] every few seconds. Redis applies each give-back at most once (a marker per id), so
//! a retry after a timeout never gives a token back twice; its id is the order line's, so a line's
//! units come back once whatever happens to it. A token comes back only to the sale generation it
//! left, while that sale is on: a sale that ended stays ended, and a restarted sale is not
//! credited with its predecessor's units. The customer's count comes down either way.

use std::time::Duration;

use kassa_schemas::flash_keys::{
    GIVE_BACK_ONCE_SCRIPT, bought_key, config_key, given_key, tokens_key,
};
use kassa_schemas::redis_link::RedisLink;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use super::store::LineRecord;

/// How long one give-back pipeline may take before it is left to the retry.
pub const GIVE_BACK_LIMIT: Duration = Duration::from_secs(2);
/// How often pending give-backs are retried.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// How long Redis remembers that a give-back was applied (its markers).
const MARKER_SECONDS: u64 = 7 * 24 * 3600;

/// One release to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveBack {
    /// Its id: one per released order line.
    pub id: Uuid,
    /// The SKU.
    pub sku: String,
    /// The customer whose hold it was.
    pub customer_id: Option<String>,
    /// Units.
    pub units: i32,
    /// The sale generation the units left (None: any running sale, as before generations).
    pub generation: Option<String>,
}

impl GiveBack {
    /// The give-back of `units` of order line `line` (order id, index), recorded as `record`.
    /// Its id is the line's: a line's units come back once, whether it was rejected, released
    /// or restocked.
    pub(crate) fn of_line(record: &LineRecord, line: (&str, i32), units: i32) -> Self {
        Self {
            id: Self::id_of(line.0, line.1),
            sku: record.sku.clone(),
            customer_id: record.customer_id.clone(),
            units,
            generation: record.flash_generation.clone(),
        }
    }

    /// The id of the give-back of line `line_index` of `order_id`.
    pub fn id_of(order_id: &str, line_index: i32) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("kassa-give-back-{order_id}-{line_index}").as_bytes(),
        )
    }
}

/// Records give-backs in the batch transaction that decided them.
pub async fn record(conn: &mut PgConnection, give_backs: &[GiveBack]) -> Result<(), sqlx::Error> {
    if give_backs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = give_backs.iter().map(|g| g.id).collect();
    let skus: Vec<&str> = give_backs.iter().map(|g| g.sku.as_str()).collect();
    let customers: Vec<Option<&str>> = give_backs
        .iter()
        .map(|g| g.customer_id.as_deref())
        .collect();
    let units: Vec<i32> = give_backs.iter().map(|g| g.units).collect();
    let generations: Vec<Option<&str>> = give_backs
        .iter()
        .map(|g| g.generation.as_deref())
        .collect();
    sqlx::query(
        "INSERT INTO inventory.flash_give_backs (id, sku, customer_id, units, generation)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&skus)
    .bind(&customers)
    .bind(&units)
    .bind(&generations)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives `give_backs` back in one Redis pipeline, waiting at most `limit`, and deletes the ones
/// Redis confirmed. Returns how many were confirmed; the others stay recorded for [`retry`].
pub async fn give_back(
    pool: &PgPool,
    redis: &RedisLink,
    give_backs: &[GiveBack],
    limit: Duration,
) -> usize {
    if give_backs.is_empty() {
        return 0;
    }
    let Some(mut conn) = redis.get() else {
        tracing::debug!(
            pending = give_backs.len(),
            "Redis not connected: flash-sale tokens wait to be given back"
        );
        return 0;
    };
    let mut pipe = redis::pipe();
    for g in give_backs {
        let bought = g
            .customer_id
            .as_deref()
            .map(|c| bought_key(&g.sku, c))
            .unwrap_or_default();
        pipe.cmd("EVAL")
            .arg(GIVE_BACK_ONCE_SCRIPT)
            .arg(4)
            .arg(tokens_key(&g.sku))
            .arg(bought)
            .arg(given_key(&g.sku, &g.id.to_string()))
            .arg(config_key(&g.sku))
            .arg(g.units)
            .arg(MARKER_SECONDS)
            .arg(g.generation.as_deref().unwrap_or_default());
    }
    let applied = tokio::time::timeout(limit, pipe.query_async::<Vec<i64>>(&mut conn)).await;
    let ids: Vec<Uuid> = give_backs.iter().map(|g| g.id).collect();
    match applied {
        Ok(Ok(_)) => {
            let deleted = sqlx::query("DELETE FROM inventory.flash_give_backs WHERE id = ANY($1)")
                .bind(&ids)
                .execute(pool)
                .await;
            if let Err(e) = deleted {
                // Redis took them; the retry finds their markers and only deletes the rows.
                tracing::warn!(error = %e, "given back, but the records stay until the next retry");
            }
            metrics::counter!("kassa_flash_tokens_given_back_total")
                .increment(give_backs.len() as u64);
            give_backs.len()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, pending = give_backs.len(), "Redis refused the give-back: kept for a retry");
            mark_attempted(pool, &ids).await;
            0
        }
        Err(_) => {
            tracing::warn!(
                pending = give_backs.len(),
                ?limit,
                "Redis did not confirm the give-back in time: kept for a retry"
            );
            mark_attempted(pool, &ids).await;
            0
        }
    }
}

async fn mark_attempted(pool: &PgPool, ids: &[Uuid]) {
    let marked = sqlx::query(
        "UPDATE inventory.flash_give_backs SET attempted_at = now() WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(pool)
    .await;
    if let Err(e) = marked {
        tracing::debug!(error = %e, "could not note the give-back attempt");
    }
}

/// A recorded give-back: id, SKU, customer, units, generation.
type PendingRow = (Uuid, String, Option<String>, i32, Option<String>);

/// Retries recorded give-backs (older than a few seconds: fresh ones are being given back after
/// their batch) until `shutdown` turns true.
pub async fn retry(pool: PgPool, redis: RedisLink, mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow() {
        let pending: Result<Vec<PendingRow>, sqlx::Error> = sqlx::query_as(
            "SELECT id, sku, customer_id, units, generation FROM inventory.flash_give_backs
             WHERE created_at < now() - interval '3 seconds' ORDER BY created_at LIMIT 1000",
        )
        .fetch_all(&pool)
        .await;
        match pending {
            Ok(rows) if !rows.is_empty() => {
                let give_backs: Vec<GiveBack> = rows
                    .into_iter()
                    .map(|(id, sku, customer_id, units, generation)| GiveBack {
                        id,
                        sku,
                        customer_id,
                        units,
                        generation,
                    })
                    .collect();
                let done = give_back(&pool, &redis, &give_backs, GIVE_BACK_LIMIT).await;
                tracing::info!(
                    retried = give_backs.len(),
                    done,
                    "flash-sale give-backs retried"
                );
                if done == 1000 {
                    continue;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read pending give-backs"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}
