//! `orders.requests` (storefront → orders) and `orders.events` (orders → everyone), keyed by order id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RejectReason;
use crate::envelope::payload_union;
use crate::topics::Topic;

/// The customer asks to cancel the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequested {
    /// The order.
    pub order_id: String,
    /// Customer asking.
    pub customer_id: String,
    /// Free text from the storefront.
    pub reason: String,
}

/// The customer asks to keep the reservation longer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRenewalRequested {
    /// The order.
    pub order_id: String,
    /// Customer asking.
    pub customer_id: String,
    /// New hold length from now.
    pub hold_seconds: i32,
}

/// Units of one SKU of an order that come back to stock with a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRestock {
    /// The SKU (one of the order's).
    pub sku: String,
    /// Units that come back.
    pub quantity: i32,
}

/// An operator asks to refund part or all of a completed order's captured payment, and to
/// restock returned units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequested {
    /// The order.
    pub order_id: String,
    /// The refund's id (UUID text), assigned by the API.
    pub refund_id: String,
    /// Amount to refund, in minor units of the order's currency.
    pub amount_minor: i64,
    /// Why, for the audit trail.
    pub reason: String,
    /// Units that come back to stock once the refund is made.
    pub restock: Vec<RefundRestock>,
    /// Who asked (the admin key's name).
    pub requested_by: String,
}

payload_union! {
    /// Everything on `orders.requests`.
    OrderRequest for Topic::OrdersRequests => { CancelRequested, HoldRenewalRequested, RefundRequested }
}
order_keyed!(OrderRequest {
    CancelRequested,
    HoldRenewalRequested,
    RefundRequested
});

/// One priced order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Zero-based position.
    pub line_index: i32,
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Unit price in minor units.
    pub unit_price_minor: i64,
    /// quantity × unit price, in minor units.
    pub line_total_minor: i64,
}

/// Why an order was cancelled (Avro enum `CancelReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The customer asked.
    CustomerRequested,
    /// The payment was declined.
    PaymentDeclined,
    /// 3-D Secure was not completed in time.
    PaymentActionExpired,
    /// The reservation hold ran out.
    HoldExpired,
    /// Capturing the payment failed.
    CaptureFailed,
    /// Anything a newer writer added that this reader does not know.
    Other,
}

impl CancelReason {
    /// The snake-case name: the Avro symbol, and what is stored and served.
    pub const fn as_str(self) -> &'static str {
        match self {
            CancelReason::CustomerRequested => "customer_requested",
            CancelReason::PaymentDeclined => "payment_declined",
            CancelReason::PaymentActionExpired => "payment_action_expired",
            CancelReason::HoldExpired => "hold_expired",
            CancelReason::CaptureFailed => "capture_failed",
            CancelReason::Other => "other",
        }
    }
}

/// Every line is held: payment may be authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReserved {
    /// The order.
    pub order_id: String,
    /// Customer.
    pub customer_id: String,
    /// The order lines.
    pub lines: Vec<OrderLine>,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Payment method to authorize.
    pub payment_method_id: String,
    /// When the earliest hold runs out.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub hold_expires_at: DateTime<Utc>,
    /// The storefront the order was placed at, whose webhooks hear of it (None from writers
    /// before it was added).
    pub storefront: Option<String>,
    /// Where it ships and whom to tell (None when the order gave none, and from writers before
    /// it was added).
    pub fulfilment: Option<Box<crate::events::fulfilment::Fulfilment>>,
}

/// Payment needs the customer (3-D Secure) before a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderActionRequired {
    /// The order.
    pub order_id: String,
    /// When the order is cancelled if the action is not done.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub action_due_at: DateTime<Utc>,
}

/// The payment is authorized; stock is being committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAuthorized {
    /// The order.
    pub order_id: String,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
}

/// Stock is committed: the payment may be captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// The order.
    pub order_id: String,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
}

/// Paid and committed: the fulfilment event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCompleted {
    /// The order.
    pub order_id: String,
    /// Customer.
    pub customer_id: String,
    /// The order lines.
    pub lines: Vec<OrderLine>,
    /// Total in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Where to ship and whom to tell (None when the order gave none, and from writers before it
    /// was added).
    pub fulfilment: Option<Box<crate::events::fulfilment::Fulfilment>>,
}

/// A line could not be reserved; nothing was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRejected {
    /// The order.
    pub order_id: String,
    /// Why the first rejected line was rejected.
    pub reason: RejectReason,
    /// The rejected line.
    pub rejected_line_index: i32,
    /// The storefront the order was placed at (None from writers before it was added).
    pub storefront: Option<String>,
    /// The customer (None from writers before it was added).
    pub customer_id: Option<String>,
    /// Whom to tell (None when the order gave none, and from writers before it was added).
    pub fulfilment: Option<Box<crate::events::fulfilment::Fulfilment>>,
}

/// The order was cancelled and every step is being undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// The order.
    pub order_id: String,
    /// Why.
    pub reason: CancelReason,
    /// Human-readable detail.
    pub detail: String,
}

/// The reservation hold was extended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRenewed {
    /// The order.
    pub order_id: String,
    /// New hold end.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub hold_expires_at: DateTime<Utc>,
}

/// The order has waited past its progress deadline: whoever it waits on answers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStalled {
    /// The order.
    pub order_id: String,
    /// The state it waits in (`authorized` or `confirmed`).
    pub state: String,
    /// When the progress deadline was due.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub since: DateTime<Utc>,
}

/// A refund of a completed order is to be made at the provider (payments makes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRefundRequested {
    /// The order.
    pub order_id: String,
    /// The refund.
    pub refund_id: String,
    /// Amount to refund, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
}

/// Money went back to the customer: part or all of the captured payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRefunded {
    /// The order.
    pub order_id: String,
    /// The refund.
    pub refund_id: String,
    /// Amount of this refund, in minor units.
    pub amount_minor: i64,
    /// Refunded of the order so far, this refund included.
    pub refunded_total_minor: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Whether the whole captured amount is now refunded.
    pub full: bool,
    /// Why, as the operator gave it.
    pub reason: String,
    /// Units restocked with this refund.
    pub restock: Vec<RefundRestock>,
}

/// A refund was not made (refused by orders, or by the provider).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRefundFailed {
    /// The order.
    pub order_id: String,
    /// The refund.
    pub refund_id: String,
    /// Amount asked for, in minor units.
    pub amount_minor: i64,
    /// Why.
    pub reason: String,
}

payload_union! {
    /// Everything on `orders.events`.
    OrderEvent for Topic::OrdersEvents => {
        OrderReserved, OrderActionRequired, OrderAuthorized, OrderConfirmed,
        OrderCompleted, OrderRejected, OrderCancelled, HoldRenewed, OrderStalled,
        OrderRefundRequested, OrderRefunded, OrderRefundFailed,
    }
}
order_keyed!(OrderEvent {
    OrderReserved,
    OrderActionRequired,
    OrderAuthorized,
    OrderConfirmed,
    OrderCompleted,
    OrderRejected,
    OrderCancelled,
    HoldRenewed,
    OrderStalled,
    OrderRefundRequested,
    OrderRefunded,
    OrderRefundFailed,
});
