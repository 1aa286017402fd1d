//! `kassa order <id>`: one order's whole story in time order, read from every processor's tables
//! (the API's record, every audit row of the orders processor, applied or not, its lines and
//! inventory's reservations, the payment and every provider call, webhooks, deadlines) and from
//! every topic (each event about the order, by key or correlation id), ending with a one-line
//! diagnosis: where the order is, what it waits for, since when.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// One thing that happened to the order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Entry {
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// Whose record it is: `api`, `orders`, `inventory`, `payments`, `provider`, `webhook`,
    /// `expiry`.
    pub source: String,
    /// What happened.
    pub what: String,
}

/// An order's story.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Story {
    /// The order id.
    pub order_id: String,
    /// Its state at the orders processor (None: the orders processor has not seen it).
    pub state: Option<String>,
    /// Everything recorded about it, oldest first.
    pub entries: Vec<Entry>,
    /// Where it is, what it waits for, since when.
    pub diagnosis: String,
}

/// Every record about the order, in time order.
const ENTRIES: &str = "
SELECT created_at, 'api', format('accepted: %s %s for %s, %s line(s), payment method %s',
       total_minor, currency, customer_id, jsonb_array_length(lines), payment_method_id)
FROM api.orders WHERE order_id::text = $1
UNION ALL
SELECT o.created_at, 'orders', format('line %s: %s x %s at %s, %s%s', line_index, quantity, sku,
       unit_price_minor, status, coalesce(' (' || reject_reason || ')', ''))
FROM orders.order_lines l JOIN orders.orders o USING (order_id) WHERE order_id = $1
UNION ALL
SELECT at, 'orders', format('%s %s -> %s on %s (%s %s)%s',
       CASE WHEN applied THEN 'step' ELSE 'ignored' END, coalesce(from_state, '-'),
       coalesce(to_state, '-'), coalesce(trigger, '-'), cause_type, cause_event_id,
       coalesce(': ' || reason, ''))
FROM orders.transitions WHERE order_id = $1
UNION ALL
SELECT updated_at, 'inventory', format('line %s: %s x %s %s%s, hold until %s', line_index,
       quantity, sku, status, coalesce(' (' || reject_reason || ')', ''), expires_at)
FROM inventory.reservations WHERE order_id = $1
UNION ALL
SELECT created_at, 'payments', format('payment %s at %s for %s %s: %s, stage %s, captured %s, refunded %s',
       payment_id, provider, amount_minor, currency, status, stage, captured_minor, refunded_minor)
FROM payments.payments WHERE order_id = $1
UNION ALL
SELECT at, 'provider', format('%s: %s%s', step, outcome, coalesce(': ' || detail, ''))
FROM payments.attempts WHERE order_id = $1
UNION ALL
SELECT received_at, 'webhook', format('%s %s %s: %s', provider, event_type, provider_event_id,
       coalesce(outcome, CASE WHEN applied_at IS NULL THEN 'not applied yet' ELSE 'applied' END))
FROM payments.webhooks WHERE order_id = $1
UNION ALL
SELECT updated_at, 'expiry', format('%s deadline due %s: %s%s', kind, due_at, state,
       coalesce(' at ' || fired_at, ''))
FROM expiry.deadlines WHERE order_id = $1
ORDER BY 1";

/// What the diagnosis reads: the order at the orders processor and its payment.
type Facts = (
    Option<(
        String,
        DateTime<Utc>,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    )>,
    Option<(
        String,
        Option<String>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        i32,
        Option<String>,
    )>,
);

/// The story of `order_id` (None: no component has heard of it).
pub async fn story(pool: &PgPool, order_id: &str) -> Result<Option<Story>, sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, String, String)> = sqlx::query_as(ENTRIES)
        .bind(order_id)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let entries: Vec<Entry> = rows
        .into_iter()
        .map(|(at, source, what)| Entry { at, source, what })
        .collect();
    let order = sqlx::query_as(
        "SELECT state, updated_at, reason, hold_expires_at, action_due_at FROM orders.orders WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let payment = sqlx::query_as(
        "SELECT status, work, due_at, leased_until, attempts, last_error FROM payments.payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let facts: Facts = (order, payment);
    let first = entries[0].at;
    Ok(Some(Story {
        order_id: order_id.to_owned(),
        state: facts.0.as_ref().map(|o| o.0.clone()),
        diagnosis: diagnose(&facts, first, Utc::now()),
        entries,
    }))
}

/// `span` for people: `42 s`, `14 min`, `3 h`, `2 d`.
fn ago(span: chrono::Duration) -> String {
    let s = span.num_seconds().max(0);
    match s {
        0..120 => format!("{s} s"),
        120..7_200 => format!("{} min", s / 60),
        7_200..172_800 => format!("{} h", s / 3_600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Where the order is, what it waits for, since when.
fn diagnose(facts: &Facts, first: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let Some((state, since, reason, hold, action_due)) = &facts.0 else {
        return format!(
            "accepted {} ago, not yet seen by the orders processor: inventory has not answered \
             or orders is behind (see kassa lag)",
            ago(now - first)
        );
    };
    let for_how_long = format!("{state} for {}", ago(now - *since));
    let reason = reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    match state.as_str() {
        "completed" | "rejected" | "cancelled" => {
            format!("{state} {} ago{reason}: decided", ago(now - *since))
        }
        "pending" => format!(
            "{for_how_long}: waiting for inventory to answer every line{}",
            hold.map(|h| format!("; hold until {h}"))
                .unwrap_or_default()
        ),
        "action_required" => format!(
            "{for_how_long}: waiting for the customer's 3-D Secure{}",
            action_due
                .map(|d| format!(" until {d}, then the order is cancelled"))
                .unwrap_or_default()
        ),
        _ => {
            let Some((status, work, due, lease, attempts, error)) = &facts.1 else {
                return format!("{for_how_long}: the payments processor has no payment for it yet");
            };
            let work = match work {
                Some(work) if lease.is_some_and(|l| l > now) => {
                    format!(
                        "payment worker is on `{work}` (leased until {})",
                        lease.unwrap_or(now)
                    )
                }
                Some(work) if *due > now => format!("`{work}` is due at {due}"),
                Some(work) => format!(
                    "`{work}` was due {} ago and no payment worker has a lease on it",
                    ago(now - *due)
                ),
                None => "no payment work is due".to_owned(),
            };
            let calls = match (attempts, error) {
                (0, _) => String::new(),
                (n, Some(e)) => format!("; provider calls made {n} time(s), last error: {e}"),
                (n, None) => format!("; provider calls made {n} time(s)"),
            };
            format!("{for_how_long}: payment {status}; {work}{calls}")
        }
    }
}

/// Adds to `story` every event about the order on every topic, read from shortly before its first
/// record (`source` `kafka`).
pub async fn add_events(
    settings: &crate::settings::Settings,
    story: &mut Story,
) -> Result<(), crate::tail::TailError> {
    let Some(first) = story.entries.first().map(|e| e.at) else {
        return Ok(());
    };
    let options = crate::tail::Options {
        topics: kassa_schemas::Topic::ALL
            .iter()
            .map(|t| t.name().to_owned())
            .collect(),
        start: crate::tail::Start::Time(first - chrono::Duration::seconds(5)),
        key: None,
        order: Some(story.order_id.clone()),
        event_type: None,
        follow: false,
        limit: None,
        partition: None,
        // What was written about the order by a minute after its last recorded step.
        until: story
            .entries
            .iter()
            .map(|e| e.at)
            .max()
            .map(|last| last + chrono::Duration::seconds(60)),
    };
    let mut events = Vec::new();
    crate::tail::tail(settings, &options, |r| {
        let event = r.event.as_ref();
        let field = |name: &str| {
            event
                .and_then(|e| e[name].as_str())
                .unwrap_or("?")
                .to_owned()
        };
        events.push(Entry {
            at: r.timestamp.unwrap_or(first),
            source: "kafka".to_owned(),
            what: format!(
                "{}[{}]@{} {} {}",
                r.topic,
                r.partition,
                r.offset,
                field("event_type"),
                field("event_id")
            ),
        });
    })
    .await?;
    story.entries.extend(events);
    story.entries.sort_by_key(|e| e.at);
    Ok(())
}

/// `story` for people: a line per entry, then the diagnosis.
pub fn report(story: &Story) -> String {
    let mut out = format!(
        "order {} ({})\n",
        story.order_id,
        story
            .state
            .as_deref()
            .unwrap_or("not at the orders processor")
    );
    for e in &story.entries {
        out += &format!(
            "{}  {:<9}  {}\n",
            e.at.format("%Y-%m-%d %H:%M:%S%.3f"),
            e.source,
            e.what
        );
    }
    out += &format!("diagnosis: {}\n", story.diagnosis);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_nobody_works_on_is_named_with_its_calls() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let since = now - chrono::Duration::minutes(14);
        let facts: Facts = (
            Some(("authorizing".into(), since, None, None, None)),
            Some((
                "created".into(),
                Some("authorize".into()),
                now - chrono::Duration::minutes(2),
                None,
                3,
                Some("timeout".into()),
            )),
        );
        assert_eq!(
            diagnose(&facts, since, now),
            "authorizing for 14 min: payment created; `authorize` was due 2 min ago and no \
             payment worker has a lease on it; provider calls made 3 time(s), last error: timeout"
        );
        let unseen: Facts = (None, None);
        assert!(diagnose(&unseen, since, now).starts_with("accepted 14 min ago, not yet seen"));
    }
}
