//! What a customer and a storefront hear of an order event: the kinds of notice, what each says
//! (the `data` of a webhook body), whom an order's notices go to, and the emails.

use kassa_schemas::events::orders::OrderEvent;
use serde_json::{Value, json};
use uuid::Uuid;

/// A kind of notice; its name is the webhook event type an endpoint subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Payment authorized and the order confirmed.
    Confirmed,
    /// Stock committed and payment captured: the order will ship.
    Completed,
    /// The order was cancelled (with the reason); what was held is given back.
    Cancelled,
    /// The order could not be taken (with the reason); nothing was charged.
    Rejected,
    /// The customer must confirm the payment (3-D Secure) before a deadline.
    PaymentActionRequired,
    /// Money went back to the customer (part or all of what was paid).
    Refunded,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Confirmed,
        Kind::Completed,
        Kind::Cancelled,
        Kind::Rejected,
        Kind::PaymentActionRequired,
        Kind::Refunded,
    ];

    /// The event type name (`order.confirmed`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Confirmed => "order.confirmed",
            Kind::Completed => "order.completed",
            Kind::Cancelled => "order.cancelled",
            Kind::Rejected => "order.rejected",
            Kind::PaymentActionRequired => "order.payment_action_required",
            Kind::Refunded => "order.refunded",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A notice an order event calls for: its kind and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The kind.
    pub kind: Kind,
    /// The body's `data`: amounts, lines, reasons, deadlines.
    pub data: Value,
}

/// The notice `event` calls for, if any.
pub fn of(event: &OrderEvent) -> Option<Notice> {
    let (kind, data) = match event {
        OrderEvent::OrderConfirmed(e) => (
            Kind::Confirmed,
            json!({"total_minor": e.total_minor, "currency": e.currency}),
        ),
        OrderEvent::OrderCompleted(e) => (
            Kind::Completed,
            json!({
                "total_minor": e.total_minor,
                "currency": e.currency,
                "lines": e.lines.iter().map(|l| json!({
                    "sku": l.sku, "quantity": l.quantity,
                    "unit_price_minor": l.unit_price_minor, "line_total_minor": l.line_total_minor,
                })).collect::<Vec<_>>(),
                "shipping": e.fulfilment.as_ref().map(|f| &f.shipping),
            }),
        ),
        OrderEvent::OrderCancelled(e) => (
            Kind::Cancelled,
            json!({"reason": e.reason.as_str()}),
        ),
        OrderEvent::OrderRejected(e) => (
            Kind::Rejected,
            json!({"reason": e.reason.as_str(), "rejected_line_index": e.rejected_line_index}),
        ),
        OrderEvent::OrderActionRequired(e) => (
            Kind::PaymentActionRequired,
            json!({"action_due_at": e.action_due_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}),
        ),
        OrderEvent::OrderRefunded(e) => (
            Kind::Refunded,
            json!({"amount_minor": e.amount_minor, "refunded_total_minor": e.refunded_total_minor,
                   "currency": e.currency, "full": e.full}),
        ),
        OrderEvent::OrderReserved(_)
        | OrderEvent::OrderAuthorized(_)
        | OrderEvent::HoldRenewed(_)
        | OrderEvent::OrderStalled(_)
        | OrderEvent::OrderRefundRequested(_)
        | OrderEvent::OrderRefundFailed(_) => return None,
    };
    Some(Notice { kind, data })
}

/// The stable id of the notice of `kind` caused by order event `source`: the same for every
/// endpoint and every redelivery, so a receiver deduplicates on it.
pub fn notification_id(source: Uuid, kind: Kind) -> Uuid {
    Uuid::new_v5(&source, kind.name().as_bytes())
}

/// Whom an order's notices go to, as an order event tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The storefront whose webhooks hear of it (None: from before storefronts were carried).
    pub storefront: Option<String>,
    /// The customer.
    pub customer_id: String,
    /// The contact email address, if the order gave one.
    pub email: Option<String>,
}

/// Whom to tell of the order, if `event` says (OrderReserved, OrderRejected).
pub fn contact(event: &OrderEvent) -> Option<Contact> {
    match event {
        OrderEvent::OrderReserved(e) => Some(Contact {
            storefront: e.storefront.clone(),
            customer_id: e.customer_id.clone(),
            email: e.fulfilment.as_ref().map(|f| f.email.clone()),
        }),
        OrderEvent::OrderRejected(e) => Some(Contact {
            storefront: e.storefront.clone(),
            customer_id: e.customer_id.clone()?,
            email: e.fulfilment.as_ref().map(|f| f.email.clone()),
        }),
        _ => None,
    }
}

/// An email to the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// The email for a delivery's stored body (`type`, `order_id`, `data`); None for a body that is
/// not a notice kassa knows.
pub fn email(body: &Value) -> Option<Email> {
    let kind = Kind::parse(body["type"].as_str()?)?;
    let order = body["order_id"].as_str()?;
    let data = &body["data"];
    let total = || amount(data["total_minor"].as_i64()?, data["currency"].as_str()?);
    let (subject, text) = match kind {
        Kind::Confirmed => (
            format!("Order {order} is confirmed"),
            format!(
                "Thank you: your payment of {} is authorized and order {order} is confirmed.\n\
                 We will write again when it is on its way.",
                total()?
            ),
        ),
        Kind::Completed => {
            let units: i64 = data["lines"]
                .as_array()?
                .iter()
                .filter_map(|l| l["quantity"].as_i64())
                .sum();
            (
                format!("Order {order} is complete"),
                format!(
                    "Order {order} is complete: {units} item(s), {} charged.\n\
                     It is being prepared for shipping to the address you gave.",
                    total()?
                ),
            )
        }
        Kind::Cancelled => (
            format!("Order {order} was cancelled"),
            format!(
                "Order {order} was cancelled: {}.\nAny payment held for it is released.",
                reason_text(data["reason"].as_str()?)
            ),
        ),
        Kind::Rejected => (
            format!("We could not take order {order}"),
            format!(
                "We could not take order {order}: {}.\nNothing was charged.",
                reason_text(data["reason"].as_str()?)
            ),
        ),
        Kind::Refunded => (
            format!("Refund for order {order}"),
            format!(
                "We have refunded {} of order {order}{}.\nYour bank shows it within a few days.",
                amount(data["amount_minor"].as_i64()?, data["currency"].as_str()?)?,
                if data["full"].as_bool()? {
                    ": everything you paid"
                } else {
                    ""
                }
            ),
        ),
        Kind::PaymentActionRequired => {
            let link = data["payment_action_url"]
                .as_str()
                .map(|url| format!("\nConfirm it here: {url}"))
                .unwrap_or_default();
            (
                format!("Action needed to pay for order {order}"),
                format!(
                    "Your bank asks you to confirm the payment for order {order} before {}, \
                     or the order is cancelled.{link}",
                    data["action_due_at"].as_str()?
                ),
            )
        }
    };
    Some(Email {
        subject,
        body: text,
    })
}

/// A reason as a customer reads it.
fn reason_text(reason: &str) -> &str {
    match reason {
        "out_of_stock" => "an item is out of stock",
        "unknown_sku" => "an item is not sold",
        "invalid_quantity" => "a quantity was not accepted",
        "customer_requested" => "you asked us to cancel it",
        "payment_declined" => "the payment was declined",
        "payment_action_expired" => "the payment was not confirmed in time",
        "hold_expired" => "it was not paid in time",
        "capture_failed" => "the payment could not be taken",
        _ => "it could not be completed",
    }
}

/// `minor` units of `currency` as a customer reads them (`49.98 EUR`, `500 JPY`): integer
/// arithmetic, with ISO 4217's minor units per currency.
pub fn amount(minor: i64, currency: &str) -> Option<String> {
    const NO_DECIMALS: [&str; 16] = [
        "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
        "VUV", "XAF", "XOF",
    ];
    const THREE_DECIMALS: [&str; 7] = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];
    let digits = if NO_DECIMALS.contains(&currency) {
        0
    } else if THREE_DECIMALS.contains(&currency) {
        3
    } else {
        2
    };
    let sign = if minor < 0 { "-" } else { "" };
    let units = minor.unsigned_abs();
    if digits == 0 {
        return Some(format!("{sign}{units} {currency}"));
    }
    let scale = 10u64.pow(digits);
    Some(format!(
        "{sign}{}.{:0width$} {currency}",
        units / scale,
        units % scale,
        width = digits as usize
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kassa_schemas::events::orders::CancelReason;
    use kassa_schemas::events::orders::{OrderCancelled, OrderConfirmed, OrderReserved};

    #[test]
    fn each_deciding_event_makes_one_notice_and_the_others_none() {
        let confirmed: OrderEvent = OrderConfirmed {
            order_id: "o-1".into(),
            total_minor: 4998,
            currency: "EUR".into(),
        }
        .into();
        let notice = of(&confirmed).unwrap();
        assert_eq!(notice.kind, Kind::Confirmed);
        assert_eq!(notice.data["total_minor"], 4998);
        let cancelled: OrderEvent = OrderCancelled {
            order_id: "o-1".into(),
            reason: CancelReason::PaymentDeclined,
            detail: "declined".into(),
        }
        .into();
        assert_eq!(of(&cancelled).unwrap().data["reason"], "payment_declined");
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
        }
        let source = Uuid::new_v4();
        assert_eq!(
            notification_id(source, Kind::Confirmed),
            notification_id(source, Kind::Confirmed),
            "stable across redeliveries"
        );
        assert_ne!(
            notification_id(source, Kind::Confirmed),
            notification_id(source, Kind::Completed)
        );
    }

    #[test]
    fn the_contact_comes_from_the_reservation_with_its_storefront_and_email() {
        let reserved: OrderEvent = OrderReserved {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            lines: vec![],
            total_minor: 1,
            currency: "EUR".into(),
            payment_method_id: "pm".into(),
            hold_expires_at: chrono::Utc::now(),
            storefront: Some("shop".into()),
            fulfilment: Some(Box::new(kassa_schemas::events::samples::fulfilment())),
        }
        .into();
        let contact = contact(&reserved).unwrap();
        assert_eq!(contact.storefront.as_deref(), Some("shop"));
        assert_eq!(contact.email.as_deref(), Some("ada@shop.example"));
        assert!(of(&reserved).is_none(), "a reservation is not news to the customer");
    }

    #[test]
    fn emails_say_the_amount_in_the_currency_s_units_and_the_reason_in_words() {
        assert_eq!(amount(4998, "EUR").as_deref(), Some("49.98 EUR"));
        assert_eq!(amount(5, "USD").as_deref(), Some("0.05 USD"));
        assert_eq!(amount(500, "JPY").as_deref(), Some("500 JPY"));
        assert_eq!(amount(1234, "KWD").as_deref(), Some("1.234 KWD"));
        let body = json!({"type": "order.confirmed", "order_id": "o-1",
                          "data": {"total_minor": 4998, "currency": "EUR"}});
        let mail = email(&body).unwrap();
        assert_eq!(mail.subject, "Order o-1 is confirmed");
        assert!(mail.body.contains("49.98 EUR"), "{}", mail.body);
        let body = json!({"type": "order.cancelled", "order_id": "o-1",
                          "data": {"reason": "payment_declined"}});
        assert!(
            email(&body)
                .unwrap()
                .body
                .contains("the payment was declined")
        );
        let body = json!({"type": "order.payment_action_required", "order_id": "o-1",
                          "data": {"action_due_at": "2026-12-04T10:00:00Z",
                                   "payment_action_url": "https://shop.example/pay/o-1"}});
        assert!(
            email(&body)
                .unwrap()
                .body
                .contains("https://shop.example/pay/o-1")
        );
        assert!(email(&json!({"type": "order.unknown"})).is_none());
    }
}
