use super::*;
use kassa_schemas::events::expiry::DeadlinePassed;
use kassa_schemas::events::inventory::{
    Committed, Rejected as LineRejectedEvent, Released, Reserved as LineReservedEvent, Restocked,
};
use kassa_schemas::events::orders::{CancelRequested, HoldRenewalRequested};
use kassa_schemas::events::payments::{
    PaymentActionRequired, PaymentAuthorized, PaymentCaptured, PaymentFailed,
};
use uuid::Uuid;

const ORDER: &str = "0190f0a0-0000-7000-8000-000000000001";
const POLICY: Policy = Policy {
    action_window: Duration::minutes(10),
    max_hold: Duration::minutes(30),
};

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn context(line_count: i32, price: i64) -> LineOrder {
    LineOrder {
        line_count,
        customer_id: "cus_1".into(),
        currency: "EUR".into(),
        unit_price_minor: price,
        payment_method_id: "pm_card_visa".into(),
        fulfilment: Some(Box::new(kassa_schemas::events::samples::fulfilment())),
        storefront: Some("shop-1".into()),
    }
}

fn reserved(line: i32, lines: i32, price: i64, hold_minutes: i64) -> InventoryEvent {
    LineReservedEvent {
        order_id: ORDER.into(),
        line_index: line,
        sku: format!("SKU-{line}"),
        quantity: 2,
        expires_at: t0() + Duration::minutes(hold_minutes),
        order: Some(context(lines, price)),
    }
    .into()
}

fn rejected(line: i32, lines: i32) -> InventoryEvent {
    LineRejectedEvent {
        order_id: ORDER.into(),
        line_index: line,
        sku: format!("SKU-{line}"),
        quantity: 2,
        reason: RejectReason::OutOfStock,
        order: Some(context(lines, 100)),
    }
    .into()
}

fn committed(line: i32) -> InventoryEvent {
    Committed {
        order_id: ORDER.into(),
        line_index: line,
        sku: format!("SKU-{line}"),
        quantity: 2,
    }
    .into()
}

fn released(line: i32) -> InventoryEvent {
    Released {
        order_id: ORDER.into(),
        line_index: line,
        sku: format!("SKU-{line}"),
        quantity: 2,
    }
    .into()
}

fn pid() -> Uuid {
    Uuid::from_u128(7)
}

fn authorized(amount: i64) -> PaymentEvent {
    PaymentAuthorized {
        order_id: ORDER.into(),
        payment_id: pid(),
        provider: "simulated".into(),
        provider_ref: Some("sim_pi_1".into()),
        amount_minor: amount,
        currency: "EUR".into(),
    }
    .into()
}

fn failed(step: PaymentStep) -> PaymentEvent {
    PaymentFailed {
        order_id: ORDER.into(),
        payment_id: pid(),
        provider: "simulated".into(),
        provider_ref: None,
        step,
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
    }
    .into()
}

fn captured(amount: i64) -> PaymentEvent {
    PaymentCaptured {
        order_id: ORDER.into(),
        payment_id: pid(),
        provider: "simulated".into(),
        provider_ref: Some("sim_pi_1".into()),
        amount_minor: amount,
        currency: "EUR".into(),
    }
    .into()
}

fn deadline(kind: DeadlineKind, due_at: DateTime<Utc>) -> ExpiryEvent {
    DeadlinePassed {
        order_id: ORDER.into(),
        kind,
        due_at,
        fired_at: due_at,
    }
    .into()
}

fn cancel(customer: &str) -> OrderRequest {
    CancelRequested {
        order_id: ORDER.into(),
        customer_id: customer.into(),
        reason: String::new(),
    }
    .into()
}

/// Feeds signals to a fresh order (created by the first, as the handler does).
fn run(signals: &[Signal<'_>]) -> (Order, Vec<Applied>) {
    let mut order = first(signals[0]).expect("the first signal creates the order");
    let applied = signals
        .iter()
        .map(|s| apply(&mut order, *s, &POLICY, t0()))
        .collect();
    (order, applied)
}

fn commands(applied: &[Applied]) -> Vec<String> {
    applied
        .iter()
        .flat_map(|a| &a.commands)
        .map(|c| match c {
            InventoryCommand::Release(r) => format!("release {}", r.line_index),
            InventoryCommand::Commit(c) => format!("commit {}", c.line_index),
            InventoryCommand::Restock(r) => format!("restock {:?} x{}", r.line_index, r.quantity),
            InventoryCommand::SetStock(s) => format!("set {}", s.sku),
        })
        .collect()
}

fn event_types(applied: &[Applied]) -> Vec<&'static str> {
    applied
        .iter()
        .flat_map(|a| &a.events)
        .map(|e| e.event_type())
        .collect()
}

use kassa_schemas::Payload;

#[test]
fn the_happy_path_reserves_authorizes_commits_and_completes() {
    let (r0, r1) = (reserved(0, 2, 1999, 15), reserved(1, 2, 500, 10));
    let (auth, c0, c1, cap) = (
        authorized(2 * 1999 + 2 * 500),
        committed(0),
        committed(1),
        captured(4998),
    );
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Inventory(&r1),
        Signal::Payment(&auth),
        Signal::Inventory(&c0),
        Signal::Inventory(&c1),
        Signal::Payment(&cap),
    ]);
    assert_eq!(order.state, Completed);
    let states: Vec<(State, State)> = applied
        .iter()
        .flat_map(|a| &a.steps)
        .map(|s| (s.from, s.to))
        .collect();
    assert_eq!(
        states,
        [
            (Pending, Pending),
            (Pending, Reserved),
            (Reserved, Authorizing),
            (Authorizing, Authorized),
            (Authorized, Authorized),
            (Authorized, Confirmed),
            (Confirmed, Completed)
        ]
    );
    assert_eq!(
        event_types(&applied),
        [
            "OrderReserved",
            "OrderAuthorized",
            "OrderConfirmed",
            "OrderCompleted"
        ]
    );
    assert_eq!(commands(&applied), ["commit 0", "commit 1"]);
    let OrderEvent::OrderReserved(r) = &applied[1].events[0] else {
        panic!()
    };
    assert_eq!(
        r.total_minor, 4998,
        "the total is the sum of quantity x unit price"
    );
    assert_eq!(
        r.hold_expires_at,
        t0() + Duration::minutes(10),
        "the earliest hold counts"
    );
    let OrderEvent::OrderCompleted(c) = &applied[5].events[0] else {
        panic!()
    };
    assert_eq!(
        (
            c.lines.len(),
            c.total_minor,
            c.currency.as_str(),
            c.customer_id.as_str()
        ),
        (2, 4998, "EUR", "cus_1")
    );
    assert_eq!(
        c.fulfilment.as_deref(),
        Some(&kassa_schemas::events::samples::fulfilment()),
        "the warehouse learns where to ship"
    );
}

#[test]
fn a_rejected_line_rejects_the_order_and_releases_every_held_line_early_or_late() {
    let (r0, x1, r2, x1_again, rel0) = (
        reserved(0, 3, 100, 15),
        rejected(1, 3),
        reserved(2, 3, 100, 15),
        rejected(1, 3),
        released(0),
    );
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Inventory(&x1),
        Signal::Inventory(&r2),
        Signal::Inventory(&x1_again),
        Signal::Inventory(&rel0),
    ]);
    assert_eq!(order.state, Rejected);
    assert_eq!(order.reason.as_deref(), Some("out_of_stock"));
    assert_eq!(
        event_types(&applied),
        ["OrderRejected"],
        "no payment was asked for"
    );
    assert_eq!(commands(&applied), ["release 0", "release 2"]);
    assert!(
        applied[3]
            .ignored
            .as_deref()
            .unwrap()
            .starts_with("duplicate"),
        "{:?}",
        applied[3].ignored
    );
    assert_eq!(order.lines[&0].status, LineStatus::Released);
}

#[test]
fn a_declined_payment_cancels_and_a_late_authorization_changes_nothing() {
    let (r0, declined, late) = (
        reserved(0, 1, 100, 15),
        failed(PaymentStep::Authorize),
        authorized(200),
    );
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Payment(&declined),
        Signal::Payment(&late),
    ]);
    assert_eq!(order.state, Cancelled);
    assert_eq!(order.reason.as_deref(), Some("payment_declined"));
    assert_eq!(order.detail.as_deref(), Some("Your card was declined."));
    assert_eq!(commands(&applied), ["release 0"]);
    assert!(applied[2].steps.is_empty() && applied[2].ignored.is_some());
}

#[test]
fn an_authorization_for_another_amount_is_not_taken() {
    let (r0, wrong) = (reserved(0, 1, 100, 15), authorized(199));
    let (order, applied) = run(&[Signal::Inventory(&r0), Signal::Payment(&wrong)]);
    assert_eq!(order.state, Authorizing);
    assert!(
        applied[1]
            .ignored
            .as_deref()
            .unwrap()
            .contains("authorized 199")
    );
}

#[test]
fn a_renewed_hold_makes_the_old_deadline_stale() {
    let r0 = reserved(0, 1, 100, 15);
    let renew: OrderRequest = HoldRenewalRequested {
        order_id: ORDER.into(),
        customer_id: "cus_1".into(),
        hold_seconds: 1200,
    }
    .into();
    let stale = deadline(DeadlineKind::Hold, t0() + Duration::minutes(15));
    let due = deadline(DeadlineKind::Hold, t0() + Duration::minutes(20));
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Request(&renew),
        Signal::Expiry(&stale),
        Signal::Expiry(&due),
    ]);
    assert_eq!(event_types(&applied[1..2]), ["HoldRenewed"]);
    assert!(applied[2].ignored.as_deref().unwrap().starts_with("stale"));
    assert_eq!(order.state, Cancelled);
    assert_eq!(order.reason.as_deref(), Some("hold_expired"));
    assert_eq!(commands(&applied), ["release 0"]);
}

#[test]
fn three_d_secure_waits_until_the_earlier_of_its_window_and_the_hold() {
    let r0 = reserved(0, 1, 100, 5);
    let action: PaymentEvent = PaymentActionRequired {
        order_id: ORDER.into(),
        payment_id: pid(),
        provider: "stripe".into(),
        provider_ref: Some("pi_1".into()),
        client_secret: "pi_1_secret".into(),
    }
    .into();
    let expired = deadline(DeadlineKind::PaymentAction, t0() + Duration::minutes(5));
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Payment(&action),
        Signal::Expiry(&expired),
    ]);
    let OrderEvent::OrderActionRequired(a) = &applied[1].events[0] else {
        panic!()
    };
    assert_eq!(
        a.action_due_at,
        t0() + Duration::minutes(5),
        "the hold (5 min) ends before the window (10 min)"
    );
    assert_eq!(order.payment.client_secret.as_deref(), Some("pi_1_secret"));
    assert_eq!(
        (order.state, order.reason.as_deref()),
        (Cancelled, Some("payment_action_expired"))
    );
}

#[test]
fn a_cancel_may_come_before_any_line_and_only_from_the_customer() {
    let (other, mine, r0) = (cancel("cus_2"), cancel("cus_1"), reserved(0, 1, 100, 15));
    let mut order = first(Signal::Request(&mine)).unwrap();
    let refused = apply(&mut order, Signal::Request(&other), &POLICY, t0());
    assert!(refused.ignored.is_some() && order.state == Pending);
    let done = apply(&mut order, Signal::Request(&mine), &POLICY, t0());
    assert_eq!(
        (order.state, event_types(std::slice::from_ref(&done))),
        (Cancelled, vec!["OrderCancelled"])
    );
    let late = apply(&mut order, Signal::Inventory(&r0), &POLICY, t0());
    assert_eq!(
        commands(&[late]),
        ["release 0"],
        "a line held after the cancel goes back"
    );
}

#[test]
fn a_failed_capture_cancels_and_restocks_committed_lines() {
    let (r0, auth, c0, cap_failed) = (
        reserved(0, 1, 100, 15),
        authorized(200),
        committed(0),
        failed(PaymentStep::Capture),
    );
    let back: InventoryEvent = Restocked {
        sku: "SKU-0".into(),
        quantity_delta: 2,
        on_hand: 10,
        order_id: Some(ORDER.into()),
        reason: "capture failed".into(),
    }
    .into();
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Payment(&auth),
        Signal::Inventory(&c0),
        Signal::Payment(&cap_failed),
        Signal::Inventory(&back),
    ]);
    assert_eq!(
        (order.state, order.reason.as_deref()),
        (Cancelled, Some("capture_failed"))
    );
    assert_eq!(commands(&applied), ["commit 0", "restock Some(0) x2"]);
    assert_eq!(order.lines[&0].status, LineStatus::Restocked);
}

#[test]
fn a_customer_cannot_cancel_once_stock_is_being_committed() {
    let (r0, auth, mine) = (reserved(0, 1, 100, 15), authorized(200), cancel("cus_1"));
    let (order, applied) = run(&[
        Signal::Inventory(&r0),
        Signal::Payment(&auth),
        Signal::Request(&mine),
    ]);
    assert_eq!(order.state, Authorized);
    assert!(
        applied[2].ignored.is_some()
            && applied[2].events.is_empty()
            && applied[2].commands.is_empty()
    );
}

#[test]
fn the_table_is_a_function_and_final_states_never_leave() {
    for (i, (from, trigger, to)) in TRANSITIONS.iter().enumerate() {
        assert!(
            !TRANSITIONS[..i]
                .iter()
                .any(|(f, t, _)| f == from && t == trigger),
            "{from:?} + {trigger:?} appears twice"
        );
        if from.is_final() {
            assert_eq!(from, to, "{from:?} is final");
        }
    }
    // Every non-final state can reach a final one.
    for state in State::ALL {
        let mut seen = vec![state];
        let mut i = 0;
        while i < seen.len() {
            for (f, _, t) in TRANSITIONS {
                if *f == seen[i] && !seen.contains(t) {
                    seen.push(*t);
                }
            }
            i += 1;
        }
        assert!(seen.iter().any(|s| s.is_final()), "{state:?} is stuck");
    }
}

#[test]
fn an_ignored_input_changes_nothing() {
    let r0 = reserved(0, 2, 100, 15);
    let (order, _) = run(&[Signal::Inventory(&r0)]);
    // Every kind of input that is illegal while pending with one line of two held.
    let (auth, cap, c0, hold) = (
        authorized(200),
        captured(200),
        committed(0),
        deadline(DeadlineKind::PaymentAction, t0()),
    );
    for signal in [
        Signal::Payment(&auth),
        Signal::Payment(&cap),
        Signal::Inventory(&c0),
        Signal::Expiry(&hold),
    ] {
        let mut copy = order.clone();
        let applied = apply(&mut copy, signal, &POLICY, t0());
        assert!(applied.ignored.is_some(), "{signal:?}");
        assert!(
            applied.steps.is_empty() && applied.events.is_empty() && applied.commands.is_empty()
        );
        assert_eq!(copy, order, "{signal:?} changed the order");
    }
}

#[test]
fn a_deadline_read_back_from_its_event_is_not_stale() {
    // `now` with microseconds; events carry milliseconds.
    let now = t0() + Duration::microseconds(678_648);
    let r0 = reserved(0, 1, 100, 15);
    let action: PaymentEvent = PaymentActionRequired {
        order_id: ORDER.into(),
        payment_id: pid(),
        provider: "simulated".into(),
        provider_ref: None,
        client_secret: "s".into(),
    }
    .into();
    let mut order = first(Signal::Inventory(&r0)).unwrap();
    apply(&mut order, Signal::Inventory(&r0), &POLICY, now);
    let applied = apply(&mut order, Signal::Payment(&action), &POLICY, now);
    let OrderEvent::OrderActionRequired(a) = &applied.events[0] else {
        panic!()
    };
    let passed = deadline(DeadlineKind::PaymentAction, a.action_due_at);
    let cancelled = apply(
        &mut order,
        Signal::Expiry(&passed),
        &POLICY,
        now + Duration::minutes(10),
    );
    assert_eq!(cancelled.ignored, None);
    assert_eq!(order.state, Cancelled);
}
