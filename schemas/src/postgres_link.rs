//! How every kassa process pools its Postgres connections: the options all pools start from.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;

/// A pooled connection idle at least this long is checked (one round trip) before it is handed
/// out; one used more recently is handed out as it is. sqlx checks every connection by default,
/// a round trip for every statement or transaction run on a pool: about 5% of the saga's Postgres
/// CPU (`kassa bench saga`, 150 and 300 orders/s). A connection that died in the last second
/// (Postgres restarted) fails its statement instead, which the processors retry like any
/// transient failure.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Pool options with kassa's liveness check (`CHECK_IDLE_AFTER`); set the size and timeouts on
/// them.
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < CHECK_IDLE_AFTER {
                    return Ok(true);
                }
                // A connection that does not answer is closed and another one taken.
                Ok(match conn.ping().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::info!(error = %e, "an idle database connection did not answer; opening another");
                        false
                    }
                })
            })
        })
}
