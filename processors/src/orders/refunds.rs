//! Refunds of completed orders, kept apart from the state machine (a refunded order stays
//! `completed`, its refunded total beside it). A request from `orders.requests` is checked
//! against what remains to refund and to restock, then passed on to payments
//! (`OrderRefundRequested`); what payments says came of it is recorded and published
//! (`OrderRefunded`, with a restock command per returned SKU, or `OrderRefundFailed`). Every
//! step is in the audit trail.

use kassa_schemas::events::inventory::{InventoryCommand, Restock};
use kassa_schemas::events::orders::{
    OrderEvent, OrderRefundFailed, OrderRefundRequested, OrderRefunded, OrderRequest,
    RefundRestock,
};
use kassa_schemas::events::payments::PaymentEvent;
use serde_json::json;
use sqlx::{PgConnection, Row};

use super::machine::{Order, Signal, State};

/// Where a refund stands, as the orders processor knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundState {
    /// Passed to payments; no answer yet.
    Requested,
    /// Made at the provider.
    Refunded,
    /// Refused (here or at the provider).
    Failed,
}

impl RefundState {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefundState::Requested => "requested",
            RefundState::Refunded => "refunded",
            RefundState::Failed => "failed",
        }
    }

    fn parse(name: &str) -> RefundState {
        match name {
            "refunded" => RefundState::Refunded,
            "failed" => RefundState::Failed,
            _ => RefundState::Requested,
        }
    }
}

/// One refund of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    /// Its id (UUID text, the API's).
    pub refund_id: String,
    /// The order.
    pub order_id: String,
    /// Amount, in minor units.
    pub amount_minor: i64,
    /// Why.
    pub reason: String,
    /// Units that come back to stock once it is made.
    pub restock: Vec<RefundRestock>,
    /// Who asked.
    pub requested_by: String,
    /// Where it stands.
    pub state: RefundState,
    /// Why it failed, or what the provider said.
    pub detail: Option<String>,
}

/// Whether `signal` is about a refund (handled here, not by the state machine).
pub fn is_refund(signal: Signal<'_>) -> bool {
    matches!(
        signal,
        Signal::Request(OrderRequest::RefundRequested(_))
            | Signal::Payment(PaymentEvent::PaymentRefundFailed(_))
    ) || matches!(signal, Signal::Payment(PaymentEvent::PaymentRefunded(r)) if r.refund_id.is_some())
}

/// What a refund signal did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The refund as it now is (None: nothing changed).
    pub refund: Option<Refund>,
    /// Events to publish on `orders.events`.
    pub events: Vec<OrderEvent>,
    /// Commands to send on `inventory.commands`.
    pub commands: Vec<InventoryCommand>,
    /// The audit-trail step: (trigger, what it says), or why nothing changed.
    pub trail: (Option<&'static str>, String),
}

/// Units of each SKU of `order` still free to restock: ordered, less what refunds not failed
/// (other than `except`) restock.
fn restockable(order: &Order, refunds: &[Refund], sku: &str) -> i64 {
    let ordered: i64 = order
        .lines
        .values()
        .filter(|l| l.sku == sku)
        .map(|l| i64::from(l.quantity))
        .sum();
    let taken: i64 = refunds
        .iter()
        .filter(|r| r.state != RefundState::Failed)
        .flat_map(|r| &r.restock)
        .filter(|r| r.sku == sku)
        .map(|r| i64::from(r.quantity))
        .sum();
    ordered - taken
}

/// What the order has had refunded (made at the provider).
fn refunded(refunds: &[Refund]) -> i64 {
    refunds
        .iter()
        .filter(|r| r.state == RefundState::Refunded)
        .map(|r| r.amount_minor)
        .sum()
}

/// Applies a refund signal to the order's refunds (`refunds`, the order's, as stored).
pub fn decide(order: Option<&Order>, refunds: &[Refund], signal: Signal<'_>) -> Outcome {
    match signal {
        Signal::Request(OrderRequest::RefundRequested(r)) => {
            if refunds.iter().any(|x| x.refund_id == r.refund_id) {
                return Outcome {
                    trail: (None, format!("refund {} is known already", r.refund_id)),
                    ..Outcome::default()
                };
            }
            let mut refund = Refund {
                refund_id: r.refund_id.clone(),
                order_id: r.order_id.clone(),
                amount_minor: r.amount_minor,
                reason: r.reason.clone(),
                restock: r.restock.clone(),
                requested_by: r.requested_by.clone(),
                state: RefundState::Requested,
                detail: None,
            };
            let refused = match order {
                None => Some("the order is not known".to_owned()),
                Some(o) if o.state != State::Completed => Some(format!(
                    "the order is {}: only a completed order is refunded",
                    o.state.as_str()
                )),
                Some(o) => {
                    let committed: i64 = refunds
                        .iter()
                        .filter(|x| x.state != RefundState::Failed)
                        .map(|x| x.amount_minor)
                        .sum();
                    let remains = o.total_minor() - committed;
                    if r.amount_minor <= 0 || r.amount_minor > remains {
                        Some(format!(
                            "{} is more than the {remains} that remains to refund",
                            r.amount_minor
                        ))
                    } else {
                        r.restock
                            .iter()
                            .find(|x| {
                                x.quantity <= 0
                                    || i64::from(x.quantity) > restockable(o, refunds, &x.sku)
                            })
                            .map(|x| {
                                format!(
                                    "{} of {} cannot come back: {} of the order's remain",
                                    x.quantity,
                                    x.sku,
                                    restockable(o, refunds, &x.sku).max(0)
                                )
                            })
                    }
                }
            };
            if let Some(why) = refused {
                refund.state = RefundState::Failed;
                refund.detail = Some(why.clone());
                return Outcome {
                    events: vec![
                        OrderRefundFailed {
                            order_id: r.order_id.clone(),
                            refund_id: r.refund_id.clone(),
                            amount_minor: r.amount_minor,
                            reason: why.clone(),
                        }
                        .into(),
                    ],
                    refund: Some(refund),
                    commands: Vec::new(),
                    trail: (Some("RefundRefused"), why),
                };
            }
            let currency = order
                .and_then(|o| o.terms.as_ref())
                .map(|t| t.currency.clone())
                .unwrap_or_default();
            Outcome {
                events: vec![
                    OrderRefundRequested {
                        order_id: r.order_id.clone(),
                        refund_id: r.refund_id.clone(),
                        amount_minor: r.amount_minor,
                        currency: currency.clone(),
                    }
                    .into(),
                ],
                trail: (
                    Some("RefundRequested"),
                    format!(
                        "refund {} {currency} asked by {}: {}",
                        r.amount_minor, r.requested_by, r.reason
                    ),
                ),
                refund: Some(refund),
                commands: Vec::new(),
            }
        }
        Signal::Payment(PaymentEvent::PaymentRefunded(p)) => {
            let Some(mut refund) = pending(refunds, p.refund_id.as_deref()) else {
                return Outcome {
                    trail: (None, "no refund of this id waits for the provider".into()),
                    ..Outcome::default()
                };
            };
            refund.state = RefundState::Refunded;
            refund.detail = Some(format!("{} {} refunded at {}", p.refunded_minor, p.currency, p.provider));
            let total = refunded(refunds) + refund.amount_minor;
            let full = order.is_some_and(|o| total >= o.total_minor());
            let commands = refund
                .restock
                .iter()
                .map(|x| {
                    Restock {
                        sku: x.sku.clone(),
                        quantity: x.quantity,
                        order_id: None,
                        line_index: None,
                        reason: format!(
                            "returned with refund {} of order {}",
                            refund.refund_id, refund.order_id
                        ),
                    }
                    .into()
                })
                .collect();
            Outcome {
                events: vec![
                    OrderRefunded {
                        order_id: refund.order_id.clone(),
                        refund_id: refund.refund_id.clone(),
                        amount_minor: refund.amount_minor,
                        refunded_total_minor: total,
                        currency: p.currency.clone(),
                        full,
                        reason: refund.reason.clone(),
                        restock: refund.restock.clone(),
                    }
                    .into(),
                ],
                commands,
                trail: (
                    Some("Refunded"),
                    format!(
                        "refunded {} {} ({total} in all{})",
                        refund.amount_minor,
                        p.currency,
                        if full { ", the whole order" } else { "" }
                    ),
                ),
                refund: Some(refund),
            }
        }
        Signal::Payment(PaymentEvent::PaymentRefundFailed(p)) => {
            let Some(mut refund) = pending(refunds, Some(&p.refund_id)) else {
                return Outcome {
                    trail: (None, "no refund of this id waits for the provider".into()),
                    ..Outcome::default()
                };
            };
            let why = format!("the provider refused: {} ({})", p.message, p.code);
            refund.state = RefundState::Failed;
            refund.detail = Some(why.clone());
            Outcome {
                events: vec![
                    OrderRefundFailed {
                        order_id: refund.order_id.clone(),
                        refund_id: refund.refund_id.clone(),
                        amount_minor: refund.amount_minor,
                        reason: why.clone(),
                    }
                    .into(),
                ],
                commands: Vec::new(),
                trail: (Some("RefundFailed"), why),
                refund: Some(refund),
            }
        }
        _ => Outcome {
            trail: (None, "not about a refund".into()),
            ..Outcome::default()
        },
    }
}

/// The refund `id` if it waits for the provider.
fn pending(refunds: &[Refund], id: Option<&str>) -> Option<Refund> {
    refunds
        .iter()
        .find(|r| Some(r.refund_id.as_str()) == id && r.state == RefundState::Requested)
        .cloned()
}

/// The refunds of `orders`, for the batch (the orders' rows are locked already).
pub async fn load(conn: &mut PgConnection, orders: &[&str]) -> Result<Vec<Refund>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT refund_id, order_id, amount_minor, reason, restock, requested_by, state, detail
         FROM orders.refunds WHERE order_id = ANY($1) ORDER BY created_at, refund_id",
    )
    .bind(orders)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Refund {
            refund_id: r.get("refund_id"),
            order_id: r.get("order_id"),
            amount_minor: r.get("amount_minor"),
            reason: r.get("reason"),
            restock: r
                .get::<sqlx::types::Json<Vec<(String, i32)>>, _>("restock")
                .0
                .into_iter()
                .map(|(sku, quantity)| RefundRestock { sku, quantity })
                .collect(),
            requested_by: r.get("requested_by"),
            state: RefundState::parse(r.get("state")),
            detail: r.get("detail"),
        })
        .collect())
}

/// Stores `refund` as it now is, and the order's refunded total.
pub async fn save(conn: &mut PgConnection, refund: &Refund) -> Result<(), sqlx::Error> {
    let restock: Vec<(&str, i32)> = refund
        .restock
        .iter()
        .map(|r| (r.sku.as_str(), r.quantity))
        .collect();
    sqlx::query(
        "INSERT INTO orders.refunds (refund_id, order_id, amount_minor, reason, restock, requested_by, state, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (refund_id) DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = now()",
    )
    .bind(&refund.refund_id)
    .bind(&refund.order_id)
    .bind(refund.amount_minor)
    .bind(&refund.reason)
    .bind(json!(restock))
    .bind(&refund.requested_by)
    .bind(refund.state.as_str())
    .bind(&refund.detail)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE orders.orders SET refunded_minor = (
             SELECT coalesce(sum(amount_minor), 0) FROM orders.refunds
             WHERE order_id = $1 AND state = 'refunded'), updated_at = now()
         WHERE order_id = $1",
    )
    .bind(&refund.order_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::machine::{Line, LineStatus, Terms};
    use kassa_schemas::events::payments::PaymentRefunded;

    /// A completed order of two mugs at 2,500 and a tee at 1,000 (6,000 EUR).
    fn completed() -> Order {
        let mut order = Order::new("o-1", "c-1");
        order.state = State::Completed;
        order.terms = Some(Terms {
            line_count: 2,
            currency: "EUR".into(),
            payment_method_id: "pm".into(),
            fulfilment: None,
            storefront: None,
        });
        for (index, sku, quantity, price) in [(0, "MUG", 2, 2500), (1, "TEE", 1, 1000)] {
            order.lines.insert(
                index,
                Line {
                    sku: sku.into(),
                    quantity,
                    unit_price_minor: price,
                    status: LineStatus::Committed,
                    expires_at: None,
                },
            );
        }
        order
    }

    fn asked(id: &str, amount: i64, restock: &[(&str, i32)]) -> OrderRequest {
        OrderRequest::RefundRequested(kassa_schemas::events::orders::RefundRequested {
            order_id: "o-1".into(),
            refund_id: id.into(),
            amount_minor: amount,
            reason: "returned".into(),
            restock: restock
                .iter()
                .map(|(sku, quantity)| RefundRestock {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
            requested_by: "admin".into(),
        })
    }

    fn made(id: &str, amount: i64) -> PaymentEvent {
        PaymentEvent::PaymentRefunded(PaymentRefunded {
            order_id: "o-1".into(),
            payment_id: uuid::Uuid::nil(),
            provider: "simulated".into(),
            provider_ref: Some("pi_1".into()),
            refunded_minor: amount,
            currency: "EUR".into(),
            refund_id: Some(id.into()),
        })
    }

    #[test]
    fn a_partial_then_a_full_refund_are_asked_made_and_restock_what_was_named() {
        let order = completed();
        let mut known: Vec<Refund> = Vec::new();
        let request = asked("r-1", 1500, &[("MUG", 1)]);
        let out = decide(Some(&order), &known, Signal::Request(&request));
        assert_eq!(out.trail.0, Some("RefundRequested"));
        assert!(matches!(&out.events[..], [OrderEvent::OrderRefundRequested(e)] if e.amount_minor == 1500 && e.currency == "EUR"));
        known.push(out.refund.unwrap());
        // A redelivered request changes nothing.
        assert!(decide(Some(&order), &known, Signal::Request(&request)).refund.is_none());

        let paid = made("r-1", 1500);
        let out = decide(Some(&order), &known, Signal::Payment(&paid));
        let refund = out.refund.unwrap();
        assert_eq!(refund.state, RefundState::Refunded);
        assert!(matches!(&out.events[..], [OrderEvent::OrderRefunded(e)] if e.refunded_total_minor == 1500 && !e.full));
        assert!(matches!(&out.commands[..], [InventoryCommand::Restock(r)] if r.sku == "MUG" && r.quantity == 1 && r.order_id.is_none()));
        known[0] = refund;
        // The same answer again is not a second refund.
        assert!(decide(Some(&order), &known, Signal::Payment(&paid)).refund.is_none());

        let rest = asked("r-2", 4500, &[("TEE", 1)]);
        known.push(decide(Some(&order), &known, Signal::Request(&rest)).refund.unwrap());
        let out = decide(Some(&order), &known, Signal::Payment(&made("r-2", 4500)));
        assert!(matches!(&out.events[..], [OrderEvent::OrderRefunded(e)] if e.refunded_total_minor == 6000 && e.full));
    }

    #[test]
    fn more_than_remains_an_order_not_completed_or_units_not_ordered_are_refused() {
        let order = completed();
        let taken = vec![Refund {
            refund_id: "r-1".into(),
            order_id: "o-1".into(),
            amount_minor: 5000,
            reason: "x".into(),
            restock: vec![RefundRestock {
                sku: "MUG".into(),
                quantity: 2,
            }],
            requested_by: "admin".into(),
            state: RefundState::Requested,
            detail: None,
        }];
        let refused = |order: Option<&Order>, request: OrderRequest| {
            let out = decide(order, &taken, Signal::Request(&request));
            assert_eq!(out.refund.as_ref().map(|r| r.state), Some(RefundState::Failed));
            assert!(matches!(&out.events[..], [OrderEvent::OrderRefundFailed(_)]));
            out.trail.1
        };
        assert!(refused(Some(&order), asked("r-2", 1001, &[])).contains("1000 that remains"));
        assert!(refused(Some(&order), asked("r-2", 10, &[("MUG", 1)])).contains("0 of the order's remain"));
        assert!(refused(Some(&order), asked("r-2", 10, &[("HAT", 1)])).contains("HAT"));
        let mut pending = completed();
        pending.state = State::Confirmed;
        assert!(refused(Some(&pending), asked("r-2", 10, &[])).contains("only a completed order"));
        assert!(refused(None, asked("r-2", 10, &[])).contains("not known"));
        // A failed refund gives its amount back.
        let mut failed = taken.clone();
        failed[0].state = RefundState::Failed;
        let out = decide(Some(&order), &failed, Signal::Request(&asked("r-2", 6000, &[("MUG", 2)])));
        assert_eq!(out.refund.map(|r| r.state), Some(RefundState::Requested));
    }
}
