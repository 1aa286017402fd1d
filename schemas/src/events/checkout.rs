//! `checkout.requests`: one message per order line, keyed by SKU (API → inventory).

use crate::envelope::payload_union;
use crate::topics::Topic;
use serde::{Deserialize, Serialize};

/// Reserve stock for one order line; carries everything inventory and orders need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    /// Order id assigned by the API.
    pub order_id: String,
    /// Zero-based line position.
    pub line_index: i32,
    /// Lines in the order.
    pub line_count: i32,
    /// SKU to reserve.
    pub sku: String,
    /// Units to reserve.
    pub quantity: i32,
    /// Customer placing the order.
    pub customer_id: String,
    /// ISO 4217 currency of the price.
    pub currency: String,
    /// Catalog unit price in minor units (priced on the server).
    pub unit_price_minor: i64,
    /// Payment method to authorize.
    pub payment_method_id: String,
    /// Hold length before the order may expire it.
    pub hold_seconds: i32,
    /// Whether the line passed the flash-sale gate.
    pub flash_sale: bool,
    /// The sale generation its units were admitted to (None outside a sale, and from writers
    /// before it was added): given-back units go to that sale only.
    pub flash_sale_generation: Option<String>,
    /// Where the order ships and whom to tell (None when the order gave none, and from writers
    /// before it was added); the same on every line of the order.
    pub fulfilment: Option<Box<crate::events::fulfilment::Fulfilment>>,
    /// The storefront the order was placed at, whose webhooks hear of it (None from writers
    /// before it was added).
    pub storefront: Option<String>,
}

payload_union! {
    /// Everything on `checkout.requests`.
    CheckoutPayload for Topic::CheckoutRequests => { Reserve }
}
