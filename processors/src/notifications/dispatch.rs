//! The dispatcher: claims due deliveries and sends each on its own task, so a slow or failing
//! receiver holds up nobody else (and never the saga, which does not wait on notifications).
//! Each attempt is recorded; a failed one is tried again after an exponential backoff with
//! jitter, until the delivery's window (3 days by default) is over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};

use super::channels::{Channel, Email, Outgoing, SendError, Webhook};
use super::store::{self, Claimed, Outcome};
use crate::runtime::backoff::Backoff;

/// How the dispatcher runs.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Deliveries in flight at once per instance.
    pub concurrency: usize,
    /// The first retry's wait; each further one doubles, up to [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// How long a receiver has to answer.
    pub timeout: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How often due deliveries are looked for when none were found.
const POLL: Duration = Duration::from_millis(250);
/// How often the pending deliveries are counted (`kassa_notifications_pending`).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often what is kept no longer is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The channels deliveries go out on.
pub struct Channels {
    /// Storefront webhooks.
    pub webhook: Webhook,
    /// Email (None: no SMTP server configured; no email deliveries are written then).
    pub email: Option<Email>,
}

/// Sends due deliveries until `shutdown` turns true (what is in flight is finished first).
pub async fn run(
    pool: PgPool,
    channels: Arc<Channels>,
    config: DispatchConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut errors = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let progress = crate::runtime::liveness::register("notifications dispatcher");
    // A claim lasts past any attempt: a receiver's time limit, and the record's write.
    let lease = chrono::Duration::from_std(config.timeout * 3 + Duration::from_secs(30))
        .unwrap_or(chrono::Duration::MAX);
    let (mut sampled, mut pruned) = (Instant::now() - SAMPLE_EVERY, Instant::now());
    while !*shutdown.borrow() {
        progress.busy();
        if sampled.elapsed() >= SAMPLE_EVERY {
            sampled = Instant::now();
            store::sample_pending(&pool).await;
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = Instant::now();
            store::prune(&pool).await;
        }
        let free = slots.available_permits();
        let wait = if free == 0 {
            POLL
        } else {
            match store::claim(&pool, free as i64, lease).await {
                Ok(claimed) => {
                    errors.reset();
                    let full = claimed.len() == free;
                    for delivery in claimed {
                        let permit = slots.clone().acquire_owned().await.expect("never closed");
                        let (pool, channels, backoff) =
                            (pool.clone(), channels.clone(), config.backoff);
                        tokio::spawn(async move {
                            attempt(&pool, &channels, &delivery, backoff).await;
                            drop(permit);
                        });
                    }
                    if full { Duration::ZERO } else { POLL }
                }
                Err(e) => {
                    let delay = errors.next_delay();
                    tracing::warn!(error = %e, ?delay, "claiming deliveries failed; retrying");
                    delay
                }
            }
        };
        progress.idle();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    // What is in flight ends (or times out) before the processor exits.
    let _ = slots.acquire_many(config.concurrency as u32).await;
}

/// One attempt at `delivery`, recorded (a failure to record leaves the claim to lapse, and the
/// delivery is tried again: at least once, and the receiver deduplicates on the notice id).
async fn attempt(pool: &PgPool, channels: &Channels, delivery: &Claimed, backoff: Duration) {
    let outgoing = Outgoing {
        id: delivery.id,
        recipient: delivery.recipient.clone(),
        secret: delivery.secret.clone(),
        body: delivery.payload.clone(),
    };
    let started_at = Utc::now();
    let clock = Instant::now();
    let sent = match delivery.channel.as_str() {
        "webhook" => channels.webhook.send(&outgoing).await,
        "email" => match &channels.email {
            Some(email) => email.send(&outgoing).await,
            None => Err(SendError::Unsendable("no SMTP server is configured".into())),
        },
        other => Err(SendError::Unsendable(format!("unknown channel {other}"))),
    };
    let duration = clock.elapsed();
    let channel = if delivery.channel == "email" {
        "email"
    } else {
        "webhook"
    };
    let outcome = match sent {
        Ok(answer) => {
            metrics::counter!("kassa_notifications_delivered_total", "channel" => channel)
                .increment(1);
            Outcome {
                started_at,
                duration,
                status: answer.status,
                error: None,
                retry_at: None,
            }
        }
        Err(e) => {
            let wait = jittered(Backoff::delay_for(
                delivery.attempt.unsigned_abs(),
                backoff,
                MAX_BACKOFF,
            ));
            let retry_at = Utc::now() + crate::settings::chrono_of(wait);
            let retry_at = (retry_at < delivery.expires_at).then_some(retry_at);
            metrics::counter!("kassa_notification_attempts_failed_total", "channel" => channel)
                .increment(1);
            if retry_at.is_none() {
                metrics::counter!("kassa_notifications_failed_total", "channel" => channel)
                    .increment(1);
                tracing::warn!(delivery = %delivery.id, attempts = delivery.attempt, error = %e,
                    "a notification failed for good: its retry window is over");
            } else {
                tracing::info!(delivery = %delivery.id, attempt = delivery.attempt, error = %e, ?wait,
                    "a notification attempt failed; trying again");
            }
            Outcome {
                started_at,
                duration,
                status: e.status(),
                error: Some(e.to_string()),
                retry_at,
            }
        }
    };
    if let Err(e) = store::record(pool, delivery, &outcome).await {
        tracing::warn!(delivery = %delivery.id, error = %e, "recording a notification attempt failed; its claim will lapse and it is tried again");
    }
}

/// `wait` with jitter: between half of it and all of it, so receivers that failed together are
/// not all retried at once.
fn jittered(wait: Duration) -> Duration {
    let random = (uuid::Uuid::new_v4().as_u128() & 0xFFFF) as u32;
    wait / 2 + (wait / 2).mul_f64(f64::from(random) / f64::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_longer_each_time_with_jitter_and_never_over_an_hour() {
        let base = Duration::from_secs(30);
        let waits: Vec<Duration> = (1..=12)
            .map(|n| Backoff::delay_for(n, base, MAX_BACKOFF))
            .collect();
        assert_eq!(waits[0], base);
        assert_eq!(waits[1], base * 2);
        assert_eq!(waits[11], MAX_BACKOFF);
        for wait in waits {
            let j = jittered(wait);
            assert!(j >= wait / 2 && j <= wait, "{j:?} within half of {wait:?}");
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| jittered(base).as_millis()).collect();
        assert!(spread.len() > 10, "jitter varies: {spread:?}");
    }
}
