//! The provider calls for one piece of work, and how an ambiguous answer is retried.

use super::*;

/// The provider calls for `work`.
pub(super) async fn perform<G: Gateway>(
    recorder: &Recorder,
    gateway: &G,
    p: &Payment,
    work: Work,
) -> Result<Outcome, TaskError> {
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
                        Ok(intent) => recorder.intent(order, &intent.id).await?,
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
