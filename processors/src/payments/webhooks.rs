//! Provider webhooks against kassa's books: a webhook is recorded once (by the provider's event
//! id), kept while the payment it is about has no intent yet, and applied when it has one. One
//! that agrees with what kassa believes changes nothing; one that disagrees triggers a look-up
//! of the intent at the provider, whose answer wins.

use sqlx::PgConnection;

use super::ledger::{Payment, implied_by_webhook};
use super::store;

/// Applies the kept webhooks of `payment` if its intent is known (may set `needs_lookup`).
pub async fn apply_kept(conn: &mut PgConnection, payment: &mut Payment) -> Result<(), sqlx::Error> {
    let Some(intent) = payment.provider_ref.clone() else {
        return Ok(());
    };
    for webhook in store::kept_webhooks(conn, &payment.order_id).await? {
        let outcome = if webhook.payment_intent_id.as_deref() != Some(intent.as_str()) {
            "about another intent: not applied"
        } else {
            match implied_by_webhook(&webhook.event_type) {
                None => "implies no status",
                Some(status) if status == payment.status => "agrees",
                Some(_) => {
                    payment.needs_lookup = true;
                    "disagrees: intent looked up"
                }
            }
        };
        tracing::debug!(
            order = payment.order_id,
            event = webhook.provider_event_id,
            outcome,
            "webhook applied"
        );
        store::mark_webhook(conn, &webhook.provider_event_id, outcome).await?;
    }
    Ok(())
}
