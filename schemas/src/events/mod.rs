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
pub mod fulfilment;
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

impl RejectReason {
    /// Every reason.
    pub const ALL: [RejectReason; 4] = [
        RejectReason::OutOfStock,
        RejectReason::UnknownSku,
        RejectReason::InvalidQuantity,
        RejectReason::Other,
    ];

    /// The snake-case name: the Avro symbol, and what is stored and served.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::OutOfStock => "out_of_stock",
            RejectReason::UnknownSku => "unknown_sku",
            RejectReason::InvalidQuantity => "invalid_quantity",
            RejectReason::Other => "other",
        }
    }

    /// The reason named `name` (None: no such reason).
    pub fn parse(name: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}
