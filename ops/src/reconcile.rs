//! `kassa reconcile`: do the books square? Each processor keeps its own tables; this reads them
//! side by side and lists every discrepancy by class with the ids involved:
//!
//! - `stock`: a SKU whose reserved or committed units differ from its reservations, or an order
//!   decided longer than the margin ago that still holds stock;
//! - `orders_inventory`: a completed order's line that is not committed, or a rejected or
//!   cancelled order's line still committed;
//! - `orders_payments`: a completed order not captured for exactly its total, a rejected or
//!   cancelled order (decided longer than the margin ago) with money kept or an authorization
//!   open, a payment for an order nobody knows;
//! - `stuck`: an order not decided, past its deadline (its hold, its 3-D Secure window, or its
//!   last change where it has none) by more than the margin.
//!
//! With `--provider`, `payments_provider`: each payment against the provider's intent
//! ([`crate::provider`]).
//!
//! The margin covers compensation in flight: releases and voids trail an order's final state.

use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

/// A kind of discrepancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Stock against reservations.
    Stock,
    /// Orders against inventory.
    OrdersInventory,
    /// Orders against payments.
    OrdersPayments,
    /// Orders past their deadlines.
    Stuck,
    /// Payments against the provider's intents (`--provider`, see [`crate::provider`]).
    PaymentsProvider,
}

impl Class {
    /// The class's name, as `--json` writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Stock => "stock",
            Class::OrdersInventory => "orders_inventory",
            Class::OrdersPayments => "orders_payments",
            Class::Stuck => "stuck",
            Class::PaymentsProvider => "payments_provider",
        }
    }
}

/// One discrepancy: its class, the ids involved (SKU, order) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Discrepancy {
    /// Its class.
    pub class: Class,
    /// The ids involved.
    pub ids: Vec<String>,
    /// What is wrong, in a sentence.
    pub detail: String,
}

/// What `kassa reconcile` checks.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only orders created since then (and the SKUs they reserved); None: everything.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// How long compensation may trail a decision, and how far past its deadline an order is
    /// stuck.
    pub margin: Duration,
}

/// Each undecided order (created since `$1`, when given) with its deadline: its 3-D Secure
/// window, its hold, or its last change where it has neither.
macro_rules! deadlines {
    () => {
        "SELECT order_id, state, updated_at,
                CASE WHEN state = 'action_required' AND action_due_at IS NOT NULL THEN action_due_at
                     WHEN state IN ('pending', 'reserved') AND hold_expires_at IS NOT NULL THEN hold_expires_at
                     ELSE updated_at END AS deadline
         FROM orders.orders
         WHERE state NOT IN ('completed', 'rejected', 'cancelled')
           AND ($1::timestamptz IS NULL OR created_at >= $1)"
    };
}

/// How many orders are undecided past their deadline by more than `margin` (what
/// `kassa_orders_stuck` reports).
pub async fn stuck_count(pool: &PgPool, margin: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(concat!(
        "WITH d AS (",
        deadlines!(),
        ") SELECT count(*) FROM d WHERE deadline < now() - make_interval(secs => $2)"
    ))
    .bind(None::<chrono::DateTime<chrono::Utc>>)
    .bind(margin.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// The rows a check returns: the ids involved and the detail.
type Rows = Vec<(Vec<String>, String)>;

/// Every discrepancy in the books, by class.
pub async fn reconcile(pool: &PgPool, options: &Options) -> Result<Vec<Discrepancy>, sqlx::Error> {
    let margin = options.margin.as_secs_f64();
    let checks: [(Class, &str); 8] = [
        (
            Class::Stock,
            "WITH r AS (SELECT sku, sum(quantity) FILTER (WHERE status = 'active') AS held,
                               sum(quantity) FILTER (WHERE status = 'committed') AS sold
                        FROM inventory.reservations GROUP BY sku)
             SELECT ARRAY[s.sku],
                    format('reserved %s but active holds of %s; committed %s but committed lines of %s',
                           s.reserved, coalesce(r.held, 0), s.committed, coalesce(r.sold, 0))
             FROM inventory.stock s LEFT JOIN r USING (sku)
             WHERE (s.reserved <> coalesce(r.held, 0) OR s.committed <> coalesce(r.sold, 0))
               AND ($1::timestamptz IS NULL OR s.sku IN
                    (SELECT sku FROM inventory.reservations WHERE created_at >= $1))
             ORDER BY s.sku",
        ),
        (
            Class::Stock,
            "SELECT ARRAY[r.sku, r.order_id],
                    format('line %s holds %s units, but the order is %s since %s',
                           r.line_index, r.quantity, o.state, o.updated_at)
             FROM inventory.reservations r JOIN orders.orders o USING (order_id)
             WHERE r.status = 'active' AND o.state IN ('completed', 'rejected', 'cancelled')
               AND o.updated_at < now() - make_interval(secs => $2)
               AND ($1::timestamptz IS NULL OR o.created_at >= $1)
             ORDER BY r.order_id, r.line_index",
        ),
        (
            Class::OrdersInventory,
            "SELECT ARRAY[o.order_id, l.sku],
                    format('completed, but line %s is %s in inventory', l.line_index,
                           coalesce(r.status, 'unknown'))
             FROM orders.orders o JOIN orders.order_lines l USING (order_id)
             LEFT JOIN inventory.reservations r
               ON r.order_id = l.order_id AND r.line_index = l.line_index
             WHERE o.state = 'completed' AND r.status IS DISTINCT FROM 'committed'
               AND ($1::timestamptz IS NULL OR o.created_at >= $1)
             ORDER BY o.order_id, l.line_index",
        ),
        (
            Class::OrdersInventory,
            "SELECT ARRAY[o.order_id, r.sku],
                    format('%s, but line %s is still committed (not restocked)', o.state, r.line_index)
             FROM orders.orders o JOIN inventory.reservations r USING (order_id)
             WHERE o.state IN ('rejected', 'cancelled') AND r.status = 'committed'
               AND o.updated_at < now() - make_interval(secs => $2)
               AND ($1::timestamptz IS NULL OR o.created_at >= $1)
             ORDER BY o.order_id, r.line_index",
        ),
        (
            Class::OrdersPayments,
            "SELECT ARRAY[o.order_id],
                    CASE WHEN p.order_id IS NULL THEN format('completed for %s, but no payment is recorded', o.total_minor)
                         ELSE format('completed for %s with %s refunded, but %s captured and %s refunded (payment %s)',
                                     o.total_minor, o.refunded_minor, p.captured_minor, p.refunded_minor, p.status) END
             FROM orders.orders o LEFT JOIN payments.payments p USING (order_id)
             WHERE o.state = 'completed'
               AND (p.order_id IS NULL OR p.captured_minor <> o.total_minor OR (p.refunded_minor <> o.refunded_minor
                                                                                   AND p.updated_at < now() - make_interval(secs => $2)))
               AND ($1::timestamptz IS NULL OR o.created_at >= $1)
             ORDER BY o.order_id",
        ),
        (
            Class::OrdersPayments,
            "SELECT ARRAY[o.order_id],
                    format('%s, but the payment is %s with %s captured and %s refunded',
                           o.state, p.status, p.captured_minor, p.refunded_minor)
             FROM orders.orders o JOIN payments.payments p USING (order_id)
             WHERE o.state IN ('rejected', 'cancelled')
               AND (p.captured_minor <> p.refunded_minor OR p.status IN ('authorized', 'captured'))
               AND o.updated_at < now() - make_interval(secs => $2)
               AND ($1::timestamptz IS NULL OR o.created_at >= $1)
             ORDER BY o.order_id",
        ),
        (
            Class::OrdersPayments,
            "SELECT ARRAY[p.order_id], format('payment %s (%s) for an order nobody knows', p.payment_id, p.status)
             FROM payments.payments p LEFT JOIN orders.orders o USING (order_id)
             WHERE o.order_id IS NULL AND ($1::timestamptz IS NULL OR p.created_at >= $1)
             ORDER BY p.order_id",
        ),
        (
            Class::Stuck,
            concat!(
                "WITH d AS (",
                deadlines!(),
                ")
             SELECT ARRAY[order_id],
                    format('%s since %s; its deadline passed %s s ago', state, updated_at,
                           round(extract(epoch FROM now() - deadline)))
             FROM d WHERE deadline < now() - make_interval(secs => $2)
             ORDER BY deadline"
            ),
        ),
    ];
    let mut found = Vec::new();
    for (class, sql) in checks {
        let mut query = sqlx::query_as(sql).bind(options.since);
        if sql.contains("$2") {
            query = query.bind(margin);
        }
        let rows: Rows = query.fetch_all(pool).await?;
        found.extend(
            rows.into_iter()
                .map(|(ids, detail)| Discrepancy { class, ids, detail }),
        );
    }
    Ok(found)
}

/// `found` for people: a line per discrepancy, then a count per class.
pub fn report(found: &[Discrepancy]) -> String {
    let mut out = String::new();
    for d in found {
        out += &format!(
            "{:<17} {:<50} {}\n",
            d.class.as_str(),
            d.ids.join(" "),
            d.detail
        );
    }
    let classes = [
        Class::Stock,
        Class::OrdersInventory,
        Class::OrdersPayments,
        Class::Stuck,
        Class::PaymentsProvider,
    ];
    let counts: Vec<String> = classes
        .iter()
        .map(|c| {
            let n = found.iter().filter(|d| d.class == *c).count();
            format!("{} {n}", c.as_str())
        })
        .collect();
    let verdict = if found.is_empty() {
        "the books square"
    } else {
        "discrepancies found"
    };
    out += &format!("{verdict}: {}\n", counts.join(", "));
    out
}
