//! Orders that were stored but never published: their request failed after the store (Kafka did
//! not acknowledge in time, the registry could not be reached, the API stopped mid-request) and
//! the client did not retry. A stored order is a promise: its flash-sale tokens are taken, and a
//! retry with its Idempotency-Key would get it. A sweep publishes each one (the same event ids as
//! the request would have used, so a retry racing it adds nothing) and records the answer a retry
//! then gets. Whatever its lines meet afterwards (rejected, released, restocked), inventory gives
//! their tokens back: every admitted unit comes back at most once, and none is left stranded.

use std::time::Duration;

use uuid::Uuid;

use crate::AppState;
use crate::accepted::load;
use crate::error::ApiError;

/// How often the sweep looks.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How long a stored order may wait for its own request to publish it (the acknowledgement
/// deadline and then some) before the sweep takes it over.
const GRACE_SECONDS: i32 = 15;
/// Orders published per look.
const BATCH: i64 = 100;

/// Publishes stored, unanswered orders every few seconds, for as long as it runs.
pub async fn sweep(state: AppState) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match publish_unanswered(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                published = n,
                "stored orders left unanswered were published"
            ),
            Err(e) => tracing::warn!(error = %e, "could not publish stored, unanswered orders"),
        }
    }
}

/// Publishes the stored orders whose request was not answered within the grace period; returns
/// how many were published and answered.
pub async fn publish_unanswered(state: &AppState) -> Result<usize, ApiError> {
    let waiting: Vec<(String, String, Uuid)> = sqlx::query_as(
        "SELECT storefront, key, order_id FROM api.idempotency_keys
         WHERE response_status IS NULL
           AND created_at < now() - make_interval(secs => $1)
           AND created_at > now() - interval '24 hours'
         ORDER BY created_at LIMIT $2",
    )
    .bind(f64::from(GRACE_SECONDS))
    .bind(BATCH)
    .fetch_all(&state.pool)
    .await?;
    let mut published = 0;
    for (storefront, key, order_id) in waiting {
        let Some(order) = load(state, order_id).await? else {
            continue;
        };
        crate::orders::publish_and_answer(state, &storefront, &key, &order).await?;
        metrics::counter!("kassa_orders_published_late_total").increment(1);
        tracing::info!(%order_id, storefront, "a stored order left unanswered was published");
        published += 1;
    }
    Ok(published)
}
