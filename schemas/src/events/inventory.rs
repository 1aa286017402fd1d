//! `inventory.commands` (keyed by SKU) and `inventory.events` (keyed by order id).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RejectReason;
use crate::envelope::payload_union;
use crate::topics::Topic;

/// The most units one SKU may count in all (on hand + reserved + committed): counts and
/// deliveries beyond it are refused (by the API, and by inventory, which owns the figure).
pub const MAX_STOCK_UNITS: i64 = 1_000_000_000_000;

/// Give back a held reservation (compensation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Order holding the reservation.
    pub order_id: String,
    /// The order line.
    pub line_index: i32,
    /// The SKU (also the message key).
    pub sku: String,
    /// Why, for the audit trail.
    pub reason: String,
}

/// Turn a held reservation into sold stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Order holding the reservation.
    pub order_id: String,
    /// The order line.
    pub line_index: i32,
    /// The SKU (also the message key).
    pub sku: String,
}

/// Add units to on-hand stock (delivery, or compensation for committed stock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restock {
    /// The SKU (also the message key).
    pub sku: String,
    /// Units added.
    pub quantity: i32,
    /// The order whose committed stock comes back, for compensation.
    pub order_id: Option<String>,
    /// The order line coming back, for compensation.
    pub line_index: Option<i32>,
    /// Why, for the audit trail.
    pub reason: String,
}

/// Set on-hand stock to an absolute figure (stock count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetStock {
    /// The SKU (also the message key).
    pub sku: String,
    /// Units on hand, not counting active reservations.
    pub on_hand: i64,
    /// Why, for the audit trail.
    pub reason: String,
}

payload_union! {
    /// Everything on `inventory.commands`.
    InventoryCommand for Topic::InventoryCommands => { Release, Commit, Restock, SetStock }
}

/// The order a line belongs to, as the checkout request described it: passed on so the orders
/// processor joins an order's lines from `inventory.events` alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineOrder {
    /// Lines in the order.
    pub line_count: i32,
    /// Customer placing the order.
    pub customer_id: String,
    /// ISO 4217 currency of the price.
    pub currency: String,
    /// Catalog unit price of this line in minor units (priced by the API).
    pub unit_price_minor: i64,
    /// Payment method to authorize.
    pub payment_method_id: String,
    /// The order's shipping address and contact (None when it gave none, and from writers before
    /// it was added).
    pub fulfilment: Option<Box<crate::events::fulfilment::Fulfilment>>,
    /// The storefront the order was placed at (None from writers before it was added).
    pub storefront: Option<String>,
}

impl LineOrder {
    /// The order context of a checkout request's line.
    pub fn of(request: &crate::events::checkout::Reserve) -> Self {
        Self {
            line_count: request.line_count,
            customer_id: request.customer_id.clone(),
            currency: request.currency.clone(),
            unit_price_minor: request.unit_price_minor,
            payment_method_id: request.payment_method_id.clone(),
            fulfilment: request.fulfilment.clone(),
            storefront: request.storefront.clone(),
        }
    }
}

/// Units are held for an order line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// The order.
    pub order_id: String,
    /// The order line.
    pub line_index: i32,
    /// The SKU.
    pub sku: String,
    /// Units held.
    pub quantity: i32,
    /// When the hold may be expired.
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub expires_at: DateTime<Utc>,
    /// The order the line belongs to (None from writers before it was added).
    pub order: Option<LineOrder>,
}

/// An order line could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The order.
    pub order_id: String,
    /// The order line.
    pub line_index: i32,
    /// The SKU.
    pub sku: String,
    /// Units asked for.
    pub quantity: i32,
    /// Why.
    pub reason: RejectReason,
    /// The order the line belongs to (None from writers before it was added).
    pub order: Option<LineOrder>,
}

/// A held reservation went back to stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The order.
    pub order_id: String,
    /// The order line.
    pub line_index: i32,
    /// The SKU.
    pub sku: String,
    /// Units released.
    pub quantity: i32,
}

/// A held reservation became sold stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The order.
    pub order_id: String,
    /// The order line.
    pub line_index: i32,
    /// The SKU.
    pub sku: String,
    /// Units committed.
    pub quantity: i32,
}

/// On-hand stock changed by a restock or stock count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restocked {
    /// The SKU.
    pub sku: String,
    /// Change in units on hand.
    pub quantity_delta: i64,
    /// Units on hand afterwards.
    pub on_hand: i64,
    /// The order whose committed stock came back, for compensation.
    pub order_id: Option<String>,
    /// Why.
    pub reason: String,
}

payload_union! {
    /// Everything on `inventory.events`.
    InventoryEvent for Topic::InventoryEvents => { Reserved, Rejected, Released, Committed, Restocked }
}

impl InventoryEvent {
    /// The order the event is about (None: a stock-only event, keyed by SKU).
    pub fn order_id(&self) -> Option<&str> {
        match self {
            Self::Reserved(e) => Some(&e.order_id),
            Self::Rejected(e) => Some(&e.order_id),
            Self::Released(e) => Some(&e.order_id),
            Self::Committed(e) => Some(&e.order_id),
            Self::Restocked(e) => e.order_id.as_deref(),
        }
    }
}

impl InventoryCommand {
    /// The SKU the command is about (also its message key).
    pub fn sku(&self) -> &str {
        match self {
            Self::Release(c) => &c.sku,
            Self::Commit(c) => &c.sku,
            Self::Restock(c) => &c.sku,
            Self::SetStock(c) => &c.sku,
        }
    }
}
