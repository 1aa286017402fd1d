//! The effects of entering a state: the events to publish and the inventory commands to send.

use super::*;

/// The effects of a step: events to publish and commands to send.
pub(super) fn enter(
    order: &mut Order,
    trigger: Trigger,
    signal: Signal<'_>,
    policy: &Policy,
    now: DateTime<Utc>,
    out: &mut Applied,
) {
    let id = order.id.clone();
    let terms = order.terms.clone();
    let (currency, payment_method_id) = terms
        .map(|t| (t.currency, t.payment_method_id))
        .unwrap_or_default();
    match trigger {
        T::AllLinesReserved => {
            let hold = order
                .lines
                .values()
                .filter_map(|l| l.expires_at)
                .min()
                .unwrap_or(now);
            order.hold_expires_at = Some(hold);
            out.events.push(
                OrderReserved {
                    order_id: id,
                    customer_id: order.customer_id.clone(),
                    lines: order.order_lines(),
                    total_minor: order.total_minor(),
                    currency,
                    payment_method_id,
                    hold_expires_at: hold,
                    storefront: order.terms.as_ref().and_then(|t| t.storefront.clone()),
                    fulfilment: order.terms.as_ref().and_then(|t| t.fulfilment.clone()),
                }
                .into(),
            );
        }
        T::LineRejected if order.state == Rejected && order.reason.is_none() => {
            let Signal::Inventory(InventoryEvent::Rejected(r)) = signal else {
                return;
            };
            order.reason = Some(r.reason.as_str().into());
            order.detail = Some(format!(
                "line {} ({}) could not be reserved",
                r.line_index, r.sku
            ));
            out.events.push(
                OrderRejected {
                    order_id: id,
                    reason: r.reason,
                    rejected_line_index: r.line_index,
                    storefront: r.order.as_ref().and_then(|o| o.storefront.clone()),
                    customer_id: r.order.as_ref().map(|o| o.customer_id.clone()),
                    fulfilment: r.order.as_ref().and_then(|o| o.fulfilment.clone()),
                }
                .into(),
            );
            release_held(order, "order rejected", out);
        }
        T::LateLineReserved => {
            let Signal::Inventory(InventoryEvent::Reserved(r)) = signal else {
                return;
            };
            let reason = format!("order already {}", order.state.as_str());
            out.commands
                .push(release(&id, r.line_index, &r.sku, &reason));
        }
        T::PaymentAuthorized => {
            out.events.push(
                OrderAuthorized {
                    order_id: id.clone(),
                    total_minor: order.total_minor(),
                    currency,
                }
                .into(),
            );
            for (index, line) in &order.lines {
                out.commands.push(
                    Commit {
                        order_id: id.clone(),
                        line_index: *index,
                        sku: line.sku.clone(),
                    }
                    .into(),
                );
            }
        }
        T::PaymentActionRequired => {
            let mut due = to_millis(now + policy.action_window);
            if let Some(hold) = order.hold_expires_at {
                due = due.min(hold);
            }
            order.action_due_at = Some(due);
            out.events.push(
                OrderActionRequired {
                    order_id: id,
                    action_due_at: due,
                }
                .into(),
            );
        }
        T::ProgressDue => {
            let Signal::Expiry(ExpiryEvent::DeadlinePassed(d)) = signal else {
                return;
            };
            out.events.push(
                OrderStalled {
                    order_id: id.clone(),
                    state: order.state.as_str().to_owned(),
                    since: d.due_at,
                }
                .into(),
            );
            // Stock not committed yet: ask inventory again (a commit is answered once applied,
            // and answered again when repeated).
            if order.state == Authorized {
                for (index, line) in order
                    .lines
                    .iter()
                    .filter(|(_, l)| l.status == LineStatus::Reserved)
                {
                    out.commands.push(
                        Commit {
                            order_id: id.clone(),
                            line_index: *index,
                            sku: line.sku.clone(),
                        }
                        .into(),
                    );
                }
            }
        }
        T::AllLinesCommitted => {
            out.events.push(
                OrderConfirmed {
                    order_id: id,
                    total_minor: order.total_minor(),
                    currency,
                }
                .into(),
            );
        }
        T::PaymentCaptured => {
            out.events.push(
                OrderCompleted {
                    order_id: id,
                    customer_id: order.customer_id.clone(),
                    lines: order.order_lines(),
                    total_minor: order.total_minor(),
                    currency,
                    fulfilment: order
                        .terms
                        .as_ref()
                        .and_then(|t| t.fulfilment.clone()),
                }
                .into(),
            );
        }
        T::PaymentDeclined
        | T::CaptureFailed
        | T::HoldExpired
        | T::ActionExpired
        | T::CancelRequested => {
            let (reason, default_detail) = match trigger {
                T::PaymentDeclined => (CancelReason::PaymentDeclined, "the payment was declined"),
                T::CaptureFailed => (CancelReason::CaptureFailed, "capturing the payment failed"),
                T::HoldExpired => (CancelReason::HoldExpired, "the reservation hold ran out"),
                T::ActionExpired => (
                    CancelReason::PaymentActionExpired,
                    "3-D Secure was not completed in time",
                ),
                _ => (CancelReason::CustomerRequested, "cancelled by the customer"),
            };
            order.reason = Some(reason.as_str().into());
            let detail = order
                .detail
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| default_detail.into());
            order.detail = Some(detail.clone());
            out.events.push(
                OrderCancelled {
                    order_id: id.clone(),
                    reason,
                    detail,
                }
                .into(),
            );
            if trigger == T::CaptureFailed {
                for (index, line) in &order.lines {
                    if line.status == LineStatus::Committed {
                        out.commands.push(
                            Restock {
                                sku: line.sku.clone(),
                                quantity: line.quantity,
                                order_id: Some(id.clone()),
                                line_index: Some(*index),
                                reason: "capture failed".into(),
                            }
                            .into(),
                        );
                    }
                }
            } else {
                release_held(order, reason.as_str(), out);
            }
        }
        _ => {}
    }
}

fn release(order_id: &str, line_index: i32, sku: &str, reason: &str) -> InventoryCommand {
    Release {
        order_id: order_id.to_owned(),
        line_index,
        sku: sku.to_owned(),
        reason: reason.to_owned(),
    }
    .into()
}

fn release_held(order: &Order, reason: &str, out: &mut Applied) {
    for (index, line) in &order.lines {
        if line.status == LineStatus::Reserved {
            out.commands
                .push(release(&order.id, *index, &line.sku, reason));
        }
    }
}
