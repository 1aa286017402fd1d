//! The expiry processor: owns deadlines. It learns them from `orders.events` (a hold when an order
//! is reserved or its hold renewed, a payment action when 3-D Secure is needed, progress while
//! the order waits on stock being committed or its payment captured) and forgets them when the
//! order moves on; its [`ticker`] fires due ones onto `expiry.events` (a progress deadline
//! recurs, further apart each time, until the order is decided). What a passed deadline means is
//! for the orders processor to decide.

pub mod ticker;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use kassa_schemas::events::expiry::DeadlineKind;
use kassa_schemas::events::orders::OrderEvent;
use kassa_schemas::{Codec, CodecError, Envelope, Topic};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ConsumerGroup;
use crate::runtime::{Delivered, HandleError, Handled, Handler};

/// What an order event does to one of the order's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The deadline is (now) due at this time.
    Due(DateTime<Utc>),
    /// The deadline no longer applies.
    Cancel,
}

/// The deadline changes an order event that occurred at `at` implies; `progress_after` is how
/// long an order may wait on another processor before it is found stalled.
pub fn plan(
    event: &OrderEvent,
    at: DateTime<Utc>,
    progress_after: Duration,
) -> Vec<(DeadlineKind, Change)> {
    use DeadlineKind::{Hold, PaymentAction, Progress};
    let progress = at + progress_after;
    match event {
        OrderEvent::OrderReserved(e) => vec![(Hold, Change::Due(e.hold_expires_at))],
        OrderEvent::HoldRenewed(e) => vec![(Hold, Change::Due(e.hold_expires_at))],
        OrderEvent::OrderActionRequired(e) => vec![(PaymentAction, Change::Due(e.action_due_at))],
        // Stock is being committed: no deadline may cancel the order any more, but it must not
        // wait for ever either.
        OrderEvent::OrderAuthorized(_) => {
            vec![
                (Hold, Change::Cancel),
                (PaymentAction, Change::Cancel),
                (Progress, Change::Due(progress)),
            ]
        }
        OrderEvent::OrderConfirmed(_) => vec![(Progress, Change::Due(progress))],
        OrderEvent::OrderCompleted(_)
        | OrderEvent::OrderRejected(_)
        | OrderEvent::OrderCancelled(_) => {
            vec![
                (Hold, Change::Cancel),
                (PaymentAction, Change::Cancel),
                (Progress, Change::Cancel),
            ]
        }
        // The ticker re-arms a progress deadline itself; refunds come after every deadline.
        OrderEvent::OrderStalled(_)
        | OrderEvent::OrderRefundRequested(_)
        | OrderEvent::OrderRefunded(_)
        | OrderEvent::OrderRefundFailed(_) => Vec::new(),
    }
}

/// The name a deadline kind is stored under.
pub const fn kind_name(kind: DeadlineKind) -> &'static str {
    match kind {
        DeadlineKind::Hold => "hold",
        DeadlineKind::PaymentAction => "payment_action",
        DeadlineKind::Progress => "progress",
    }
}

/// Every deadline kind.
pub const KINDS: [DeadlineKind; 3] = [
    DeadlineKind::Hold,
    DeadlineKind::PaymentAction,
    DeadlineKind::Progress,
];

/// The deadline kind stored under `name`.
pub fn parse_kind(name: &str) -> Option<DeadlineKind> {
    KINDS.into_iter().find(|k| kind_name(*k) == name)
}

/// The expiry processor's handler (learning deadlines; firing is the ticker's).
pub struct Expiry {
    codec: Arc<Codec>,
    progress_after: Duration,
}

impl Expiry {
    /// A handler decoding with `codec`; orders waiting on another processor are found stalled
    /// after `progress_after`.
    pub fn new(codec: Arc<Codec>, progress_after: Duration) -> Self {
        Self {
            codec,
            progress_after,
        }
    }
}

impl Handler for Expiry {
    type Input = Envelope<OrderEvent>;

    fn group(&self) -> ConsumerGroup {
        ConsumerGroup::Expiry
    }

    async fn decode(&self, topic: Topic, bytes: &[u8]) -> Result<Self::Input, CodecError> {
        match topic {
            Topic::OrdersEvents => self.codec.decode(bytes).await,
            other => Err(CodecError::UnexpectedTopic(other.name())),
        }
    }

    fn event_id(input: &Self::Input) -> Uuid {
        input.event_id
    }

    async fn handle(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Delivered<Self::Input>],
    ) -> Result<Handled, HandleError> {
        let mut handled = Handled::default();
        // The last change per (order, kind) in the batch wins: events of one order arrive in order.
        let mut changes: BTreeMap<(String, &'static str), (Change, Option<&str>)> = BTreeMap::new();
        for (index, d) in batch.iter().enumerate() {
            let order = d.input.payload.order_id();
            if !d.keyed_by(index, order, &mut handled) {
                continue;
            }
            for (kind, change) in plan(&d.input.payload, d.input.occurred_at, self.progress_after) {
                changes.insert(
                    (order.to_owned(), kind_name(kind)),
                    (change, d.traceparent.as_deref()),
                );
            }
        }
        if changes.is_empty() {
            return Ok(handled);
        }
        let rows: Vec<serde_json::Value> = changes
            .iter()
            .map(|((order, kind), (change, traceparent))| match change {
                Change::Due(at) => {
                    json!({"order_id": order, "kind": kind, "due_at": at, "state": "pending", "traceparent": traceparent})
                }
                Change::Cancel => {
                    json!({"order_id": order, "kind": kind, "due_at": null, "state": "cancelled"})
                }
            })
            .collect();
        // A cancel of a deadline never set is not stored; a cancel keeps the due time for the record.
        // A progress deadline recurs: after firing it comes again `repeat_every` later (doubling).
        let repeat = self.progress_after.num_milliseconds() as f64 / 1000.0;
        sqlx::query(
            "INSERT INTO expiry.deadlines AS d (order_id, kind, due_at, state, repeat_every, traceparent)
             SELECT order_id, kind, due_at, state,
                    CASE WHEN kind = 'progress' THEN make_interval(secs => $2) END, traceparent
             FROM jsonb_to_recordset($1) AS x(order_id text, kind text, due_at timestamptz, state text, traceparent text)
             WHERE state = 'pending'
             ON CONFLICT (order_id, kind) DO UPDATE SET due_at = excluded.due_at, state = 'pending',
                  repeat_every = excluded.repeat_every, traceparent = excluded.traceparent,
                  fired_at = NULL, updated_at = now()",
        )
        .bind(serde_json::Value::Array(rows.clone()))
        .bind(repeat)
        .execute(&mut *conn)
        .await?;
        // `state NOT IN ('fired', 'cancelled')`, not `state = 'pending'`: the latter matches the
        // partial index of pending deadlines, which the planner (its statistics taken between
        // bursts, with none pending) scanned whole for every row of the batch: 5.7 ms a batch
        // at 150 orders/s, the most expensive statement of the saga. This way each row is found
        // by its primary key.
        sqlx::query(
            "UPDATE expiry.deadlines d SET state = 'cancelled', updated_at = now()
             FROM jsonb_to_recordset($1) AS x(order_id text, kind text, state text)
             WHERE x.state = 'cancelled' AND d.order_id = x.order_id AND d.kind = x.kind
                   AND d.state NOT IN ('fired', 'cancelled')",
        )
        .bind(serde_json::Value::Array(rows))
        .execute(conn)
        .await?;
        Ok(handled)
    }

    fn forget(&mut self, _partitions: &[(Topic, i32)]) {}
}

/// The expiry processor's own settings.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// How long an order may wait in `authorized` or `confirmed` (on stock being committed, on
    /// its payment being captured) before the processor it waits on is asked again, in seconds.
    #[arg(long = "progress-deadline-seconds", env = "KASSA_PROGRESS_DEADLINE_SECONDS", default_value = "120", value_parser = crate::settings::seconds, global = true)]
    pub progress_deadline: std::time::Duration,
}

/// What the expiry processor runs with.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How long an order may wait on stock being committed or its payment captured before it is
    /// found stalled (and asked again, twice as late each time).
    pub progress_after: Duration,
}

impl crate::Processor for Expiry {
    const NAME: &'static str = "expiry";
    const INPUTS: &'static [Topic] = &[Topic::OrdersEvents];
    type Settings = Settings;
    type Config = Config;

    fn config(settings: &Settings, _: &crate::settings::Common) -> Result<Config, String> {
        Ok(Config {
            progress_after: crate::settings::chrono_of(settings.progress_deadline),
        })
    }

    /// Runs the expiry processor (and its ticker).
    async fn run(
        shared: &crate::Shared,
        codec: Arc<Codec>,
        config: &Config,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), crate::ProcessorError> {
        let Some(pool) = crate::runtime::connect(&shared.runtime, 2, &mut shutdown.clone()).await
        else {
            return Ok(());
        };
        let ticker = tokio::spawn(ticker::run(pool, codec.clone(), shutdown.clone()));
        let handler = Expiry::new(codec, config.progress_after);
        Ok(crate::runtime::run(&shared.runtime, handler, shutdown, vec![ticker]).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kassa_schemas::events::orders::{
        HoldRenewed, OrderAuthorized, OrderCompleted, OrderConfirmed,
    };

    #[test]
    fn holds_are_set_and_renewed_and_forgotten_once_stock_is_committed_and_progress_is_watched() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let wait = Duration::seconds(120);
        let renewed: OrderEvent = HoldRenewed {
            order_id: "o".into(),
            hold_expires_at: at,
        }
        .into();
        assert_eq!(
            plan(&renewed, at, wait),
            [(DeadlineKind::Hold, Change::Due(at))]
        );
        let authorized: OrderEvent = OrderAuthorized {
            order_id: "o".into(),
            total_minor: 1,
            currency: "EUR".into(),
        }
        .into();
        assert_eq!(
            plan(&authorized, at, wait),
            [
                (DeadlineKind::Hold, Change::Cancel),
                (DeadlineKind::PaymentAction, Change::Cancel),
                (DeadlineKind::Progress, Change::Due(at + wait))
            ]
        );
        let confirmed: OrderEvent = OrderConfirmed {
            order_id: "o".into(),
            total_minor: 1,
            currency: "EUR".into(),
        }
        .into();
        assert_eq!(
            plan(&confirmed, at, wait),
            [(DeadlineKind::Progress, Change::Due(at + wait))]
        );
        let completed: OrderEvent = OrderCompleted {
            order_id: "o".into(),
            customer_id: "c".into(),
            lines: vec![],
            total_minor: 1,
            currency: "EUR".into(),
            fulfilment: None,
        }
        .into();
        assert!(
            plan(&completed, at, wait).contains(&(DeadlineKind::Progress, Change::Cancel)),
            "a decided order is watched no more"
        );
        for kind in [
            DeadlineKind::Hold,
            DeadlineKind::PaymentAction,
            DeadlineKind::Progress,
        ] {
            assert_eq!(parse_kind(kind_name(kind)), Some(kind));
        }
    }
}
