//! The simulated provider's calls, gathered: the calls that arrive while a transaction is under
//! way go into the next one, which creates their intents, locks them (in id order, so two
//! transactions never wait on each other in a circle), reads their keys' stored answers and
//! counts them, then writes every intent, effect and answer in one statement. Each call is still
//! decided on its own, in the order it came, as if alone: faults by its key and number, a
//! repeated key replayed, two calls on one intent applied one after the other.

use std::collections::HashMap;

use kassa_schemas::gather::BatchWrite;
use serde_json::json;
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::{Effect, IntentRow, SimConfig, from_reply, roll, to_reply, transient};
use crate::payments::gateway::{GatewayError, Intent};

/// An intent a `create` call makes before it is performed (so it can be locked like any other).
pub(super) struct NewIntent {
    pub(super) order_id: String,
    pub(super) amount_minor: i64,
    pub(super) currency: String,
    pub(super) payment_method: String,
}

/// One call to the provider.
pub(super) struct Call {
    pub(super) op: &'static str,
    pub(super) key: String,
    pub(super) intent_id: String,
    pub(super) amount: i64,
    pub(super) effect: Effect,
    pub(super) create: Option<NewIntent>,
}

/// Performs gathered calls, one transaction for all.
pub(super) struct CallWriter {
    pub(super) pool: PgPool,
    pub(super) config: SimConfig,
}

/// What the calls of one transaction write.
#[derive(Default)]
struct Writes {
    /// Intents changed, by id: their state after the last call on them.
    intents: HashMap<String, Intent>,
    /// Effects: (intent id, kind, amount).
    effects: Vec<(String, &'static str, i64)>,
    /// Answers stored for keys: (key, op, answer).
    replies: Vec<(String, &'static str, serde_json::Value)>,
}

impl BatchWrite for CallWriter {
    type Item = Call;
    type Output = Result<Intent, GatewayError>;
    type Error = GatewayError;

    async fn write(&self, calls: &[Call]) -> Result<Vec<Self::Output>, GatewayError> {
        let mut tx = self.pool.begin().await.map_err(transient)?;
        create(&mut tx, calls).await?;
        let mut rows = lock(&mut tx, calls).await?;
        let counted = self.config.injects_faults();
        let (mut stored, before) = answers_and_counts(&mut tx, calls, counted).await?;
        let mut numbers: HashMap<&str, i64> = HashMap::new();
        let mut writes = Writes::default();
        let answers = calls
            .iter()
            .map(|call| {
                let number = numbers.entry(&call.key).or_insert_with(|| {
                    before.get(&call.key).copied().unwrap_or(0)
                });
                let this = *number;
                *number += 1;
                let Some(row) = rows.get_mut(&call.intent_id) else {
                    return Err(GatewayError::Refused(format!(
                        "no such intent {}",
                        call.intent_id
                    )));
                };
                decide(&self.config, call, this, row, &mut stored, &mut writes)
            })
            .collect();
        write(&mut tx, writes).await?;
        tx.commit().await.map_err(transient)?;
        Ok(answers)
    }
}

/// Decides one call on its intent `row` (changed in place), as the `number`th call with its key:
/// the injected fault, a replay of the key's stored answer, or the effect; what it changed goes
/// to `writes`, its answer to `stored`.
fn decide(
    c: &SimConfig,
    call: &Call,
    number: i64,
    row: &mut IntentRow,
    stored: &mut HashMap<String, serde_json::Value>,
    writes: &mut Writes,
) -> Result<Intent, GatewayError> {
    let key = call.key.as_str();
    let dice = roll(key, number, "fault");
    let has_answer = stored.contains_key(key);
    // Whether the call does its work, and the fault its caller sees instead of the answer.
    let (performs, fault) = if dice < c.transient {
        let fault = GatewayError::Transient("simulated 500: nothing was done".into());
        (false, Some(fault))
    } else if dice < c.transient + c.timeout {
        let done = roll(key, number, "done") < 0.5;
        (done, Some(GatewayError::Ambiguous("simulated timeout".into())))
    } else if dice < c.transient + c.timeout + c.lost {
        let fault = GatewayError::Ambiguous("simulated lost answer".into());
        (true, Some(fault))
    } else if dice < c.transient + c.timeout + c.lost + c.cached500 && !has_answer {
        // Like Stripe: the key's answer is stored, a 500 included, and replayed from now on
        // (a key that has an answer keeps it: replayed below).
        let cached = json!({"status": 500});
        writes.replies.push((key.to_owned(), call.op, cached.clone()));
        stored.insert(key.to_owned(), cached.clone());
        (false, from_reply(&cached).err())
    } else {
        (true, None)
    };
    let answer = if !performs {
        Ok(row.intent.clone())
    } else if let Some(reply) = stored.get(key) {
        from_reply(reply)
    } else {
        let result = (call.effect)(row, call.amount);
        // A decline is kept on the intent (and replayed for the key), like Stripe's 402.
        if matches!(result, Ok(_) | Err(GatewayError::Declined(..))) {
            writes
                .intents
                .insert(row.intent.id.clone(), row.intent.clone());
        }
        if let Ok(Some((kind, amount))) = result {
            writes.effects.push((row.intent.id.clone(), kind, amount));
        }
        let answer = result.map(|_| row.intent.clone());
        let reply = to_reply(&answer);
        writes.replies.push((key.to_owned(), call.op, reply.clone()));
        stored.insert(key.to_owned(), reply);
        answer
    };
    match fault {
        Some(fault) => Err(fault),
        None => answer,
    }
}

/// Creates the intents of `create` calls (a repeated create finds its intent there already).
async fn create(tx: &mut Transaction<'_, Postgres>, calls: &[Call]) -> Result<(), GatewayError> {
    let new: Vec<(&Call, &NewIntent)> = calls
        .iter()
        .filter_map(|c| c.create.as_ref().map(|n| (c, n)))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = new.iter().map(|(c, _)| c.intent_id.as_str()).collect();
    let orders: Vec<&str> = new.iter().map(|(_, n)| n.order_id.as_str()).collect();
    let amounts: Vec<i64> = new.iter().map(|(_, n)| n.amount_minor).collect();
    let currencies: Vec<&str> = new.iter().map(|(_, n)| n.currency.as_str()).collect();
    let methods: Vec<&str> = new.iter().map(|(_, n)| n.payment_method.as_str()).collect();
    sqlx::query(
        "INSERT INTO simulator.intents (id, order_id, amount_minor, currency, payment_method, status, client_secret)
         SELECT id, order_id, amount, currency, method, 'requires_confirmation', id || '_secret_' || substr(md5(id), 1, 12)
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[]) AS n(id, order_id, amount, currency, method)
         ORDER BY id
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&orders)
    .bind(&amounts)
    .bind(&currencies)
    .bind(&methods)
    .execute(&mut **tx)
    .await
    .map_err(transient)?;
    Ok(())
}

/// Locks and reads the calls' intents, in id order.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    calls: &[Call],
) -> Result<HashMap<String, IntentRow>, GatewayError> {
    let ids: Vec<&str> = calls.iter().map(|c| c.intent_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT id, status, amount_minor, received_minor, refunded_minor, client_secret, error_code,
                error_message, payment_method
         FROM simulator.intents WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await
    .map_err(transient)?;
    Ok(rows
        .iter()
        .map(|r| {
            let row = super::intent_row(r);
            (row.intent.id.clone(), row)
        })
        .collect())
}

/// The answers stored for the calls' keys (read once their intents are locked: an answer
/// committed meanwhile is seen) and, if `counted` (faults are injected, decided by a call's
/// number), the calls counted: how many calls with each key came before these (else none).
async fn answers_and_counts(
    tx: &mut Transaction<'_, Postgres>,
    calls: &[Call],
    counted: bool,
) -> Result<(HashMap<String, serde_json::Value>, HashMap<String, i64>), GatewayError> {
    let keys: Vec<&str> = calls.iter().map(|c| c.key.as_str()).collect();
    let ops: Vec<&str> = calls.iter().map(|c| c.op).collect();
    let ids: Vec<&str> = calls.iter().map(|c| c.intent_id.as_str()).collect();
    // The count does not see the calls inserted by the same statement: it counts those before.
    let rows = sqlx::query(
        "WITH call AS (
             INSERT INTO simulator.calls (key, op, intent_id)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) WHERE $4)
         SELECT k.key,
                (SELECT reply FROM simulator.replies r WHERE r.key = k.key) AS reply,
                CASE WHEN $4 THEN (SELECT count(*) FROM simulator.calls c WHERE c.key = k.key) ELSE 0 END AS before
         FROM (SELECT DISTINCT key FROM unnest($1::text[]) AS u(key)) AS k",
    )
    .bind(&keys)
    .bind(&ops)
    .bind(&ids)
    .bind(counted)
    .fetch_all(&mut **tx)
    .await
    .map_err(transient)?;
    let mut stored = HashMap::new();
    let mut before = HashMap::new();
    for r in rows {
        let key: String = r.get("key");
        if let Some(reply) = r.get::<Option<serde_json::Value>, _>("reply") {
            stored.insert(key.clone(), reply);
        }
        before.insert(key, r.get::<i64, _>("before"));
    }
    Ok((stored, before))
}

/// Writes what the calls changed: intents, effects and answers, one statement. A key answered
/// by another transaction meanwhile meets its primary key and the whole transaction rolls back
/// (each call is then tried alone, and the one whose key was answered replays the answer).
async fn write(tx: &mut Transaction<'_, Postgres>, writes: Writes) -> Result<(), GatewayError> {
    if writes.replies.is_empty() {
        return Ok(());
    }
    let mut intents: Vec<Intent> = writes.intents.into_values().collect();
    intents.sort_by(|a, b| a.id.cmp(&b.id));
    let ids: Vec<&str> = intents.iter().map(|i| i.id.as_str()).collect();
    let statuses: Vec<&str> = intents.iter().map(|i| i.status.as_str()).collect();
    let received: Vec<i64> = intents.iter().map(|i| i.received_minor).collect();
    let refunded: Vec<i64> = intents.iter().map(|i| i.refunded_minor).collect();
    let codes: Vec<Option<&str>> = intents
        .iter()
        .map(|i| i.last_error.as_ref().map(|e| e.0.as_str()))
        .collect();
    let messages: Vec<Option<&str>> = intents
        .iter()
        .map(|i| i.last_error.as_ref().map(|e| e.1.as_str()))
        .collect();
    let (effect_intents, kinds, amounts): (Vec<String>, Vec<&str>, Vec<i64>) =
        unzip3(writes.effects);
    let (keys, ops, replies): (Vec<String>, Vec<&str>, Vec<serde_json::Value>) =
        unzip3(writes.replies);
    sqlx::query(
        "WITH changed AS (
             UPDATE simulator.intents i SET status = x.status, received_minor = x.received,
                    refunded_minor = x.refunded, error_code = x.code, error_message = x.message,
                    updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[])
                  AS x(id, status, received, refunded, code, message)
             WHERE i.id = x.id),
         effect AS (
             INSERT INTO simulator.effects (intent_id, kind, amount_minor)
             SELECT * FROM unnest($7::text[], $8::text[], $9::bigint[]))
         INSERT INTO simulator.replies (key, op, reply)
         SELECT * FROM unnest($10::text[], $11::text[], $12::jsonb[])",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&received)
    .bind(&refunded)
    .bind(&codes)
    .bind(&messages)
    .bind(&effect_intents)
    .bind(&kinds)
    .bind(&amounts)
    .bind(&keys)
    .bind(&ops)
    .bind(&replies)
    .execute(&mut **tx)
    .await
    .map_err(transient)?;
    Ok(())
}

/// Splits triples into three vectors.
fn unzip3<A, B, C>(items: Vec<(A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut a = Vec::with_capacity(items.len());
    let mut b = Vec::with_capacity(items.len());
    let mut c = Vec::with_capacity(items.len());
    for (x, y, z) in items {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::gateway::IntentStatus;

    fn row(method: &str) -> IntentRow {
        IntentRow {
            intent: Intent {
                id: "pi_sim_1".into(),
                status: IntentStatus::RequiresConfirmation,
                amount_minor: 1999,
                received_minor: 0,
                refunded_minor: 0,
                client_secret: None,
                last_error: None,
            },
            payment_method: method.into(),
        }
    }

    fn call(op: &'static str, key: &str, effect: Effect) -> Call {
        Call {
            op,
            key: key.into(),
            intent_id: "pi_sim_1".into(),
            amount: 0,
            effect,
            create: None,
        }
    }

    #[test]
    fn calls_on_one_intent_apply_in_order_and_a_repeated_key_replays() {
        let config = SimConfig::default();
        let mut row = row("pm_card_visa");
        let (mut stored, mut writes) = (HashMap::new(), Writes::default());
        let confirm = call("confirm", "k-confirm", super::super::confirm_effect);
        let capture = call("capture", "k-capture", super::super::capture_effect);
        let first = decide(&config, &confirm, 0, &mut row, &mut stored, &mut writes).unwrap();
        assert_eq!(first.status, IntentStatus::RequiresCapture);
        let captured = decide(&config, &capture, 0, &mut row, &mut stored, &mut writes).unwrap();
        assert_eq!(captured.status, IntentStatus::Succeeded);
        assert_eq!(captured.received_minor, 1999);
        // The same confirm key again: the first answer, not a refusal from the captured intent.
        let replayed = decide(&config, &confirm, 1, &mut row, &mut stored, &mut writes).unwrap();
        assert_eq!(replayed.status, IntentStatus::RequiresCapture);
        assert_eq!(writes.intents["pi_sim_1"].status, IntentStatus::Succeeded);
        assert_eq!(
            writes.effects,
            vec![
                ("pi_sim_1".to_string(), "authorize", 1999),
                ("pi_sim_1".to_string(), "capture", 1999)
            ]
        );
        assert_eq!(writes.replies.len(), 2, "one answer stored per key");
    }

    #[test]
    fn a_decline_is_kept_and_replayed() {
        let config = SimConfig::default();
        let mut row = row("pm_card_chargeDeclined");
        let (mut stored, mut writes) = (HashMap::new(), Writes::default());
        let confirm = call("confirm", "k", super::super::confirm_effect);
        let declined = decide(&config, &confirm, 0, &mut row, &mut stored, &mut writes);
        assert!(matches!(declined, Err(GatewayError::Declined(ref c, _)) if c == "card_declined"));
        assert_eq!(
            writes.intents["pi_sim_1"].status,
            IntentStatus::RequiresPaymentMethod
        );
        let again = decide(&config, &confirm, 1, &mut row, &mut stored, &mut writes);
        assert!(matches!(again, Err(GatewayError::Declined(ref c, _)) if c == "card_declined"));
        assert!(writes.effects.is_empty());
    }

    #[test]
    fn a_cached_500_is_stored_and_replayed_for_its_key() {
        let config = SimConfig {
            cached500: 1.0,
            ..SimConfig::default()
        };
        let mut row = row("pm_card_visa");
        let (mut stored, mut writes) = (HashMap::new(), Writes::default());
        let confirm = call("confirm", "k", super::super::confirm_effect);
        let first = decide(&config, &confirm, 0, &mut row, &mut stored, &mut writes);
        assert!(matches!(first, Err(GatewayError::Ambiguous(_))));
        let again = decide(&config, &confirm, 1, &mut row, &mut stored, &mut writes);
        assert!(matches!(again, Err(GatewayError::Ambiguous(_))));
        assert_eq!(row.intent.status, IntentStatus::RequiresConfirmation, "nothing done");
        assert_eq!(writes.replies.len(), 1, "the 500 is stored once");
        assert!(writes.intents.is_empty());
    }
}
