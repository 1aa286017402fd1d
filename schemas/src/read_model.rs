//! The order status read model the orders processor keeps for the API: the view
//! `orders.order_status`, and the channel each batch notifies with the ids of orders it changed.

/// The Postgres LISTEN/NOTIFY channel carrying changed order ids.
pub const ORDER_STATUS_CHANNEL: &str = "kassa_order_status";
