//! Rust types for every event, one module per topic; each mirrors its `schemas/avro/<topic>.avsc`.

/// Implements `order_id()` for a payload union whose every event names its order.
macro_rules! order_keyed {
    ($name:ident { $($variant:ident),+ $(,)? }) => {
        impl $name {
            /// The order the event is about.
            pub fn order_id(&self) -> &str {
                match self {
                    $(Self::$variant(e) => &e.order_id,)+
                }
            }
        }
    };
}

pub mod checkout;
pub mod expiry;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod samples;

/// Why an order line could not be reserved (Avro enum `RejectReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not enough units free.
    OutOfStock,
    /// The SKU is not stocked.
    UnknownSku,
    /// Quantity zero, negative or over the limit.
    InvalidQuantity,
    /// Anything a newer writer added that this reader does not know.
    Other,
}
