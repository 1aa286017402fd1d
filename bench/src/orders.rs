//! Orders through HTTP for the benches: stock set through inventory, requests sent open-loop at
//! a rate (each with its answer and how long it took), and the wait until kassa's orders end.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kassa_schemas::events::inventory::{InventoryCommand, SetStock};
use kassa_schemas::{Codec, Envelope, Topic};
use serde_json::Value;

use super::{Outcomes, send};
use kassa_ops::settings::Settings;

/// One request's answer.
pub(crate) struct Answered {
    /// Its index in the sequence sent.
    pub index: usize,
    /// The answer's status.
    pub status: u16,
    /// The answer's body (JSON; Null when it is not).
    pub body: Value,
    /// When the answer came.
    pub at: DateTime<Utc>,
    /// From the request's intended send time to its answer (retries after a 503 included): a
    /// server that falls behind is charged for the queue it causes.
    pub took: Duration,
}

/// Why requests got no answer (the innermost error of each, as reqwest tells it), with how many.
pub(crate) type Unanswered = BTreeMap<String, usize>;

/// Sends `count` requests open-loop, `rate` a second (`request(i)` builds the i-th; it is sent
/// again after a 503's Retry-After, as a storefront would); returns every request that got an
/// answer, in no particular order, and why the others got none.
pub(crate) async fn drive(
    rate: u32,
    count: usize,
    request: impl Fn(usize) -> reqwest::RequestBuilder,
) -> (Vec<Answered>, Unanswered) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let intended = started + interval.mul_f64(index as f64);
        tokio::time::sleep_until(intended).await;
        let request = request(index);
        tasks.spawn(async move {
            let resend = || request.try_clone().expect("a JSON body can be sent again");
            let (response, _) = crate::http::send_honouring_503(resend, 5)
                .await
                .map_err(|e| innermost(&e))?;
            let status = response.status().as_u16();
            let (at, took) = (Utc::now(), intended.elapsed());
            let body = response.json().await.unwrap_or(Value::Null);
            Ok(Answered {
                index,
                status,
                body,
                at,
                took,
            })
        });
    }
    let mut answered = Vec::with_capacity(count);
    let mut unanswered = Unanswered::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(answer)) => answered.push(answer),
            Ok(Err(why)) => *unanswered.entry(why).or_default() += 1,
            Err(e) => *unanswered.entry(e.to_string()).or_default() += 1,
        }
    }
    (answered, unanswered)
}

/// The innermost cause of `error` (reqwest's own message names only the URL).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// An order the API accepted.
pub(crate) struct Placed {
    /// Its index in the sequence placed.
    pub index: usize,
    /// When its 202 came.
    pub at: DateTime<Utc>,
    /// Its customer.
    pub customer: String,
    /// From its intended send time to its 202 (retries after a 503 included).
    pub accept: Duration,
}

/// What the orders that were not accepted were answered ("503", "no answer: …"), with how many.
pub(crate) type NotAccepted = BTreeMap<String, usize>;

/// Places `bodies` (each a `POST /api/orders` body with its `customer_id`) open-loop at `rate`
/// with storefront key `key`, Idempotency-Key `<run>-<i>`; returns each accepted order by id,
/// and what the others were answered.
pub(crate) async fn place(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    run: &str,
    bodies: &[Value],
    rate: u32,
) -> (HashMap<String, Placed>, NotAccepted) {
    let (answered, unanswered) = drive(rate, bodies.len(), |i| {
        http.post(format!("{base}/api/orders"))
            .bearer_auth(key)
            .header("Idempotency-Key", format!("{run}-{i}"))
            .json(&bodies[i])
    })
    .await;
    let mut not_accepted: NotAccepted = unanswered
        .into_iter()
        .map(|(why, n)| (format!("no answer: {why}"), n))
        .collect();
    let mut accepted = HashMap::with_capacity(answered.len());
    for a in answered {
        let id = a.body["order_id"].as_str().map(str::to_owned);
        let (true, Some(id)) = (a.status == reqwest::StatusCode::ACCEPTED.as_u16(), id) else {
            let answer = match a.status {
                202 => "202 without an order id".to_owned(),
                status => status.to_string(),
            };
            *not_accepted.entry(answer).or_default() += 1;
            continue;
        };
        let customer = bodies[a.index]["customer_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let placed = Placed {
            index: a.index,
            at: a.at,
            customer,
            accept: a.took,
        };
        accepted.insert(id, placed);
    }
    (accepted, not_accepted)
}

/// Sets `units` on hand for each of `skus` (named `<prefix>-…`) and waits until inventory has
/// counted them all.
pub(crate) async fn stock(
    settings: &Settings,
    skus: &[(String, i64)],
    prefix: &str,
) -> anyhow::Result<()> {
    let codec = Codec::new(&settings.schema_registry_url)?;
    let producer = kassa_ops::kafka::producer(settings)?;
    let stocked = Outcomes::start(settings, Topic::InventoryEvents.name(), prefix.to_owned());
    for (sku, units) in skus {
        let command = InventoryCommand::SetStock(SetStock {
            sku: sku.clone(),
            on_hand: *units,
            reason: "bench".into(),
        });
        send(&producer, &codec, sku, &Envelope::new(sku, None, command)).await?;
    }
    stocked.wait(skus.len(), Duration::from_secs(120)).await?;
    Ok(())
}

/// Above this many orders pending, `wait_final` looks once a second.
const MANY_PENDING: usize = 500;

/// Waits until every order is completed, rejected or cancelled; returns (id, state, updated at).
/// Each look asks only for the orders not yet seen final: asking for all of them every time cost
/// Postgres tens of milliseconds a look, counted against the orders it measured. A look costs
/// about 7 µs an order asked for, so while many are pending it comes once a second, not five
/// times (at 500/s, 10,000 orders: 28 looks of 72 ms on average, 0.2 ms of Postgres an order).
/// The figures do not depend on it: they come from the orders' own timestamps.
pub(crate) async fn wait_final(
    pool: &sqlx::PgPool,
    ids: &[String],
    within: Duration,
) -> anyhow::Result<Vec<(String, String, DateTime<Utc>)>> {
    let started = std::time::Instant::now();
    let mut last_report = std::time::Instant::now();
    let mut pending: Vec<String> = ids.to_vec();
    let mut finals: Vec<(String, String, DateTime<Utc>)> = Vec::with_capacity(ids.len());
    loop {
        let ended: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT order_id, state, updated_at FROM orders.orders
             WHERE order_id = ANY($1) AND state IN ('completed', 'rejected', 'cancelled')",
        )
        .bind(&pending)
        .fetch_all(pool)
        .await?;
        {
            let seen: std::collections::HashSet<&str> =
                ended.iter().map(|e| e.0.as_str()).collect();
            pending.retain(|id| !seen.contains(id.as_str()));
        }
        finals.extend(ended);
        if pending.is_empty() {
            return Ok(finals);
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "only {} of {} orders ended within {within:?}",
            finals.len(),
            ids.len()
        );
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  … {} / {} orders ended", finals.len(), ids.len());
            last_report = std::time::Instant::now();
        }
        let pause = if pending.len() > MANY_PENDING {
            1000
        } else {
            200
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}
