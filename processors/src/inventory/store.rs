//! The inventory schema's reads and set-based writes: a few statements per batch, whatever its size.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use kassa_schemas::events::RejectReason;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use super::decide::{Reservation, Status, Stock};

/// A SKU's stock as read, with the version the write must still find.
#[derive(Debug, Clone, Copy)]
pub struct Versioned {
    /// The figures.
    pub stock: Stock,
    /// Row version when read (None: the SKU has no row yet).
    pub version: Option<i64>,
}

/// An order line's stored reservation, with what the table keeps beside the decision.
#[derive(Debug, Clone)]
pub struct LineRecord {
    /// The SKU.
    pub sku: String,
    /// The decision state.
    pub reservation: Reservation,
    /// Customer (for flash-sale limits).
    pub customer_id: Option<String>,
    /// Whether it passed the flash-sale gate.
    pub flash_sale: bool,
    /// The sale generation its units were admitted to (None: none named).
    pub flash_generation: Option<String>,
}

/// A command that changed nothing, for the record.
#[derive(Debug, Clone)]
pub struct Ignored {
    /// The command's event id.
    pub event_id: Uuid,
    /// `release`, `commit`, `restock`.
    pub command: &'static str,
    /// The SKU.
    pub sku: String,
    /// Order line, when the command names one.
    pub line: Option<(String, i32)>,
    /// Why nothing changed.
    pub reason: &'static str,
}

/// Loads the stock of `skus` (absent SKUs are not stocked).
pub async fn load_stock(
    conn: &mut PgConnection,
    skus: &[String],
) -> Result<HashMap<String, Versioned>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT sku, on_hand, reserved, committed, version FROM inventory.stock WHERE sku = ANY($1)",
    )
    .bind(skus)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sku, on_hand, reserved, committed, version)| {
            (
                sku,
                Versioned {
                    stock: Stock {
                        on_hand,
                        reserved,
                        committed,
                    },
                    version: Some(version),
                },
            )
        })
        .collect())
}

/// Loads the reservations of `lines`.
pub async fn load_lines(
    conn: &mut PgConnection,
    lines: &[(String, i32)],
) -> Result<HashMap<(String, i32), LineRecord>, sqlx::Error> {
    let (orders, indexes): (Vec<&str>, Vec<i32>) =
        lines.iter().map(|(o, i)| (o.as_str(), *i)).unzip();
    type Row = (
        String,
        i32,
        String,
        i32,
        String,
        Option<String>,
        Option<String>,
        bool,
        Option<String>,
        DateTime<Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT r.order_id, r.line_index, r.sku, r.quantity, r.status, r.reject_reason, r.customer_id,
                r.flash_sale, r.flash_generation, r.expires_at
         FROM inventory.reservations r
         JOIN unnest($1::text[], $2::int[]) AS w(order_id, line_index) USING (order_id, line_index)",
    )
    .bind(&orders)
    .bind(&indexes)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(
                order_id,
                line_index,
                sku,
                quantity,
                status,
                reason,
                customer_id,
                flash_sale,
                flash_generation,
                expires_at,
            )| {
                let status = status_from(&status, reason.as_deref())?;
                let reservation = Reservation {
                    quantity,
                    status,
                    expires_at,
                };
                Ok((
                    (order_id, line_index),
                    LineRecord {
                        sku,
                        reservation,
                        customer_id,
                        flash_sale,
                        flash_generation,
                    },
                ))
            },
        )
        .collect()
}

/// Writes the stock of the touched SKUs, each only if its version is still the one read.
/// Returns false if any was changed meanwhile (the batch must roll back and be redone).
pub async fn write_stock(
    conn: &mut PgConnection,
    touched: &mut [(&String, &mut Versioned)],
) -> Result<bool, sqlx::Error> {
    let (existing, new): (Vec<_>, Vec<_>) =
        touched.iter_mut().partition(|(_, v)| v.version.is_some());
    let mut written = 0usize;
    if !existing.is_empty() {
        let skus: Vec<&str> = existing.iter().map(|(s, _)| s.as_str()).collect();
        let columns = columns(&existing);
        let versions: Vec<i64> = existing
            .iter()
            .map(|(_, v)| v.version.unwrap_or_default())
            .collect();
        written += sqlx::query(
            "UPDATE inventory.stock s SET on_hand = a.on_hand, reserved = a.reserved, committed = a.committed,
                    version = s.version + 1, updated_at = now()
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
               AS a(sku, on_hand, reserved, committed, version)
             WHERE s.sku = a.sku AND s.version = a.version",
        )
        .bind(&skus)
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .bind(&versions)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    }
    if !new.is_empty() {
        let skus: Vec<&str> = new.iter().map(|(s, _)| s.as_str()).collect();
        let columns = columns(&new);
        written += sqlx::query(
            "INSERT INTO inventory.stock (sku, on_hand, reserved, committed)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (sku) DO NOTHING",
        )
        .bind(&skus)
        .bind(&columns.0)
        .bind(&columns.1)
        .bind(&columns.2)
        .execute(&mut *conn)
        .await?
        .rows_affected() as usize;
    }
    if written != touched.len() {
        return Ok(false);
    }
    for (_, v) in touched.iter_mut() {
        v.version = Some(v.version.map_or(0, |n| n + 1));
    }
    Ok(true)
}

fn columns(rows: &[&mut (&String, &mut Versioned)]) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    (
        rows.iter().map(|(_, v)| v.stock.on_hand).collect(),
        rows.iter().map(|(_, v)| v.stock.reserved).collect(),
        rows.iter().map(|(_, v)| v.stock.committed).collect(),
    )
}

/// Inserts new order lines; returns the keys that already existed (then nothing was written for
/// them, and the batch must be redone knowing them). Unless `may_exist`, with a plain insert (a
/// repeated reserve is rare, and this is the batch's largest write: `ON CONFLICT … RETURNING`
/// costs about twice as much), which fails with a unique violation on a line that exists: the
/// batch is then redone with `may_exist`, to learn which.
pub async fn insert_lines(
    conn: &mut PgConnection,
    lines: &[(&(String, i32), &LineRecord)],
    may_exist: bool,
) -> Result<Vec<(String, i32)>, sqlx::Error> {
    if lines.is_empty() {
        return Ok(Vec::new());
    }
    let orders: Vec<&str> = lines.iter().map(|(k, _)| k.0.as_str()).collect();
    let indexes: Vec<i32> = lines.iter().map(|(k, _)| k.1).collect();
    let skus: Vec<&str> = lines.iter().map(|(_, r)| r.sku.as_str()).collect();
    let quantities: Vec<i32> = lines.iter().map(|(_, r)| r.reservation.quantity).collect();
    let statuses: Vec<&str> = lines
        .iter()
        .map(|(_, r)| status_name(r.reservation.status))
        .collect();
    let reasons: Vec<Option<&str>> = lines
        .iter()
        .map(|(_, r)| match r.reservation.status {
            Status::Rejected(reason) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    let customers: Vec<Option<&str>> = lines
        .iter()
        .map(|(_, r)| r.customer_id.as_deref())
        .collect();
    let flash: Vec<bool> = lines.iter().map(|(_, r)| r.flash_sale).collect();
    let generations: Vec<Option<&str>> = lines
        .iter()
        .map(|(_, r)| r.flash_generation.as_deref())
        .collect();
    let expires: Vec<DateTime<Utc>> = lines
        .iter()
        .map(|(_, r)| r.reservation.expires_at)
        .collect();
    let insert = "INSERT INTO inventory.reservations
           (order_id, line_index, sku, quantity, status, reject_reason, customer_id, flash_sale,
            flash_generation, expires_at)
         SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[],
                              $6::text[], $7::text[], $8::bool[], $9::text[], $10::timestamptz[])";
    let sql = if may_exist {
        format!(
            "{insert} ON CONFLICT (order_id, line_index) DO NOTHING
             RETURNING order_id, line_index"
        )
    } else {
        insert.to_owned()
    };
    let inserted: Vec<(String, i32)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&orders)
        .bind(&indexes)
        .bind(&skus)
        .bind(&quantities)
        .bind(&statuses)
        .bind(&reasons)
        .bind(&customers)
        .bind(&flash)
        .bind(&generations)
        .bind(&expires)
        .fetch_all(conn)
        .await?;
    if !may_exist || inserted.len() == lines.len() {
        return Ok(Vec::new());
    }
    let inserted: std::collections::HashSet<(String, i32)> = inserted.into_iter().collect();
    Ok(lines
        .iter()
        .map(|(k, _)| (*k).clone())
        .filter(|k| !inserted.contains(k))
        .collect())
}

/// Updates the status of order lines that were read from the table.
pub async fn update_lines(
    conn: &mut PgConnection,
    lines: &[(&(String, i32), &LineRecord)],
) -> Result<(), sqlx::Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let orders: Vec<&str> = lines.iter().map(|(k, _)| k.0.as_str()).collect();
    let indexes: Vec<i32> = lines.iter().map(|(k, _)| k.1).collect();
    let statuses: Vec<&str> = lines
        .iter()
        .map(|(_, r)| status_name(r.reservation.status))
        .collect();
    sqlx::query(
        "UPDATE inventory.reservations r SET status = a.status, updated_at = now()
         FROM unnest($1::text[], $2::int[], $3::text[]) AS a(order_id, line_index, status)
         WHERE r.order_id = a.order_id AND r.line_index = a.line_index",
    )
    .bind(&orders)
    .bind(&indexes)
    .bind(&statuses)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records commands that changed nothing.
pub async fn write_ignored(
    conn: &mut PgConnection,
    ignored: &[Ignored],
) -> Result<(), sqlx::Error> {
    if ignored.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = ignored.iter().map(|i| i.event_id).collect();
    let commands: Vec<&str> = ignored.iter().map(|i| i.command).collect();
    let skus: Vec<&str> = ignored.iter().map(|i| i.sku.as_str()).collect();
    let orders: Vec<Option<&str>> = ignored
        .iter()
        .map(|i| i.line.as_ref().map(|l| l.0.as_str()))
        .collect();
    let indexes: Vec<Option<i32>> = ignored
        .iter()
        .map(|i| i.line.as_ref().map(|l| l.1))
        .collect();
    let reasons: Vec<&str> = ignored.iter().map(|i| i.reason).collect();
    sqlx::query(
        "INSERT INTO inventory.ignored_commands (event_id, command, sku, order_id, line_index, reason)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[])
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&commands)
    .bind(&skus)
    .bind(&orders)
    .bind(&indexes)
    .bind(&reasons)
    .execute(conn)
    .await?;
    Ok(())
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Active => "active",
        Status::Committed => "committed",
        Status::Released => "released",
        Status::Restocked => "restocked",
        Status::Rejected(_) => "rejected",
    }
}

/// A stored reservation status (and reject reason); an unknown one is an error, never a default.
fn status_from(name: &str, reason: Option<&str>) -> Result<Status, sqlx::Error> {
    Ok(match name {
        "active" => Status::Active,
        "committed" => Status::Committed,
        "released" => Status::Released,
        "restocked" => Status::Restocked,
        "rejected" => Status::Rejected(reason.and_then(RejectReason::parse).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown reject reason {reason:?}").into())
        })?),
        other => {
            return Err(sqlx::Error::Decode(
                format!("unknown reservation status {other:?}").into(),
            ));
        }
    })
}

/// The stock commands among `ids` applied before (kept for good: see `inventory.stock_commands`).
pub async fn applied_stock_commands(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<(Uuid,)> =
        sqlx::query_as("SELECT event_id FROM inventory.stock_commands WHERE event_id = ANY($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Records stock commands as applied: (event id, SKU, command).
pub async fn record_stock_commands(
    conn: &mut PgConnection,
    applied: &[(Uuid, String, &'static str)],
) -> Result<(), sqlx::Error> {
    if applied.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = applied.iter().map(|a| a.0).collect();
    let skus: Vec<&str> = applied.iter().map(|a| a.1.as_str()).collect();
    let commands: Vec<&str> = applied.iter().map(|a| a.2).collect();
    sqlx::query(
        "INSERT INTO inventory.stock_commands (event_id, sku, command)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&skus)
    .bind(&commands)
    .execute(conn)
    .await?;
    Ok(())
}
