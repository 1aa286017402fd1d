//! Classifying an input against an order: which trigger it fires and what it records, or why
//! it is ignored.

use super::*;

/// A classified input: the trigger plus what to record on the order when it is legal.
pub(super) enum Classified {
    Fire(Trigger, Update),
    Ignore(String),
}

/// Changes an input brings to the order besides its state.
pub(super) enum Update {
    None,
    Line(i32, Line, Option<Terms>),
    LineStatus(i32, LineStatus),
    Payment {
        provider: String,
        provider_ref: Option<String>,
        client_secret: Option<String>,
    },
    Failure(String, String),
    Hold(DateTime<Utc>),
}

fn terms(order: &LineOrder) -> Terms {
    Terms {
        line_count: order.line_count,
        currency: order.currency.clone(),
        payment_method_id: order.payment_method_id.clone(),
        fulfilment: order.fulfilment.clone(),
        storefront: order.storefront.clone(),
    }
}

/// Classifies `signal` against `order`: which trigger it is, or why it is ignored.
pub(super) fn classify(order: &Order, signal: Signal<'_>, policy: &Policy, now: DateTime<Utc>) -> Classified {
    use Classified::{Fire, Ignore};
    let line_count = order.terms.as_ref().map(|t| t.line_count);
    match signal {
        Signal::Inventory(InventoryEvent::Reserved(r)) => {
            let status = LineStatus::Reserved;
            line_result(
                order,
                r.line_index,
                &r.sku,
                r.quantity,
                r.order.as_ref(),
                status,
                Some(r.expires_at),
                |context| {
                    if order.state.is_final() {
                        T::LateLineReserved
                    } else if order.count(LineStatus::Reserved) + 1 == context.line_count {
                        T::AllLinesReserved
                    } else {
                        T::LineReserved
                    }
                },
            )
        }
        Signal::Inventory(InventoryEvent::Rejected(r)) => {
            let status = LineStatus::Rejected(r.reason);
            line_result(
                order,
                r.line_index,
                &r.sku,
                r.quantity,
                r.order.as_ref(),
                status,
                None,
                |_| T::LineRejected,
            )
        }
        Signal::Inventory(InventoryEvent::Released(r)) => line_moved(
            order,
            r.line_index,
            LineStatus::Reserved,
            LineStatus::Released,
            T::LineReleased,
        ),
        Signal::Inventory(InventoryEvent::Committed(r)) => {
            let trigger = if line_count == Some(order.count(LineStatus::Committed) + 1) {
                T::AllLinesCommitted
            } else {
                T::LineCommitted
            };
            line_moved(
                order,
                r.line_index,
                LineStatus::Reserved,
                LineStatus::Committed,
                trigger,
            )
        }
        Signal::Inventory(InventoryEvent::Restocked(r)) => {
            let Some(index) = order
                .lines
                .iter()
                .find(|(_, l)| l.sku == r.sku && l.status == LineStatus::Committed)
                .map(|(i, _)| *i)
            else {
                return Ignore(format!("no committed line of {} to restock", r.sku));
            };
            line_moved(
                order,
                index,
                LineStatus::Committed,
                LineStatus::Restocked,
                T::LineRestocked,
            )
        }
        Signal::Payment(p) => {
            let (provider, provider_ref) = p.provider();
            let update = |client_secret: Option<String>| Update::Payment {
                provider: provider.to_owned(),
                provider_ref: provider_ref.map(str::to_owned),
                client_secret,
            };
            match p {
                PaymentEvent::PaymentAuthorized(a) => {
                    let total = order.total_minor();
                    let currency = order.terms.as_ref().map(|t| t.currency.as_str());
                    if a.amount_minor != total || currency != Some(a.currency.as_str()) {
                        return Ignore(format!(
                            "authorized {} {} but the order is {total} {}",
                            a.amount_minor,
                            a.currency,
                            currency.unwrap_or("?")
                        ));
                    }
                    Fire(T::PaymentAuthorized, update(None))
                }
                PaymentEvent::PaymentActionRequired(a) => Fire(
                    T::PaymentActionRequired,
                    update(Some(a.client_secret.clone())),
                ),
                PaymentEvent::PaymentFailed(f) => {
                    let trigger = match f.step {
                        PaymentStep::Authorize => T::PaymentDeclined,
                        PaymentStep::Capture => T::CaptureFailed,
                        PaymentStep::Void | PaymentStep::Refund => T::PaymentUndoFailed,
                    };
                    Fire(trigger, Update::Failure(f.code.clone(), f.message.clone()))
                }
                PaymentEvent::PaymentCaptured(_) => Fire(T::PaymentCaptured, update(None)),
                PaymentEvent::PaymentVoided(_) => Fire(T::PaymentVoided, Update::None),
                PaymentEvent::PaymentRefunded(_) => Fire(T::PaymentRefunded, Update::None),
                PaymentEvent::PaymentRefundFailed(_) => {
                    Ignore("refunds are decided apart (orders/refunds.rs)".into())
                }
            }
        }
        Signal::Expiry(ExpiryEvent::DeadlinePassed(d)) => match d.kind {
            DeadlineKind::Hold => match order.hold_expires_at {
                Some(hold) if hold > d.due_at => {
                    Ignore(format!("stale: the hold now runs to {hold}"))
                }
                _ => Fire(T::HoldExpired, Update::None),
            },
            DeadlineKind::PaymentAction => match order.action_due_at {
                Some(due) if due > d.due_at => {
                    Ignore(format!("stale: the action is now due at {due}"))
                }
                _ => Fire(T::ActionExpired, Update::None),
            },
            DeadlineKind::Progress => Fire(T::ProgressDue, Update::None),
        },
        Signal::Request(OrderRequest::CancelRequested(c)) => {
            if c.customer_id != order.customer_id {
                return Ignore("cancel asked by another customer".into());
            }
            Fire(
                T::CancelRequested,
                Update::Failure("customer_requested".into(), c.reason.clone()),
            )
        }
        Signal::Request(OrderRequest::RefundRequested(_)) => {
            Ignore("refunds are decided apart (orders/refunds.rs)".into())
        }
        Signal::Request(OrderRequest::HoldRenewalRequested(h)) => {
            if h.customer_id != order.customer_id {
                return Ignore("hold renewal asked by another customer".into());
            }
            let asked = Duration::seconds(i64::from(h.hold_seconds.max(1)));
            Fire(
                T::HoldRenewed,
                Update::Hold(to_millis(now + asked.min(policy.max_hold))),
            )
        }
    }
}

/// Classifies a line result (held or not) carrying the order's terms.
#[allow(clippy::too_many_arguments)]
fn line_result(
    order: &Order,
    index: i32,
    sku: &str,
    quantity: i32,
    context: Option<&LineOrder>,
    status: LineStatus,
    expires_at: Option<DateTime<Utc>>,
    trigger: impl FnOnce(&LineOrder) -> Trigger,
) -> Classified {
    let Some(context) = context else {
        return Classified::Ignore("line result without the order's terms".into());
    };
    if let Some(reason) = line_problem(order, index, quantity, context) {
        return Classified::Ignore(reason);
    }
    let line = Line {
        sku: sku.to_owned(),
        quantity,
        unit_price_minor: context.unit_price_minor,
        status,
        expires_at,
    };
    Classified::Fire(
        trigger(context),
        Update::Line(index, line, Some(terms(context))),
    )
}

/// Why a line result cannot be taken: out of range, disagreeing terms, or a repeat.
fn line_problem(order: &Order, index: i32, quantity: i32, context: &LineOrder) -> Option<String> {
    if index < 0 || index >= context.line_count {
        return Some(format!(
            "line {index} of an order of {} lines",
            context.line_count
        ));
    }
    if let Some(known) = &order.terms
        && (known.line_count != context.line_count || known.currency != context.currency)
    {
        return Some(format!(
            "line {index} disagrees with the order's line count or currency"
        ));
    }
    if let Some(line) = order.lines.get(&index) {
        return Some(format!(
            "duplicate: line {index} already has a result ({:?})",
            line.status
        ));
    }
    if order
        .total_with(Some((quantity, context.unit_price_minor)))
        .is_none()
    {
        return Some(format!(
            "line {index} would take the order total past what 64 bits hold"
        ));
    }
    None
}

fn line_moved(
    order: &Order,
    index: i32,
    from: LineStatus,
    to: LineStatus,
    trigger: Trigger,
) -> Classified {
    match order.lines.get(&index) {
        Some(line) if line.status == from => {
            Classified::Fire(trigger, Update::LineStatus(index, to))
        }
        Some(line) => {
            Classified::Ignore(format!("line {index} is {:?}, not {from:?}", line.status))
        }
        None => Classified::Ignore(format!("line {index} is not known")),
    }
}
