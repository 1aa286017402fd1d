//! One example of every event type, for round-trip tests and demos.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::RejectReason;
use super::checkout::{CheckoutPayload, Reserve};
use super::expiry::{DeadlineKind, DeadlinePassed, ExpiryEvent};
use super::fulfilment::{Fulfilment, PostalAddress};
use super::inventory::*;
use super::orders::*;
use super::payments::*;
use crate::envelope::{Envelope, Payload};
use crate::topics::Topic;

/// The refund every refund sample is about.
const REFUND: &str = "0190b7a0-0000-7000-8000-00000000f00d";

/// An event of any topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// On `checkout.requests`.
    Checkout(Envelope<CheckoutPayload>),
    /// On `inventory.commands`.
    InventoryCommand(Envelope<InventoryCommand>),
    /// On `inventory.events`.
    InventoryEvent(Envelope<InventoryEvent>),
    /// On `orders.requests`.
    OrderRequest(Envelope<OrderRequest>),
    /// On `orders.events`.
    OrderEvent(Envelope<OrderEvent>),
    /// On `payments.events`.
    PaymentEvent(Envelope<PaymentEvent>),
    /// On `payments.webhooks`.
    PaymentWebhook(Envelope<PaymentWebhook>),
    /// On `expiry.events`.
    ExpiryEvent(Envelope<ExpiryEvent>),
}

/// Every (topic, event type) the schemas define, read from each topic's payload union.
pub fn event_types() -> std::collections::BTreeSet<(Topic, String)> {
    let mut types = std::collections::BTreeSet::new();
    for topic in Topic::ALL {
        let schema: serde_json::Value =
            serde_json::from_str(topic.schema_json()).expect("valid schema JSON");
        let fields = schema["fields"].as_array().expect("a record");
        let payload = fields
            .iter()
            .find(|f| f["name"] == "payload")
            .expect("a payload field");
        for branch in payload["type"].as_array().expect("a union") {
            types.insert((
                topic,
                branch["name"].as_str().expect("a named record").to_owned(),
            ));
        }
    }
    types
}

impl Sample {
    /// The (topic, event type) of the sample.
    pub fn event_type(&self) -> (Topic, String) {
        fn of<P: Payload>(e: &Envelope<P>) -> (Topic, String) {
            (P::TOPIC, e.event_type.clone())
        }
        match self {
            Sample::Checkout(e) => of(e),
            Sample::InventoryCommand(e) => of(e),
            Sample::InventoryEvent(e) => of(e),
            Sample::OrderRequest(e) => of(e),
            Sample::OrderEvent(e) => of(e),
            Sample::PaymentEvent(e) => of(e),
            Sample::PaymentWebhook(e) => of(e),
            Sample::ExpiryEvent(e) => of(e),
        }
    }
}

fn at(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).expect("valid timestamp")
}

fn line_order() -> LineOrder {
    LineOrder {
        line_count: 2,
        customer_id: "cus_1".into(),
        currency: "EUR".into(),
        unit_price_minor: 1999,
        payment_method_id: "pm_card_visa".into(),
        fulfilment: Some(Box::new(fulfilment())),
        storefront: Some("shop-1".into()),
    }
}

/// A shipping address and contact with every optional field set.
pub fn fulfilment() -> Fulfilment {
    let address = |name: &str| PostalAddress {
        name: name.into(),
        lines: vec!["Kassa Street 1".into(), "Floor 2".into()],
        city: "Berlin".into(),
        postal_code: "10115".into(),
        region: Some("BE".into()),
        country: "DE".into(),
        phone: Some("+49 30 1234567".into()),
    };
    Fulfilment {
        shipping: address("Ada Lovelace"),
        billing: Some(address("Ada's Accounts")),
        email: "ada@shop.example".into(),
    }
}

fn envelope<P: Payload>(order: &str, payload: impl Into<P>) -> Envelope<P> {
    Envelope::new(order, Some(Uuid::now_v7()), payload.into())
}

/// One sample of every event type, each with every optional field set in at least one sample.
pub fn all() -> Vec<Sample> {
    let order = Uuid::now_v7().to_string();
    let o = order.as_str();
    let payment_id = Uuid::now_v7();
    let line = |i: i32| OrderLine {
        line_index: i,
        sku: format!("SKU-{i}"),
        quantity: 2,
        unit_price_minor: 1999,
        line_total_minor: 3998,
    };
    let (order_id, pid, provider, provider_ref) = (
        o.to_owned(),
        payment_id,
        "stripe".to_owned(),
        Some("pi_123".to_owned()),
    );
    vec![
        Sample::Checkout(Envelope::new(
            o,
            None,
            CheckoutPayload::Reserve(Reserve {
                order_id: o.into(),
                line_index: 0,
                line_count: 2,
                sku: "SKU-0".into(),
                quantity: 2,
                customer_id: "cus_1".into(),
                currency: "EUR".into(),
                unit_price_minor: 1999,
                payment_method_id: "pm_card_visa".into(),
                hold_seconds: 900,
                flash_sale: true,
                flash_sale_generation: Some("5f0c2a7e9d1b4c3a8e6f1a2b3c4d5e6f".into()),
                fulfilment: Some(Box::new(fulfilment())),
                storefront: Some("shop-1".into()),
            }),
        )),
        Sample::InventoryCommand(envelope(
            o,
            Release {
                order_id: o.into(),
                line_index: 0,
                sku: "SKU-0".into(),
                reason: "order cancelled".into(),
            },
        )),
        Sample::InventoryCommand(envelope(
            o,
            Commit {
                order_id: o.into(),
                line_index: 1,
                sku: "SKU-1".into(),
            },
        )),
        Sample::InventoryCommand(envelope(
            o,
            Restock {
                sku: "SKU-0".into(),
                quantity: 5,
                order_id: Some(o.into()),
                line_index: Some(0),
                reason: "capture failed".into(),
            },
        )),
        Sample::InventoryCommand(envelope(
            "SKU-9",
            SetStock {
                sku: "SKU-9".into(),
                on_hand: 100,
                reason: "stock count".into(),
            },
        )),
        Sample::InventoryEvent(envelope(
            o,
            Reserved {
                order_id: o.into(),
                line_index: 0,
                sku: "SKU-0".into(),
                quantity: 2,
                expires_at: at(1_800_000_000_000),
                order: Some(line_order()),
            },
        )),
        Sample::InventoryEvent(envelope(
            o,
            Rejected {
                order_id: o.into(),
                line_index: 1,
                sku: "SKU-1".into(),
                quantity: 3,
                reason: RejectReason::OutOfStock,
                order: None,
            },
        )),
        Sample::InventoryEvent(envelope(
            o,
            Released {
                order_id: o.into(),
                line_index: 0,
                sku: "SKU-0".into(),
                quantity: 2,
            },
        )),
        Sample::InventoryEvent(envelope(
            o,
            Committed {
                order_id: o.into(),
                line_index: 0,
                sku: "SKU-0".into(),
                quantity: 2,
            },
        )),
        Sample::InventoryEvent(envelope(
            "SKU-9",
            Restocked {
                sku: "SKU-9".into(),
                quantity_delta: -3,
                on_hand: 97,
                order_id: None,
                reason: "stock count".into(),
            },
        )),
        Sample::OrderRequest(envelope(
            o,
            CancelRequested {
                order_id: o.into(),
                customer_id: "cus_1".into(),
                reason: "changed my mind".into(),
            },
        )),
        Sample::OrderRequest(envelope(
            o,
            HoldRenewalRequested {
                order_id: o.into(),
                customer_id: "cus_1".into(),
                hold_seconds: 300,
            },
        )),
        Sample::OrderRequest(envelope(
            o,
            RefundRequested {
                order_id: o.into(),
                refund_id: REFUND.into(),
                amount_minor: 1999,
                reason: "one mug arrived broken".into(),
                restock: vec![RefundRestock {
                    sku: "SKU-0".into(),
                    quantity: 1,
                }],
                requested_by: "admin-1".into(),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderReserved {
                order_id: o.into(),
                customer_id: "cus_1".into(),
                lines: vec![line(0), line(1)],
                total_minor: 7996,
                currency: "EUR".into(),
                payment_method_id: "pm_card_visa".into(),
                hold_expires_at: at(1_800_000_000_000),
                storefront: Some("shop-1".into()),
                fulfilment: Some(Box::new(fulfilment())),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderActionRequired {
                order_id: o.into(),
                action_due_at: at(1_800_000_600_000),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderAuthorized {
                order_id: o.into(),
                total_minor: 7996,
                currency: "EUR".into(),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderConfirmed {
                order_id: o.into(),
                total_minor: 7996,
                currency: "EUR".into(),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderCompleted {
                order_id: o.into(),
                customer_id: "cus_1".into(),
                lines: vec![line(0)],
                total_minor: 3998,
                currency: "EUR".into(),
                fulfilment: Some(Box::new(fulfilment())),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderRejected {
                order_id: o.into(),
                reason: RejectReason::UnknownSku,
                rejected_line_index: 1,
                storefront: Some("shop-1".into()),
                customer_id: Some("cus_1".into()),
                fulfilment: Some(Box::new(fulfilment())),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderCancelled {
                order_id: o.into(),
                reason: CancelReason::PaymentDeclined,
                detail: "card_declined".into(),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            HoldRenewed {
                order_id: o.into(),
                hold_expires_at: at(1_800_000_300_000),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderStalled {
                order_id: o.into(),
                state: "confirmed".into(),
                since: at(1_800_000_400_000),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderRefundRequested {
                order_id: o.into(),
                refund_id: REFUND.into(),
                amount_minor: 1999,
                currency: "EUR".into(),
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderRefunded {
                order_id: o.into(),
                refund_id: REFUND.into(),
                amount_minor: 1999,
                refunded_total_minor: 1999,
                currency: "EUR".into(),
                full: false,
                reason: "one mug arrived broken".into(),
                restock: vec![RefundRestock {
                    sku: "SKU-0".into(),
                    quantity: 1,
                }],
            },
        )),
        Sample::OrderEvent(envelope(
            o,
            OrderRefundFailed {
                order_id: o.into(),
                refund_id: REFUND.into(),
                amount_minor: 9999,
                reason: "9999 is more than the 7996 that remains to refund".into(),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentAuthorized {
                order_id: order_id.clone(),
                payment_id: pid,
                provider: provider.clone(),
                provider_ref: provider_ref.clone(),
                amount_minor: 7996,
                currency: "EUR".into(),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentActionRequired {
                order_id: order_id.clone(),
                payment_id: pid,
                provider: provider.clone(),
                provider_ref: provider_ref.clone(),
                client_secret: "pi_123_secret_abc".into(),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentFailed {
                order_id: order_id.clone(),
                payment_id: pid,
                provider: provider.clone(),
                provider_ref: None,
                step: PaymentStep::Authorize,
                code: "card_declined".into(),
                message: "Your card was declined.".into(),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentCaptured {
                order_id: order_id.clone(),
                payment_id: pid,
                provider: provider.clone(),
                provider_ref: provider_ref.clone(),
                amount_minor: 7996,
                currency: "EUR".into(),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentVoided {
                order_id: order_id.clone(),
                payment_id: pid,
                provider: provider.clone(),
                provider_ref: provider_ref.clone(),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentRefunded {
                order_id,
                payment_id: pid,
                provider,
                provider_ref,
                refunded_minor: 7996,
                currency: "EUR".into(),
                refund_id: Some(REFUND.into()),
            },
        )),
        Sample::PaymentEvent(envelope(
            o,
            PaymentRefundFailed {
                order_id: o.into(),
                payment_id: pid,
                provider: "stripe".into(),
                provider_ref: Some("pi_123".into()),
                refund_id: REFUND.into(),
                amount_minor: 1999,
                code: "charge_disputed".into(),
                message: "the charge is disputed".into(),
            },
        )),
        Sample::PaymentWebhook(Envelope::new(
            o,
            None,
            PaymentWebhook::WebhookReceived(WebhookReceived {
                provider: "stripe".into(),
                provider_event_id: "evt_1".into(),
                provider_event_type: "payment_intent.succeeded".into(),
                order_id: Some(o.into()),
                payment_intent_id: Some("pi_123".into()),
                received_at: at(1_800_000_000_123),
                body: r#"{"id":"evt_1"}"#.into(),
            }),
        )),
        Sample::ExpiryEvent(envelope(
            o,
            DeadlinePassed {
                order_id: o.into(),
                kind: DeadlineKind::PaymentAction,
                due_at: at(1_800_000_000_000),
                fired_at: at(1_800_000_000_900),
            },
        )),
    ]
}
