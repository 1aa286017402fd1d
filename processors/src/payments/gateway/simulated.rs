//! The simulated gateway (the default): a small payment provider of its own, kept in the
//! `simulator` schema so it outlives a killed payments processor, as a real provider would.
//!
//! - Deterministic by payment method id, with Stripe's test ids: `pm_card_chargeDeclined`
//!   declines (`card_declined`), `pm_card_chargeDeclinedInsufficientFunds` declines
//!   (`insufficient_funds`), `pm_card_threeDSecure2Required` / `pm_card_authenticationRequired`
//!   need 3-D Secure ([`authenticate`] completes it), Stripe's test cards (`pm_card_visa`, …)
//!   authorize, and anything else declines (`unknown_payment_method`).
//! - Honours idempotency keys as Stripe does: a repeated key replays the first answer and does
//!   nothing again. Intent ids derive from the creating key ([`intent_id_for`]).
//! - Injected faults, decided by a hash of the key and the call's number so a run repeats:
//!   `transient` (a 500, nothing done), `timeout` (the client gave up; done or not, half each),
//!   `lost` (done, the answer lost), `cached500` (a 500, nothing done, and replayed for every
//!   later call with the same key, as Stripe keeps a key's first answer for a day). Every effect
//!   is written to `simulator.effects` so tests can count authorizations, captures, voids and
//!   refunds per order; with faults injected, every call to `simulator.calls` (its count per key
//!   numbers the call).
//! - Calls made at the same time share a transaction ([`calls`]). Its cost is the provider's, no
//!   part of kassa's: with one transaction a call, `kassa bench saga` at 500 orders/s decided 287
//!   a second at 6.7 ms of CPU an order, and 477 at 4.0 ms with a provider that cost nothing.

use std::time::Duration;

use kassa_schemas::gather::{Gatherer, Gathering};
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

mod calls;

use calls::{Call, CallWriter, NewIntent};

use super::{Gateway, GatewayError, Intent, IntentRequest, IntentStatus};

/// Fault rates (0.0 to 1.0) and latency of the simulated provider.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimConfig {
    /// Added to every call.
    pub latency: Duration,
    /// Share of calls answered 500 with nothing done.
    pub transient: f64,
    /// Share of calls that time out (done or not).
    pub timeout: f64,
    /// Share of calls done whose answer is lost.
    pub lost: f64,
    /// Share of calls answered 500 with nothing done, the 500 then replayed for their key.
    pub cached500: f64,
}

impl SimConfig {
    /// Whether any fault is injected (each call is then counted: its number drives the dice).
    pub fn injects_faults(&self) -> bool {
        self.transient + self.timeout + self.lost + self.cached500 > 0.0
    }

    /// Parses `transient=0.1,timeout=0.05,lost=0.05` (any subset; empty: no faults).
    pub fn parse_faults(text: &str, latency: Duration) -> Result<Self, String> {
        let mut config = SimConfig {
            latency,
            ..SimConfig::default()
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not name=rate"))?;
            let rate: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("{value:?} is not a rate"))?;
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("rate {rate} is not between 0 and 1"));
            }
            match name.trim() {
                "transient" => config.transient = rate,
                "timeout" => config.timeout = rate,
                "lost" => config.lost = rate,
                "cached500" => config.cached500 = rate,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (transient, timeout, lost, cached500)"
                    ));
                }
            }
        }
        if config.transient + config.timeout + config.lost + config.cached500 > 1.0 {
            return Err("fault rates add up to more than 1".into());
        }
        Ok(config)
    }
}

/// How calls gather: what arrives while two transactions are under way goes into the next (the
/// payments worker makes up to 64 calls at once).
const CALLS: Gathering = Gathering {
    at_most: 64,
    writes_at_once: 2,
    wait: Duration::ZERO,
};

/// The simulated provider.
#[derive(Clone)]
pub struct Simulated {
    pool: PgPool,
    config: SimConfig,
    calls: Gatherer<CallWriter>,
}

/// What a call does when it is performed: changes the intent, returns the answer.
type Effect = fn(&mut IntentRow, i64) -> Result<Option<(&'static str, i64)>, GatewayError>;

/// The stored intent.
#[derive(Debug, Clone)]
struct IntentRow {
    intent: Intent,
    payment_method: String,
}

/// The id of the intent created with idempotency key `key`.
pub fn intent_id_for(key: &str) -> String {
    format!(
        "pi_sim_{}",
        Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes()).simple()
    )
}

/// A number in [0, 1) from `key` and the call's number, the same on every run.
fn roll(key: &str, call: i64, salt: &str) -> f64 {
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{key}#{call}#{salt}").as_bytes(),
    );
    let bits = u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Simulated {
    /// A provider keeping its books in `pool`'s `simulator` schema. Starts the task that performs
    /// the calls (it ends once every clone is dropped), so it must be called inside a runtime.
    pub fn new(pool: PgPool, config: SimConfig) -> Self {
        let writer = CallWriter {
            pool: pool.clone(),
            config,
        };
        let (calls, _task) = Gatherer::start("simulated provider", CALLS, writer);
        Self {
            pool,
            config,
            calls,
        }
    }

    /// Makes one call: the latency, then the call performed in a transaction with whatever other
    /// calls come meanwhile (`calls`).
    async fn call(&self, call: Call) -> Result<Intent, GatewayError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        match self.calls.write(call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Err(e),
            Err(stopped) => Err(GatewayError::Transient(stopped.to_string())),
        }
    }

    /// A call that changes intent `intent_id` with `effect`.
    fn on(
        op: &'static str,
        key: &str,
        intent_id: &str,
        amount: i64,
        effect: Effect,
    ) -> Call {
        Call {
            op,
            key: key.to_owned(),
            intent_id: intent_id.to_owned(),
            amount,
            effect,
            create: None,
        }
    }
}

fn transient(e: sqlx::Error) -> GatewayError {
    GatewayError::Transient(format!("simulator database: {e}"))
}

/// A call's answer as stored for its key.
fn to_reply(answer: &Result<Intent, GatewayError>) -> serde_json::Value {
    match answer {
        Ok(i) => json!({
            "id": i.id, "status": i.status.as_str(), "amount": i.amount_minor, "received": i.received_minor,
            "refunded": i.refunded_minor, "client_secret": i.client_secret,
            "error": i.last_error.as_ref().map(|(c, m)| json!([c, m])),
        }),
        Err(GatewayError::Declined(code, message)) => json!({"declined": [code, message]}),
        Err(e) => json!({"refused": e.to_string()}),
    }
}

/// The answer stored for a key, replayed.
fn from_reply(reply: &serde_json::Value) -> Result<Intent, GatewayError> {
    if reply.get("status").and_then(serde_json::Value::as_i64) == Some(500) {
        // A stored 500 is answered again, as Stripe does; the adapter cannot tell what it did.
        return Err(GatewayError::Ambiguous(
            "simulated 500, replayed for this idempotency key".into(),
        ));
    }
    if let Some(d) = reply.get("declined") {
        return Err(GatewayError::Declined(
            d[0].as_str().unwrap_or("").into(),
            d[1].as_str().unwrap_or("").into(),
        ));
    }
    if let Some(r) = reply.get("refused") {
        return Err(GatewayError::Refused(r.as_str().unwrap_or("").into()));
    }
    Ok(Intent {
        id: reply["id"].as_str().unwrap_or_default().into(),
        status: IntentStatus::parse(reply["status"].as_str().unwrap_or_default())
            .unwrap_or(IntentStatus::Processing),
        amount_minor: reply["amount"].as_i64().unwrap_or(0),
        received_minor: reply["received"].as_i64().unwrap_or(0),
        refunded_minor: reply["refunded"].as_i64().unwrap_or(0),
        client_secret: reply["client_secret"].as_str().map(str::to_owned),
        last_error: reply["error"].as_array().map(|e| {
            (
                e[0].as_str().unwrap_or("").to_owned(),
                e[1].as_str().unwrap_or("").to_owned(),
            )
        }),
    })
}

/// The intent in a row of `simulator.intents`.
fn intent_row(r: &PgRow) -> IntentRow {
    let intent = Intent {
        id: r.get("id"),
        status: IntentStatus::parse(r.get::<&str, _>("status")).unwrap_or(IntentStatus::Processing),
        amount_minor: r.get("amount_minor"),
        received_minor: r.get("received_minor"),
        refunded_minor: r.get("refunded_minor"),
        client_secret: r.get("client_secret"),
        last_error: r
            .get::<Option<String>, _>("error_code")
            .map(|c| (c, r.get::<Option<String>, _>("error_message").unwrap_or_default())),
    };
    IntentRow {
        intent,
        payment_method: r.get("payment_method"),
    }
}

/// Stripe's test payment methods that authorize.
const AUTHORIZED: &[&str] = &[
    "pm_card_visa",
    "pm_card_visa_debit",
    "pm_card_mastercard",
    "pm_card_mastercard_debit",
    "pm_card_mastercard_prepaid",
    "pm_card_amex",
    "pm_card_discover",
    "pm_card_diners",
    "pm_card_jcb",
    "pm_card_unionpay",
];

fn confirm_effect(
    row: &mut IntentRow,
    _: i64,
) -> Result<Option<(&'static str, i64)>, GatewayError> {
    let i = &mut row.intent;
    if i.status != IntentStatus::RequiresConfirmation {
        return Err(GatewayError::Refused(format!(
            "intent is {}, not requires_confirmation",
            i.status.as_str()
        )));
    }
    let decline = |code: &str, message: &str| Some((code.to_owned(), message.to_owned()));
    match row.payment_method.as_str() {
        "pm_card_chargeDeclined" => {
            i.last_error = decline("card_declined", "Your card was declined.")
        }
        "pm_card_chargeDeclinedInsufficientFunds" => {
            i.last_error = decline("insufficient_funds", "Your card has insufficient funds.")
        }
        "pm_card_threeDSecure2Required" | "pm_card_authenticationRequired" => {
            i.status = IntentStatus::RequiresAction;
            return Ok(None);
        }
        method if AUTHORIZED.contains(&method) => {
            i.status = IntentStatus::RequiresCapture;
            return Ok(Some(("authorize", i.amount_minor)));
        }
        // Anything it does not know declines: a misconfigured deployment charges nobody and
        // completes nothing.
        _ => {
            i.last_error = decline(
                "unknown_payment_method",
                "The simulated provider does not know this payment method.",
            )
        }
    }
    i.status = IntentStatus::RequiresPaymentMethod;
    let (code, message) = i.last_error.clone().unwrap_or_default();
    // A decline is stored on the intent (and replayed for the key) like Stripe's 402.
    Err(GatewayError::Declined(code, message))
}

fn capture_effect(
    row: &mut IntentRow,
    _: i64,
) -> Result<Option<(&'static str, i64)>, GatewayError> {
    let i = &mut row.intent;
    if i.status != IntentStatus::RequiresCapture {
        return Err(GatewayError::Refused(format!(
            "intent is {}, not requires_capture",
            i.status.as_str()
        )));
    }
    i.status = IntentStatus::Succeeded;
    i.received_minor = i.amount_minor;
    Ok(Some(("capture", i.amount_minor)))
}

fn cancel_effect(row: &mut IntentRow, _: i64) -> Result<Option<(&'static str, i64)>, GatewayError> {
    let i = &mut row.intent;
    match i.status {
        IntentStatus::Succeeded | IntentStatus::Canceled | IntentStatus::Processing => {
            Err(GatewayError::Refused(format!(
                "intent is {}: it cannot be cancelled",
                i.status.as_str()
            )))
        }
        _ => {
            let voided = if i.status == IntentStatus::RequiresCapture {
                i.amount_minor
            } else {
                0
            };
            i.status = IntentStatus::Canceled;
            Ok(Some(("void", voided)))
        }
    }
}

fn refund_effect(
    row: &mut IntentRow,
    amount: i64,
) -> Result<Option<(&'static str, i64)>, GatewayError> {
    let i = &mut row.intent;
    if i.status != IntentStatus::Succeeded
        || amount <= 0
        || amount > i.received_minor - i.refunded_minor
    {
        return Err(GatewayError::Refused(format!(
            "cannot refund {amount} of an intent that is {}",
            i.status.as_str()
        )));
    }
    i.refunded_minor += amount;
    Ok(Some(("refund", amount)))
}

/// Completes (or fails) 3-D Secure for an intent waiting on it, as the customer would at the
/// provider. Returns false when the intent was not waiting.
pub async fn authenticate(
    pool: &PgPool,
    intent_id: &str,
    success: bool,
) -> Result<bool, sqlx::Error> {
    let (status, effect) = if success {
        ("requires_capture", Some("authorize"))
    } else {
        ("requires_payment_method", None)
    };
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE simulator.intents SET status = $2, updated_at = now(),
                error_code = CASE WHEN $3 THEN NULL ELSE 'authentication_failed' END,
                error_message = CASE WHEN $3 THEN NULL ELSE '3-D Secure failed.' END
         WHERE id = $1 AND status = 'requires_action'",
    )
    .bind(intent_id)
    .bind(status)
    .bind(success)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if done && let Some(kind) = effect {
        sqlx::query(
            "INSERT INTO simulator.effects (intent_id, kind, amount_minor)
             SELECT id, $2, amount_minor FROM simulator.intents WHERE id = $1",
        )
        .bind(intent_id)
        .bind(kind)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(done)
}

impl Gateway for Simulated {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn create(&self, request: &IntentRequest<'_>, key: &str) -> Result<Intent, GatewayError> {
        let mut call = Self::on("create", key, &intent_id_for(key), 0, |_, _| Ok(None));
        call.create = Some(NewIntent {
            order_id: request.order_id.to_owned(),
            amount_minor: request.amount_minor,
            currency: request.currency.to_owned(),
            payment_method: request.payment_method_id.to_owned(),
        });
        self.call(call).await
    }

    async fn confirm(&self, intent_id: &str, key: &str) -> Result<Intent, GatewayError> {
        self.call(Self::on("confirm", key, intent_id, 0, confirm_effect))
            .await
    }

    async fn capture(&self, intent_id: &str, key: &str) -> Result<Intent, GatewayError> {
        self.call(Self::on("capture", key, intent_id, 0, capture_effect))
            .await
    }

    async fn cancel(&self, intent_id: &str, key: &str) -> Result<Intent, GatewayError> {
        self.call(Self::on("cancel", key, intent_id, 0, cancel_effect))
            .await
    }

    async fn refund(
        &self,
        intent_id: &str,
        amount_minor: i64,
        key: &str,
    ) -> Result<i64, GatewayError> {
        self.call(Self::on("refund", key, intent_id, amount_minor, refund_effect))
            .await
            .map(|_| amount_minor)
    }

    async fn retrieve(&self, intent_id: &str) -> Result<Intent, GatewayError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let row = sqlx::query(
            "SELECT id, status, amount_minor, received_minor, refunded_minor, client_secret,
                    error_code, error_message, payment_method
             FROM simulator.intents WHERE id = $1",
        )
        .bind(intent_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(transient)?;
        row.map(|r| intent_row(&r).intent)
            .ok_or_else(|| GatewayError::Refused(format!("no such intent {intent_id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_rolls_repeat() {
        let c = SimConfig::parse_faults(
            "transient=0.1, timeout=0.05,lost=0.05,cached500=0.2",
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            (c.transient, c.timeout, c.lost, c.cached500),
            (0.1, 0.05, 0.05, 0.2)
        );
        assert!(SimConfig::parse_faults("lost=2", Duration::ZERO).is_err());
        assert!(SimConfig::parse_faults("slow=0.1", Duration::ZERO).is_err());
        assert!(SimConfig::parse_faults("transient=0.6,lost=0.6", Duration::ZERO).is_err());
        assert_eq!(roll("k", 1, "fault"), roll("k", 1, "fault"));
        assert_ne!(roll("k", 1, "fault"), roll("k", 2, "fault"));
        let mean = (0..10_000).map(|n| roll("k", n, "fault")).sum::<f64>() / 10_000.0;
        assert!(
            (0.45..0.55).contains(&mean),
            "rolls spread evenly: mean {mean}"
        );
        assert!(intent_id_for("kassa-o1-create").starts_with("pi_sim_"));
    }
}
