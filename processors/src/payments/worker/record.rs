//! Writing what the calls found out: the payments re-read and locked, the attempts, the events,
//! for every piece of work that finished meanwhile, in one transaction.

use super::*;
use store::{Attempt, Saved};

/// A piece of work done at the provider, to be written.
#[derive(Debug, Clone)]
pub(super) struct Done {
    /// The order whose payment it was.
    pub order_id: String,
    /// The work.
    pub work: Work,
    /// What came of it.
    pub outcome: Outcome,
    /// The `traceparent` of the exported span the work ran in (None: not exporting): its events
    /// are children of that span, wherever they are written.
    pub writer: Option<String>,
}

/// What writing one outcome decided, besides the payment itself.
struct Written {
    key: Option<String>,
    due_at: Option<chrono::DateTime<Utc>>,
    error: Option<String>,
    attempt: String,
    fact: Option<Fact>,
}

/// Writes what the calls of `done` found out (each order once), in one transaction: the payments
/// locked and re-read (an order may have moved on meanwhile), each one's attempt, its new state
/// and its event in the outbox.
pub(super) async fn record(
    pool: &PgPool,
    codec: &Codec,
    done: &[Done],
    owner: &str,
    recheck: Duration,
) -> Result<(), TaskError> {
    let mut tx = pool.begin().await?;
    let ids: Vec<&str> = done.iter().map(|d| d.order_id.as_str()).collect();
    let mut loaded = store::load_for_results(&mut tx, &ids).await?;
    // Each payment with the event its next events are caused by, the work done, what it decided.
    let mut written: Vec<(Payment, Option<uuid::Uuid>, &Done, Written)> =
        Vec::with_capacity(done.len());
    for d in done {
        let Some((mut p, cause, kept)) = loaded.remove(&d.order_id) else {
            continue;
        };
        let w = write_one(&mut tx, &mut p, kept, d, recheck).await?;
        written.push((p, cause, d, w));
    }
    let saved: Vec<Saved> = written
        .iter()
        .map(|(p, _, d, w)| Saved {
            payment: p,
            cause: None,
            due_at: w.due_at,
            last_error: w.error.as_deref(),
            attempt: Some(Attempt {
                step: d.work.as_str(),
                key: w.key.as_deref(),
                outcome: &w.attempt,
                detail: w.error.as_deref(),
            }),
        })
        .collect();
    store::save(&mut tx, &saved, Some(owner)).await?;
    let mut events = Vec::new();
    for (p, cause, d, w) in &written {
        if let Some(fact) = &w.fact {
            let mut event = Envelope::new(&p.order_id, *cause, event_of(p, fact.clone()));
            event.event_id = fact.event_id(p.payment_id);
            events.push(Caused {
                topic: Topic::PaymentsEvents,
                key: p.order_id.clone(),
                payload: codec.encode(&event).await?,
                parent: p.traceparent.as_deref(),
                writer: d.writer.clone(),
            });
        }
    }
    outbox::append(&mut tx, ConsumerGroup::Payments, events).await?;
    tx.commit().await?;
    Ok(())
}

/// Applies one outcome to its payment `p` (locked in `tx`).
async fn write_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    p: &mut Payment,
    kept: bool,
    done: &Done,
    recheck: Duration,
) -> Result<Written, TaskError> {
    let (order_id, work) = (done.order_id.as_str(), done.work);
    let outcome = done.outcome.clone();
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
            match observed(p, &intent) {
                Some(status) => {
                    p.needs_lookup = false;
                    let fact = settle(p, status, Some(&intent), None);
                    if let Some(unsure) = p.unsure.take()
                        && work == Work::Lookup
                        && next_work(p) == Some(unsure)
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
            (settle(p, status, None, Some((code, message))), attempt)
        }
        Outcome::Refunded(amount) => {
            p.attempts = 0;
            // Counted once per key, however many times its answer is recorded.
            let counted = match key.as_deref() {
                Some(key) => store::refund_recorded(tx, order_id, key).await?,
                None => false,
            };
            if !counted {
                p.refunded_minor = p.refunded_minor.saturating_add(amount);
            }
            (
                settle(p, Status::Refunded, None, None),
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
        webhooks::apply_kept(tx, p).await?;
    }
    if p.status == Status::ActionRequired && p.stage == OrderStage::Reserved && !p.needs_lookup {
        // Waiting for the customer: look again later, in case no webhook tells.
        p.needs_lookup = true;
        due_at = Some(Utc::now() + chrono::Duration::from_std(recheck).unwrap_or_default());
    }
    Ok(Written {
        key,
        due_at,
        error,
        attempt,
        fact,
    })
}

/// The step whose idempotency key a piece of work ends with (a look-up changes nothing: none).
pub(super) fn step_key(work: Work) -> Option<&'static str> {
    match work {
        Work::Authorize => Some("confirm"),
        Work::Capture => Some("capture"),
        Work::Void => Some("cancel"),
        Work::Refund => Some("refund"),
        Work::Lookup => None,
    }
}

/// The `payments.events` event for a fact about `p`.
pub(in crate::payments) fn event_of(p: &Payment, fact: Fact) -> PaymentEvent {
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
            refund_id: None,
        }
        .into(),
    }
}
