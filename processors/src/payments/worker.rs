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
#[derive(Debug)]
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
    // The payments this worker is working on: never claimed twice, even when a lease runs out.
    let busy = Busy::default();
    // Whether the queue may have more due work than was claimed last time.
    let mut more = true;
    while !*shutdown.borrow() {
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
                        let (pool, codec, gateway) = (pool.clone(), codec.clone(), gateway.clone());
                        let (owner, lease, recheck) = (owner.clone(), config.lease, config.recheck);
                        in_flight.spawn(async move {
                            let _working = working;
                            let order = payment.order_id.clone();
                            let lease = Lease { owner: &owner, length: lease };
                            if let Err(e) = work_on(&pool, &codec, gateway.as_ref(), payment, lease, recheck).await {
                                // The lease runs out and the work is taken again.
                                tracing::warn!(order, error = %e, "payment work not recorded; retried after the lease");
                            }
                        });
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
        let woken = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(drop),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => more = true,
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
    let mut tx = pool.begin().await?;
    let claimed = store::claim(
        &mut tx,
        provider,
        owner,
        limit as i64,
        lease.as_secs().max(1) as i64,
        busy,
    )
    .await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Does the payment's due work at the provider and records the outcome.
/// The lease is renewed every third of its length while the calls last, so however slow the
/// provider, no other worker takes the payment meanwhile.
async fn work_on<G: Gateway>(
    pool: &PgPool,
    codec: &Codec,
    gateway: &G,
    payment: Payment,
    lease: Lease<'_>,
    recheck: Duration,
) -> Result<(), TaskError> {
    let Some(work) = next_work(&payment) else {
        return Ok(());
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
    let outcome = tokio::select! {
        outcome = perform(pool, gateway, &payment, work) => outcome?,
        never = renewing => never,
    };
    metrics::histogram!("kassa_payment_call_seconds", "work" => work.as_str())
        .record(started.elapsed().as_secs_f64());
    record(
        pool,
        codec,
        &payment.order_id,
        work,
        outcome,
        lease.owner,
        recheck,
    )
    .await
}

/// The provider calls for `work`.
async fn perform<G: Gateway>(
    pool: &PgPool,
    gateway: &G,
    p: &Payment,
    work: Work,
) -> Result<Outcome, sqlx::Error> {
    let order = p.order_id.as_str();
    let key = |step: &str| p.key(step);
    let intent_id = p.provider_ref.clone();
    Ok(match work {
        Work::Authorize => {
            let intent_id = match intent_id {
                Some(id) => id,
                None => {
                    let request = IntentRequest {
                        order_id: order,
                        amount_minor: p.amount_minor,
                        currency: &p.currency,
                        payment_method_id: &p.payment_method_id,
                    };
                    match gateway.create(&request, &key("create")).await {
                        // Recorded before anything is confirmed; the recorded intent is the only one confirmed.
                        Ok(intent) => {
                            store::record_intent(&mut *pool.acquire().await?, order, &intent.id)
                                .await?
                        }
                        Err(GatewayError::Declined(code, message)) => {
                            return Ok(Outcome::Failed(PaymentStep::Authorize, code, message));
                        }
                        Err(GatewayError::Refused(message)) => {
                            return Ok(Outcome::Failed(
                                PaymentStep::Authorize,
                                "refused".into(),
                                message,
                            ));
                        }
                        // An intent created nonetheless is never confirmed (only the recorded one
                        // is) and charges nothing, so a fresh key is always safe, and needed:
                        // Stripe replays a key's first answer, a 500 included, for a day.
                        Err(e) => {
                            return Ok(Outcome::Retry {
                                ambiguous: false,
                                error: format!("create: {e}"),
                                new_key: true,
                            });
                        }
                    }
                }
            };
            let confirm_key = key("confirm");
            twice(
                || gateway.confirm(&intent_id, &confirm_key),
                PaymentStep::Authorize,
            )
            .await
        }
        Work::Capture => match intent_id {
            Some(id) => {
                let capture_key = key("capture");
                twice(|| gateway.capture(&id, &capture_key), PaymentStep::Capture).await
            }
            None => Outcome::Failed(
                PaymentStep::Capture,
                "no_intent".into(),
                "nothing was authorized".into(),
            ),
        },
        Work::Void => match intent_id {
            Some(id) => {
                let cancel_key = key("cancel");
                twice(|| gateway.cancel(&id, &cancel_key), PaymentStep::Void).await
            }
            None => Outcome::Failed(
                PaymentStep::Void,
                "no_intent".into(),
                "nothing was authorized".into(),
            ),
        },
        Work::Refund => match intent_id {
            Some(id) => {
                let amount = p.captured_minor.max(p.amount_minor) - p.refunded_minor;
                match gateway.refund(&id, amount, &key("refund")).await {
                    Ok(refunded) => Outcome::Refunded(refunded),
                    Err(GatewayError::Transient(e)) => Outcome::Retry {
                        ambiguous: false,
                        error: format!("refund: {e}"),
                        new_key: false,
                    },
                    // Unsure, or refused (already refunded?): look the intent up before refunding again.
                    Err(e) => Outcome::Retry {
                        ambiguous: true,
                        error: format!("refund: {e}"),
                        new_key: false,
                    },
                }
            }
            None => Outcome::Failed(
                PaymentStep::Refund,
                "no_intent".into(),
                "nothing was captured".into(),
            ),
        },
        Work::Lookup => match intent_id {
            Some(id) => match gateway.retrieve(&id).await {
                Ok(intent) => Outcome::Observed(intent),
                Err(e) => Outcome::Retry {
                    ambiguous: true,
                    error: format!("look-up: {e}"),
                    new_key: false,
                },
            },
            None => Outcome::Retry {
                ambiguous: false,
                error: "look-up without an intent".into(),
                new_key: false,
            },
        },
    })
}

/// A call that changes the intent: an ambiguous answer is retried once at once with the same
/// key; if still unsure, the next attempt looks the intent up first.
async fn twice<F, Fut>(call: F, step: PaymentStep) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Intent, GatewayError>>,
{
    let mut result = call().await;
    if matches!(result, Err(GatewayError::Ambiguous(_))) {
        result = call().await;
    }
    match result {
        Ok(intent) => Outcome::Observed(intent),
        Err(GatewayError::Declined(code, message))
            if matches!(step, PaymentStep::Authorize | PaymentStep::Capture) =>
        {
            Outcome::Failed(step, code, message)
        }
        Err(GatewayError::Transient(e)) => Outcome::Retry {
            ambiguous: false,
            error: e,
            new_key: false,
        },
        // Ambiguous twice, or refused (the intent is not where we thought): the provider decides.
        Err(e) => Outcome::Retry {
            ambiguous: true,
            error: e.to_string(),
            new_key: false,
        },
    }
}

/// Writes what the calls found out: one transaction with the payment locked and re-read (the
/// order may have moved on meanwhile), the attempt, and the resulting event in the outbox.
async fn record(
    pool: &PgPool,
    codec: &Codec,
    order_id: &str,
    work: Work,
    outcome: Outcome,
    owner: &str,
    recheck: Duration,
) -> Result<(), TaskError> {
    let mut tx = pool.begin().await?;
    let Some((mut p, cause, kept)) = store::load_for_result(&mut tx, order_id).await? else {
        return Ok(());
    };
    let before = p.status;
    // The key the call used (the generation may move on below).
    let key = step_key(work).map(|step| p.key(step));
    let mut due_at = None;
    let mut error = None;
    let (fact, attempt) = match outcome {
        Outcome::Observed(intent) => {
            p.attempts = 0;
            if p.provider_ref.is_none() {
                p.provider_ref = Some(intent.id.clone());
            }
            match observed(&p, &intent) {
                Some(status) => {
                    p.needs_lookup = false;
                    let fact = settle(&mut p, status, Some(&intent), None);
                    if let Some(unsure) = p.unsure.take()
                        && work == Work::Lookup
                        && next_work(&p) == Some(unsure)
                    {
                        // The call whose answer was unsure did nothing: its key may be one whose
                        // error the provider replays (Stripe keeps a 500 for a day), so the next
                        // call uses a fresh one.
                        p.key_generation += 1;
                        tracing::info!(
                            order = order_id,
                            work = unsure.as_str(),
                            generation = p.key_generation,
                            "the look-up shows the unsure call did nothing: retrying with fresh keys"
                        );
                    }
                    (fact, format!("ok: {status:?}"))
                }
                None => {
                    p.needs_lookup = true;
                    due_at = Some(Utc::now() + chrono::Duration::seconds(1));
                    (None, "processing".to_owned())
                }
            }
        }
        Outcome::Failed(step, code, message) => {
            p.attempts = 0;
            p.needs_lookup = false;
            let status = match step {
                PaymentStep::Authorize => Status::Declined,
                PaymentStep::Capture => Status::CaptureFailed,
                // Nothing to void or refund: there is nothing to undo.
                PaymentStep::Void | PaymentStep::Refund => Status::Voided,
            };
            let attempt = format!("failed: {code}");
            (settle(&mut p, status, None, Some((code, message))), attempt)
        }
        Outcome::Refunded(amount) => {
            p.attempts = 0;
            // Counted once per key, however many times its answer is recorded.
            let counted = match key.as_deref() {
                Some(key) => store::refund_recorded(&mut tx, order_id, key).await?,
                None => false,
            };
            if !counted {
                p.refunded_minor = p.refunded_minor.saturating_add(amount);
            }
            (
                settle(&mut p, Status::Refunded, None, None),
                format!("refunded {amount}"),
            )
        }
        Outcome::Retry {
            ambiguous,
            error: e,
            new_key,
        } => {
            p.attempts += 1;
            p.needs_lookup |= ambiguous;
            if ambiguous && work != Work::Lookup {
                p.unsure = Some(work);
            }
            if new_key {
                p.key_generation += 1;
            }
            let delay = Backoff::delay_for(
                p.attempts as u32,
                Duration::from_millis(200),
                Duration::from_secs(30),
            );
            due_at = Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
            tracing::info!(order = order_id, work = work.as_str(), attempts = p.attempts, error = %e, "payment call to be retried");
            error = Some(e);
            (
                None,
                if ambiguous { "ambiguous" } else { "retry" }.to_owned(),
            )
        }
    };
    if kept && p.status != before {
        webhooks::apply_kept(&mut tx, &mut p).await?;
    }
    if p.status == Status::ActionRequired && p.stage == OrderStage::Reserved && !p.needs_lookup {
        // Waiting for the customer: look again later, in case no webhook tells.
        p.needs_lookup = true;
        due_at = Some(Utc::now() + chrono::Duration::from_std(recheck).unwrap_or_default());
    }
    store::record_attempt(
        &mut tx,
        order_id,
        work.as_str(),
        key.as_deref(),
        &attempt,
        error.as_deref(),
    )
    .await?;
    store::save(
        &mut tx,
        &[(&p, None)],
        due_at,
        error.as_deref(),
        Some(owner),
    )
    .await?;
    if let Some(fact) = fact {
        let mut event = Envelope::new(order_id, cause, event_of(&p, fact.clone()));
        event.event_id = fact.event_id(p.payment_id);
        let caused = Caused {
            topic: Topic::PaymentsEvents,
            key: order_id.to_owned(),
            payload: codec.encode(&event).await?,
            parent: p.traceparent.as_deref(),
        };
        outbox::append(&mut tx, ConsumerGroup::Payments, vec![caused]).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The step whose idempotency key a piece of work ends with (a look-up changes nothing: none).
fn step_key(work: Work) -> Option<&'static str> {
    match work {
        Work::Authorize => Some("confirm"),
        Work::Capture => Some("capture"),
        Work::Void => Some("cancel"),
        Work::Refund => Some("refund"),
        Work::Lookup => None,
    }
}

/// The `payments.events` event for a fact about `p`.
pub(super) fn event_of(p: &Payment, fact: Fact) -> PaymentEvent {
    let (order_id, payment_id, provider, provider_ref) = (
        p.order_id.clone(),
        p.payment_id,
        p.provider.clone(),
        p.provider_ref.clone(),
    );
    match fact {
        Fact::Authorized => PaymentAuthorized {
            order_id,
            payment_id,
            provider,
            provider_ref,
            amount_minor: p.amount_minor,
            currency: p.currency.clone(),
        }
        .into(),
        Fact::ActionRequired(client_secret) => PaymentActionRequired {
            order_id,
            payment_id,
            provider,
            provider_ref,
            client_secret,
        }
        .into(),
        Fact::Failed(step, code, message) => PaymentFailed {
            order_id,
            payment_id,
            provider,
            provider_ref,
            step,
            code,
            message,
        }
        .into(),
        Fact::Captured => PaymentCaptured {
            order_id,
            payment_id,
            provider,
            provider_ref,
            amount_minor: p.captured_minor,
            currency: p.currency.clone(),
        }
        .into(),
        Fact::Voided => PaymentVoided {
            order_id,
            payment_id,
            provider,
            provider_ref,
        }
        .into(),
        Fact::Refunded(amount) => PaymentRefunded {
            order_id,
            payment_id,
            provider,
            provider_ref,
            refunded_minor: amount,
            currency: p.currency.clone(),
        }
        .into(),
    }
}
