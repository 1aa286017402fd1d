//! The payments processor: owns payment attempts. Its handler turns `orders.events` into work
//! (authorize when reserved, capture when confirmed, void or refund when cancelled, an
//! operator's refund of a completed order) and records webhooks from `payments.webhooks`; its
//! [`worker`] (and for operators' refunds, [`refunds`]) makes the provider calls outside any
//! batch transaction and publishes what came of them on `payments.events` through the outbox.
//!
//! Never a double charge: one intent per order, created (and its id recorded) before it is
//! confirmed; every call carries an idempotency key derived from the order and step; a call
//! whose answer is lost is retried with its key or, when still unsure, preceded by a look-up.

pub mod gateway;
pub mod ledger;
pub mod refunds;
pub mod settings;
pub mod store;
pub mod webhooks;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;

use kassa_schemas::events::orders::OrderEvent;
use kassa_schemas::events::payments::PaymentWebhook;
use kassa_schemas::{Codec, CodecError, Envelope, Topic};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::ConsumerGroup;
use crate::runtime::{Delivered, Emit, HandleError, Handled, Handler};
use ledger::{OrderStage, Payment, Status};

/// Which gateway the payments processor charges through.
/// (Not `Debug`: the Stripe variant holds the secret key.)
#[derive(Clone)]
pub enum GatewayConfig {
    /// The built-in simulated provider.
    Simulated(gateway::simulated::SimConfig),
    /// Stripe (or localstripe).
    Stripe(gateway::stripe::StripeConfig),
}

/// What the payments processor reads.
#[derive(Debug, Clone)]
pub enum Input {
    /// From `orders.events`.
    Order(Envelope<OrderEvent>),
    /// From `payments.webhooks`.
    Webhook(Envelope<PaymentWebhook>),
}

/// The payments processor's handler (recording work; the calls are the worker's).
pub struct Payments {
    codec: Arc<Codec>,
    provider: &'static str,
}

impl Payments {
    /// A handler decoding with `codec`, creating payments at `provider`.
    pub fn new(codec: Arc<Codec>, provider: &'static str) -> Self {
        Self { codec, provider }
    }
}

/// The order an input is about.
fn order_of(input: &Input) -> Option<&str> {
    match input {
        Input::Order(e) => Some(e.payload.order_id()),
        Input::Webhook(e) => {
            let PaymentWebhook::WebhookReceived(w) = &e.payload;
            w.order_id.as_deref()
        }
    }
}

impl Handler for Payments {
    type Input = Input;

    fn group(&self) -> ConsumerGroup {
        ConsumerGroup::Payments
    }

    async fn decode(&self, topic: Topic, bytes: &[u8]) -> Result<Input, CodecError> {
        Ok(match topic {
            Topic::OrdersEvents => Input::Order(self.codec.decode(bytes).await?),
            Topic::PaymentsWebhooks => Input::Webhook(self.codec.decode(bytes).await?),
            other => return Err(CodecError::UnexpectedTopic(other.name())),
        })
    }

    fn event_id(input: &Input) -> Uuid {
        match input {
            Input::Order(e) => e.event_id,
            Input::Webhook(e) => e.event_id,
        }
    }

    async fn handle(
        &mut self,
        conn: &mut PgConnection,
        batch: &[Delivered<Input>],
    ) -> Result<Handled, HandleError> {
        let mut handled = Handled::default();
        let mut orders: Vec<&str> = batch.iter().filter_map(|d| order_of(&d.input)).collect();
        orders.sort_unstable();
        orders.dedup();
        let mut payments = store::load(conn, &orders).await?;
        let mut changed: HashMap<String, Option<Uuid>> = HashMap::new();
        for (index, d) in batch.iter().enumerate() {
            match &d.input {
                Input::Order(e) => {
                    let Some(order_id) = order_of(&d.input) else {
                        continue;
                    };
                    if !d.keyed_by(index, order_id, &mut handled) {
                        continue;
                    }
                    match &e.payload {
                        OrderEvent::OrderReserved(r) => {
                            if payments.contains_key(order_id) {
                                tracing::debug!(
                                    order = order_id,
                                    "payment exists: reservation seen before"
                                );
                                continue;
                            }
                            let payment = Payment {
                                order_id: order_id.to_owned(),
                                payment_id: Uuid::new_v5(
                                    &Uuid::NAMESPACE_OID,
                                    format!("kassa-payment-{order_id}").as_bytes(),
                                ),
                                provider: self.provider.to_owned(),
                                amount_minor: r.total_minor,
                                currency: r.currency.clone(),
                                payment_method_id: r.payment_method_id.clone(),
                                provider_ref: None,
                                status: Status::New,
                                stage: OrderStage::Reserved,
                                client_secret: None,
                                captured_minor: 0,
                                refunded_minor: 0,
                                needs_lookup: false,
                                attempts: 0,
                                key_generation: 0,
                                unsure: None,
                                traceparent: None,
                            };
                            payments.insert(order_id.to_owned(), payment);
                        }
                        OrderEvent::OrderConfirmed(c) => {
                            let Some(p) = payments.get_mut(order_id) else {
                                continue;
                            };
                            if c.total_minor != p.amount_minor || c.currency != p.currency {
                                handled.invalid.push((
                                    index,
                                    format!(
                                        "confirmed {} {} but {} {} was authorized",
                                        c.total_minor, c.currency, p.amount_minor, p.currency
                                    ),
                                ));
                                continue;
                            }
                            if p.stage == OrderStage::Reserved {
                                p.stage = OrderStage::Confirmed;
                            }
                        }
                        OrderEvent::OrderStalled(stalled) if stalled.state == "confirmed" => {
                            let Some(p) = payments.get_mut(order_id) else {
                                continue;
                            };
                            if p.stage == OrderStage::Reserved {
                                // Its OrderConfirmed never arrived: capture now.
                                p.stage = OrderStage::Confirmed;
                            } else if let Some(fact) = ledger::settled_after_confirmation(p) {
                                // Settled, but orders never heard: say it again, same event id.
                                let mut event = Envelope::new(
                                    order_id,
                                    Some(e.event_id),
                                    worker::event_of(p, fact.clone()),
                                );
                                event.event_id = fact.event_id(p.payment_id);
                                let payload = self.codec.encode(&event).await?;
                                handled.emit.push(Emit {
                                    topic: Topic::PaymentsEvents,
                                    key: order_id.to_owned(),
                                    payload,
                                    cause: index,
                                });
                                continue;
                            }
                        }
                        OrderEvent::OrderRefundRequested(r) => {
                            refunds::record_request(conn, r, d.traceparent.as_deref()).await?;
                            continue;
                        }
                        OrderEvent::OrderCancelled(_) => {
                            let Some(p) = payments.get_mut(order_id) else {
                                continue;
                            };
                            p.stage = OrderStage::Cancelled;
                            if p.status == Status::New {
                                p.status = Status::Abandoned;
                            }
                        }
                        _ => continue,
                    }
                    // What the worker publishes for this continues the order event's trace.
                    if let Some(p) = payments.get_mut(order_id)
                        && d.traceparent.is_some()
                    {
                        p.traceparent.clone_from(&d.traceparent);
                    }
                    changed.insert(order_id.to_owned(), Some(e.event_id));
                }
                Input::Webhook(e) => {
                    let PaymentWebhook::WebhookReceived(w) = &e.payload;
                    if !store::insert_webhook(conn, w).await? {
                        tracing::debug!(event = w.provider_event_id, "webhook seen before");
                        continue;
                    }
                    let Some(order_id) = w.order_id.as_deref() else {
                        store::mark_webhook(conn, &w.provider_event_id, "names no order").await?;
                        continue;
                    };
                    if let Some(p) = payments.get_mut(order_id) {
                        webhooks::apply_kept(conn, p).await?;
                        changed.entry(order_id.to_owned()).or_insert(None);
                    }
                }
            }
        }
        let mut rows: Vec<store::Saved> = changed
            .iter()
            .filter_map(|(id, cause)| payments.get(id).map(|p| store::Saved::plain(p, *cause)))
            .collect();
        rows.sort_by(|a, b| a.payment.order_id.cmp(&b.payment.order_id));
        store::save(conn, &rows, None).await?;
        Ok(handled)
    }

    fn forget(&mut self, _partitions: &[(Topic, i32)]) {}
}

/// What the payments processor runs with.
/// (Not `Debug`: the Stripe gateway's settings hold the secret key.)
#[derive(Clone)]
pub struct Config {
    /// The gateway it charges through.
    pub gateway: GatewayConfig,
    /// How its worker runs.
    pub worker: worker::WorkerConfig,
}

impl crate::Processor for Payments {
    const NAME: &'static str = "payments";
    const INPUTS: &'static [Topic] = &[Topic::OrdersEvents, Topic::PaymentsWebhooks];
    type Settings = settings::Settings;
    type Config = Config;

    fn config(
        settings: &settings::Settings,
        common: &crate::settings::Common,
    ) -> Result<Config, String> {
        settings.config(common)
    }

    /// Runs the payments processor (and its worker, charging through the configured gateway).
    async fn run(
        shared: &crate::Shared,
        codec: Arc<Codec>,
        config: &Config,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), crate::ProcessorError> {
        // The worker's own pool: a connection per call in flight, one for its listener, one to
        // claim.
        let size = u32::try_from(config.worker.concurrency)
            .unwrap_or(u32::MAX)
            .saturating_add(2);
        let Some(pool) =
            crate::runtime::connect(&shared.runtime, size, &mut shutdown.clone()).await
        else {
            return Ok(());
        };
        match &config.gateway {
            GatewayConfig::Simulated(sim) => {
                let gateway = gateway::simulated::Simulated::new(pool.clone(), *sim);
                run_with(shared, codec, config, pool, gateway, shutdown).await
            }
            GatewayConfig::Stripe(stripe) => {
                let gateway = gateway::stripe::StripeGateway::new(stripe)
                    .map_err(crate::ProcessorError::Gateway)?;
                run_with(shared, codec, config, pool, gateway, shutdown).await
            }
        }
    }
}

/// Runs the handler and the worker charging through `gateway`.
async fn run_with<G: gateway::Gateway>(
    shared: &crate::Shared,
    codec: Arc<Codec>,
    config: &Config,
    pool: sqlx::PgPool,
    gateway: G,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), crate::ProcessorError> {
    let name = gateway.name();
    tracing::info!(gateway = name, "payments charging through");
    let gateway = Arc::new(gateway);
    let worker = tokio::spawn(worker::run(
        pool.clone(),
        codec.clone(),
        gateway.clone(),
        config.worker.clone(),
        shutdown.clone(),
    ));
    let refunds = tokio::spawn(refunds::run(pool, codec.clone(), gateway, shutdown.clone()));
    Ok(crate::runtime::run(
        &shared.runtime,
        Payments::new(codec, name),
        shutdown,
        vec![worker, refunds],
    )
    .await?)
}
