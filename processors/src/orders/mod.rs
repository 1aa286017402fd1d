//! The orders processor: the only decider of an order's fate. It joins the line results from
//! `inventory.events`, reacts to payments, deadlines and customer requests, writes every input to
//! the audit trail, and emits its facts on `orders.events` and per-SKU release / commit / restock
//! commands on `inventory.commands`. All its inputs are keyed by order id on equally partitioned
//! topics, so one instance owns an order at a time; rows are still locked for the batch.

pub mod machine;
pub mod refunds;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use kassa_schemas::events::expiry::ExpiryEvent;
use kassa_schemas::events::inventory::{InventoryCommand, InventoryEvent};
use kassa_schemas::events::orders::{OrderEvent, OrderRequest};
use kassa_schemas::events::payments::PaymentEvent;
use kassa_schemas::{Codec, CodecError, Envelope, Payload, Topic};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ConsumerGroup;
use crate::runtime::{Delivered, Emit, HandleError, Handled, Handler};
use machine::{Order, Policy, Signal, State};
use store::AuditRow;

/// What the orders processor reads.
#[derive(Debug, Clone)]
pub enum Input {
    /// From `inventory.events`.
    Inventory(Envelope<InventoryEvent>),
    /// From `payments.events`.
    Payment(Envelope<PaymentEvent>),
    /// From `expiry.events`.
    Expiry(Envelope<ExpiryEvent>),
    /// From `orders.requests`.
    Request(Envelope<OrderRequest>),
}

impl Input {
    fn signal(&self) -> Signal<'_> {
        match self {
            Input::Inventory(e) => Signal::Inventory(&e.payload),
            Input::Payment(e) => Signal::Payment(&e.payload),
            Input::Expiry(e) => Signal::Expiry(&e.payload),
            Input::Request(e) => Signal::Request(&e.payload),
        }
    }

    fn header(&self) -> (Uuid, &str) {
        match self {
            Input::Inventory(e) => (e.event_id, &e.event_type),
            Input::Payment(e) => (e.event_id, &e.event_type),
            Input::Expiry(e) => (e.event_id, &e.event_type),
            Input::Request(e) => (e.event_id, &e.event_type),
        }
    }
}

/// The orders processor's handler.
pub struct Orders {
    codec: Arc<Codec>,
    policy: Policy,
    /// What the batch in flight measured, recorded once it commits.
    measured: Measured,
}

/// A batch's measurements: each transition (from, to), and each decision (final state, seconds
/// since the orders processor first saw the order).
#[derive(Debug, Default)]
struct Measured {
    transitions: Vec<(&'static str, &'static str)>,
    decisions: Vec<(&'static str, f64)>,
}

impl Orders {
    /// A handler encoding with `codec` and deciding with `policy`.
    pub fn new(codec: Arc<Codec>, policy: Policy) -> Self {
        Self {
            codec,
            policy,
            measured: Measured::default(),
        }
    }

    /// Decides the batch's refund inputs (`indices`) in order, against the orders as the rest
    /// of the batch left them; records each refund, its audit step, and what it emits.
    #[allow(clippy::too_many_arguments)]
    async fn refunds(
        &self,
        conn: &mut PgConnection,
        batch: &[Delivered<Input>],
        indices: &[usize],
        orders: &HashMap<String, Order>,
        audit: &mut Vec<AuditRow>,
        events: &mut Vec<(usize, String, Uuid, OrderEvent)>,
        commands: &mut Vec<(usize, String, Uuid, InventoryCommand)>,
    ) -> Result<(), sqlx::Error> {
        let mut ids: Vec<&str> = indices
            .iter()
            .filter_map(|i| machine::order_of(batch[*i].input.signal()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut known = refunds::load(conn, &ids).await?;
        for &index in indices {
            let signal = batch[index].input.signal();
            let (cause, cause_type) = batch[index].input.header();
            let Some(order_id) = machine::order_of(signal) else {
                continue;
            };
            let order = orders.get(order_id);
            let its: Vec<refunds::Refund> = known
                .iter()
                .filter(|r| r.order_id == order_id)
                .cloned()
                .collect();
            let outcome = refunds::decide(order, &its, signal);
            let state = order.map(|o| o.state);
            audit.push(AuditRow {
                order_id: order_id.to_owned(),
                from: state,
                to: state,
                trigger: outcome.trail.0.map(str::to_owned),
                applied: outcome.refund.is_some(),
                cause_event_id: cause,
                cause_type: cause_type.to_owned(),
                reason: Some(outcome.trail.1),
            });
            if let Some(refund) = outcome.refund {
                refunds::save(conn, &refund).await?;
                match known.iter_mut().find(|r| r.refund_id == refund.refund_id) {
                    Some(slot) => *slot = refund,
                    None => known.push(refund),
                }
            }
            events.extend(outcome.events.into_iter().map(|e| (index, order_id.to_owned(), cause, e)));
            commands.extend(
                outcome
                    .commands
                    .into_iter()
                    .map(|c| (index, order_id.to_owned(), cause, c)),
            );
        }
        Ok(())
    }

    async fn encode<P: Payload>(
        &self,
        order_id: &str,
        cause: Uuid,
        payload: P,
    ) -> Result<Vec<u8>, CodecError> {
        self.codec
            .encode(&Envelope::new(order_id, Some(cause), payload))
            .await
    }
}

impl Handler for Orders {
    type Input = Input;

    fn group(&self) -> ConsumerGroup {
        ConsumerGroup::Orders
    }

    async fn decode(&self, topic: Topic, bytes: &[u8]) -> Result<Input, CodecError> {
        Ok(match topic {
            Topic::InventoryEvents => Input::Inventory(self.codec.decode(bytes).await?),
            Topic::PaymentsEvents => Input::Payment(self.codec.decode(bytes).await?),
            Topic::ExpiryEvents => Input::Expiry(self.codec.decode(bytes).await?),
            Topic::OrdersRequests => Input::Request(self.codec.decode(bytes).await?),
            other => return Err(CodecError::UnexpectedTopic(other.name())),
        })
    }

    fn event_id(input: &Input) -> Uuid {
        input.header().0
    }

    async fn handle(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Delivered<Input>],
    ) -> Result<Handled, HandleError> {
        let mut ids: Vec<&str> = batch
            .iter()
            .filter_map(|d| machine::order_of(d.input.signal()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut orders = store::load(conn, &ids).await?;
        let stored_lines = store::stored_lines(&orders);
        let now = Utc::now();
        let mut handled = Handled::default();
        let mut audit = Vec::new();
        let mut changed: HashSet<String> = HashSet::new();
        let mut decided: Vec<(String, &'static str)> = Vec::new();
        let mut events: Vec<(usize, String, Uuid, OrderEvent)> = Vec::new();
        let mut commands: Vec<(usize, String, Uuid, InventoryCommand)> = Vec::new();
        let mut refund_inputs: Vec<usize> = Vec::new();
        for (index, d) in batch.iter().enumerate() {
            let signal = d.input.signal();
            let (cause, cause_type) = d.input.header();
            // Stock-only events (a delivery, a stock count) are not about an order.
            let Some(order_id) = machine::order_of(signal) else {
                continue;
            };
            if !d.keyed_by(index, order_id, &mut handled) {
                continue;
            }
            let row = |from, to, trigger: Option<String>, applied, reason| AuditRow {
                order_id: order_id.to_owned(),
                from,
                to,
                trigger,
                applied,
                cause_event_id: cause,
                cause_type: cause_type.to_owned(),
                reason,
            };
            if refunds::is_refund(signal) {
                refund_inputs.push(index);
                continue;
            }
            if !orders.contains_key(order_id) {
                match machine::first(signal) {
                    Some(order) => orders.insert(order_id.to_owned(), order),
                    None => {
                        audit.push(row(
                            None,
                            None,
                            None,
                            false,
                            Some("the order is not known".into()),
                        ));
                        continue;
                    }
                };
            }
            let order: &mut Order = orders.get_mut(order_id).expect("known or just created");
            let applied = machine::apply(order, signal, &self.policy, now);
            if let Some(reason) = applied.ignored {
                tracing::debug!(order = order_id, cause_type, %reason, "input ignored");
                audit.push(row(
                    Some(order.state),
                    Some(order.state),
                    None,
                    false,
                    Some(reason),
                ));
                continue;
            }
            changed.insert(order_id.to_owned());
            for step in &applied.steps {
                self.measured
                    .transitions
                    .push((step.from.as_str(), step.to.as_str()));
                if matches!(step.to, State::Completed | State::Rejected | State::Cancelled) {
                    decided.push((order_id.to_owned(), step.to.as_str()));
                }
                audit.push(row(
                    Some(step.from),
                    Some(step.to),
                    Some(format!("{:?}", step.trigger)),
                    true,
                    None,
                ));
            }
            events.extend(
                applied
                    .events
                    .into_iter()
                    .map(|e| (index, order_id.to_owned(), cause, e)),
            );
            commands.extend(
                applied
                    .commands
                    .into_iter()
                    .map(|c| (index, order_id.to_owned(), cause, c)),
            );
        }

        if !decided.is_empty() {
            let ids: Vec<&str> = decided.iter().map(|(id, _)| id.as_str()).collect();
            let ages: HashMap<String, f64> = sqlx::query_as::<_, (String, f64)>(
                "SELECT order_id, extract(epoch FROM now() - created_at)::float8 FROM orders.orders WHERE order_id = ANY($1)",
            )
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
            for (id, state) in decided {
                // An order first seen and decided in this batch is not stored yet: no time passed.
                let age = ages.get(&id).copied().unwrap_or(0.0);
                self.measured.decisions.push((state, age));
            }
        }
        if !refund_inputs.is_empty() {
            self.refunds(conn, batch, &refund_inputs, &orders, &mut audit, &mut events, &mut commands)
                .await?;
        }
        let mut to_save: Vec<&Order> = changed.iter().filter_map(|id| orders.get(id)).collect();
        to_save.sort_by(|a, b| a.id.cmp(&b.id));
        store::save(conn, &to_save, &stored_lines).await?;
        store::audit(conn, &audit).await?;
        for (cause_index, order_id, cause, event) in events {
            let payload = self.encode(&order_id, cause, event).await?;
            handled.emit.push(Emit {
                topic: Topic::OrdersEvents,
                key: order_id,
                payload,
                cause: cause_index,
            });
        }
        for (cause_index, order_id, cause, command) in commands {
            let sku = command.sku().to_owned();
            let payload = self.encode(&order_id, cause, command).await?;
            handled.emit.push(Emit {
                topic: Topic::InventoryCommands,
                key: sku,
                payload,
                cause: cause_index,
            });
        }
        metrics::counter!("kassa_orders_changed_total").increment(changed.len() as u64);
        Ok(handled)
    }

    fn forget(&mut self, _partitions: &[(Topic, i32)]) {
        self.measured = Measured::default();
    }

    async fn after_commit(&mut self) {
        let measured = std::mem::take(&mut self.measured);
        for (from, to) in measured.transitions {
            metrics::counter!("kassa_order_transitions_total", "from" => from, "to" => to)
                .increment(1);
        }
        for (state, seconds) in measured.decisions {
            metrics::histogram!("kassa_order_decision_seconds", "state" => state).record(seconds);
        }
    }
}

/// The orders processor's own settings.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Settings {
    /// How long a customer has to complete 3-D Secure before the order is cancelled, in seconds.
    #[arg(long = "payment-action-seconds", env = "KASSA_PAYMENT_ACTION_SECONDS", default_value = "600", value_parser = crate::settings::seconds, global = true)]
    pub payment_action: std::time::Duration,
}

/// What the orders processor runs with.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How it decides (3-D Secure window, longest renewed hold).
    pub policy: Policy,
}

impl crate::Processor for Orders {
    const NAME: &'static str = "orders";
    const INPUTS: &'static [Topic] = &[
        Topic::InventoryEvents,
        Topic::PaymentsEvents,
        Topic::ExpiryEvents,
        Topic::OrdersRequests,
    ];
    type Settings = Settings;
    type Config = Config;

    fn config(settings: &Settings, common: &crate::settings::Common) -> Result<Config, String> {
        use crate::settings::chrono_of;
        Ok(Config {
            policy: Policy {
                action_window: chrono_of(settings.payment_action),
                max_hold: chrono_of(common.max_hold),
            },
        })
    }

    async fn run(
        shared: &crate::Shared,
        codec: Arc<Codec>,
        config: &Config,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), crate::ProcessorError> {
        let handler = Orders::new(codec, config.policy);
        Ok(crate::runtime::run(&shared.runtime, handler, shutdown, Vec::new()).await?)
    }
}
