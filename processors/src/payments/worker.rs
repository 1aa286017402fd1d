//! The payments worker: claims payments whose work is due (leased, `FOR UPDATE SKIP LOCKED`, so
//! instances share the queue), makes the provider calls outside any transaction, then writes what
//! came of them (the payment re-read and locked, the attempt, the event in the outbox) in one.
//! A crash mid-call leaves the lease to run out; the next attempt retries with the same key, or
//! looks the intent up first when the last answer was lost.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kassa_schemas::events::payments::{
    PaymentActionRequired, PaymentAuthorized, PaymentCaptured, PaymentEvent, PaymentFailed,
    PaymentRefunded, PaymentStep, PaymentVoided,
};
use kassa_schemas::{Codec, Envelope, Topic};
use crate::ConsumerGroup;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use super::gateway::{Gateway, GatewayError, Intent, IntentRequest};
use super::ledger::{Fact, OrderStage, Payment, Status, Work, next_work, observed, settle};
use super::{store, webhooks};
use crate::runtime::TaskError;
use crate::runtime::backoff::Backoff;
use crate::runtime::outbox::{self, Caused};

mod calls;
mod record;
mod writer;

use calls::perform;
pub(super) use record::event_of;
use record::{Done, record};
use writer::Recorder;

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Provider calls in flight at once.
    pub concurrency: usize,
    /// How long a claimed payment is left to this worker before another may take it.
    pub lease: Duration,
    /// How often a payment waiting for 3-D Secure is looked up at the provider (in case its
    /// webhook never comes: localstripe, for one, sends none when a manual-capture intent is
    /// authenticated).
    pub recheck: Duration,
    /// Who this worker is across restarts (the instance id): leases left by a dead worker of the
    /// same name are taken back at start. None: a new name each start, leases run out.
    pub owner: Option<String>,
}

/// What a round of calls found out.
#[derive(Debug, Clone)]
enum Outcome {
    /// The provider said where the intent stands.
    Observed(Intent),
    /// A step failed for good: (step, code, message).
    Failed(PaymentStep, String, String),
    /// This much was refunded.
    Refunded(i64),
    /// No answer: try again later (`ambiguous`: it may have happened, look up first;
    /// `new_key`: the next attempt uses keys of the next generation).
    Retry {
        ambiguous: bool,
        error: String,
        new_key: bool,
    },
}

/// Works the queue with `gateway` until `shutdown` turns true; calls in flight finish first.
/// Up to `concurrency` payments are worked on at once; free slots are filled as they free up.
pub async fn run<G: Gateway>(
    pool: PgPool,
    codec: Arc<Codec>,
    gateway: Arc<G>,
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let owner = config
        .owner
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    match store::release_leases(&pool, &owner).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            leases = n,
            owner,
            "took back the leases of this worker's previous run"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not take back old leases; they run out by themselves")
        }
    }
    let mut listener: Option<PgListener> = None;
    let mut in_flight = tokio::task::JoinSet::new();
    let (recorder, recording) =
        Recorder::start(pool.clone(), codec.clone(), owner.clone(), config.recheck);
    // The payments this worker is working on: never claimed twice, even when a lease runs out.
    let busy = Busy::default();
    // Whether the queue may have more due work than was claimed last time.
    let mut more = true;
    let progress = crate::runtime::liveness::register("payments worker");
    while !*shutdown.borrow() {
        progress.busy();
        if listener.is_none() {
            listener = listen(&pool).await.ok();
        }
        let free = config.concurrency.saturating_sub(in_flight.len());
        // Claim when slots are free and work may be waiting (a quarter free at least, so a busy
        // worker does not claim one payment at a time).
        if more && free > 0 && (in_flight.is_empty() || free >= config.concurrency.div_ceil(4)) {
            match claim(
                &pool,
                gateway.name(),
                &owner,
                free,
                config.lease,
                &busy.list(),
            )
            .await
            {
                Ok(claimed) => {
                    backoff.reset();
                    more = claimed.len() == free;
                    for payment in claimed {
                        let Some(working) = busy.take(&payment.order_id) else {
                            continue;
                        };
                        let (pool, gateway, recorder) = (pool.clone(), gateway.clone(), recorder.clone());
                        let (owner, lease) = (owner.clone(), config.lease);
                        let span = tracing::info_span!(
                            "payment work",
                            otel.name = %format!("payments works on {}", payment.order_id),
                            order_id = %payment.order_id,
                            trace_id = payment.traceparent.as_deref().and_then(kassa_schemas::trace::trace_id),
                        );
                        kassa_schemas::trace::continue_trace(&span, payment.traceparent.as_deref());
                        in_flight.spawn(tracing::Instrument::instrument(async move {
                            let _working = working;
                            let order = payment.order_id.clone();
                            let lease = Lease { owner: &owner, length: lease };
                            let recorded = match work_on(&pool, &recorder, gateway.as_ref(), payment, lease).await {
                                Ok(Some(done)) => recorder.record(done).await,
                                Ok(None) => Ok(()),
                                Err(e) => Err(e.to_string()),
                            };
                            if let Err(e) = recorded {
                                // The lease runs out and the work is taken again.
                                tracing::warn!(order, error = %e, "payment work not recorded; retried after the lease");
                            }
                        }, span));
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "claiming payment work failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
            if more {
                continue;
            }
        }
        // Wait for a call to finish, new work (a notification), the next retry to come due, or shutdown.
        progress.idle();
        let woken = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(drop),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A freed slot claims again only if the last claim was cut short by the free slots
            // (`more` still true). Otherwise the queue had nothing more then, and anything due
            // since was announced: work saved due now notifies (the writer's records too), and
            // work due later or left by a lost lease is found by the poll below. (A claim after
            // every call cost a claim statement for every 0.93 payments claimed at 150 orders/s.)
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            r = woken => {
                more = true;
                if r.is_err() {
                    listener = None;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => more = true,
            _ = shutdown.changed() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
    drop(recorder);
    let _ = recording.await;
}

/// The payments a worker is working on.
#[derive(Clone, Default)]
struct Busy(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

/// A payment marked busy; unmarked when dropped (the task ended, or panicked).
struct Working {
    busy: Busy,
    order_id: String,
}

impl Busy {
    fn list(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Marks `order_id` busy; None if it already is.
    fn take(&self, order_id: &str) -> Option<Working> {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(order_id.to_owned());
        fresh.then(|| Working {
            busy: self.clone(),
            order_id: order_id.to_owned(),
        })
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.busy
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.order_id);
    }
}

/// The lease a worker holds on the payment it works on: renewed while the calls last.
#[derive(Clone, Copy)]
struct Lease<'a> {
    owner: &'a str,
    length: Duration,
}

impl Lease<'_> {
    fn seconds(&self) -> i64 {
        self.length.as_secs().max(1) as i64
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(store::WORK_CHANNEL).await?;
    Ok(listener)
}

async fn claim(
    pool: &PgPool,
    provider: &str,
    owner: &str,
    limit: usize,
    lease: Duration,
    busy: &[String],
) -> Result<Vec<Payment>, sqlx::Error> {
    // One statement, atomic by itself: no transaction around it (two round trips fewer).
    let mut conn = pool.acquire().await?;
    store::claim(
        &mut conn,
        provider,
        owner,
        limit as i64,
        lease.as_secs().max(1) as i64,
        busy,
    )
    .await
}

/// Does the payment's due work at the provider; returns what came of it, to be written (None:
/// no work was due). The lease is renewed every third of its length while the calls last, so
/// however slow the provider, no other worker takes the payment meanwhile.
async fn work_on<G: Gateway>(
    pool: &PgPool,
    recorder: &Recorder,
    gateway: &G,
    payment: Payment,
    lease: Lease<'_>,
) -> Result<Option<Done>, TaskError> {
    let Some(work) = next_work(&payment) else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let renewing = async {
        let mut every = tokio::time::interval(lease.length / 3);
        every.tick().await;
        loop {
            every.tick().await;
            match store::renew_lease(pool, &payment.order_id, lease.owner, lease.seconds()).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    order = payment.order_id,
                    "lost the payment's lease while calling the provider"
                ),
                Err(e) => {
                    tracing::warn!(order = payment.order_id, error = %e, "could not renew the payment's lease")
                }
            }
        }
    };
    let call = tracing::info_span!(
        "provider call",
        otel.name = %format!("{} {}", gateway.name(), work.as_str()),
        operation = work.as_str(),
    );
    let outcome = tokio::select! {
        outcome = tracing::Instrument::instrument(perform(recorder, gateway, &payment, work), call) => outcome?,
        never = renewing => never,
    };
    let result = match &outcome {
        Outcome::Observed(_) | Outcome::Refunded(_) => "ok",
        Outcome::Failed(..) => "failed",
        Outcome::Retry {
            ambiguous: true, ..
        } => "unknown",
        Outcome::Retry { .. } => "retry",
    };
    metrics::histogram!("kassa_provider_call_duration_seconds", "operation" => work.as_str(), "outcome" => result)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("kassa_provider_calls_total", "operation" => work.as_str(), "outcome" => result)
        .increment(1);
    Ok(Some(Done {
        order_id: payment.order_id,
        work,
        outcome,
        // Written by another task: the event names this work's span as its parent.
        writer: kassa_schemas::trace::of_span(&tracing::Span::current()),
    }))
}
