//! The orders schema's reads and set-based writes: orders with their lines (locked for the
//! batch), the audit trail, and the notification that wakes the API's long polls.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use kassa_schemas::events::RejectReason;
use kassa_schemas::events::fulfilment::Fulfilment;
use serde_json::json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::machine::{Line, LineStatus, Order, PaymentView, State, Terms};

/// One audit-trail row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// The order.
    pub order_id: String,
    /// State before (None: order not known).
    pub from: Option<State>,
    /// State after (None: order not known).
    pub to: Option<State>,
    /// The trigger's name, when the input was classified.
    pub trigger: Option<String>,
    /// Whether the input changed the order.
    pub applied: bool,
    /// The input's event id.
    pub cause_event_id: Uuid,
    /// The input's event type.
    pub cause_type: String,
    /// Why it changed nothing.
    pub reason: Option<String>,
}

/// Loads the orders `ids`, with their lines, locking them for this transaction.
pub async fn load(
    conn: &mut PgConnection,
    ids: &[&str],
) -> Result<HashMap<String, Order>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT order_id, state, customer_id, line_count, currency, payment_method_id, hold_expires_at,
                action_due_at, reason, detail, provider, provider_ref, client_secret, fulfilment, storefront
         FROM orders.orders WHERE order_id = ANY($1) FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut orders = HashMap::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get("order_id");
        let state: String = row.get("state");
        let line_count: Option<i32> = row.get("line_count");
        let terms = line_count.map(|line_count| Terms {
            line_count,
            currency: row.get::<Option<String>, _>("currency").unwrap_or_default(),
            payment_method_id: row
                .get::<Option<String>, _>("payment_method_id")
                .unwrap_or_default(),
            fulfilment: row
                .get::<Option<sqlx::types::Json<Fulfilment>>, _>("fulfilment")
                .map(|f| Box::new(f.0)),
            storefront: row.get("storefront"),
        });
        let order = Order {
            id: id.clone(),
            state: State::parse(&state)
                .ok_or_else(|| unknown("order state", &Some(state.clone())))?,
            customer_id: row.get("customer_id"),
            terms,
            lines: Default::default(),
            hold_expires_at: row.get("hold_expires_at"),
            action_due_at: row.get("action_due_at"),
            reason: row.get("reason"),
            detail: row.get("detail"),
            payment: PaymentView {
                provider: row.get("provider"),
                provider_ref: row.get("provider_ref"),
                client_secret: row.get("client_secret"),
            },
        };
        orders.insert(id, order);
    }
    if orders.is_empty() {
        return Ok(orders);
    }
    type LineRow = (
        String,
        i32,
        String,
        i32,
        i64,
        String,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let lines: Vec<LineRow> = sqlx::query_as(
        "SELECT order_id, line_index, sku, quantity, unit_price_minor, status, reject_reason, expires_at
         FROM orders.order_lines WHERE order_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    for (order_id, index, sku, quantity, unit_price_minor, status, reject_reason, expires_at) in
        lines
    {
        let status = match status.as_str() {
            "reserved" => LineStatus::Reserved,
            "released" => LineStatus::Released,
            "committed" => LineStatus::Committed,
            "restocked" => LineStatus::Restocked,
            "rejected" => LineStatus::Rejected(
                reject_reason
                    .as_deref()
                    .and_then(RejectReason::parse)
                    .ok_or_else(|| unknown("reject reason", &reject_reason))?,
            ),
            other => return Err(unknown("line status", &Some(other.to_owned()))),
        };
        if let Some(order) = orders.get_mut(&order_id) {
            order.lines.insert(
                index,
                Line {
                    sku,
                    quantity,
                    unit_price_minor,
                    status,
                    expires_at,
                },
            );
        }
    }
    Ok(orders)
}

/// A stored value this build does not know: an error, never a silent default.
fn unknown(what: &str, value: &Option<String>) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} {value:?} in orders' tables").into())
}

/// The lines of loaded orders as they are stored, by order id and line index.
pub type StoredLines = HashMap<String, BTreeMap<i32, Line>>;

/// The lines of `orders` as loaded (before any input changes them).
pub fn stored_lines(orders: &HashMap<String, Order>) -> StoredLines {
    orders
        .iter()
        .map(|(id, order)| (id.clone(), order.lines.clone()))
        .collect()
}

/// Writes `orders` (inserted or updated), and those of their lines that differ from `stored`
/// (a line is rewritten only when an input changed it), and notifies the status channel.
pub async fn save(
    conn: &mut PgConnection,
    orders: &[&Order],
    stored: &StoredLines,
) -> Result<(), sqlx::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = orders
        .iter()
        .map(|o| {
            json!({
                "order_id": o.id,
                "state": o.state.as_str(),
                "customer_id": o.customer_id,
                "line_count": o.terms.as_ref().map(|t| t.line_count),
                "currency": o.terms.as_ref().map(|t| &t.currency),
                "payment_method_id": o.terms.as_ref().map(|t| &t.payment_method_id),
                "fulfilment": o.terms.as_ref().and_then(|t| t.fulfilment.as_ref()),
                "storefront": o.terms.as_ref().and_then(|t| t.storefront.as_ref()),
                "total_minor": o.total_minor(),
                "hold_expires_at": o.hold_expires_at,
                "action_due_at": o.action_due_at,
                "reason": o.reason,
                "detail": o.detail,
                "provider": o.payment.provider,
                "provider_ref": o.payment.provider_ref,
                "client_secret": o.payment.client_secret,
            })
        })
        .collect();
    sqlx::query(
        "INSERT INTO orders.orders (order_id, state, customer_id, line_count, currency, payment_method_id, total_minor,
                                    hold_expires_at, action_due_at, reason, detail, provider, provider_ref, client_secret,
                                    fulfilment, storefront)
         SELECT * FROM jsonb_to_recordset($1) AS x(order_id text, state text, customer_id text, line_count int,
              currency text, payment_method_id text, total_minor bigint, hold_expires_at timestamptz,
              action_due_at timestamptz, reason text, detail text, provider text, provider_ref text, client_secret text,
              fulfilment jsonb, storefront text)
         ON CONFLICT (order_id) DO UPDATE SET
              state = excluded.state, line_count = excluded.line_count, currency = excluded.currency,
              payment_method_id = excluded.payment_method_id, total_minor = excluded.total_minor,
              fulfilment = excluded.fulfilment, storefront = excluded.storefront,
              hold_expires_at = excluded.hold_expires_at, action_due_at = excluded.action_due_at,
              reason = excluded.reason, detail = excluded.detail, provider = excluded.provider,
              provider_ref = excluded.provider_ref, client_secret = excluded.client_secret, updated_at = now()",
    )
    .bind(serde_json::Value::Array(rows))
    .execute(&mut *conn)
    .await?;
    let lines: Vec<serde_json::Value> = orders
        .iter()
        .flat_map(|o| {
            let before = stored.get(&o.id);
            let changed = move |(index, l): &(&i32, &Line)| {
                before.and_then(|lines| lines.get(*index)) != Some(*l)
            };
            o.lines.iter().filter(changed).map(|(index, l)| {
                let (status, reject_reason) = match l.status {
                    LineStatus::Reserved => ("reserved", None),
                    LineStatus::Rejected(r) => ("rejected", Some(r.as_str())),
                    LineStatus::Released => ("released", None),
                    LineStatus::Committed => ("committed", None),
                    LineStatus::Restocked => ("restocked", None),
                };
                json!({
                    "order_id": o.id,
                    "line_index": index,
                    "sku": l.sku,
                    "quantity": l.quantity,
                    "unit_price_minor": l.unit_price_minor,
                    "status": status,
                    "reject_reason": reject_reason,
                    "expires_at": l.expires_at,
                })
            })
        })
        .collect();
    if !lines.is_empty() {
        sqlx::query(
            "INSERT INTO orders.order_lines (order_id, line_index, sku, quantity, unit_price_minor, status, reject_reason, expires_at)
             SELECT * FROM jsonb_to_recordset($1) AS x(order_id text, line_index int, sku text, quantity int,
                  unit_price_minor bigint, status text, reject_reason text, expires_at timestamptz)
             ON CONFLICT (order_id, line_index) DO UPDATE SET status = excluded.status,
                  reject_reason = excluded.reject_reason, expires_at = excluded.expires_at",
        )
        .bind(serde_json::Value::Array(lines))
        .execute(&mut *conn)
        .await?;
    }
    let ids: Vec<&str> = orders.iter().map(|o| o.id.as_str()).collect();
    sqlx::query("SELECT pg_notify($1, id) FROM unnest($2::text[]) AS id")
        .bind(kassa_schemas::read_model::ORDER_STATUS_CHANNEL)
        .bind(&ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends rows to the audit trail.
pub async fn audit(conn: &mut PgConnection, rows: &[AuditRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "order_id": r.order_id,
                "from_state": r.from.map(State::as_str),
                "to_state": r.to.map(State::as_str),
                "trigger": r.trigger,
                "applied": r.applied,
                "cause_event_id": r.cause_event_id,
                "cause_type": r.cause_type,
                "reason": r.reason,
            })
        })
        .collect();
    sqlx::query(
        "INSERT INTO orders.transitions (order_id, from_state, to_state, trigger, applied, cause_event_id, cause_type, reason)
         SELECT * FROM jsonb_to_recordset($1) AS x(order_id text, from_state text, to_state text, trigger text,
              applied boolean, cause_event_id uuid, cause_type text, reason text)",
    )
    .bind(serde_json::Value::Array(rows))
    .execute(conn)
    .await?;
    Ok(())
}
