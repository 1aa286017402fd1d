//! The checkout saga under faults, against real Kafka, the registry, Postgres and Redis, with a
//! simulated provider that times out, loses answers and fails with 500s: a webhook that comes
//! before its payment exists is kept and applied; every order is authorized and captured exactly
//! once; and a 2,000-order run with each processor SIGKILLed once ends with every order decided
//! and the books square (stock and money).

mod kills;
mod payments;

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::inventory::end_offsets;
use common::proxy::{Fault, FaultProxy};
use common::saga::{
    Placed, Saga, skip_backlog, start_processor, start_processors, stop_processor, wait_for,
    with_processor,
};
use futures::StreamExt;
use kassa_processors::ConsumerGroup;
use kassa_processors::payments::gateway::simulated::intent_id_for;
use kassa_processors::payments::ledger::idempotency_key;

const SECRET: &str = "whsec_saga_faults_test";
const FAULTS: &str = "transient=0.1,timeout=0.1,lost=0.1";
const ENV: &[(&str, &str)] = &[
    ("KASSA_SIM_FAULTS", FAULTS),
    ("KASSA_PAYMENT_ACTION_SECONDS", "5"),
    ("KASSA_PAYMENT_RECHECK_SECONDS", "1"),
    // Static membership: a restarted processor gets its partitions back at once.
    ("KASSA_INSTANCE_ID", "saga-faults"),
    // An order waiting in authorized / confirmed is found stalled (and its processor asked again)
    // after 3 s; the SIGKILL run below exercises it too.
    ("KASSA_PROGRESS_DEADLINE_SECONDS", "3"),
];
/// Every processor, in the saga's order (inventory first).
fn processors() -> Vec<&'static str> {
    ConsumerGroup::ALL
        .into_iter()
        .map(ConsumerGroup::name)
        .collect()
}

/// The tests stop and kill the shared processors: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn saga() -> Saga {
    let turn = start_processors(ENV).await;
    Saga::new(turn, Some(SECRET), None).await
}

/// Effects at the simulated provider per order: (authorizations, captures, captured amount).
async fn effects(saga: &Saga, orders: &[String]) -> HashMap<String, (i64, i64, i64)> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT i.order_id,
                count(*) FILTER (WHERE e.kind = 'authorize'),
                count(*) FILTER (WHERE e.kind = 'capture'),
                coalesce(sum(e.amount_minor) FILTER (WHERE e.kind = 'capture'), 0)::bigint
         FROM simulator.intents i JOIN simulator.effects e ON e.intent_id = i.id
         WHERE i.order_id = ANY($1) GROUP BY i.order_id",
    )
    .bind(orders)
    .fetch_all(saga.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(o, a, c, m)| (o, (a, c, m)))
        .collect()
}
